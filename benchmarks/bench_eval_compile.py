"""The quickstart's held-out sampling from a cold process, compiles included: the decode loop
compiled per prompt bucket (before) vs per KV-cache length (after, `gift.sample.CACHE_LENGTHS`).

  python benchmarks/bench_eval_compile.py --workdir gift_quickstart [--rounds 1]

Uses a `gift quickstart` workdir's model (train/) and held-out tasks (train/exec_eval/tasks.json)
and samples what the quickstart samples: greedy, one sample per prompt, on every task with each
spec kind (the in-training evaluation), then 5 samples at temperature 0.8 / top-p 0.95 on 96 of
them (the eval stage); max 64 new tokens, batch 32. Each variant runs in a fresh child process (a
cold jit cache, as in a new `gift quickstart`), the variants alternating for `--rounds`; prints
wall and CPU seconds, the number of XLA compilations and their time (jax.monitoring), and
whether the greedy completions are identical.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

VARIANTS = ("per_bucket", "per_cache_length")
RESULT = "RESULT "  # the child answers on a stdout line with this prefix


def child(workdir: str, variant: str) -> dict:
  import collections

  import jax

  import gift.sample as sample_lib
  from gift.data import prompts as prompts_lib
  from gift.eval import arcade, intrain

  compile_s, compiles = collections.Counter(), collections.Counter()

  def listen(name, secs, **_):
    if name.startswith("/jax/core/compile/"):
      compile_s[name.rsplit("/", 1)[-1]] += secs
      compiles[name.rsplit("/", 1)[-1]] += 1

  jax.monitoring.register_event_duration_secs_listener(listen)
  if variant == "per_bucket":
    sample_lib.CACHE_LENGTHS = ()  # the cache is prompt bucket + max_new_tokens, as before
  ckpt = os.path.join(workdir, "train")
  tasks = arcade.tasks(arcade.load(os.path.join(ckpt, intrain.RESULTS_DIR, intrain.TASKS_FILE)),
                       context="none")
  sampler = sample_lib.Sampler.from_checkpoint(ckpt, batch_size=32)
  t, w = time.process_time(), time.perf_counter()
  greedy = []
  for kind in prompts_lib.SPEC_KINDS:
    greedy += sampler.generate([x.prompt(kind) for x in tasks], max_new_tokens=64,
                               stop=prompts_lib.STOP)
  for kind in prompts_lib.SPEC_KINDS:
    sampler.generate([x.prompt(kind) for x in intrain.spread(tasks, 96)], n=5, temperature=0.8,
                     top_p=0.95, max_new_tokens=64, stop=prompts_lib.STOP)
  return dict(wall_s=time.perf_counter() - w, cpu_s=time.process_time() - t,
              compiles=compiles["backend_compile_duration"],
              compile_s=compile_s["backend_compile_duration"] + compile_s["jaxpr_trace_duration"]
              + compile_s["jaxpr_to_mlir_module_duration"], greedy=greedy,
              prompts=4 * len(tasks))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a finished gift quickstart workdir")
  p.add_argument("--rounds", type=int, default=1)
  p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    print(RESULT + json.dumps(child(args.workdir, args.child)), flush=True)
    return

  from gift import flops
  print(common.header(("jax", "jaxlib")))
  print(f"- f32 matmul peak (XLA, 2048^3): {flops.measure_matmul_peak() / 1e9:.0f} GFLOP/s, "
        f"load average {os.getloadavg()[0]:.1f}")
  runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
  for r in range(args.rounds):
    for v in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
      out = subprocess.run([sys.executable, __file__, "--workdir", args.workdir, "--child", v],
                           capture_output=True, text=True, check=True).stdout
      runs[v].append(json.loads(next(line for line in out.splitlines()
                                     if line.startswith(RESULT))
                                [len(RESULT):]))
  med = {v: {k: common.median([r[k] for r in rs]) for k in ("wall_s", "cpu_s", "compiles",
                                                            "compile_s")}
         for v, rs in runs.items()}
  same = sum(a == b for a, b in zip(runs[VARIANTS[0]][0]["greedy"], runs[VARIANTS[1]][0]["greedy"]))
  print(f"\n{runs[VARIANTS[0]][0]['prompts']} greedy prompts + 5 samples of 4 x 96, max 64 new "
        f"tokens, batch 32, cold process each, median of {args.rounds}; identical greedy "
        f"completions: {same}/{runs[VARIANTS[0]][0]['prompts']}\n")
  print(common.table(["decode compiled", "wall s", "CPU s", "XLA compilations",
                      "compiling s (trace + lower + compile)"],
                     [[v, f"{m['wall_s']:.1f}", f"{m['cpu_s']:.1f}", f"{m['compiles']:.0f}",
                       f"{m['compile_s']:.1f}"] for v, m in med.items()]))
  print(f"\nwall before / after: {med[VARIANTS[0]]['wall_s'] / med[VARIANTS[1]]['wall_s']:.2f}x")


if __name__ == "__main__":
  main()
