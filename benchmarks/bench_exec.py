"""Execution throughput: gift's sandbox vs one cold `python -c` subprocess per job.

    python benchmarks/bench_exec.py [--jobs 400] [--naive_jobs 20] [--workers 0]

Both sides run the same small pandas snippets (10 notebook contexts x N candidate snippets,
result compared in the caller). The peer is the common human-eval style harness: a fresh
interpreter per job (`subprocess.run([python, "-c", context + code], timeout=...)`), which pays
the interpreter start and the pandas import every time and isolates nothing beyond the process.
gift runs with every isolation layer the machine offers (logged at start-up). Prints jobs/s of
each, jobs/s per core for gift and the ratio.
"""
import argparse
import logging
import os
import subprocess
import sys
import time

from gift.execution.sandbox import Job, Sandbox

CONTEXT = ("import pandas as pd\nimport numpy as np\n"
           "df = pd.DataFrame({{'g': list('abcd') * 25, 'x': np.arange(100) * {k}, "
           "'y': np.linspace(0, 1, 100)}})\n")
SNIPPETS = [
    "result = df.groupby('g').x.sum()",
    "result = df[df.x > 50].sort_values('y', ascending=False).head(5)",
    "result = df.assign(z=df.x * df.y).z.mean()",
    "result = df.pivot_table(index='g', values='y', aggfunc='max')",
    "result = df.g.value_counts().to_dict()",
]


def jobs(n: int) -> list[Job]:
  return [Job(CONTEXT.format(k=i % 10), SNIPPETS[i % len(SNIPPETS)]) for i in range(n)]


def naive(job: Job) -> bool:
  code = job.context_code + job.code + "\nprint(repr(result))"
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
  return proc.returncode == 0


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--jobs", type=int, default=400)
  p.add_argument("--naive_jobs", type=int, default=20)
  p.add_argument("--workers", type=int, default=0, help="0 = one per core")
  args = p.parse_args()
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  workers = args.workers or os.cpu_count()

  t0 = time.perf_counter()
  ok = sum(naive(j) for j in jobs(args.naive_jobs))
  naive_rate = args.naive_jobs / (time.perf_counter() - t0)
  assert ok == args.naive_jobs, f"naive peer: only {ok}/{args.naive_jobs} jobs ran"

  with Sandbox(num_workers=workers) as sandbox:
    sandbox.run_many(jobs(2 * workers))  # zygotes warm; contexts are measured below
    t0 = time.perf_counter()
    verdicts = sandbox.run_many(jobs(args.jobs))
    gift_rate = args.jobs / (time.perf_counter() - t0)
    layers = ", ".join(k for k, v in sandbox.layers.items() if v)
  bad = [v for v in verdicts if v.status != "ok"]
  assert not bad, f"{len(bad)} gift jobs failed, e.g. {bad[0]}"
  # The naive peer is sequential (one process per job); per core it uses one core.
  print(f"naive python -c per job : {naive_rate:7.2f} jobs/s (1 process at a time)")
  print(f"gift sandbox            : {gift_rate:7.2f} jobs/s on {workers} workers "
        f"= {gift_rate / workers:.2f} jobs/s per core  [layers: {layers}]")
  print(f"speed-up per core       : {gift_rate / workers / naive_rate:7.1f}x   "
        f"(total {gift_rate / naive_rate:.1f}x)")


if __name__ == "__main__":
  main()
