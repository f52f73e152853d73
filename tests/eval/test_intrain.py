"""Execution-based evaluation inside training (gift/eval/intrain.py, train.exec_eval_every):
pass@1 rows per spec kind at the right steps, a resumed run logs what an uninterrupted one does,
keep_best keeps the best parameters, a sandbox failure is reported and training goes on."""
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from gift import checkpoint as ck
from gift import config as gc
from gift import metrics as metrics_lib
from gift import train as train_lib
from gift.eval import arcade, intrain
from gift.synth import build

KINDS = ("none", "io_summary")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """A tiny GIFT dataset (3 generated contexts, one held out)."""
  c = gc.base_config()
  c.synth.num_bundled, c.synth.bundled_real, c.synth.intents_per_context = 3, False, 12
  c.synth.samples_per_intent, c.synth.validation_fraction = 2, 0.34
  c.execution.num_workers = 2
  work = str(tmp_path_factory.mktemp("gift_data"))
  return build.build(gc.finalize(c), work, progress=False)["dataset_dir"]


def _cfg(dataset, *extra):
  return gc.parse_args(_cfg_args(dataset, *extra))[0]


def _cfg_args(dataset, *extra):
  return ["--config=configs/test_tiny.py", "--config.data.source=tfds",
          f"--config.data.path={dataset}", "--config.data.context=none",
          "--config.data.seq_len=128", "--config.train.num_steps=6", "--config.train.log_every=1",
          "--config.train.lr=3e-3", "--config.checkpoint.every=3",
          "--config.checkpoint.async_save=False", "--config.train.progress=False",
          "--config.train.exec_eval_every=3", f"--config.train.exec_eval.spec_kinds={KINDS}",
          "--config.train.exec_eval.num_tasks=6", "--config.train.exec_eval.interim_tasks=4",
          "--config.train.exec_eval.max_new_tokens=12",
          "--config.train.exec_eval.batch_size=8", "--config.execution.num_workers=2", *extra]


def _evals(workdir):
  """step -> exec eval row (a step logged twice must agree)."""
  out = {}
  for row in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    if any(k.startswith("pass@1/") or k == "exec_eval/error" for k in row):
      row = {k: v for k, v in row.items() if not k.endswith("_s")}  # timings differ
      assert out.setdefault(row["step"], row) == row
  return out


def _completions(workdir, step):
  with open(os.path.join(workdir, intrain.RESULTS_DIR, f"step_{step}.json")) as f:
    return json.load(f)["completions"]


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory, repo_root):
  workdir = str(tmp_path_factory.mktemp("exec_eval_ref"))
  cwd = os.getcwd()
  os.chdir(repo_root)
  try:
    train_lib.train(_cfg(dataset, "--config.checkpoint.keep_best=pass@1/io_summary"), workdir)
  finally:
    os.chdir(cwd)
  return workdir


def test_rows_with_pass_at_1_per_spec_kind_at_the_eval_steps(reference):
  evals = _evals(reference)
  assert sorted(evals) == [3, 6]
  # interim_tasks=4: the step-3 evaluation samples an even spread of 4 of the 6 tasks; the last
  # one (step 6) all of them.
  for step, n in ((3, 4), (6, 6)):
    row = evals[step]
    assert {f"pass@1/{k}" for k in KINDS} <= set(row) and row["exec_eval/tasks"] == n
    assert all(0.0 <= row[f"pass@1/{k}"] <= 1.0 for k in KINDS)
    comps = _completions(reference, step)
    assert set(comps) == set(KINDS) and all(len(v) == n for v in comps.values())
  ids = {s: json.load(open(os.path.join(reference, intrain.RESULTS_DIR, f"step_{s}.json")))[
      "task_ids"] for s in (3, 6)}
  assert ids[3] == intrain.spread(ids[6], 4)
  assert all("loss" in r for r in metrics_lib.read_jsonl(os.path.join(reference, "metrics.jsonl"))
             if r["step"] in (3, 6) and "pass@1/none" not in r)
  best = json.load(open(os.path.join(reference, intrain.BEST_DIR, "best.json")))
  assert best["step"] in (3, 6) and best["metric"] == "pass@1/io_summary"
  assert not os.listdir(os.path.join(reference, "best_candidates"))


def test_a_resumed_run_logs_the_same_eval_numbers(reference, dataset, tmp_path, repo_root,
                                                   monkeypatch):
  monkeypatch.chdir(repo_root)
  workdir = str(tmp_path / "resumed")
  shutil.copytree(reference, workdir)
  # As if killed right after checkpoint 3 was saved, before its evaluation was logged.
  shutil.rmtree(os.path.join(workdir, "6"))
  shutil.rmtree(os.path.join(workdir, intrain.RESULTS_DIR))
  rows = [r for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if r["step"] < 3 or (r["step"] == 3 and "pass@1/none" not in r)]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  train_lib.train(_cfg(dataset), workdir)
  assert _evals(workdir) == _evals(reference)
  for step in (3, 6):
    assert _completions(workdir, step) == _completions(reference, step)


