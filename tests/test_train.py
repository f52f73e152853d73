"""The trainer end to end on CPU: loss falls, kill -9 exact resume, NaN stop, init_from, multi-host.

One uninterrupted reference run (in this process, 8 CPU devices) is shared by the resume and the
multi-process tests; the others are real `gift train` subprocesses.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gift import checkpoint as ck
from gift import config as gc
from gift import metrics as metrics_lib
from gift import train as train_lib

STEPS = 24


def _write_data(path, n=300, seed=0):
  """A small learnable task: the completion is a function of the prompt."""
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for _ in range(n):
      a, b = (int(x) for x in rng.integers(0, 50, 2))
      f.write(json.dumps({"prompt": f"# add {a} and {b}\n", "completion": f"r = {a} + {b}\n"})
              + "\n")
  return str(path)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  """A persistent compilation cache shared by the subprocesses of one test (same programs)."""
  return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
  return _write_data(tmp_path_factory.mktemp("data") / "train.jsonl")


def _args(data_path, workdir, *extra):
  return ["--config=configs/test_tiny.py", f"--workdir={workdir}",
          "--config.data.source=jsonl", f"--config.data.path={data_path}",
          "--config.data.seq_len=64", f"--config.train.num_steps={STEPS}",
          "--config.train.log_every=1", "--config.train.lr=3e-3",
          "--config.checkpoint.every=4", "--config.checkpoint.async_save=True", *extra]


def _losses(workdir):
  """Per-step training losses; a step logged twice (before a kill and after) must agree."""
  out = {}
  for row in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    if "loss" in row:
      assert out.setdefault(row["step"], row["loss"]) == row["loss"], row
  return out


def _params(workdir):
  _, params, _ = ck.load_model(workdir)
  return jax.tree.map(np.asarray, params)


@pytest.fixture(scope="module")
def reference(data_path, tmp_path_factory, repo_root):
  """An uninterrupted run, in this process."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  cwd = os.getcwd()
  os.chdir(repo_root)
  try:
    assert train_lib.main(_args(data_path, workdir)) == 0
  finally:
    os.chdir(cwd)
  return workdir


def _gift_train(repo_root, args, env_extra=None, **kw):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.Popen([sys.executable, "-m", "gift.cli", "train", *args], cwd=repo_root,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          **kw)


def test_loss_falls_and_workdir_is_a_gift_checkpoint(reference):
  losses = _losses(reference)
  assert sorted(losses) == list(range(1, STEPS + 1))
  assert np.mean([losses[s] for s in range(STEPS - 3, STEPS + 1)]) < 0.6 * losses[1]
  rows = metrics_lib.read_jsonl(os.path.join(reference, "metrics.jsonl"))
  assert all(k in rows[-1] for k in ("tokens_per_s_per_device", "tflops_per_s_per_device",
                                     "mfu", "lr", "grad_norm", "step_time_s"))
  assert rows[-1]["mfu"] is None  # a CPU has no known peak: null, not a guess
  model_cfg, params, _ = ck.load_model(reference)
  assert model_cfg.d_model == 64 and params["embedder"]["embedding"].shape == (512, 64)
  assert json.load(open(os.path.join(reference, "config.json")))["train"]["num_steps"] == STEPS
  assert os.listdir(os.path.join(reference, "tensorboard"))


def test_kill_9_then_restart_is_bitwise_identical(reference, data_path, tmp_path, repo_root,
                                                  compile_cache):
  workdir = str(tmp_path / "run")
  proc = _gift_train(repo_root, _args(data_path, workdir), compile_cache)
  deadline = time.time() + 240
  # Kill at once after the first finalized checkpoint: wherever the run is then (mid-step,
  # mid-save of the next checkpoint, mid-write of metrics.jsonl).
  while time.time() < deadline and proc.poll() is None:
    if any(d.isdigit() for d in (os.listdir(workdir) if os.path.isdir(workdir) else ())):
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  out = proc.communicate()[0]
  assert proc.returncode == -signal.SIGKILL, f"run ended before the kill:\n{out[-2000:]}"
  assert max(_losses(workdir)) < STEPS

  proc = _gift_train(repo_root, _args(data_path, workdir), compile_cache)
  out = proc.communicate(timeout=240)[0]
  assert proc.returncode == 0, out[-3000:]
  assert "resumed from step" in out
  assert _losses(workdir) == _losses(reference)  # every step, bitwise (floats compare exactly)
  for a, b in zip(jax.tree.leaves(_params(workdir)), jax.tree.leaves(_params(reference))):
    np.testing.assert_array_equal(a, b)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_with_four_devices_each_match_one_process(reference, data_path, tmp_path,
                                                                repo_root):
  workdir, port = str(tmp_path / "multi"), _free_port()
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
  procs = [_gift_train(repo_root, _args(
      data_path, workdir, "--config.distributed.initialize=yes",
      f"--config.distributed.coordinator_address=127.0.0.1:{port}",
      "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
      "--config.distributed.cpu_collectives=gloo"), env) for i in range(2)]
  outs = [p.communicate(timeout=900)[0] for p in procs]  # a loaded 2-core host is slow
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "process 0/2, 4 local / 8 global devices" in outs[0]
  multi, single = _losses(workdir), _losses(reference)
  assert sorted(multi) == sorted(single)
  np.testing.assert_allclose([multi[s] for s in sorted(multi)],
                             [single[s] for s in sorted(single)], rtol=2e-5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_path, tmp_path, repo_root,
                                                           monkeypatch, capsys):
  monkeypatch.chdir(repo_root)
  args = _args(data_path, str(tmp_path), "--config.train.lr=1e35", "--config.train.warmup_steps=0",
               "--config.checkpoint.every=1", "--config.train.grad_clip=0.0")
  assert train_lib.main(args) == 1
  err = capsys.readouterr().err
  assert "not finite; stopping" in err and "last good checkpoint" in err
  params = _params(str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_init_from_checks_the_model_config_and_starts_from_its_weights(reference, data_path,
                                                                       tmp_path, repo_root,
                                                                       monkeypatch):
  monkeypatch.chdir(repo_root)
  with pytest.raises(ValueError, match=r"config.model.d_model=32 but the checkpoint has d_model"):
    train_lib.train(gc.parse_args(_args(data_path, "x", f"--config.init_from={reference}",
                                        "--config.model.d_model=32"))[0], str(tmp_path / "a"))
  args = _args(data_path, str(tmp_path / "b"), f"--config.init_from={reference}",
               "--config.train.num_steps=1", "--config.seed=5")
  assert train_lib.main(args) == 0
  assert _losses(str(tmp_path / "b"))[1] < 0.8 * _losses(reference)[1]


@pytest.mark.parametrize("spec", ["configs/test_tiny.py", "configs/codegemma_2b_gpu.py",
                                  "configs/codegemma_2b_gpu.py:7b", "configs/paper_62b_tpu.py"])
def test_experiment_configs_load_with_the_open_recipe(repo_root, spec):
  cfg, _ = gc.parse_args([f"--config={repo_root / spec}"])
  assert cfg.train.batch_size % cfg.train.grad_accum == 0
  if "test_tiny" not in spec:
    assert cfg.train.lr == 2e-5 and cfg.train.warmup_steps == 10 and cfg.data.seq_len == 2048
