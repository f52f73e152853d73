"""Where held-out evaluation's sampling time goes (many prompts, short answers), and prompt
buckets before/after: power-of-2 buckets vs gift's default ~1.25-1.5x ladder.

  python benchmarks/bench_heldout_sample.py --workdir gift_quickstart [--per_kind 64]

Uses a `gift quickstart` workdir's model (train/) and held-out tasks (train/exec_eval/tasks.json,
or eval/heldout_episodes.json of older workdirs): greedy, one sample per prompt, each spec kind in
the prompt, as the in-training evaluation samples. Both bucket ladders run in one process, each
once to compile and then timed `--repeats` times, alternating; prints CPU seconds (user + sys of
this process: what a shared machine does not inflate much), wall seconds, prefill vs decode
time, prefill slots that are padding, and decode steps.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

POW2 = (64, 128, 256, 512, 1024, 2048)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a finished gift quickstart workdir")
  p.add_argument("--per_kind", type=int, default=64, help="tasks per spec kind (0 = all)")
  p.add_argument("--max_new_tokens", type=int, default=64)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--repeats", type=int, default=1)
  args = p.parse_args()

  import jax
  import numpy as np

  import gift.sample as sample_lib
  from gift import flops
  from gift.data import prompts as prompts_lib
  from gift.eval import arcade, intrain

  print(common.header(("jax", "jaxlib", "flax")))
  print(f"- f32 matmul peak (XLA, 2048^3): {flops.measure_matmul_peak() / 1e9:.0f} GFLOP/s")
  ckpt = os.path.join(args.workdir, "train")
  episodes = os.path.join(ckpt, intrain.RESULTS_DIR, intrain.TASKS_FILE)
  if not os.path.exists(episodes):
    episodes = os.path.join(args.workdir, "eval", "heldout_episodes.json")
  tasks = intrain.spread(arcade.tasks(arcade.load(episodes), context="none"), args.per_kind)
  prompts = [t.prompt(k) for k in prompts_lib.SPEC_KINDS for t in tasks]

  stats: dict[str, float] = collections.defaultdict(float)
  prefill_jit, decode_jit = sample_lib._prefill_jit, sample_lib._decode_jit

  def prefill(*a, **k):
    t, w = time.process_time(), time.perf_counter()
    out = jax.block_until_ready(prefill_jit(*a, **k))
    stats["prefill_cpu_s"] += time.process_time() - t
    stats["prefill_wall_s"] += time.perf_counter() - w
    stats["prefill_slots"] += a[2].size
    stats["prefill_tokens"] += int(np.asarray(a[3]).sum())
    return out

  def decode(cfg, params, state, *a, **k):
    t, w, s0 = time.process_time(), time.perf_counter(), int(state.step)
    out = jax.block_until_ready(decode_jit(cfg, params, state, *a, **k))
    stats["decode_cpu_s"] += time.process_time() - t
    stats["decode_wall_s"] += time.perf_counter() - w
    stats["decode_steps"] += int(out.step) - s0
    return out

  sample_lib._prefill_jit, sample_lib._decode_jit = prefill, decode
  samplers = {name: sample_lib.Sampler.from_checkpoint(ckpt, batch_size=args.batch_size,
                                                       buckets=buckets)
              for name, buckets in (("pow2", POW2), ("default", sample_lib.DEFAULT_BUCKETS))}
  rows, outputs = collections.defaultdict(list), {}
  for rep in range(args.repeats + 1):
    for name, sampler in samplers.items():
      stats.clear()
      t, w = time.process_time(), time.perf_counter()
      outputs[name] = sampler.generate(prompts, n=1, temperature=0.0,
                                       max_new_tokens=args.max_new_tokens, stop=prompts_lib.STOP)
      if rep:  # the first round compiles
        rows[name].append(dict(stats, cpu_s=time.process_time() - t,
                               wall_s=time.perf_counter() - w))
  same = sum(a == b for a, b in zip(outputs["pow2"], outputs["default"]))
  med = {n: {k: common.median([r[k] for r in rs]) for k in rs[0]} for n, rs in rows.items()}
  print(f"\n{len(prompts)} prompts ({len(tasks)} tasks x {len(prompts_lib.SPEC_KINDS)} spec "
        f"kinds), greedy, max_new_tokens {args.max_new_tokens}, batch {args.batch_size}; "
        f"identical completions: {same}/{len(prompts)}\n")
  print(common.table(
      ["buckets", "CPU s", "wall s", "prefill CPU s", "decode CPU s", "prefill padding",
       "decode steps"],
      [[n, f"{m['cpu_s']:.1f}", f"{m['wall_s']:.1f}", f"{m['prefill_cpu_s']:.1f}",
        f"{m['decode_cpu_s']:.1f}", f"{1 - m['prefill_tokens'] / m['prefill_slots']:.0%}",
        f"{m['decode_steps']:.0f}"] for n, m in med.items()]))
  print(f"\nCPU time pow2 / default: {med['pow2']['cpu_s'] / med['default']['cpu_s']:.2f}x")


if __name__ == "__main__":
  main()