def test_keep_best_keeps_the_best_scoring_parameters(tmp_path):
  cfg = gc.parse_args(["--config=configs/test_tiny.py"])[0]
  model_cfg = gc.model_config(cfg)
  from gift.model import transformer
  keeper = intrain.BestKeeper(str(tmp_path), "pass@1/io_summary", model_cfg, None, True)
  params = {}
  for step, score in ((3, 0.25), (6, 0.5), (9, 0.375)):
    params[step] = transformer.init_params(model_cfg, jax.random.key(step))
    keeper.stage(step, params[step])
    keeper.resolve(step, {"pass@1/io_summary": score})
  keeper.stage(12, params[3])
  keeper.resolve(12, {"exec_eval/error": "sandbox died"})  # no score: never the best
  best = os.path.join(tmp_path, intrain.BEST_DIR)
  assert json.load(open(os.path.join(best, "best.json"))) == {
      "step": 6, "metric": "pass@1/io_summary", "value": 0.5}
  _, got, _ = ck.load_model(best)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params[6])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert os.listdir(os.path.join(tmp_path, "best_candidates")) == []
  # A later run of the same workdir starts from the recorded best.
  again = intrain.BestKeeper(str(tmp_path), "pass@1/io_summary", model_cfg, None, True)
  assert again.best["step"] == 6


def test_a_sandbox_failure_is_reported_and_training_continues(dataset, tmp_path, repo_root,
                                                              monkeypatch, capsys):
  monkeypatch.chdir(repo_root)
  real, calls = arcade.score, []

  def flaky(*a, **k):
    calls.append(1)
    if len(calls) == 1:
      raise RuntimeError("sandbox worker died")
    return real(*a, **k)

  monkeypatch.setattr(arcade, "score", flaky)
  workdir = str(tmp_path / "flaky")
  assert train_lib.train(_cfg(dataset), workdir)["step"] == 6
  evals = _evals(workdir)
  assert "sandbox worker died" in evals[3]["exec_eval/error"]
  assert "pass@1/none" in evals[6]
  assert "exec eval at step 3 failed" in capsys.readouterr().out


def test_bad_settings_fail_with_the_key(dataset):
  with pytest.raises(gc.ConfigError, match="keep_best"):
    gc.parse_args(["--config=configs/test_tiny.py", "--config.checkpoint.keep_best=pass@1/none"])
  with pytest.raises(intrain.ExecEvalError, match="spec_kinds"):
    intrain.ExecEval(_cfg(dataset, "--config.train.exec_eval.spec_kinds=('nope',)"), None, None,
                     None, "/tmp/x", False)


@pytest.mark.slow
def test_two_processes_sample_their_rows_and_process_0_logs_what_one_process_does(
    reference, dataset, tmp_path, repo_root):
  """Multi-host: two `gift train` processes (4 CPU devices each, gloo) run the same evaluation
  program over the global mesh; process 0 executes and logs. Same steps, task counts and
  completions as the one-process reference (8 devices, same mesh shape), and the best
  checkpoint is saved by both processes."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = str(tmp_path / "multi")
  args = [f"--workdir={workdir}", "--config.checkpoint.keep_best=pass@1/io_summary",
          "--config.distributed.initialize=yes",
          f"--config.distributed.coordinator_address=127.0.0.1:{port}",
          "--config.distributed.num_processes=2", "--config.distributed.cpu_collectives=gloo"]
  base = _cfg_args(dataset)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-m", "gift.cli", "train", *base, *args,
                             f"--config.distributed.process_id={i}"], cwd=repo_root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "process 0/2, 4 local / 8 global devices" in outs[0]
  assert "exec eval step 6" in outs[0] and "exec eval step" not in outs[1]
  multi, single = _evals(workdir), _evals(reference)
  assert sorted(multi) == sorted(single) == [3, 6]
  for step in (3, 6):
    assert multi[step]["exec_eval/tasks"] == single[step]["exec_eval/tasks"]
    got, want = _completions(workdir, step), _completions(reference, step)
    assert set(got) == set(want)
    pairs = [(g, w) for k in want for g, w in zip(got[k], want[k], strict=True)]
    # Cross-process all-reduces sum in another order (the losses agree to ~1e-5, not bitwise),
    # which may flip a near-tied greedy token; anything beyond that is a real difference.
    assert sum(g == w for g, w in pairs) >= 0.9 * len(pairs), pairs
  best = json.load(open(os.path.join(workdir, intrain.BEST_DIR, "best.json")))
  assert best["step"] in (3, 6)
