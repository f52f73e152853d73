"""Every command prints an expected user error as one line `gift <command>: ...` with exit
status 2, no traceback; GIFT_DEBUG=1 shows the traceback."""
import json

import pytest

from gift import cli
from gift.model import presets


@pytest.fixture
def bad(tmp_path, monkeypatch, repo_root):
  monkeypatch.chdir(repo_root)
  monkeypatch.setenv("GIFT_CPU_ENV", "0")  # no re-exec of the test process
  monkeypatch.delenv("GIFT_DEBUG", raising=False)
  (tmp_path / "empty").mkdir()
  (tmp_path / "answers.jsonl").write_text('{"code": "x"}\nnot json\n')
  (tmp_path / "episodes.json").write_text(json.dumps({"not": "a list"}))
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
  (tmp_path / "badtok").mkdir()
  (tmp_path / "badtok" / "tokenizer.json").write_text("{not json")
  (tmp_path / "ckpt").mkdir()  # a checkpoint's root, as init_from reads it for the shape
  (tmp_path / "ckpt" / "model_config.json").write_text(json.dumps(
      presets.get_preset("test_tiny", num_layers=3).to_dict()))
  return tmp_path


CASES = {
    "import-hf without config.json": (
        ["import-hf", "--hf_dir", "{t}/empty", "--out", "{t}/out"], "config.json"),
    "import-hf of an unsupported model": (
        ["import-hf", "--hf_dir", "{t}/hf", "--out", "{t}/out"], "GPT2LMHeadModel"),
    "sample on a folder that is not a checkpoint": (
        ["sample", "--checkpoint", "{t}/empty", "--prompt", "x"], "not a gift checkpoint"),
    "export-hf on a folder that is not a checkpoint": (
        ["export-hf", "--checkpoint", "{t}/empty", "--out", "{t}/hf_out"], "model_config.json"),
    "eval ds1000 on a malformed answers file": (
        ["eval", "ds1000", "--answers", "{t}/answers.jsonl", "--workdir", "{t}/w"],
        "answers.jsonl:1: expected"),
    "eval arcade on a file that is not episodes": (
        ["eval", "arcade", "--dataset", "{t}/episodes.json", "--answers", "{t}/answers.jsonl",
         "--workdir", "{t}/w"], "expected a JSON list of episodes"),
    "train with an unknown config key": (
        ["train", "--config=configs/test_tiny.py", "--workdir={t}/run", "--config.train.nope=1"],
        "unknown config key 'train.nope'"),
    "train with a missing data file": (
        ["train", "--config=configs/test_tiny.py", "--workdir={t}/run",
         "--config.data.source=jsonl", "--config.data.path={t}/missing.jsonl"], "missing.jsonl"),
    "quickstart with a wrongly typed value": (
        ["quickstart", "--workdir={t}/qs", "--config.train.num_steps=many"], "num_steps"),
    "plan with a missing config file": (["plan", "--config={t}/nope.py"], "nope.py"),
    "build-data with a missing config file": (
        ["build-data", "--config={t}/nope.py", "--workdir", "{t}/bd"], "nope.py"),
    "tokenizer train on a missing input": (
        ["tokenizer", "train", "--input", "{t}/missing.txt", "--vocab_size", "100", "--out",
         "{t}/tok"], "missing.txt"),
    "train with a tokenizer folder that holds none": (
        ["train", "--config=configs/test_tiny.py", "--workdir={t}/run",
         "--config.tokenizer={t}/empty"], "neither tokenizer.json"),
    "train with a shape that contradicts init_from": (
        ["train", "--workdir={t}/run", "--config.init_from={t}/ckpt",
         "--config.model.num_layers=5"],
        "config.model.num_layers=5 but the checkpoint has num_layers=3"),
    "tokenizer encode with a broken tokenizer.json": (
        ["tokenizer", "encode", "--model", "{t}/badtok", "x"],
        "tokenizer.json is not a Hugging Face tokenizer.json"),
    # Bad command lines: argparse's message as one line, not its usage block.
    "sample with a flag missing its value": (
        ["sample", "--checkpoint"], "argument --checkpoint: expected one argument"),
    "quickstart with an unknown flag": (["quickstart", "--bogus"], "unrecognized arguments"),
    "eval ds1000 without its required flag": (["eval", "ds1000"], "--answers --checkpoint"),
    "import-hf without --out": (["import-hf", "--hf_dir", "{t}/hf"], "required: --out"),
    "exec with a missing code file": (
        ["exec", "--context", "{t}/missing.py", "--code", "{t}/missing.py"], "missing.py"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_user_error_is_one_line_and_exit_status_2(bad, capsys, case):
  argv, needle = CASES[case]
  argv = [a.replace("{t}", str(bad)) for a in argv]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.strip()]
  command = " ".join(argv[:2]) if argv[0] in ("eval", "tokenizer") else argv[0]
  assert len(lines) == 1 and lines[0].startswith(f"gift {command}: "), err
  assert needle in lines[0] and "Traceback" not in err


def test_gift_debug_shows_the_traceback(bad, monkeypatch):
  monkeypatch.setenv("GIFT_DEBUG", "1")
  with pytest.raises(FileNotFoundError, match="not a gift checkpoint"):
    cli.main(["sample", "--checkpoint", str(bad / "empty"), "--prompt", "x"])
