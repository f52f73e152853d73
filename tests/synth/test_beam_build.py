"""`gift build-data --runner beam`: the same dataset as the local runner (records per split in
the same order, the card), through failures: an element that fails once is retried with nothing
lost or duplicated; a pipeline that dies mid-run, restarted, re-executes only unfinished
contexts. Runs Beam's multi-process DirectRunner (FnApiRunner, 2 workers) on this machine."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gift import config as gc
from gift.data import records
from gift.synth import build

beam_build = pytest.importorskip("gift.synth.beam_build", reason="apache-beam is not installed")
pytest.importorskip("apache_beam", reason="apache-beam is not installed: pip install 'gift[beam]'")


def tiny_cfg():
  c = gc.base_config()
  c.synth.num_bundled, c.synth.bundled_real, c.synth.intents_per_context = 3, False, 6
  c.execution.num_workers = 1
  return gc.finalize(c)


def dataset(card, workdir):
  """Per split, the records in stored order (the workdir, which `load_code` names, as W)."""
  out = {}
  for split in records.splits(card["dataset_dir"]):
    rows = [dict(r) for r in records.load_split(card["dataset_dir"], split)]
    out[split] = json.loads(json.dumps(rows).replace(str(workdir), "W"))
  return out


def test_beam_equals_local_through_a_retry_and_a_restart(tmp_path, monkeypatch):
  cfg = tiny_cfg()
  local = build.build(cfg, str(tmp_path / "local"), progress=False)
  doomed, flaky = "bundled/employees", "bundled/sales"
  assert {doomed, flaky} <= {r["context_id"] for rows in dataset(local, tmp_path).values()
                             for r in rows}
  work = tmp_path / "beam"
  # 1. a worker keeps failing on one context: the pipeline dies after its retries
  monkeypatch.setenv("GIFT_BEAM_FAULT", f"{doomed}|99|{tmp_path / 'doomed.count'}")
  with pytest.raises(Exception, match="injected fault"):  # one in-process worker: no thread
    beam_build.build(cfg, str(work), pipeline_options="--direct_running_mode=in_memory")  # left
  shards = work / "shards"  # what finished before the failure (maybe nothing: bundles vary)
  finished = {p: os.stat(shards / p).st_mtime_ns for p in
              (os.listdir(shards) if shards.is_dir() else [])}
  assert "bundled__employees.json" not in finished
  assert len((tmp_path / "doomed.count").read_text().split()) == 3  # MAX_ATTEMPTS
  # 2. restarted, with a context that fails once: only the unfinished context runs again
  monkeypatch.setenv("GIFT_BEAM_FAULT", f"{flaky}|1|{tmp_path / 'flaky.count'}")
  card = beam_build.build(cfg, str(work))
  t = card.pop("timing")
  assert (t["executed_contexts"], t["resumed_contexts"], t["retries"]) == (
      3 - len(finished), len(finished), 1), t
  assert {p: os.stat(work / "shards" / p).st_mtime_ns for p in finished} == finished
  assert dataset(card, work) == dataset(local, tmp_path / "local")
  assert records.card(card["dataset_dir"]) == records.card(local["dataset_dir"])
  assert {k: v for k, v in card.items() if k not in ("dataset_dir", "jsonl")} == {
      k: v for k, v in local.items() if k not in ("dataset_dir", "jsonl", "timing")}


def test_default_install_does_not_import_beam():
  code = ("import sys, gift.cli, gift.synth.build, gift.eval.cli\n"
          "print(any(m.split('.')[0] == 'apache_beam' for m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env=dict(os.environ, PYTHONPATH=str(build.__file__).rsplit("/gift/", 1)[0]))
  assert out.stdout.strip() == "False", out


@pytest.mark.slow
def test_cli_on_the_bundled_default_equals_local_after_a_kill(tmp_path):
  """`gift build-data --runner beam` on configs/synth_default.py, SIGKILLed mid-run and
  restarted, gives the local runner's dataset and card."""
  repo = str(build.__file__).rsplit("/gift/", 1)[0]
  env = dict(os.environ, PYTHONPATH=repo)
  base = [sys.executable, "-m", "gift.cli", "build-data", "--config",
          os.path.join(repo, "configs", "synth_default.py"), "--quiet"]
  subprocess.run(base + ["--workdir", str(tmp_path / "local")], check=True, env=env,
                 capture_output=True)
  beam = base + ["--workdir", str(tmp_path / "beam"), "--runner", "beam"]
  proc = subprocess.Popen(beam, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  shards = tmp_path / "beam" / "shards"
  deadline = time.time() + 600
  while time.time() < deadline and len(os.listdir(shards) if shards.is_dir() else []) < 10:
    time.sleep(0.5)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  done = {p for p in os.listdir(shards) if p.endswith(".json")}
  assert 10 <= len(done) < 26  # the default: 24 generated contexts + 2 matplotlib CSVs
  out = subprocess.run(beam, check=True, env=env, capture_output=True, text=True)
  card = json.loads((tmp_path / "beam" / "card.json").read_text())
  local = json.loads((tmp_path / "local" / "card.json").read_text())
  assert card["timing"]["resumed_contexts"] == len(done), out.stdout
  assert card["timing"]["executed_contexts"] == local["contexts"]["used"] - len(done)
  assert dataset(card, tmp_path / "beam") == dataset(local, tmp_path / "local")
  assert records.card(card["dataset_dir"]) == records.card(local["dataset_dir"])
