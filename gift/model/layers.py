"""Decoder building blocks: RMSNorm, RoPE, attention with GQA/MQA and a segment-aware causal mask,
gated MLP.

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
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

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
def rope_tables(positions_bt: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
  """Returns (sin, cos), each float32 [B, T, H/2]: angle_i = position * theta^(-2i/H)."""
  inv_freq_h = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angle_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq_h
  return jnp.sin(angle_bth), jnp.cos(angle_bth)


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


ATTENTION_IMPLS = ("default", "xla", "cudnn")


def attend(q_btnh: Array, k_bskh: Array, v_bskh: Array, mask_bts: Array,
           impl: str = "default") -> Array:
  """Scaled dot-product attention with GQA/MQA; scores and softmax in float32.

  q [B,T,N,H] (already rotated), k/v [B,S,K,H], N % K == 0; query scale 1/sqrt(H).
  Returns [B, T, N, H] in q's dtype. `impl` (ModelConfig.attention_impl) "xla" or "cudnn" hands
  self-attention (T == S, slot i = position i) to `jax.nn.dot_product_attention`.
  """
  b, t, n, h = q_btnh.shape
  k = k_bskh.shape[2]
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"model.attention_impl={impl!r}; expected one of {ATTENTION_IMPLS}")
  if impl != "default" and t == k_bskh.shape[1]:
    return _attend_jax_nn(q_btnh, k_bskh, v_bskh, mask_bts, impl)
  q_btkgh = (q_btnh * jnp.asarray(h ** -0.5, q_btnh.dtype)).reshape(b, t, k, n // k, h)
  if t == k_bskh.shape[1] and _cpu_float32(q_btnh, k_bskh, v_bskh):  # training, no cache
    return _attend_cpu(q_btkgh, k_bskh, v_bskh, mask_bts).reshape(b, t, n, h)
  logits_bkgts = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh,
                            preferred_element_type=jnp.float32)
  logits_bkgts = jnp.where(mask_bts[:, None, None], logits_bkgts, _MASKED)
  probs_bkgts = jax.nn.softmax(logits_bkgts, axis=-1).astype(v_bskh.dtype)
  out_btkgh = jnp.einsum("bkgts,bskh->btkgh", probs_bkgts, v_bskh)
  return out_btkgh.reshape(b, t, n, h)


def attend_cached(q_btnh: Array, k_bksh: Array, v_bksh: Array, mask_bts: Array) -> Array:
  """`attend` over a KV cache laid out [B, K, S, H] (transformer.KVCache): both products are
  batched over (B, K) with the cache as it lies, so no step copies or transposes the cache."""
  b, t, n, h = q_btnh.shape
  k = k_bksh.shape[1]
  q_bkgth = (q_btnh * jnp.asarray(h ** -0.5, q_btnh.dtype)).reshape(b, t, k, n // k, h
                                                                   ).transpose(0, 2, 3, 1, 4)
  logits_bkgts = jnp.einsum("bkgth,bksh->bkgts", q_bkgth, k_bksh,
                            preferred_element_type=jnp.float32)
  logits_bkgts = jnp.where(mask_bts[:, None, None], logits_bkgts, _MASKED)
  probs_bkgts = jax.nn.softmax(logits_bkgts, axis=-1).astype(v_bksh.dtype)
  out_bkgth = jnp.einsum("bkgts,bksh->bkgth", probs_bkgts, v_bksh)
  return out_bkgth.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _attend_jax_nn(q_btnh: Array, k_bskh: Array, v_bskh: Array, mask_bts: Array,
                   impl: str) -> Array:
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
                                      implementation=impl)


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
               rngs: nnx.Rngs, stack: tuple[int, ...] = (), param_dtype=jnp.float32):
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


def qkv(p: dict, x_btd: Array) -> tuple[Array, Array, Array]:
  """Projections of one layer's `p` = {q, k, v, ...} (unstacked), weights cast to x's dtype."""
  dt = x_btd.dtype
  return (dense(x_btd, p["q"].astype(dt)), dense(x_btd, p["k"].astype(dt)),
          dense(x_btd, p["v"].astype(dt)))


def out_proj(p: dict, y_btnh: Array) -> Array:
  return dense(y_btnh, p["o"].astype(y_btnh.dtype), contract=2)


# ------------------------------------------------------------------------------------------------
# Gated MLP
# ------------------------------------------------------------------------------------------------
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "silu": jax.nn.silu,  # SwiGLU (Llama)
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # GeGLU (Gemma)
}


def gated_mlp(p: dict, x_btd: Array, activation: str) -> Array:
  """down(act(x @ gate) * (x @ up)) for one layer's `p` = {gate, up, down}."""
  dt = x_btd.dtype
  gate_btf = dense(x_btd, p["gate"].astype(dt))
  up_btf = dense(x_btd, p["up"].astype(dt))
  return dense(ACTIVATIONS[activation](gate_btf) * up_btf, p["down"].astype(dt))


class MLP(nnx.Module):
  """Owns gate/up [*,D,F] and down [*,F,D]."""

  def __init__(self, d_model: int, mlp_dim: int, *, rngs: nnx.Rngs,
               stack: tuple[int, ...] = (), param_dtype=jnp.float32):
    lead = ("layers",) * len(stack)
    self.gate = param(rngs, (*stack, d_model, mlp_dim), lead + ("embed", "mlp"),
                      d_model ** -0.5, param_dtype)
    self.up = param(rngs, (*stack, d_model, mlp_dim), lead + ("embed", "mlp"),
                    d_model ** -0.5, param_dtype)
    self.down = param(rngs, (*stack, mlp_dim, d_model), lead + ("mlp", "embed"),
                      mlp_dim ** -0.5, param_dtype)
