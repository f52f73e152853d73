"""Decoder building blocks: RMSNorm/LayerNorm, RoPE variants, attention with GQA/MQA, a
segment-aware causal mask, sliding windows and soft-capping, gated or plain MLP.

Each block is a pure function of its weights (so one scanned layer body can call them on a slice
of the stacked weights) plus a small Flax NNX module that owns those weights with their logical
axis names (`sharding_names` metadata, read by `gift/sharding.py`). Modules take a `stack` shape
prefix: `stack=(L,)` gives every weight a leading `layers` axis.

Einsum legend: B batch, T query time, S key time (cache slots), D d_model, N query heads,
K key/value heads, G = N // K query heads per kv head, H head_dim, F mlp hidden, V vocab.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from gift.model import cpu_kernels

Array = jax.Array
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: a fully masked row stays NaN-free


def param(rngs: nnx.Rngs | None, shape: Sequence[int], axes: Sequence[str | None],
          init: str | float, dtype=jnp.float32) -> nnx.Param:
  """A parameter with logical axis names. `init`: "ones", "zeros" or a normal stddev."""
  if init == "ones":
    value = jnp.ones(shape, dtype)
  elif init == "zeros":
    value = jnp.zeros(shape, dtype)
  else:
    value = (init * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
  # eager_sharding=False: shardings come from gift/sharding.py's rules, not from an ambient mesh.
  return nnx.Param(value, sharding_names=tuple(axes), eager_sharding=False)


# ------------------------------------------------------------------------------------------------
# Projections
# ------------------------------------------------------------------------------------------------
def dense(x: Array, w: Array, contract: int = 1, preferred_element_type=None) -> Array:
  """x [..., *C] @ w [*C, *O] -> [..., *O]: x's last `contract` axes with w's first ones.

  The math of `jnp.tensordot(x, w, contract)`. On CPU with float32 operands the gradient is
  hand-written: XLA:CPU's fast matmul kernels (YNNPACK) take only row-major A @ B, and autodiff's
  weight gradient x^T @ dy otherwise runs as a slow transposed dot, after transposed copies of
  the (wider) output gradient. Materializing x^T behind an optimization barrier makes both
  gradients plain matmuls: the CPU train step of benchmarks/bench_train.py runs ~1.3x faster.
  """
  if hasattr(w, "dense_apply"):  # a LoRA / quantized weight (gift/lora.py) does its own matmul
    return w.dense_apply(x, contract, preferred_element_type)
  if _cpu_float32(x, w) and preferred_element_type in (None, jnp.float32):
    return _dense_cpu(x, w, contract)
  return jnp.tensordot(x, w, contract, preferred_element_type=preferred_element_type)


def _cpu_float32(*xs: Array) -> bool:
  """Whether the CPU-specific gradients apply: float32 operands traced for a CPU backend."""
  return jax.default_backend() == "cpu" and all(x.dtype == jnp.float32 for x in xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_cpu(x: Array, w: Array, contract: int) -> Array:
  return jnp.tensordot(x, w, contract)


def _dense_cpu_fwd(x, w, contract):
  return jnp.tensordot(x, w, contract), (x, w)


def _dense_cpu_bwd(contract, res, dy):
  x, w = res
  c = math.prod(w.shape[:contract])
  x_mc, w_co = x.reshape(-1, c), w.reshape(c, -1)
  dy_mo = dy.reshape(x_mc.shape[0], w_co.shape[1])
  x_cm = jax.lax.optimization_barrier(x_mc.T)  # a row-major copy, not a folded transpose
  return (dy_mo @ w_co.T).reshape(x.shape), (x_cm @ dy_mo).reshape(w.shape)


_dense_cpu.defvjp(_dense_cpu_fwd, _dense_cpu_bwd)


# ------------------------------------------------------------------------------------------------
# RMSNorm
# ------------------------------------------------------------------------------------------------
def rms_norm(x: Array, scale: Array, eps: float, plus_one: bool) -> Array:
  """x [..., D] -> same shape and dtype; statistics and scaling in float32.

  `plus_one`: Gemma stores w and scales by (1 + w); Llama stores and scales by w.
  """
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  scale = scale.astype(jnp.float32)
  return (y * (1.0 + scale if plus_one else scale)).astype(x.dtype)


def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
  """LayerNorm x [..., D] (mean and variance over D, then x * w + b); statistics in float32."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(jnp.var(x32, axis=-1, keepdims=True) + eps)
  return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def norm(x: Array, p: dict, eps: float, plus_one: bool) -> Array:
  """RMSNorm of `p` = {scale}, or LayerNorm when `p` also holds a bias (ModelConfig.norm_type)."""
  if "bias" in p:
    return layer_norm(x, p["scale"], p["bias"], eps)
  return rms_norm(x, p["scale"], eps, plus_one)


