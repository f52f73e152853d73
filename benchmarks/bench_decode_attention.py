"""gift's decode-attention kernel (gift/model/kernels/decode_attention.cc) against XLA's own ops,
one token per row over a ragged KV cache, as `gift sample` and `gift serve` decode on a CPU.

Three runners, each in a child process of its own, windows interleaved (common.py):
  xla       layers.attend_cached with decode_impl="xla" (XLA's dense form: every slot read)
  portable  the kernel built with GIFT_KERNEL_FLAGS=-mno-avx512f (the loop any CPU runs)
  kernel    the kernel as gift builds it (-march=native: AVX-512 where the host has it)
Shapes: `serve` = gift serve's benchmark Llama (4 layers, 4 kv heads, G = 1, H 64; 32 rows
filled 130-504 of 520 slots); `gqa` = Llama-3-8B's attention shape (8 kv heads, G = 4, H 128;
32 rows filled 100-1000 of 1024 slots; 1 layer); `short` = the serve shape at 64 slots (the
cache stays in the CPU's caches). GB/s counts the keys and values in the rows' spans.

  python benchmarks/bench_decode_attention.py
  python benchmarks/bench_decode_attention.py --shapes gqa --windows 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# name: (rows, kv heads, queries per kv head, head dim, slots, fill lo, fill hi, layers)
SHAPES = {"serve": (32, 4, 1, 64, 520, 130, 504, 4),
          "gqa": (32, 8, 4, 128, 1024, 100, 1000, 1),
          "short": (32, 4, 1, 64, 64, 48, 64, 4)}
RUNNERS = {"xla": {}, "portable": {"GIFT_KERNEL_FLAGS": "-mno-avx512f"}, "kernel": {}}


def span_bytes(shape: str) -> float:
  import numpy as np
  b, k, _, h, _, lo, hi, layers = SHAPES[shape]
  lens = np.random.default_rng(0).integers(lo, hi, size=b)
  return float(lens.sum()) * k * h * 4 * 2 * layers


def make_runner(runner: str, shape: str):
  """(In the child.) run(k): k calls of the shape's attention, blocked on the result."""
  os.environ.update(RUNNERS[runner])
  import jax
  import jax.numpy as jnp
  import numpy as np

  from gift.model import cpu_kernels, layers
  b, k, g, h, w, lo, hi, n_layers = SHAPES[shape]
  impl = "xla" if runner == "xla" else "auto"
  if impl == "auto" and not cpu_kernels.available():
    raise RuntimeError("the kernel did not build (see the log): no C++ compiler?")
  rng = np.random.default_rng(0)
  lens = rng.integers(lo, hi, size=b)
  mask = jnp.asarray(np.arange(w)[None, None, :] < lens[:, None, None])
  caches = [(jnp.asarray(rng.standard_normal((b, k, w, h), np.float32)),
             jnp.asarray(rng.standard_normal((b, k, w, h), np.float32))) for _ in range(n_layers)]
  q = jnp.asarray(rng.standard_normal((b, 1, k * g, h), np.float32))

  @jax.jit
  def step(q, caches):
    for kc, vc in caches:  # each layer's output is the next one's query, as in a model
      q = layers.attend_cached(q, kc, vc, mask, decode_impl=impl)
    return q

  jax.block_until_ready(step(q, caches))

  def run(n: int) -> None:
    out = q
    for _ in range(n):
      out = step(out, caches)
    jax.block_until_ready(out)

  return run


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
  p.add_argument("--calls", type=int, default=20, help="calls per window")
  p.add_argument("--windows", type=int, default=5)
  args = p.parse_args()
  print(common.header(packages=("jax", "jaxlib")))
  peak = common.matmul_peak(libs=("jax",))["jax"]
  print(f"- f32 matmul peak (2048^3, jax): {peak / 1e9:.0f} GFLOP/s\n")
  print("| shape | rows x kv heads x G x H, slots (filled) | runner | ms per call | GB/s of spans "
        "| vs xla |")
  print("|---|---|---|---|---|---|")
  for shape in args.shapes:
    children = {r: common.ChildRunner(make_runner, r, shape) for r in RUNNERS}
    try:
      times = common.interleaved_windows(children, args.calls, args.windows)
    finally:
      for c in children.values():
        c.close()
    b, k, g, h, w, lo, hi, n_layers = SHAPES[shape]
    med = {r: statistics.median(t) for r, t in times.items()}
    for r in RUNNERS:
      print(f"| {shape} | {b} x {k} x {g} x {h}, {w} ({lo}-{hi}) x {n_layers} layers | {r} "
            f"| {med[r] * 1e3:.2f} | {span_bytes(shape) / med[r] / 1e9:.1f} "
            f"| {med['xla'] / med[r]:.2f}x |", flush=True)
  print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
  main()
