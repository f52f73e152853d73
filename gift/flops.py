"""Analytic training FLOPs (MaxText's formula) and peak FLOP/s by device kind, for plan and MFU.

Training FLOPs per token = 6 * M + 6 * L * T * N * H, where
  M = matmul parameters seen by each token: L * (D*N*H [q] + 2*D*K*H [k, v] + N*H*D [o]
      + 3*D*F [gate, up, down]; 2*D*F for a plain MLP) + D*V [unembedding, counted even when
      tied; the embedding lookup is a gather, not a matmul],
  6 = 2 (multiply-add) * 3 (forward + backward for inputs and for weights),
  6 * L * T * N * H = causal attention: QK^T and PV, 2 * 2 * T * N * H FLOPs per token and
      layer forward, halved by the causal mask, times 3 for training. T = sequence length.
      A sliding-window layer (window W < T) sees W - W^2 / 2T keys on average, not T / 2.
MFU = achieved FLOP/s / peak FLOP/s, with the peak of the device's dense bf16 matmul units.
"""
from __future__ import annotations

import time

from gift.model.presets import ModelConfig

# Dense bf16 peak FLOP/s per device (per chip for TPUs), matched in order as lowercase substrings
# of `jax.Device.device_kind`; the first match wins (so "v5 lite" precedes "v5").
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("tpu v2", 45e12),
    ("tpu v3", 123e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5", 459e12),  # v5p
    ("tpu v6 lite", 918e12),  # v6e (Trillium)
    ("tpu v6e", 918e12),
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h100", 989e12),  # SXM
    ("h200", 989e12),
    ("h800", 989e12),
    ("b200", 2250e12),
    ("a100", 312e12),
    ("a800", 312e12),
    ("l40s", 362e12),
    ("l4", 121e12),
    ("v100", 125e12),  # fp16 tensor cores (no bf16)
)


def peak_flops(device_kind: str) -> float | None:
  """Peak dense bf16 FLOP/s of one device, or None when unknown (e.g. a CPU)."""
  kind = device_kind.lower()
  for pattern, flops in PEAK_FLOPS:
    if pattern in kind:
      return flops
  return None


def matmul_params(cfg: ModelConfig) -> int:
  """M: parameters in matmuls per token, including the (possibly tied) unembedding."""
  d, n, k, h, f = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  per_layer = d * n * h + 2 * d * k * h + n * h * d + (3 if cfg.mlp_gated else 2) * d * f
  return cfg.num_layers * per_layer + d * cfg.vocab_size


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Causal attention score and value FLOPs per token for training (fwd + bwd): 12 * N * H per
  key seen, T/2 keys on average for a full layer (6 * T * N * H), W - W^2 / 2T for a sliding
  layer of window W < T."""
  t, w = seq_len, cfg.sliding_window
  per_layer = [12.0 * cfg.num_heads * cfg.head_dim * (w - w * w / (2 * t) if sliding and w < t
                                                      else t / 2)
               for sliding in cfg.sliding_layers]
  return sum(per_layer)


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """6 * M + 6 * L * T * N * H (see the module docstring)."""
  return 6.0 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len)


def measure_matmul_peak(n: int = 2048, seconds: float = 1.0) -> float:
  """Achieved f32 FLOP/s of a square [n, n] @ [n, n] matmul in XLA on the first CPU device, the
  best of repeated calls over about `seconds`: this host's measured matmul peak (hosts of one
  cloud machine type differ ~3x), the denominator of MFU on a CPU and the yardstick
  `gift quickstart` prints so a slow host is visible as such."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  a_nn = jax.device_put(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32),
                        jax.devices("cpu")[0])
  dot = jax.jit(jnp.dot)
  dot(a_nn, a_nn).block_until_ready()  # compile and warm the kernels
  best, deadline = float("inf"), time.perf_counter() + seconds
  while time.perf_counter() < deadline:
    t0 = time.perf_counter()
    dot(a_nn, a_nn).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best