class LayerNorm(nnx.Module):
  """Owns `scale` (init 1) and `bias` (init 0), each [*stack, D]."""

  def __init__(self, dim: int, *, eps: float, stack: tuple[int, ...] = (),
               param_dtype=jnp.float32):
    self.eps = eps
    axes = ("layers",) * len(stack) + ("norm",)
    self.scale = param(None, (*stack, dim), axes, "ones", param_dtype)
    self.bias = param(None, (*stack, dim), axes, "zeros", param_dtype)


class RMSNorm(nnx.Module):
  """Owns `scale` [*stack, D] (axes (layers?, norm)); init 1, or 0 with `plus_one`."""

  def __init__(self, dim: int, *, eps: float, plus_one: bool, stack: tuple[int, ...] = (),
               param_dtype=jnp.float32):
    self.eps, self.plus_one = eps, plus_one
    self.scale = param(None, (*stack, dim), ("layers",) * len(stack) + ("norm",),
                       "zeros" if plus_one else "ones", param_dtype)

  def __call__(self, x: Array) -> Array:
    return rms_norm(x, self.scale[...], self.eps, self.plus_one)


# ------------------------------------------------------------------------------------------------
# RoPE (rotate-half layout, as Hugging Face Llama/Gemma)
# ------------------------------------------------------------------------------------------------
def _default_inv_freq(head_dim: int, theta: float) -> Array:
  return theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)


def _rope_default(p: dict, head_dim: int, theta: float) -> tuple[Array, float]:
  del p
  return _default_inv_freq(head_dim, theta), 1.0


def _rope_linear(p: dict, head_dim: int, theta: float) -> tuple[Array, float]:
  """Position interpolation: every frequency divided by `factor` (DeepSeek-Coder, Gemma 3)."""
  return _default_inv_freq(head_dim, theta) / p["factor"], 1.0


def _rope_llama3(p: dict, head_dim: int, theta: float) -> tuple[Array, float]:
  """Llama 3.1: wavelengths above original_max_position_embeddings / low_freq_factor divided by
  `factor`, below ... / high_freq_factor kept, a smooth blend in between."""
  inv_freq = _default_inv_freq(head_dim, theta)
  factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
  old_len = p["original_max_position_embeddings"]
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
  return jnp.where(medium, smoothed, scaled), 1.0


