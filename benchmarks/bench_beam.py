"""Beam overhead on one machine: the local runner vs Beam's multi-process DirectRunner (2
workers), same config, same run, one process tree: `gift build-data` examples/s and
`gift eval ds1000 --answers` problems/s, each side a child process of this script.

  python benchmarks/bench_beam.py [--config configs/synth_default.py] [--runtime RT]
      [--answers ../shared/datasets/ds1000/answers/codex002-pandas.jsonl] [--limit 0]

Both builds must give the same dataset (records per split, in order, and the card); both
evaluations the same pass counts: the script checks and says so. Prints BENCHMARKS.md-ready rows
with the ratios, the load average and the measured f32 matmul peak.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from gift.data import records
from gift.eval import ds1000

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def _gift(args: list[str]) -> float:
  """Runs `gift ARGS` as a child process; returns its wall seconds."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "gift.cli", *args], env=env, cwd=REPO,
                        capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f"gift {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
  return time.perf_counter() - t0


def _dataset(workdir: str) -> tuple[dict, dict]:
  path = os.path.join(workdir, "tfds")
  rows = {s: json.loads(json.dumps([dict(r) for r in records.load_split(path, s)])
                        .replace(workdir, "W")) for s in records.splits(path)}
  return rows, records.card(path)


def bench_build(config: str, overrides: list[str], root: str) -> list[list]:
  rows, datasets = [], {}
  for runner in ("local", "beam"):
    work = os.path.join(root, f"build_{runner}")
    secs = _gift(["build-data", "--config", config, "--workdir", work, "--quiet", "--runner",
                  runner, *overrides])
    with open(os.path.join(work, "card.json")) as f:
      kept = json.load(f)["kept"]
    datasets[runner] = _dataset(work)
    rows.append([f"gift build-data --runner {runner}", kept, f"{secs:.1f}",
                 f"{kept / secs:.2f}"])
  same = datasets["local"] == datasets["beam"]
  overhead = float(rows[1][2]) / float(rows[0][2]) - 1
  rows.append([f"beam / local: {100 * overhead:+.1f}% time (target < +25%); identical "
               f"dataset and card: {same}", "", "", ""])
  return rows


def bench_eval(answers: str, runtime: str, limit: int, root: str) -> list[list]:
  rows, solved = [], {}
  n = len(ds1000.load(ds1000.DEFAULT_PATH))
  n = min(n, limit) if limit else n
  for runner in ("local", "beam"):
    work = os.path.join(root, f"eval_{runner}")
    extra = ["--runtime", runtime] if runtime else []
    extra += ["--limit", str(limit)] if limit else []
    secs = _gift(["eval", "ds1000", "--answers", answers, "--workdir", work, "--no_progress",
                  "--runner", runner, *extra])
    with open(os.path.join(work, "results.json")) as f:
      res = json.load(f)
    solved[runner] = sum(c for _, c in res["runs"]["answers"]["per_problem"].values())
    rows.append([f"gift eval ds1000 --answers --runner {runner}", n, f"{secs:.1f}",
                 f"{n / secs:.2f}", f"{solved[runner]}/{n} solved, oracle "
                 f"{res['oracle']['passed']}/{res['oracle']['total']}"])
  ratio = float(rows[0][2]) / float(rows[1][2])
  rows.append([f"beam / local problems/s: {ratio:.2f}x; same pass counts: "
               f"{solved['local'] == solved['beam']}", "", "", "", ""])
  return rows


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default=os.path.join(REPO, "configs", "synth_default.py"))
  p.add_argument("--override", action="append", default=[],
                 help="--config.KEY=VALUE for both builds (repeatable)")
  p.add_argument("--answers", default=os.path.join(os.path.dirname(ds1000.DEFAULT_PATH),
                                                   "answers", "codex002-pandas.jsonl"))
  p.add_argument("--runtime", default="", help="pinned DS-1000 runtime (default: this python)")
  p.add_argument("--limit", type=int, default=0, help="DS-1000 problems (0: all 291)")
  p.add_argument("--skip_eval", action="store_true")
  args = p.parse_args()
  print(common.header(("apache_beam", "tensorflow_datasets", "pandas")))
  peak = common.matmul_peak(1024, 1.0, ("jax",))["jax"]
  print(f"- f32 matmul peak (JAX, 1024^3): {peak / 1e9:.0f} GFLOP/s, measured now")
  print("- both runners in child processes of this script, one after the other; Beam: the "
        "multi-process DirectRunner (FnApiRunner), 2 workers")
  with tempfile.TemporaryDirectory(prefix="bench_beam-") as root:
    print("\n" + common.table(["build", "kept examples", "seconds", "examples/s"],
                              bench_build(args.config, args.override, root)))
    if not args.skip_eval:
      print("\n" + common.table(["evaluation", "problems", "seconds", "problems/s", "result"],
                                bench_eval(args.answers, args.runtime, args.limit, root)))
  print(f"- load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
  main()
