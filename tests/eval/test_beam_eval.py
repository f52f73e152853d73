"""`gift eval ds1000|arcade --runner beam`: the same pass flags and pass@k as the local runner,
from an answers file and from completions sampled in the pipeline (RunInference); the full
codex002 re-score (77/291) in the pinned runtime is `slow`."""
import json
import os

import jax
import pytest

from gift import checkpoint
from gift.eval import cli, ds1000
from gift.model import presets, transformer

pytest.importorskip("apache_beam", reason="apache-beam is not installed: pip install 'gift[beam]'")


def results(work):
  out = json.loads((work / "results.json").read_text())
  return out["runs"], out["oracle"], out["notes"]


def test_answers_scored_on_beam_equal_local(tmp_path, shared_dir):
  data = str(shared_dir / "datasets" / "ds1000" / "ds1000_pandas.jsonl")
  answers = tmp_path / "answers.jsonl"
  with open(answers, "w") as f:  # two samples per problem: the reference, then a wrong one
    for p in ds1000.load(data, range(4)):
      for code in (p.reference_code, "result = None\n") if p.problem_id % 3 else (
          p.reference_code,):
        f.write(json.dumps({"code": code, "metadata": {"problem_id": p.problem_id}}) + "\n")
  common = ["ds1000", "--dataset", data, "--answers", str(answers), "--limit", "4",
            "--no_progress", "--num_workers", "1", "--ks", "1,2"]
  assert cli.main(common + ["--workdir", str(tmp_path / "local")]) == 0
  assert cli.main(common + ["--workdir", str(tmp_path / "beam"), "--runner", "beam"]) == 0
  local, beam = results(tmp_path / "local"), results(tmp_path / "beam")
  assert beam == local
  assert local[0]["answers"]["per_problem"]["1"] == [2, 1]
  assert not [f for f in os.listdir(tmp_path / "beam") if f.startswith(".beam-eval")]


@pytest.mark.slow
def test_sampling_in_the_pipeline_equals_local(tmp_path, shared_dir):
  """A tiny random checkpoint sampled at temperature 0.8 through RunInference gives the local
  path's completions (same chunks, same seeds), hence the same per-problem counts."""
  cfg = presets.get_preset("test_tiny", vocab_size=259)
  ckpt = str(tmp_path / "ckpt")
  checkpoint.save_model(ckpt, cfg, transformer.init_params(cfg, jax.random.key(0)))
  data = str(shared_dir / "datasets" / "ds1000" / "ds1000_pandas.jsonl")
  common = ["ds1000", "--dataset", data, "--checkpoint", ckpt, "--n", "2", "--temperature",
            "0.8", "--max_new_tokens", "6", "--limit", "9", "--spec_kind", "none,typedesc",
            "--ks", "1,2", "--no_progress", "--num_workers", "1"]
  assert cli.main(common + ["--workdir", str(tmp_path / "local")]) == 0
  assert cli.main(common + ["--workdir", str(tmp_path / "beam"), "--runner", "beam"]) == 0
  assert results(tmp_path / "beam") == results(tmp_path / "local")


@pytest.mark.slow
def test_codex002_rescored_on_beam_in_the_pinned_runtime(tmp_path, shared_dir):
  """`gift eval ds1000 --answers codex002 --runner beam` gives 77/291, as published (the
  runtime is built from PyPI unless GIFT_DS1000_RUNTIME names one, as in test_runtime.py)."""
  from gift.execution import runtime

  rt_dir = os.environ.get("GIFT_DS1000_RUNTIME") or str(tmp_path / "rt")
  if not os.path.isfile(os.path.join(rt_dir, runtime.MARKER)):
    runtime.create(rt_dir, "ds1000", quiet=True)
  answers = shared_dir / "datasets" / "ds1000" / "answers" / "codex002-pandas.jsonl"
  work = tmp_path / "work"
  assert cli.main(["ds1000", "--answers", str(answers), "--runtime", rt_dir, "--workdir",
                   str(work), "--no_progress", "--runner", "beam"]) == 0
  out = json.loads((work / "results.json").read_text())
  assert out["oracle"] == {"passed": 291, "total": 291, "rate": 1.0}
  assert sum(c for _, c in out["runs"]["answers"]["per_problem"].values()) == 77


@pytest.mark.slow
def test_arcade_answers_on_beam_equal_local(tmp_path):
  """ARCADE episodes grouped by notebook: the same flags as the local runner."""
  import types

  import pandas as pd

  from gift.eval import arcade

  df = pd.DataFrame({"region": ["n", "s", "n"], "units": [1, 2, 3]})
  recs, ctxs = [], {}
  for nb in ("csv/a", "csv/b"):
    ctxs[nb] = types.SimpleNamespace(code="import pandas as pd\ndf = df.copy()", inputs={"df": df})
    for i, code in enumerate(["result = df.groupby('region')['units'].sum()", "len(df)"]):
      recs.append({"id": f"{nb}/{i}/0", "context_id": nb, "context": "", "intent": f"task {i}",
                   "code": code, "spec_typedesc": "", "spec_io_examples": "",
                   "spec_io_summary": "", "output_repr": "", "variables": "{}",
                   "meta": json.dumps({"output_var": "result" if i == 0 else None})})
  episodes = str(tmp_path / "episodes.json")
  arcade.build_episodes(recs, ctxs, episodes)
  answers = tmp_path / "answers.jsonl"
  with open(answers, "w") as f:
    for nb in ("csv/a", "csv/b"):
      for line in ({"task_id": f"{nb}/0", "code": "result = df.groupby('region').units.sum()"},
                   {"task_id": f"{nb}/0", "code": "result = 0"},
                   {"task_id": f"{nb}/1", "code": "df.shape[0]"}):
        f.write(json.dumps(line) + "\n")
  common = ["arcade", "--dataset", episodes, "--answers", str(answers), "--no_progress",
            "--num_workers", "1", "--ks", "1,2"]
  assert cli.main(common + ["--workdir", str(tmp_path / "local")]) == 0
  assert cli.main(common + ["--workdir", str(tmp_path / "beam"), "--runner", "beam"]) == 0
  local, beam = results(tmp_path / "local"), results(tmp_path / "beam")
  assert beam == local and local[0]["answers"]["per_problem"]["csv/a/0"] == [2, 1]