def _rope_yarn(p: dict, head_dim: int, theta: float) -> tuple[Array, float]:
  """YaRN (arXiv 2309.00071), as transformers' `_compute_yarn_parameters`: interpolated low
  frequencies, extrapolated high ones, a linear ramp between beta_slow and beta_fast rotations,
  and cos/sin scaled by the attention factor (0.1 ln(factor) + 1 unless given)."""
  factor, old_len = p["factor"], p["original_max_position_embeddings"]

  def mscale(scale, m=1.0):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

  attention_factor = p.get("attention_factor")
  if attention_factor is None:
    if p.get("mscale") and p.get("mscale_all_dim"):
      attention_factor = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
    else:
      attention_factor = mscale(factor)
  beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

  def correction_dim(rotations):
    return head_dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

  low, high = correction_dim(beta_fast), correction_dim(beta_slow)
  if p.get("truncate", True):
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, head_dim - 1)
  if low == high:
    high += 0.001  # as transformers: no division by zero
  ramp = jnp.clip((jnp.arange(head_dim // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
  pos_freqs = theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  extrapolation = 1 - ramp
  inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
  return inv_freq, float(attention_factor)


# rope_type -> fn(params, head_dim, theta) -> (inverse frequencies f32 [H/2], cos/sin factor),
# as transformers' ROPE_INIT_FUNCTIONS. `params` are ModelConfig.rope_scaling as a dict.
ROPE_INIT_FUNCTIONS: dict[str, Callable[[dict, int, float], tuple[Array, float]]] = {
    "default": _rope_default,
    "linear": _rope_linear,
    "llama3": _rope_llama3,
    "yarn": _rope_yarn,
}
# The keys each type reads (anything else in a config is refused by gift/hf.py).
ROPE_KEYS: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings", "attention_factor", "beta_fast",
             "beta_slow", "mscale", "mscale_all_dim", "truncate"),
}


def rope_tables(positions_bt: Array, head_dim: int, theta: float,
                scaling: Sequence[tuple[str, Any]] = ()) -> tuple[Array, Array]:
  """Returns (sin, cos), each float32 [B, T, H/2]: angle_i = position * inv_freq_i, with
  inv_freq from the `scaling` variant (ModelConfig.rope_scaling; () = theta^(-2i/H)), both
  multiplied by the variant's attention factor (YaRN)."""
  p = dict(scaling)
  rope_type = p.get("rope_type", "default")
  if rope_type not in ROPE_INIT_FUNCTIONS:
    raise ValueError(f"model.rope_scaling rope_type={rope_type!r}; gift implements "
                     f"{sorted(ROPE_INIT_FUNCTIONS)}")
  inv_freq_h, factor = ROPE_INIT_FUNCTIONS[rope_type](p, head_dim, theta)

  def tables(positions_bt):
    angle_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq_h
    sin_bth, cos_bth = jnp.sin(angle_bth), jnp.cos(angle_bth)
    if factor != 1.0:
      sin_bth, cos_bth = sin_bth * factor, cos_bth * factor
    return sin_bth, cos_bth

  # Left to itself, XLA fuses sin/cos into every consumer: it recomputes them for each element
  # of q and k in each layer (head_dim x heads transcendentals per position instead of
  # head_dim; 0.7 ms per fusion, 8 fusions, of a 31 ms 512-token prefill on a 2-core CPU).
  # The outputs of a conditional are never fused into its consumers, so this computes each
  # table once. Its predicate depends on the positions' values (never false for real
  # positions), so XLA cannot fold it away unless the positions are constants.
  return jax.lax.cond(jnp.min(positions_bt) > jnp.iinfo(jnp.int32).min, tables, tables,
                      positions_bt)


def apply_rope(x_btnh: Array, sin_bth: Array, cos_bth: Array) -> Array:
  """Rotates pairs (x_i, x_{i+H/2}) by angle_i: the first and second halves of each head."""
  x1, x2 = jnp.split(x_btnh.astype(jnp.float32), 2, axis=-1)
  sin, cos = sin_bth[:, :, None, :], cos_bth[:, :, None, :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_btnh.dtype)


# ------------------------------------------------------------------------------------------------
# Attention
# ------------------------------------------------------------------------------------------------
def attention_mask(q_segment_bt: Array, q_slot_bt: Array, kv_segment_bs: Array,
                   kv_slot_s: Array) -> Array:
  """bool [B, T, S]: query t may see key s iff same non-zero segment and slot_s <= slot_t.

  Slots are the time order (0..T-1 without a cache, cache slots with one). Segment 0 is padding:
  its rows see nothing (and produce a finite, ignored output; see `attend`).
  """
  same = q_segment_bt[:, :, None] == kv_segment_bs[:, None, :]
  causal = kv_slot_s[None, None, :] <= q_slot_bt[:, :, None]
  return same & causal & (q_segment_bt != 0)[:, :, None]


def sliding_window_mask(mask_bts: Array, q_slot_bt: Array, kv_slot_s: Array, window: int,
                        sliding: bool | Array) -> Array:
  """`mask_bts` restricted, where `sliding` (a Python bool, or a traced one from a scan over
  layers of mixed types), to the last `window` slots up to the query's own. A segment's tokens
  fill consecutive slots (packed rows, left-padded prompts, cache slots), so slot distance is
  position distance within a segment."""
  if sliding is False:
    return mask_bts
  near_bts = (q_slot_bt[:, :, None] - kv_slot_s[None, None, :]) < window
  if sliding is True:
    return mask_bts & near_bts
  return mask_bts & (near_bts | ~sliding)


ATTENTION_IMPLS = ("default", "xla", "cudnn")
DECODE_IMPLS = ("auto", "xla")


def softcap(x: Array, cap: float) -> Array:
  """cap * tanh(x / cap) (Gemma 2 soft-capping); identity for cap 0."""
  return jnp.tanh(x / cap) * cap if cap else x


def attend(q_btnh: Array, k_bskh: Array, v_bskh: Array, mask_bts: Array,
           impl: str = "default", scale: float | None = None, logit_cap: float = 0.0) -> Array:
  """Scaled dot-product attention with GQA/MQA; scores and softmax in float32.

  q [B,T,N,H] (already rotated), k/v [B,S,K,H], N % K == 0; queries scaled by `scale` (None:
  1/sqrt(H)); scores soft-capped at `logit_cap` (0: off) before the mask.
  Returns [B, T, N, H] in q's dtype. `impl` (ModelConfig.attention_impl) "xla" or "cudnn" hands
  self-attention (T == S, slot i = position i) to `jax.nn.dot_product_attention`; with
  soft-capping (which that function lacks) the einsum form runs instead.
  """
  b, t, n, h = q_btnh.shape
  k = k_bskh.shape[2]
  scale = h ** -0.5 if scale is None else scale
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"model.attention_impl={impl!r}; expected one of {ATTENTION_IMPLS}")
  if impl != "default" and t == k_bskh.shape[1] and not logit_cap:
    return _attend_jax_nn(q_btnh, k_bskh, v_bskh, mask_bts, impl, scale)
  q_btkgh = (q_btnh * jnp.asarray(scale, q_btnh.dtype)).reshape(b, t, k, n // k, h)
  # The hand-written CPU gradient (training, no cache) has no soft-cap: autodiff's form then.
  if t == k_bskh.shape[1] and not logit_cap and _cpu_float32(q_btnh, k_bskh, v_bskh):
    return _attend_cpu(q_btkgh, k_bskh, v_bskh, mask_bts).reshape(b, t, n, h)
  logits_bkgts = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh,
                            preferred_element_type=jnp.float32)
  logits_bkgts = jnp.where(mask_bts[:, None, None], softcap(logits_bkgts, logit_cap), _MASKED)
  probs_bkgts = jax.nn.softmax(logits_bkgts, axis=-1).astype(v_bskh.dtype)
  out_btkgh = jnp.einsum("bkgts,bskh->btkgh", probs_bkgts, v_bskh)
  return out_btkgh.reshape(b, t, n, h)


