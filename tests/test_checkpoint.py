"""gift checkpoints: model save/load round trip, the trainer's manager, corrupt-step fallback."""
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gift import checkpoint as ck
from gift.model.presets import get_preset


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"embedder": {"embedding": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)},
          "final_norm": {"scale": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}}


def _state(seed=0):
  params = _params(seed)
  return {"params": params, "opt_state": optax.adamw(1e-3).init(params),
          "data": {"next_bk": jnp.arange(8, dtype=jnp.int32) + seed}}


def _abstract(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _corrupt(step_dir):
  """Overwrites every stored file of the params item with garbage."""
  for root, _, files in os.walk(os.path.join(step_dir, "params")):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"not a checkpoint")


def test_save_model_load_model_round_trip_into_shardings(tmp_path):
  tok = tmp_path / "spm.model"
  tok.write_bytes(b"fake sentencepiece bytes")
  cfg = get_preset("test_tiny", vocab_size=16, d_model=8)
  ck.save_model(str(tmp_path / "ckpt"), cfg, _params(), tokenizer_path=str(tok), step=3)
  mesh = jax.make_mesh((8,), ("fsdp",))
  shardings = {"embedder": {"embedding": NamedSharding(mesh, P(None, "fsdp"))},
               "final_norm": {"scale": NamedSharding(mesh, P())}}
  cfg2, params, tok_path = ck.load_model(str(tmp_path / "ckpt"), shardings=shardings)
  assert cfg2 == cfg
  assert open(os.path.join(tok_path, "tokenizer.model"), "rb").read() == b"fake sentencepiece bytes"
  _assert_tree_equal(params, _params())
  assert params["embedder"]["embedding"].sharding == shardings["embedder"]["embedding"]
  assert json.load(open(tmp_path / "ckpt" / "model_config.json"))["d_model"] == 8


def test_save_model_refuses_to_overwrite_a_step(tmp_path):
  cfg = get_preset("test_tiny")
  ck.save_model(str(tmp_path), cfg, _params())
  with pytest.raises(FileExistsError, match="already holds step 0"):
    ck.save_model(str(tmp_path), cfg, _params(1))


def test_load_model_names_the_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="model_config.json"):
    ck.load_model(str(tmp_path))


def test_train_checkpointer_saves_every_n_keeps_k_and_restores_latest(tmp_path):
  ckpt = ck.TrainCheckpointer(str(tmp_path), every=2, keep=2, async_save=True,
                              handle_sigterm=False)
  for step in range(1, 8):
    ckpt.maybe_save(step, _state(step))
  ckpt.save(7, _state(7))
  ckpt.close()
  assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [6, 7]
  sharding = NamedSharding(jax.make_mesh((8,), ("fsdp",)), P())
  ckpt = ck.TrainCheckpointer(str(tmp_path), every=2, keep=2, handle_sigterm=False)
  step, state = ckpt.restore_latest(_abstract(_state(), sharding))
  ckpt.close()
  assert step == 7
  _assert_tree_equal(state, _state(7))
  assert state["params"]["final_norm"]["scale"].sharding == sharding


def test_fresh_workdir_restores_nothing(tmp_path):
  ckpt = ck.TrainCheckpointer(str(tmp_path), every=1, keep=1, handle_sigterm=False)
  assert ckpt.restore_latest(_abstract(_state(), NamedSharding(
      jax.make_mesh((8,), ("fsdp",)), P()))) == (None, None)
  ckpt.close()


def test_corrupt_latest_step_falls_back_to_previous_with_warning(tmp_path, capsys):
  ckpt = ck.TrainCheckpointer(str(tmp_path), every=1, keep=3, async_save=False,
                              handle_sigterm=False)
  for step in (1, 2):
    ckpt.save(step, _state(step))
  ckpt.close()
  _corrupt(str(tmp_path / "2"))
  sharding = NamedSharding(jax.make_mesh((8,), ("fsdp",)), P())
  ckpt = ck.TrainCheckpointer(str(tmp_path), every=1, keep=3, handle_sigterm=False)
  step, state = ckpt.restore_latest(_abstract(_state(), sharding))
  assert step == 1
  _assert_tree_equal(state, _state(1))
  assert "step 2" in capsys.readouterr().out
  # The bad step was moved aside, so the run can save step 2 again.
  assert any(d.startswith("2.corrupt-") for d in os.listdir(tmp_path))
  ckpt.save(2, _state(5))
  ckpt.close()
  assert (tmp_path / "2" / "params").is_dir()


def test_load_model_skips_a_corrupt_latest_step(tmp_path):
  cfg = get_preset("test_tiny")
  ck.save_model(str(tmp_path), cfg, _params(1), step=1)
  ck.save_model(str(tmp_path), cfg, _params(2), step=2)
  _corrupt(str(tmp_path / "2"))
  _, params, _ = ck.load_model(str(tmp_path))
  _assert_tree_equal(params, _params(1))


def test_sigterm_marks_preemption(tmp_path):
  previous = signal.getsignal(signal.SIGTERM)
  try:
    ckpt = ck.TrainCheckpointer(str(tmp_path), every=10, keep=1)
    assert not ckpt.preempted(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert ckpt.preempted(2)
    ckpt.close()
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_unfinished_step_left_by_a_killed_save_is_removed(tmp_path):
  ckpt = ck.TrainCheckpointer(str(tmp_path), every=1, keep=3, handle_sigterm=False)
  ckpt.save(1, _state(1))
  ckpt.close()
  unfinished = tmp_path / "2.orbax-checkpoint-tmp-1234" / "params" / "ocdbt.process_0"
  unfinished.mkdir(parents=True)
  (unfinished / "d").write_bytes(b"half")
  ckpt = ck.TrainCheckpointer(str(tmp_path), every=1, keep=3, handle_sigterm=False)
  step, _ = ckpt.restore_latest(_abstract(_state(), NamedSharding(
      jax.make_mesh((8,), ("fsdp",)), P())))
  ckpt.save(2, _state(2))
  ckpt.close()
  assert step == 1 and sorted(os.listdir(tmp_path)) == ["1", "2"]
