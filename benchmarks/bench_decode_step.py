"""Where one decode step of `gift serve` goes on this host: the engine's compiled chunk of
decode steps over every slot (all rows live, each at the extent's last positions, as
`Engine.tune_extents` times it), then the same chunks under `jax.profiler`, the time of each
of XLA's operations summed by kind:

  dots       matmuls (YNNPACK / XLA dot fusions): the projections, the MLP, the unembedding
  kernels    gift's custom calls (the decode attention of gift/model/cpu_kernels.py)
  other      everything else XLA runs (norms, RoPE, cache writes, masks, sampling)

with the dots' achieved FLOP/s (their share of the unprofiled step), next to this host's
measured matmul peak and memory bandwidth. The profiler slows every operation, so shares are
reported, not its absolute times. Then the same layers' matmuls alone at more rows than a
step has (`--matmul_rows`): what a decode step's matmuls would save at the per-row cost of a
prefill-sized batch, the most that batching decode rows with prefill tokens could give them.
Same model as benchmarks/bench_serve.py.

  python benchmarks/bench_decode_step.py                       # 32 rows, extents 256 and 512
  python benchmarks/bench_decode_step.py --rows 8 --extents 128 --keep SERVE_WORKDIR
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_serve  # noqa: E402
import common  # noqa: E402


def kinds_of(hlo_text: str) -> dict[str, str]:
  """Instruction name -> "dots" | "kernels" | "other", for the instructions XLA:CPU runs as
  operations of their own (those of the entry and of while/conditional bodies, not those
  inside fusions, nor control flow, whose time is its operations'), from the compiled
  module's text."""
  bodies, current = {}, None  # computation name -> its instruction lines
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line.rstrip())
    if head:
      current = bodies.setdefault(head.group(1), [])
    elif line.startswith("}"):
      current = None
    elif current is not None:
      current.append(line)
  fused = set(re.findall(r"kind=k\w+, calls=%([\w.\-]+)", hlo_text))
  with_dot = {c for c in fused if any(" dot(" in x for x in bodies.get(c, ()))}
  skip = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
          "conditional", "call"}
  kinds = {}
  for comp, lines in bodies.items():
    if comp in fused:
      continue
    for line in lines:
      m = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? (\w[\w\-]*)\(", line)
      if not m or m.group(2) in skip:
        continue
      calls = re.search(r"calls=%([\w.\-]+)", line)
      op = m.group(2)
      kinds[m.group(1)] = ("kernels" if op == "custom-call" else
                           "dots" if op == "dot" or (calls and calls.group(1) in with_dot)
                           else "other")
  return kinds


def profile_split(run, hlo_text: str, chunks: int, module: str = "jit__decode_rows"
                  ) -> dict[str, float]:
  """Seconds of each kind of operation over `chunks` calls of `run()` under jax.profiler."""
  import jax
  out = tempfile.mkdtemp(prefix="bench_decode_step_trace_")
  try:
    with jax.profiler.trace(out, create_perfetto_trace=True):
      for _ in range(chunks):
        run()
    path = glob.glob(os.path.join(out, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  finally:
    shutil.rmtree(out, ignore_errors=True)
  return split_events(events, kinds_of(hlo_text), module)


def split_events(events: list[dict], kinds: dict[str, str], module: str) -> dict[str, float]:
  """Seconds by kind of the trace's operation events of `module` (other modules that ran under
  the profiler, such as the reset between chunks, reuse instruction names like copy.7)."""
  split = collections.Counter()
  for e in events:
    if (e.get("ph") == "X" and e.get("name") in kinds
        and e.get("args", {}).get("hlo_module", module) == module):
      split[kinds[e["name"]]] += e["dur"] / 1e6
  return split


def matmul_rows(cfg, params, sizes: list[int], rounds: int = 3, calls: int = 20
                ) -> dict[int, float]:
  """Seconds per call of the decode step's layer matmuls alone (every layer's norm, fused q/k/v
  projection, output projection and MLP, gift's own layer code, attention left out: the
  queries stand in for its output), compiled as the decode steps are, for M rows of tokens;
  the best of `rounds` rounds, the sizes interleaved in each (this host's speed drifts within a
  minute)."""
  import jax
  import numpy as np

  from gift.model import cpu_kernels, layers, transformer

  norm = transformer.norm_fn(cfg)

  @cpu_kernels.inference_jit  # compiled as gift's decode steps are
  def run(x_md):
    x = x_md[None]
    for p in transformer.unstack_layers(params)["layers"]:
      q, _, _ = layers.qkv(p["attn"], norm(x, p["attn_norm"]))
      x = x + layers.out_proj(p["attn"], q)
      x = x + layers.gated_mlp(p["mlp"], norm(x, p["mlp_norm"]), cfg.mlp_activation)
    return x[0]

  rng = np.random.default_rng(0)
  xs = {m: jax.device_put(rng.normal(size=(m, cfg.d_model)).astype(np.float32) * 0.1)
        for m in sizes}
  best = {m: float("inf") for m in sizes}
  for m in sizes:
    jax.block_until_ready(run(xs[m]))
  for _ in range(rounds):
    for m in sizes:
      t0 = time.perf_counter()
      for _ in range(calls):
        y = run(xs[m])
      jax.block_until_ready(y)
      best[m] = min(best[m], (time.perf_counter() - t0) / calls)
  return best


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", type=int, default=32, help="slots decoded together (max_batch)")
  p.add_argument("--extents", type=int, nargs="+", default=(256, 512))
  p.add_argument("--steps", type=int, default=8, help="decode steps per compiled chunk")
  p.add_argument("--chunks", type=int, default=20, help="timed chunks per extent")
  p.add_argument("--keep", default="", help="work folder (model) to reuse or keep")
  p.add_argument("--matmul_rows", type=int, nargs="*", default=None,
                 help="rows of the layer-matmul table (default: --rows x 1, 2, 4, 8, 16; "
                      "none: skip it)")
  args = p.parse_args()
  if args.matmul_rows is None:
    args.matmul_rows = [args.rows * k for k in (1, 2, 4, 8, 16)]
  if min(args.rows, args.steps, args.chunks, *args.extents, *args.matmul_rows) < 1:
    p.error("--rows, --steps, --chunks, --extents and --matmul_rows must be >= 1")
  from gift import cpu_env
  cpu_env.reexec_with_cpu_env()  # the allocator `gift serve` runs with (see gift/cpu_env.py)
  import jax
  import jax.numpy as jnp
  import numpy as np

  from gift.serve import engine as engine_lib

  work = args.keep or tempfile.mkdtemp(prefix="bench_decode_step_")
  os.makedirs(work, exist_ok=True)
  hf_dir, ckpt = os.path.join(work, "hf"), os.path.join(work, "gift_ckpt")
  if not os.path.exists(os.path.join(ckpt, "model_config.json")):
    bench_serve.build_model(hf_dir, ckpt)
  print("## One decode step of gift serve, by kind of operation\n")
  print(common.header(("jax", "jaxlib")))
  print(f"- model: random Llama {bench_serve.SHAPE}, fp32; {args.rows} rows, all live, "
        f"{args.steps} steps per chunk, {args.chunks} chunks per extent")
  peak, _ = common.yardsticks()
  sizes = bench_serve.model_sizes()
  step_flops = args.rows * (sizes["layer_flops"] + sizes["unembed_flops"])
  print("\n| extent | ms per step | dots | kernels | other | dots' GFLOP/s (% of peak) "
        "| keys/values read per step |")
  print("|---|---|---|---|---|---|---|")
  step_s = {}
  for w in args.extents:
    eng = engine_lib.Engine(*_load(ckpt), max_batch=args.rows, max_seq_len=w,
                            decode_steps=args.steps, extent_buckets=(w,))
    alive = eng._put(np.ones(args.rows, bool))
    call = dict(num_steps=jnp.int32(args.steps), rows=args.rows, max_steps=args.steps,
                stop_ids=eng.stop_ids)
    holder = [engine_lib._all_rows_live_jit(eng._empty_state(w), w, args.steps)]

    def run(eng=eng, holder=holder, alive=alive, call=call, w=w) -> float:
      """One chunk from the same positions; returns its seconds (the reset not counted)."""
      t0 = time.perf_counter()
      state, out = engine_lib._decode_jit(eng.cfg, eng.params, holder[0], alive, **call)
      jax.block_until_ready(out)
      took = time.perf_counter() - t0
      holder[0] = engine_lib._all_rows_live_jit(state, w, args.steps)
      return took

    hlo = engine_lib._decode_jit.lower(eng.cfg, eng.params, holder[0], alive,
                                       **call).compile().as_text()
    for _ in range(3):
      run()
    best = step_s[w] = min(run() for _ in range(args.chunks)) / args.steps
    split = profile_split(run, hlo, args.chunks)
    total = sum(split.values()) or 1.0
    share = {k: split.get(k, 0.0) / total for k in ("dots", "kernels", "other")}
    dots_rate = step_flops / (best * share["dots"]) if share["dots"] else 0.0
    kv = args.rows * sizes["kv_bytes_per_slot"] * (w - (args.steps + 1) / 2)  # mean context
    print(f"| {w} | {best * 1e3:.2f} | {share['dots']:.0%} | {share['kernels']:.0%} | "
          f"{share['other']:.0%} | {dots_rate / 1e9:.0f} ({dots_rate / peak:.0%}) | "
          f"{kv / 1e6:.0f} MB ({kv / (best * share['kernels'] or 1) / 1e9:.0f} GB/s in the "
          f"kernels) |", flush=True)
  if args.matmul_rows:
    _matmul_table(eng, args, sizes, peak, step_s)
  print(f"\nload average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
  if not args.keep:
    shutil.rmtree(work, ignore_errors=True)


def _matmul_table(eng, args, sizes: dict, peak: float, step_s: dict[int, float]) -> None:
  """The layer matmuls of a step alone, by rows: what a decode step's matmuls would save at the
  per-row cost of larger batches (a prefill's, or decode rows batched with prefill tokens)."""
  ms = sorted(set(args.matmul_rows) | {args.rows})
  took = matmul_rows(eng.cfg, eng.params, ms)
  print("\n### The layers' matmuls alone (norms, q/k/v, output projection, MLP; no attention, "
        "no unembedding), by rows\n")
  print("| rows | ms per call | us per row | GFLOP/s (% of peak) |")
  print("|---|---|---|---|")
  for m in ms:
    rate = m * sizes["layer_flops"] / took[m]
    print(f"| {m} | {took[m] * 1e3:.2f} | {took[m] / m * 1e6:.0f} | {rate / 1e9:.0f} "
          f"({rate / peak:.0%}) |")
  cheapest = min(ms, key=lambda m: took[m] / m)
  per_row, best_row = took[args.rows] / args.rows, took[cheapest] / cheapest
  saved = max(0.0, per_row - best_row) * args.rows
  w = args.extents[0]
  print(f"\n- at {args.rows} rows (a decode step) the layers' matmuls cost {per_row * 1e6:.0f} us "
        f"per row; at {cheapest} rows {best_row * 1e6:.0f}: a step whose matmuls ran at that "
        f"rate would take {saved * 1e3:.2f} ms less, {saved / step_s[w]:.0%} of the step at "
        f"extent {w} ({step_s[w] * 1e3:.2f} ms)")


def _load(ckpt: str):
  from gift import checkpoint
  from gift import tokenizer as tokenizer_lib
  cfg, params, tok_path = checkpoint.load_model(ckpt)
  return cfg, params, tokenizer_lib.load(tok_path, cfg.vocab_size)


if __name__ == "__main__":
  main()