def attend_cached(q_btnh: Array, k_bksh: Array, v_bksh: Array, mask_bts: Array,
                  scale: float | None = None, logit_cap: float = 0.0,
                  decode_impl: str = "auto") -> Array:
  """`attend` over a KV cache laid out [B, K, S, H] (transformer.KVCache): both products are
  batched over (B, K) with the cache as it lies, so no step copies or transposes the cache.
  `decode_impl` (ModelConfig.decode_attention) "auto" lets one-token steps (T = 1) take gift's
  CPU kernel where it applies (cpu_kernels.use_decode_attention); "xla" never."""
  if decode_impl not in DECODE_IMPLS:
    raise ValueError(f"model.decode_attention={decode_impl!r}; expected one of {DECODE_IMPLS}")
  b, t, n, h = q_btnh.shape
  k = k_bksh.shape[1]
  scale = h ** -0.5 if scale is None else scale
  q_bkgth = (q_btnh * jnp.asarray(scale, q_btnh.dtype)).reshape(b, t, k, n // k, h
                                                               ).transpose(0, 2, 3, 1, 4)
  if (t == 1 and decode_impl == "auto"
      and cpu_kernels.use_decode_attention(q_bkgth, k_bksh, v_bksh)):
    # Decoding on a CPU: each row reads its cache only where its mask is set (a custom call,
    # gift/model/cpu_kernels.py), not all S slots.
    out_bkgh = cpu_kernels.decode_attention(q_bkgth[:, :, :, 0], k_bksh, v_bksh,
                                            mask_bts[:, 0], logit_cap)
    return out_bkgh.reshape(b, t, n, h)
  if t == 1:
    # Decoding: keys times queries, the cache as the left operand with its contracted axis
    # last. Written as queries times keys, XLA:CPU (under gift serve's vmap over slots) copied
    # each layer's whole cache to [B, K, H, S] every step: 1.8x the step time at 512 slots.
    logits_bkgts = jnp.einsum("bksh,bkgh->bkgs", k_bksh, q_bkgth[:, :, :, 0],
                              preferred_element_type=jnp.float32)[:, :, :, None]
  else:
    logits_bkgts = jnp.einsum("bkgth,bksh->bkgts", q_bkgth, k_bksh,
                              preferred_element_type=jnp.float32)
  logits_bkgts = jnp.where(mask_bts[:, None, None], softcap(logits_bkgts, logit_cap), _MASKED)
  probs_bkgts = jax.nn.softmax(logits_bkgts, axis=-1).astype(v_bksh.dtype)
  out_bkgth = jnp.einsum("bkgts,bksh->bkgth", probs_bkgts, v_bksh)
  return out_bkgth.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _attend_jax_nn(q_btnh: Array, k_bskh: Array, v_bskh: Array, mask_bts: Array,
                   impl: str, scale: float) -> Array:
  """`attend` by `jax.nn.dot_product_attention` (is_causal: the mask is causal already, and
  cuDNN then skips the upper triangle). Each token also sees itself, so padding rows (segment 0,
  which see nothing in `mask_bts`) are never fully masked: fused kernels may return NaN for
  those, and a NaN times a zero loss weight is still NaN in the gradient. Real tokens never
  see padding, so their outputs are unchanged."""
  if impl == "cudnn" and q_btnh.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"model.attention_impl='cudnn' needs model.dtype bfloat16 or float16, "
                     f"got {q_btnh.dtype}")
  t = q_btnh.shape[1]
  mask_b1ts = (mask_bts | jnp.eye(t, dtype=bool)[None])[:, None]
  return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=mask_b1ts, is_causal=True,
                                      scale=scale, implementation=impl)


