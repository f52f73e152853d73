import pytest

from gift import cli
from gift import config as gc


def test_override_sets_typed_value():
  cfg, rest = gc.parse_args(["--config=configs/test_tiny.py", "--config.train.lr=3e-4", "pos"])
  assert cfg.train.lr == pytest.approx(3e-4)
  assert rest == ["pos"]


def test_int_accepted_for_float_and_bool_words():
  cfg, _ = gc.parse_args(["--config.train.lr=1", "--config.train.progress=false"])
  assert isinstance(cfg.train.lr, float) and cfg.train.progress is False


@pytest.mark.parametrize("arg,needle", [
    ("--config.train.lrr=1", "train.lr"),
    ("--config.modle.d_model=3", "model"),
    ("--config.model.d_modl=3", "model.d_model"),
])
def test_unknown_key_names_closest(arg, needle):
  with pytest.raises(gc.ConfigError) as e:
    gc.parse_args([arg])
  assert "unknown config key" in str(e.value) and needle in str(e.value)
  assert "\n" not in str(e.value)


def test_wrong_type_is_one_line_error():
  with pytest.raises(gc.ConfigError, match=r"train.num_steps.*expects int"):
    gc.parse_args(["--config.train.num_steps=1.5"])


def test_config_is_locked():
  cfg, _ = gc.parse_args([])
  with pytest.raises(AttributeError):
    cfg.train.new_key = 1


def test_missing_config_file_named():
  with pytest.raises(gc.ConfigError, match="nope.py"):
    gc.parse_args(["--config=nope.py"])


def test_cross_field_validation():
  with pytest.raises(gc.ConfigError, match="grad_accum"):
    gc.parse_args(["--config.train.batch_size=6", "--config.train.grad_accum=4"])


def test_cli_unknown_command_suggests(capsys):
  assert cli.main(["tarin"]) == 2
  assert "train" in capsys.readouterr().err
