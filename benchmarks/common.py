"""Shared helpers for the benchmark scripts: run header, f32 matmul peak, memory bandwidth, fair
interleaved timing, markdown tables.

Each benchmark runs gift and its peer in one process tree and prints a markdown block for
BENCHMARKS.md: `header()` (command, date, machine, versions), then `table()` rows.
`ChildRunner` puts a runner in a child process of its own, so two libraries' allocators and
thread pools do not interfere with each other's timings.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Sequence


def cpu_name() -> str:
  """The CPU model string (/proc/cpuinfo), else platform.processor()."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def header(packages: Sequence[str] = ("jax", "jaxlib", "flax", "optax", "torch", "transformers"),
           ) -> str:
  """Markdown lines: exact command, UTC date, machine (CPU, cores), package versions."""
  versions = []
  for name in packages:
    try:
      versions.append(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
      versions.append(f"{name} (not installed)")
  argv = [os.path.relpath(sys.argv[0])] + sys.argv[1:] if sys.argv[0] else sys.argv[1:]
  flags = os.environ.get("XLA_FLAGS", "").strip()
  return "\n".join([
      f"- command: `{shlex.join(['python', *argv])}`",
      f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
      f"- machine: {cpu_name()}, {os.cpu_count()} cores, {platform.system()} "
      f"{platform.release()}, Python {platform.python_version()}",
      f"- versions: {', '.join(versions)}",
      f"- XLA_FLAGS: `{flags}`" if flags else "- XLA_FLAGS: (none)",
      f"- GLIBC_TUNABLES: `{os.environ.get('GLIBC_TUNABLES', '')}`; load average at start: "
      + " ".join(f"{x:.1f}" for x in os.getloadavg()),
  ])


def matmul_peak(n: int = 2048, seconds: float = 2.0,
                libs: Sequence[str] = ("jax", "torch")) -> dict[str, float]:
  """Achieved f32 FLOP/s of a square [n, n] @ [n, n] matmul on the CPU in JAX (XLA) and in
  PyTorch (`libs`), each the best of repeated timed calls over about `seconds`. The max is this
  machine's measured matmul peak, the denominator of MFU in the CPU benchmarks. The JAX figure
  is `gift.flops.measure_matmul_peak`, the one `gift quickstart` prints."""
  flops = 2.0 * n ** 3
  out = {}
  if "jax" in libs:
    from gift import flops as flops_lib
    out["jax"] = flops_lib.measure_matmul_peak(n, seconds)
  runs = {}
  if "torch" in libs:
    import numpy as np
    import torch
    a_torch = torch.from_numpy(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    runs["torch"] = lambda: torch.mm(a_torch, a_torch)
  for name, fn in runs.items():
    fn()  # compile / warm the kernels
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
      t0 = time.perf_counter()
      fn()
      best = min(best, time.perf_counter() - t0)
    out[name] = flops / best
  return out


def memory_bandwidth(mb: int = 256, seconds: float = 2.0) -> float:
  """Achieved bytes/s of reading memory on this host: the best of repeated calls, over about
  `seconds`, of a jitted f32 matrix-vector product in JAX that streams an `mb` MiB matrix once
  (far larger than the CPU's caches, on all of XLA's threads). The yardstick of the benchmarks
  whose work is memory-bound (a decode step's keys and values)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  cols = 4096
  rows = mb * (1 << 20) // (4 * cols)
  cpu = jax.devices("cpu")[0]
  a = jax.device_put(np.ones((rows, cols), np.float32), cpu)
  x = jax.device_put(np.ones((cols,), np.float32), cpu)
  gemv = jax.jit(jnp.dot)
  gemv(a, x).block_until_ready()
  best, deadline = float("inf"), time.perf_counter() + seconds
  while time.perf_counter() < deadline:
    t0 = time.perf_counter()
    gemv(a, x).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return rows * cols * 4 / best


def yardsticks() -> tuple[float, float]:
  """(matmul peak FLOP/s, memory bandwidth bytes/s) of this host, measured and printed as a
  header line."""
  peak, bandwidth = matmul_peak(libs=("jax",))["jax"], memory_bandwidth()
  print(f"- measured matmul peak: {peak / 1e9:.0f} GFLOP/s (jax f32 2048^3); memory bandwidth: "
        f"{bandwidth / 1e9:.0f} GB/s (jax f32 matrix-vector product, 256 MiB)", flush=True)
  return peak, bandwidth


def interleaved_windows(runners: dict[str, Callable[[int], None]], steps: int, windows: int,
                        pause_s: float = 0.2) -> dict[str, list[float]]:
  """Seconds per step of each runner, one value per window.

  `runners[name](k)` runs k steps and returns once they are finished (blocked on results). The
  runners take turns window by window, in an order that rotates each round, so slow drift of a
  shared machine (other jobs, thermal) hits all of them alike; `pause_s` between windows lets one
  library's spinning worker threads go idle before the next one starts.
  """
  names = list(runners)
  times: dict[str, list[float]] = {name: [] for name in names}
  for w in range(windows):
    for name in names[w % len(names):] + names[:w % len(names)]:
      time.sleep(pause_s)
      t0 = time.perf_counter()
      runners[name](steps)
      times[name].append((time.perf_counter() - t0) / steps)
  return times


def _serve(conn, factory: Callable[..., Callable[[int], Any]], factory_args: tuple) -> None:
  """Child side of ChildRunner: build the runner, then run(k) for each k received until None."""
  try:
    run = factory(*factory_args)
    conn.send(("ok", None))
    while (k := conn.recv()) is not None:
      conn.send(("ok", run(k)))
  except Exception:  # reported to the parent, which raises it
    conn.send(("error", traceback.format_exc()))


class ChildRunner:
  """`run(k)` executed in a child process (multiprocessing "spawn", so nothing but the factory's
  own imports is loaded there): `factory(*factory_args)` is called in the child and must return
  the runner. Calls block until the child has finished the k steps; the pipe round trip adds
  ~0.1 ms. Each child keeps its own malloc heap and thread pools, as a real training job would:
  in one process, one library's freed tensors fragment the heap the other reuses, and its
  worker threads compete for the cores."""

  def __init__(self, factory: Callable[..., Callable[[int], Any]], *factory_args):
    ctx = multiprocessing.get_context("spawn")
    self._conn, child_conn = ctx.Pipe()
    self._proc = ctx.Process(target=_serve, args=(child_conn, factory, factory_args), daemon=True)
    self._proc.start()
    child_conn.close()
    self._reply()

  def _reply(self):
    try:
      status, value = self._conn.recv()
    except EOFError:
      raise RuntimeError(
          f"benchmark child process died (exit code {self._proc.exitcode})") from None
    if status == "error":
      raise RuntimeError(f"benchmark child process failed:\n{value}")
    return value

  def __call__(self, k: int):
    self._conn.send(k)
    return self._reply()

  def close(self) -> None:
    if self._proc.is_alive():
      self._conn.send(None)
    self._proc.join(timeout=30)
    if self._proc.is_alive():
      self._proc.kill()


def hf_llama_runner(model_cfg, train_cfg, tokens, targets, attn: str = "sdpa",
                    device: str = "cpu", amp_dtype: str = "float32") -> Callable[[int], float]:
  """The PyTorch peer of gift's train step: `run(k)` -> loss after k steps of
  transformers' LlamaForCausalLM of `model_cfg`'s shape (a gift ModelConfig; float32 weights,
  `amp_dtype` autocast), next-token cross-entropy, global-norm clipping and AdamW with gift's
  hyperparameters and its decay mask (no decay on norm scales); fused AdamW on CUDA."""
  import torch
  import transformers

  c = model_cfg
  if c.mlp_activation != "silu" or c.tie_embeddings or c.embed_scale:
    raise ValueError("the transformers peer runs Llama shapes only (SwiGLU, untied, unscaled)")
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.mlp_dim,
      num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
      num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim, hidden_act="silu",
      max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta,
      tie_word_embeddings=False, attention_bias=False, mlp_bias=False, use_cache=False,
      attn_implementation=attn)
  model = transformers.LlamaForCausalLM(config).float().to(device).train()
  named = list(model.named_parameters())
  opt = torch.optim.AdamW(
      [{"params": [p for n, p in named if "norm" not in n], "weight_decay": train_cfg.weight_decay},
       {"params": [p for n, p in named if "norm" in n], "weight_decay": 0.0}],
      lr=train_cfg.lr, betas=(train_cfg.b1, train_cfg.b2), eps=train_cfg.eps,
      fused=device == "cuda")
  inputs_bt = torch.from_numpy(tokens).long().to(device)
  targets_n = torch.from_numpy(targets).long().reshape(-1).to(device)
  amp = getattr(torch, amp_dtype)

  def run(k: int) -> float:
    for _ in range(k):
      opt.zero_grad(set_to_none=True)
      with torch.autocast(device_type=device, dtype=amp, enabled=amp != torch.float32):
        logits_btv = model(input_ids=inputs_bt, use_cache=False).logits
      loss = torch.nn.functional.cross_entropy(logits_btv.reshape(-1, c.vocab_size).float(),
                                               targets_n)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
      opt.step()
    return float(loss.detach())  # synchronizes

  return run


def median(xs: Sequence[float]) -> float:
  return statistics.median(xs)


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """A markdown table; floats are printed with 3 significant digits (ints as they are)."""
  def cell(v):
    if isinstance(v, float):
      return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)