def _attend_cpu(q_btkgh: Array, k_bskh: Array, v_bskh: Array, mask_bts: Array) -> Array:
  """`attend` for float32 on CPU, same math with a hand-written gradient: every product is a
  row-major (batched) A @ B for XLA:CPU's YNNPACK kernels, the transposes they need are taken of
  the [*, T, H] operands, never of the [T, S] scores, and the mask enters as an additive bias
  (no masked select to save or replay). ~10% faster CPU train steps than autodiff's layouts."""
  b, t, k, g, h = q_btkgh.shape
  q_bkmh = q_btkgh.transpose(0, 2, 3, 1, 4).reshape(b, k, g * t, h)  # m = (g, t)
  bias_bts = jnp.where(mask_bts, 0.0, _MASKED).astype(jnp.float32)
  out_bkmh = _attention_core(q_bkmh, k_bskh.transpose(0, 2, 1, 3), v_bskh.transpose(0, 2, 1, 3),
                             bias_bts)
  return out_bkmh.reshape(b, k, g, t, h).transpose(0, 3, 1, 2, 4)


def _row_major_t(x: Array) -> Array:
  """x with its last two axes swapped, materialized (an optimization barrier keeps XLA from
  folding the transpose back into the consuming dot as a transposed operand)."""
  return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


