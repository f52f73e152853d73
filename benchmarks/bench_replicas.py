"""gift's serving engine as one process on all cores vs N replicas, each pinned to its own cores.

Data-parallel replicas (vLLM's and SGLang's `--data-parallel-size`) would let a server overlap
one replica's memory-bound attention with another's matmuls, which one XLA:CPU process does not
do: it runs a computation's independent operations one after another (BENCHMARKS.md, Round 12).
This measures what they would give before any server is built on them: the benchmark model of
bench_serve.py, the same closed-loop load (`--requests` requests, `--concurrency` clients,
prompts and new tokens from bench_serve's online distribution), served either by one engine
(`--max_batch` slots, every core) or by `--replicas` engines in their own processes, each with
max_batch / replicas slots and clients and its share of the requests (round-robin), pinned to
its own cores before JAX starts (so XLA's pool and gift's kernel take those cores only). The
replicas start together; their tokens/s is all their tokens over the slowest one's wall time.
The two setups alternate, one process set per round (these VMs drift by up to 2x within
minutes); compilations are shared through a persistent compile cache in the work folder.

  python benchmarks/bench_replicas.py --keep SERVE_WORKDIR          # 2 replicas, 3 rounds
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT = "RESULT "


def child(args) -> None:
  """One engine: warm up, say ready, wait for `go`, serve its share, print its result."""
  os.sched_setaffinity(0, [int(c) for c in args.cores.split(",")])  # before JAX's pool exists
  sys.path.insert(0, HERE)
  import bench_serve
  import numpy as np

  from gift.serve import engine as engine_lib
  n, conc = args.requests, args.concurrency
  prompts = bench_serve.make_prompts(n, *args.prompt_len, seed=100 + conc)
  rng = np.random.default_rng(200 + conc)
  max_tokens = rng.integers(args.new_tokens[0], args.new_tokens[1] + 1, size=n).tolist()
  mine = list(range(args.part, n, args.parts))
  eng = engine_lib.Engine.from_checkpoint(
      args.ckpt, max_batch=args.max_batch, decode_steps=args.decode_steps,
      max_seq_len=args.prompt_len[1] + args.new_tokens[1] + 16)
  eng.warmup()
  eng.start()

  def request(i):
    i = mine[i]
    [[c]] = eng.generate([prompts[i]], engine_lib.SamplingParams(
        max_tokens=max_tokens[i], temperature=0.0, ignore_eos=True))
    if len(c.ids) != max_tokens[i]:
      raise RuntimeError(f"expected {max_tokens[i]} tokens, got {len(c.ids)}")
    return 0.0, 0.0, len(c.ids)

  clients = max(1, conc // args.parts)
  bench_serve.closed_loop(min(clients, len(mine)), clients, request)  # host-side warm-up
  open(os.path.join(args.sync, f"ready{args.part}"), "w").close()
  while not os.path.exists(os.path.join(args.sync, "go")):
    time.sleep(0.005)
  results, errors, wall = bench_serve.closed_loop(len(mine), clients, request)
  eng.stop()
  if errors:
    raise SystemExit(f"{len(errors)} of {len(mine)} requests failed, the first: {errors[0]}")
  print(RESULT + json.dumps({"tokens": sum(r[2] for r in results), "wall": wall}), flush=True)


def run_setup(args, ckpt: str, work: str, parts: int) -> tuple[float, list[float]]:
  """One round of one setup: (tokens/s over the slowest process, each process's wall)."""
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) % parts:
    raise SystemExit(f"--replicas {parts} does not divide this process's {len(cores)} cores")
  per = len(cores) // parts
  sync = tempfile.mkdtemp(prefix="sync_", dir=work)
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(work, "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  procs = []
  for part in range(parts):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--ckpt", ckpt,
           "--part", str(part), "--parts", str(parts), "--sync", sync,
           "--cores", ",".join(map(str, cores[part * per:(part + 1) * per])),
           "--max_batch", str(args.max_batch // parts), "--requests", str(args.requests),
           "--concurrency", str(args.concurrency), "--decode_steps", str(args.decode_steps),
           "--prompt_len", *map(str, args.prompt_len), "--new_tokens", *map(str, args.new_tokens)]
    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env))
  try:
    while not all(os.path.exists(os.path.join(sync, f"ready{i}")) for i in range(parts)):
      for p in procs:
        if p.poll() is not None:
          raise RuntimeError(f"a replica exited ({p.returncode}) during its warm-up")
      time.sleep(0.05)
    open(os.path.join(sync, "go"), "w").close()
    outs = [p.communicate(timeout=3600)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  got = []
  for p, out in zip(procs, outs):
    lines = [x for x in out.splitlines() if x.startswith(RESULT)]
    if p.returncode or not lines:
      raise RuntimeError(f"a replica failed (exit {p.returncode}); its output:\n{out[-2000:]}")
    got.append(json.loads(lines[-1][len(RESULT):]))
  walls = [g["wall"] for g in got]
  return sum(g["tokens"] for g in got) / max(walls), walls


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--replicas", type=int, default=2)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--requests", type=int, default=128)
  p.add_argument("--concurrency", type=int, default=32)
  p.add_argument("--max_batch", type=int, default=32, help="slots of the one engine (split)")
  p.add_argument("--decode_steps", type=int, default=8)
  p.add_argument("--prompt_len", type=int, nargs=2, default=(16, 400))
  p.add_argument("--new_tokens", type=int, nargs=2, default=(64, 128))
  p.add_argument("--keep", default="", help="work folder (model, compile cache) to reuse")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  for name in ("ckpt", "sync", "cores"):
    p.add_argument(f"--{name}", default="", help=argparse.SUPPRESS)
  p.add_argument("--part", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--parts", type=int, default=1, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    return child(args)
  if args.replicas < 2 or args.rounds < 1 or args.max_batch % args.replicas:
    p.error("expected --replicas >= 2 dividing --max_batch, and --rounds >= 1")
  sys.path.insert(0, HERE)
  import bench_serve
  import common
  work = args.keep or tempfile.mkdtemp(prefix="bench_replicas_")
  os.makedirs(work, exist_ok=True)
  ckpt = os.path.join(work, "gift_ckpt")
  if not os.path.exists(os.path.join(ckpt, "model_config.json")):
    bench_serve.build_model(os.path.join(work, "hf"), ckpt)
  print(common.header(("jax", "jaxlib")))
  common.yardsticks()  # prints the matmul peak and memory bandwidth (the header, the load)
  print()
  setups = {"one engine": 1, f"{args.replicas} replicas": args.replicas}
  got = {name: [] for name in setups}
  print("| round | setup | output tok/s | wall per process (s) |\n|---|---|---|---|")
  for r in range(args.rounds):
    order = list(setups.items())
    for name, parts in order[r % 2:] + order[:r % 2]:
      tok_s, walls = run_setup(args, ckpt, work, parts)
      got[name].append(tok_s)
      print(f"| {r + 1} | {name} | {tok_s:,.0f} | {' / '.join(f'{w:.2f}' for w in walls)} |",
            flush=True)
  med = {name: statistics.median(v) for name, v in got.items()}
  one, rep = med.values()
  print(f"\n- medians over {args.rounds} rounds: " +
        ", ".join(f"{n} {v:,.0f} tok/s" for n, v in med.items()) +
        f"; replicas / one engine: **{rep / one:.2f}x**")
  print(f"- load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
  main()
