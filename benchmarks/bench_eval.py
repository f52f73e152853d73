"""Evaluation throughput: DS-1000 pandas problems checked per second, gift's three sandbox jobs
per candidate vs upstream's one fresh interpreter per candidate (`python -c program`).

  python benchmarks/bench_eval.py --runtime /tmp/ds1000-runtime [--limit 291] [--workers 2]

Both score the reference solutions (each problem once) under the same interpreter; prints a
BENCHMARKS.md-ready table row per method.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import tempfile
import time

from gift.eval import ds1000
from gift.execution import runtime
from gift.execution.sandbox import Sandbox


def gift_rate(problems, python: str, workers: int) -> tuple[float, int]:
  t0 = time.perf_counter()
  with Sandbox(num_workers=workers, python=python, timeout_s=60, memory_mb=4096) as sb:
    cases = ds1000.generate_cases(sb, problems)
    outs = ds1000.score(sb, problems, {p.problem_id: [p.reference_code] for p in problems},
                        cases)
  return time.perf_counter() - t0, sum(o[0].passed for o in outs.values())


def upstream_rate(problems, python: str, workers: int) -> tuple[float, int]:
  def one(p) -> bool:
    program = (p.code_context + f"\ncode = {p.reference_code!r}\ntest_execution(code)\n"
               + ("test_string(code)\n" if p.has_test_string else ""))
    with tempfile.TemporaryDirectory() as d:
      return subprocess.run([python, "-c", program], cwd=d, capture_output=True,
                            timeout=120).returncode == 0

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    passed = sum(pool.map(one, problems))
  return time.perf_counter() - t0, passed


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--runtime", default="", help="pinned runtime dir (default: this interpreter)")
  p.add_argument("--dataset", default=ds1000.DEFAULT_PATH)
  p.add_argument("--limit", type=int, default=0)
  p.add_argument("--workers", type=int, default=2)
  args = p.parse_args()
  problems = ds1000.load(args.dataset)
  problems = problems[:args.limit] if args.limit else problems
  rt = runtime.resolve(args.runtime)
  print(f"runtime: {rt.describe()}; {len(problems)} problems; {args.workers} workers")
  print("| method | problems | passed | seconds | problems/s |\n|---|---|---|---|---|")
  for name, fn in [("gift sandbox (3 jobs/candidate)", gift_rate),
                   ("upstream subprocess per candidate", upstream_rate)]:
    secs, passed = fn(problems, rt.python, args.workers)
    print(f"| {name} | {len(problems)} | {passed} | {secs:.1f} | {len(problems) / secs:.2f} |")


if __name__ == "__main__":
  main()
