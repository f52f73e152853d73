"""The decoder: embed -> scanned blocks -> final RMSNorm -> float32 logits, with a KV cache
(with a cache the layers are unrolled over per-layer cache arrays; see KVCache).

`Transformer` (Flax NNX) owns the parameters in the layout of docs/contracts.md, with the layers
stacked on a leading L axis. The math is one pure function, `apply(cfg, params, ...)`, over the
pure parameter dict, so the trainer, the sampler and the HF converter never touch NNX internals:

  params = init_params(cfg, jax.random.key(0))       # pure dict of f32 arrays
  shapes = abstract_params(cfg)                      # same tree of ShapeDtypeStruct, no memory
  axes = logical_axes(cfg)                           # same tree of logical axis-name tuples
  logits_btv, _ = apply(cfg, params, tokens_bt, positions_bt, segment_ids_bt)
  cache = init_cache(cfg, batch_size=B, max_len=S)
  logits_btv, cache = apply(cfg, params, prompt_bt, positions_bt, segment_ids_bt, cache=cache)
  model = from_params(cfg, params); params = params_of(model)   # NNX module <-> pure dict

Block (pre-norm): x += attn(norm(x)); x += mlp(norm(x)); with `sandwich_norms` (Gemma 2/3)
the attention and MLP outputs are normed too before each add. Einsum legend as in layers.py.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gift.model import layers
from gift.model.presets import ModelConfig

Array = jax.Array
Params = dict[str, Any]

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


class KVCache(NamedTuple):
  """Keys/values of every layer for S slots; slot order is time order.

  k, v: tuples of L arrays [B, K, S, H] in the compute dtype, one per layer, so a decode step
  writes its token into each layer's array in place and attention reads it as it lies (a cache
  stacked on a leading L axis and scanned over would be sliced out and stacked again, whole,
  every step). segment_ids: [B, S] int32, 0 = empty slot. index: int32 scalar, the next slot;
  or int32 [B], each row's own next slot (one new token per row: continuous batching, where
  every sequence is at its own length).
  """
  k: tuple[Array, ...]
  v: tuple[Array, ...]
  segment_ids: Array
  index: Array


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype=None) -> KVCache:
  shape = (batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
  dtype = jnp.dtype(dtype or cfg.dtype)
  zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
  return KVCache(zeros(), zeros(), jnp.zeros((batch_size, max_len), jnp.int32),
                 jnp.zeros((), jnp.int32))


def unstack_layers(params: Params) -> Params:
  """params with `layers` as a tuple of L per-layer trees (what `apply` with a cache iterates
  over). A sampler's decode loop calls this once, outside its loop, so no step slices the
  stacked weights again."""
  stacked = params["layers"]
  if isinstance(stacked, (tuple, list)):
    return params
  n = jax.tree.leaves(stacked)[0].shape[0]
  return dict(params, layers=tuple(jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n)))


class Embedder(nnx.Module):
  def __init__(self, vocab_size: int, d_model: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.embedding = layers.param(rngs, (vocab_size, d_model), ("vocab", "embed"),
                                  d_model ** -0.5, param_dtype)


class Block(nnx.Module):
  """All L blocks' weights, stacked on a leading `layers` axis."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    kw = dict(stack=(cfg.num_layers,), param_dtype=jnp.dtype(cfg.param_dtype))
    make_norm = lambda dim=cfg.d_model: (
        layers.LayerNorm(dim, eps=cfg.norm_eps, **kw) if cfg.norm_type == "layer" else
        layers.RMSNorm(dim, eps=cfg.norm_eps, plus_one=cfg.norm_plus_one, **kw))
    self.attn_norm = make_norm()
    self.attn = layers.Attention(cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                 rngs=rngs, qkv_bias=cfg.qkv_bias, o_bias=cfg.o_bias, **kw)
    if cfg.qk_norm:
      self.q_norm = layers.RMSNorm(cfg.head_dim, eps=cfg.norm_eps, plus_one=cfg.norm_plus_one,
                                   **kw)
      self.k_norm = layers.RMSNorm(cfg.head_dim, eps=cfg.norm_eps, plus_one=cfg.norm_plus_one,
                                   **kw)
    if cfg.sandwich_norms:
      self.post_attn_norm = make_norm()
    self.mlp_norm = make_norm()
    self.mlp = layers.MLP(cfg.d_model, cfg.mlp_dim, rngs=rngs, gated=cfg.mlp_gated,
                          bias=cfg.mlp_bias, **kw)
    if cfg.sandwich_norms:
      self.post_mlp_norm = make_norm()