def _attention_core_fwd(q_bkmh, k_bksh, v_bksh, bias_bts):
  b, k, m, _ = q_bkmh.shape
  t, s = bias_bts.shape[1:]
  logits_bkms = (q_bkmh @ _row_major_t(k_bksh)).reshape(b, k, m // t, t, s)
  probs_bkms = jax.nn.softmax(logits_bkms + bias_bts[:, None, None], axis=-1).reshape(b, k, m, s)
  return probs_bkms @ v_bksh, (q_bkmh, k_bksh, v_bksh, bias_bts, probs_bkms)


def _attention_core_bwd(res, dout_bkmh):
  q_bkmh, k_bksh, v_bksh, bias_bts, probs_bkms = res
  b, k, m, s = probs_bkms.shape
  dprobs_bkms = dout_bkmh @ _row_major_t(v_bksh)
  dlogits_bkgts = (probs_bkms * (dprobs_bkms - jnp.sum(dprobs_bkms * probs_bkms, -1, keepdims=True))
                   ).reshape(b, k, m // bias_bts.shape[1], *bias_bts.shape[1:])
  # Masked scores get no gradient, as through a select; only fully masked (padding) rows need
  # this: their probabilities are uniform, not 0.
  dlogits_bkms = jnp.where(bias_bts[:, None, None] == 0, dlogits_bkgts, 0.0).reshape(b, k, m, s)
  dk_bkhs = _row_major_t(q_bkmh) @ dlogits_bkms
  dv_bkhs = _row_major_t(dout_bkmh) @ probs_bkms
  return (dlogits_bkms @ k_bksh, jnp.swapaxes(dk_bkhs, -1, -2), jnp.swapaxes(dv_bkhs, -1, -2),
          None)


@jax.custom_vjp
def _attention_core(q_bkmh: Array, k_bksh: Array, v_bksh: Array, bias_bts: Array) -> Array:
  """softmax(q k^T + bias) v over rows m = (g, t) of each kv head; bias [B, T, S] broadcasts."""
  return _attention_core_fwd(q_bkmh, k_bksh, v_bksh, bias_bts)[0]


_attention_core.defvjp(_attention_core_fwd, _attention_core_bwd)


class Attention(nnx.Module):
  """Owns q [*,D,N,H], k/v [*,D,K,H], o [*,N,H,D] (`*` = stack prefix, axis `layers`)."""

  def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
               rngs: nnx.Rngs, stack: tuple[int, ...] = (), param_dtype=jnp.float32,
               qkv_bias: bool = False, o_bias: bool = False):
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    lead = ("layers",) * len(stack)
    self.q = param(rngs, (*stack, d_model, num_heads, head_dim),
                   lead + ("embed", "heads", "head_dim"), d_model ** -0.5, param_dtype)
    self.k = param(rngs, (*stack, d_model, num_kv_heads, head_dim),
                   lead + ("embed", "kv_heads", "head_dim"), d_model ** -0.5, param_dtype)
    self.v = param(rngs, (*stack, d_model, num_kv_heads, head_dim),
                   lead + ("embed", "kv_heads", "head_dim"), d_model ** -0.5, param_dtype)
    self.o = param(rngs, (*stack, num_heads, head_dim, d_model),
                   lead + ("heads", "head_dim", "embed"), (num_heads * head_dim) ** -0.5,
                   param_dtype)
    if qkv_bias:  # [*, N, H] / [*, K, H]: the projections' output layout
      self.q_bias = param(None, (*stack, num_heads, head_dim), lead + ("heads", "head_dim"),
                          "zeros", param_dtype)
      self.k_bias = param(None, (*stack, num_kv_heads, head_dim),
                          lead + ("kv_heads", "head_dim"), "zeros", param_dtype)
      self.v_bias = param(None, (*stack, num_kv_heads, head_dim),
                          lead + ("kv_heads", "head_dim"), "zeros", param_dtype)
    if o_bias:  # [*, D], replicated like the norm scales
      self.o_bias = param(None, (*stack, d_model), lead + ("norm",), "zeros", param_dtype)


def _plus_bias(y: Array, p: dict, name: str) -> Array:
  """y + p[name] when the layer has that bias (kept out of `dense`, whose weights may be
  wrapped, e.g. by LoRA)."""
  return y + p[name].astype(y.dtype) if name in p else y


def qkv(p: dict, x_btd: Array) -> tuple[Array, Array, Array]:
  """Projections (+ biases if any) of one layer's `p` = {q, k, v, ...} (unstacked), weights
  cast to x's dtype; or of {qkv, qkv_split, ...} (`fuse_projections`), one matmul."""
  dt = x_btd.dtype
  if "qkv" in p:
    y_btmh = _plus_bias(dense(x_btd, p["qkv"].astype(dt)), p, "qkv_bias")
    n, k = p["qkv_split"].shape
    return y_btmh[:, :, :n], y_btmh[:, :, n:n + k], y_btmh[:, :, n + k:]
  return tuple(_plus_bias(dense(x_btd, p[name].astype(dt)), p, f"{name}_bias")
               for name in ("q", "k", "v"))


def _plain(*xs: Any) -> bool:
  return all(isinstance(x, jax.Array) and x.dtype == xs[0].dtype for x in xs)


def fuse_projections(layer: dict) -> dict:
  """One unstacked layer's params for inference with q/k/v as one `qkv` weight [D, N+2K, H]
  (plus `qkv_split`, an empty [N, K] array that keeps the split in the tree's shapes) and
  gate/up as one `gate_up` [D, 2F], their biases likewise: a decode step then runs two matmuls
  where it ran five (4 layers of gift serve's tiny Llama at 32 rows on XLA:CPU: 2.56 -> 2.34
  ms). Weights that are not plain arrays of one dtype (LoRA, quantized) are left as they are."""
  attn, mlp = dict(layer["attn"]), dict(layer["mlp"])
  names = ("q", "k", "v")
  biases = [f"{x}_bias" for x in names]
  if _plain(*(attn[x] for x in names)) and (all(b in attn for b in biases)
                                              or not any(b in attn for b in biases)):
    n, k = attn["q"].shape[1], attn["k"].shape[1]
    attn["qkv"] = jnp.concatenate([attn.pop(x) for x in names], axis=1)
    attn["qkv_split"] = jnp.zeros((n, k), jnp.int8)
    if biases[0] in attn:
      attn["qkv_bias"] = jnp.concatenate([attn.pop(b) for b in biases], axis=0)
  if "gate" in mlp and _plain(mlp["gate"], mlp["up"]) and (
      ("gate_bias" in mlp) == ("up_bias" in mlp)):
    mlp["gate_up"] = jnp.concatenate([mlp.pop("gate"), mlp.pop("up")], axis=1)
    if "gate_bias" in mlp:
      mlp["gate_up_bias"] = jnp.concatenate([mlp.pop("gate_bias"), mlp.pop("up_bias")])
  return dict(layer, attn=attn, mlp=mlp)


def out_proj(p: dict, y_btnh: Array) -> Array:
  return _plus_bias(dense(y_btnh, p["o"].astype(y_btnh.dtype), contract=2), p, "o_bias")


# ------------------------------------------------------------------------------------------------
# MLP (gated, or plain with biases)
# ------------------------------------------------------------------------------------------------
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "silu": jax.nn.silu,  # SwiGLU (Llama)
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # GeGLU (Gemma), StarCoder2
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # the erf form
}