class Transformer(nnx.Module):
  """Decoder-only transformer; `model(tokens_bt, positions_bt, segment_ids_bt=None, cache=None)
  -> (logits_btv float32, cache)`; see `apply`."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.head_dim % 2:
      raise ValueError(f"model.head_dim={cfg.head_dim} must be even for RoPE")
    if cfg.mlp_activation not in layers.ACTIVATIONS:
      raise ValueError(f"model.mlp_activation={cfg.mlp_activation!r}; expected one of "
                       f"{sorted(layers.ACTIVATIONS)}")
    self.cfg = cfg
    param_dtype = jnp.dtype(cfg.param_dtype)
    self.embedder = Embedder(cfg.vocab_size, cfg.d_model, rngs=rngs, param_dtype=param_dtype)
    self.layers = Block(cfg, rngs=rngs)
    self.final_norm = (
        layers.LayerNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=param_dtype)
        if cfg.norm_type == "layer" else
        layers.RMSNorm(cfg.d_model, eps=cfg.norm_eps, plus_one=cfg.norm_plus_one,
                       param_dtype=param_dtype))
    if not cfg.tie_embeddings:
      self.unembed = layers.param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                                  cfg.d_model ** -0.5, param_dtype)

  def __call__(self, tokens_bt: Array, positions_bt: Array, segment_ids_bt: Array | None = None,
               cache: KVCache | None = None) -> tuple[Array, KVCache | None]:
    return apply(self.cfg, params_of(self), tokens_bt, positions_bt, segment_ids_bt, cache)


# ------------------------------------------------------------------------------------------------
# Pure helpers
# ------------------------------------------------------------------------------------------------
def params_of(model: Transformer) -> Params:
  """The pure parameter dict (contracts.md layout) of an NNX model."""
  return nnx.state(model, nnx.Param).to_pure_dict()


def from_params(cfg: ModelConfig, params: Params) -> Transformer:
  """An NNX model holding `params` (no random init is run)."""
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  state.replace_by_pure_dict(params)
  nnx.update(model, state)
  return model


def init_params(cfg: ModelConfig, rng: Array) -> Params:
  """Random parameters (pure dict). Jittable: `jax.jit(init_params, static_argnums=0,
  out_shardings=...)` gives parameters born sharded."""
  return params_of(Transformer(cfg, rngs=nnx.Rngs(params=rng)))


def abstract_params(cfg: ModelConfig) -> Params:
  """ShapeDtypeStructs of the parameters; allocates nothing."""
  return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


def logical_axes(cfg: ModelConfig) -> Params:
  """The parameters' logical axis names, e.g. `layers/attn/q -> ("layers","embed","heads",
  "head_dim")`, as a dict with the parameters' tree structure (tuples are leaves)."""
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  axes: Params = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    node = axes
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = tuple(var.get_metadata()["out_sharding"])
  return axes


def param_count(cfg: ModelConfig) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(cfg)))


def _remat(fn, policy: str, in_scan: bool):
  if policy == "none":
    return fn
  if policy not in REMAT_POLICIES:
    raise ValueError(f"model.remat_policy={policy!r}; expected 'none' or one of "
                     f"{sorted(REMAT_POLICIES)}")
  # Under scan, CSE cannot undo the rematerialization, so jax.checkpoint need not block it.
  return jax.checkpoint(fn, policy=REMAT_POLICIES[policy], prevent_cse=not in_scan)


def norm_fn(cfg: ModelConfig) -> Callable[[Array, dict], Array]:
  return lambda x, p: layers.norm(x, p, cfg.norm_eps, cfg.norm_plus_one)


def apply(cfg: ModelConfig, params: Params, tokens_bt: Array, positions_bt: Array,
          segment_ids_bt: Array | None = None, cache: KVCache | None = None,
          logits_at_bk: Array | None = None, hidden: bool = False,
          ) -> tuple[Array, KVCache | None]:
  """The forward pass. Returns (logits [B, T, V] float32, updated cache or None).

  tokens/positions/segment_ids: int32 [B, T]; segment_ids None = one segment per row, 0 marks
  padding. A token attends to earlier-or-equal slots of its own non-zero segment. With `cache`,
  the T new keys/values go to slots [cache.index, cache.index + T) and the queries attend over
  all cache slots under the same rule; the returned cache has index += T.
  `logits_at_bk` (int32 [B, K]): only those positions' logits, [B, K, V] (the unembedding of
  the other T - K positions is never computed: a prefill needs the last one, a loss its
  targets'). `hidden`: return the last layer's output [B, T, D] instead of logits (see
  `unembed`).
  """
  dtype = jnp.dtype(cfg.dtype)
  b, t = tokens_bt.shape
  if segment_ids_bt is None:
    segment_ids_bt = jnp.ones((b, t), jnp.int32)
  x_btd = jnp.take(params["embedder"]["embedding"], tokens_bt, axis=0).astype(dtype)
  if cfg.embed_scale:  # Gemma casts the normalizer to the compute dtype before scaling
    x_btd = x_btd * jnp.asarray(math.sqrt(cfg.d_model), dtype)
  rope_full = layers.rope_tables(positions_bt, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
  rope_local = (layers.rope_tables(positions_bt, cfg.head_dim, cfg.local_rope_theta)
                if cfg.local_rope_theta else rope_full)
  scale = cfg.query_pre_attn_scalar ** -0.5 if cfg.query_pre_attn_scalar else None
  norm = norm_fn(cfg)
  # Per layer: sliding window or not. Mixed types (Gemma 2/3) make `sliding` a scanned input
  # (a traced bool per layer), uniform ones a Python bool.
  sliding_l = cfg.sliding_layers
  uniform = len(set(sliding_l)) == 1

  def layer_rope_and_mask(sliding, mask_bts, q_slot_bt, kv_slot_s):
    mask_bts = layers.sliding_window_mask(mask_bts, q_slot_bt, kv_slot_s, cfg.sliding_window,
                                          sliding)
    if isinstance(sliding, bool):
      return (rope_local if sliding else rope_full), mask_bts
    return jax.tree.map(lambda a, b: jnp.where(sliding, a, b), rope_local, rope_full), mask_bts

  def attn_half(x_btd, p, attend_fn, rope):
    """x + attention(x) of one layer; `attend_fn(q, k, v) -> (y, aux)` (aux: updated cache)."""
    sin_bth, cos_bth = rope
    q_btnh, k_btkh, v_btkh = layers.qkv(p["attn"], norm(x_btd, p["attn_norm"]))
    if "q_norm" in p:
      q_btnh = layers.rms_norm(q_btnh, p["q_norm"]["scale"], cfg.norm_eps, cfg.norm_plus_one)
      k_btkh = layers.rms_norm(k_btkh, p["k_norm"]["scale"], cfg.norm_eps, cfg.norm_plus_one)
    y_btnh, aux = attend_fn(layers.apply_rope(q_btnh, sin_bth, cos_bth),
                            layers.apply_rope(k_btkh, sin_bth, cos_bth), v_btkh)
    y_btd = layers.out_proj(p["attn"], y_btnh)
    if "post_attn_norm" in p:
      y_btd = norm(y_btd, p["post_attn_norm"])
    return x_btd + y_btd, aux

  def mlp_half(x_btd, p):
    y_btd = layers.gated_mlp(p["mlp"], norm(x_btd, p["mlp_norm"]), cfg.mlp_activation)
    if "post_mlp_norm" in p:
      y_btd = norm(y_btd, p["post_mlp_norm"])
    return x_btd + y_btd

  if cache is None:
    slots_t = jnp.arange(t, dtype=jnp.int32)
    mask_bts = layers.attention_mask(segment_ids_bt, slots_t[None], segment_ids_bt, slots_t)

    def block(x_btd, xs):
      p, sliding = xs if not uniform else (xs, sliding_l[0])
      rope, mask = layer_rope_and_mask(sliding, mask_bts, slots_t[None], slots_t)
      attend_fn = lambda q, k, v: (layers.attend(
          q, k.astype(dtype), v.astype(dtype), mask, cfg.attention_impl, scale,
          cfg.attn_logit_softcap), None)
      x_btd, _ = attn_half(x_btd, p, attend_fn, rope)
      return mlp_half(x_btd, p), None

    block = _remat(block, cfg.remat_policy, cfg.scan_layers)
    if cfg.scan_layers:
      xs = params["layers"] if uniform else (params["layers"], jnp.asarray(sliding_l))
      x_btd, _ = jax.lax.scan(block, x_btd, xs)
    else:
      for i in range(cfg.num_layers):
        p = jax.tree.map(lambda a, i=i: a[i], params["layers"])
        x_btd, _ = block(x_btd, p if uniform else (p, sliding_l[i]))
  else:
    # With a cache: the layers unrolled over per-layer caches (see KVCache), each new key/value
    # written in place at slots [index, index + T). Sliding layers mask the full-length cache
    # down to their window (the cache keeps every slot).
    s = cache.segment_ids.shape[1]
    per_row = jnp.ndim(cache.index) == 1
    if per_row and t != 1:
      raise ValueError(f"a per-row cache index takes one token per row, got {t}")
    rows_b = jnp.arange(b)
    if per_row:  # row b writes its token at its own slot index[b]
      kv_segment_bs = cache.segment_ids.at[rows_b, cache.index].set(
          segment_ids_bt[:, 0].astype(jnp.int32))
      q_slots_bt = cache.index[:, None]
    else:
      kv_segment_bs = jax.lax.dynamic_update_slice(cache.segment_ids,
                                                   segment_ids_bt.astype(jnp.int32),
                                                   (0, cache.index))
      q_slots_bt = (cache.index + jnp.arange(t, dtype=jnp.int32))[None]
    kv_slots_s = jnp.arange(s, dtype=jnp.int32)
    mask_bts = layers.attention_mask(segment_ids_bt, q_slots_bt, kv_segment_bs, kv_slots_s)
    new_k, new_v = [], []
    for i, p in enumerate(unstack_layers(params)["layers"]):
      rope, mask = layer_rope_and_mask(sliding_l[i], mask_bts, q_slots_bt, kv_slots_s)

      def attend_fn(q_btnh, k_btkh, v_btkh, i=i, mask=mask):
        if per_row:
          k_bksh = cache.k[i].at[rows_b, :, cache.index].set(
              k_btkh[:, 0].astype(cache.k[i].dtype))
          v_bksh = cache.v[i].at[rows_b, :, cache.index].set(
              v_btkh[:, 0].astype(cache.v[i].dtype))
        else:
          at = (0, 0, cache.index, 0)
          k_bksh = jax.lax.dynamic_update_slice(
              cache.k[i], k_btkh.swapaxes(1, 2).astype(cache.k[i].dtype), at)
          v_bksh = jax.lax.dynamic_update_slice(
              cache.v[i], v_btkh.swapaxes(1, 2).astype(cache.v[i].dtype), at)
        y_btnh = layers.attend_cached(q_btnh, k_bksh.astype(dtype), v_bksh.astype(dtype), mask,
                                      scale, cfg.attn_logit_softcap, cfg.decode_attention)
        return y_btnh, (k_bksh, v_bksh)

      x_btd, (k_bksh, v_bksh) = attn_half(x_btd, p, attend_fn, rope)
      x_btd = mlp_half(x_btd, p)
      new_k.append(k_bksh)
      new_v.append(v_bksh)
    cache = KVCache(tuple(new_k), tuple(new_v), kv_segment_bs, cache.index + t)

  if hidden:
    return x_btd, cache
  if logits_at_bk is not None:
    x_btd = jnp.take_along_axis(x_btd, logits_at_bk[..., None], axis=1)
  return unembed(cfg, params, x_btd), cache


def unembed(cfg: ModelConfig, params: Params, x_btd: Array) -> Array:
  """The last layer's output [B, T, D] (`apply(..., hidden=True)`) -> logits [B, T, V] float32:
  the final norm, the unembedding (tied or not) and the final soft-cap."""
  dtype = jnp.dtype(cfg.dtype)
  x_btd = norm_fn(cfg)(x_btd, params["final_norm"])
  w_dv = (params["embedder"]["embedding"].astype(dtype).T if cfg.tie_embeddings
          else params["unembed"].astype(dtype))
  logits_btv = layers.dense(x_btd, w_dv, preferred_element_type=jnp.float32)
  return layers.softcap(logits_btv, cfg.final_logit_softcap)