def gated_mlp(p: dict, x_btd: Array, activation: str) -> Array:
  """down(act(x @ gate) * (x @ up)) for one layer's `p` = {gate, up, down}; without `gate`,
  down(act(x @ up)) (a plain MLP); each plus its bias where `p` has one."""
  dt = x_btd.dtype
  if "gate_up" in p:  # fuse_projections: one matmul, split
    both_btf = _plus_bias(dense(x_btd, p["gate_up"].astype(dt)), p, "gate_up_bias")
    gate_btf, up_btf = jnp.split(both_btf, 2, axis=-1)
  else:
    up_btf = _plus_bias(dense(x_btd, p["up"].astype(dt)), p, "up_bias")
    gate_btf = (_plus_bias(dense(x_btd, p["gate"].astype(dt)), p, "gate_bias")
                if "gate" in p else None)
  if gate_btf is not None:
    h_btf = ACTIVATIONS[activation](gate_btf) * up_btf
  else:
    h_btf = ACTIVATIONS[activation](up_btf)
  return _plus_bias(dense(h_btf, p["down"].astype(dt)), p, "down_bias")


class MLP(nnx.Module):
  """Owns gate (if `gated`)/up [*,D,F] and down [*,F,D]; with `bias`, [*,F] / [*,D] biases."""

  def __init__(self, d_model: int, mlp_dim: int, *, rngs: nnx.Rngs,
               stack: tuple[int, ...] = (), param_dtype=jnp.float32, gated: bool = True,
               bias: bool = False):
    lead = ("layers",) * len(stack)
    if gated:
      self.gate = param(rngs, (*stack, d_model, mlp_dim), lead + ("embed", "mlp"),
                        d_model ** -0.5, param_dtype)
    self.up = param(rngs, (*stack, d_model, mlp_dim), lead + ("embed", "mlp"),
                    d_model ** -0.5, param_dtype)
    self.down = param(rngs, (*stack, mlp_dim, d_model), lead + ("mlp", "embed"),
                      mlp_dim ** -0.5, param_dtype)
    if bias:
      if gated:
        self.gate_bias = param(None, (*stack, mlp_dim), lead + ("mlp",), "zeros", param_dtype)
      self.up_bias = param(None, (*stack, mlp_dim), lead + ("mlp",), "zeros", param_dtype)
      self.down_bias = param(None, (*stack, d_model), lead + ("norm",), "zeros", param_dtype)
