"""LoRA and QLoRA: low-rank adapters on a frozen (optionally quantized) base.

A targeted weight w [*lead, *in, *out] (lead = the `layers` stack axis, `in` the axes `dense`
contracts) is replaced in the parameter tree by a `LoraWeight(base, a, b)` pytree node with
a [*lead, *in, r] and b [*lead, r, *out]; `layers.dense(x, LoraWeight)` computes

  y = x @ base + ((dropout(x) @ a) @ b) * alpha / r          (b starts at 0: step 0 == base)

The base is frozen: its matmul has a hand-written gradient that returns only dx (no dW is ever
computed), and training differentiates the adapters tree alone, so gradients and AdamW state
exist only for a and b. Since `lax.scan` slices pytrees leaf by leaf, stacked [L, ...] adapters
ride through the scanned layers unchanged; they are sharded like their base weight (a keeps the
input axes' mesh axes, b the output axes'; the rank axis is replicated).

QLoRA stores the base `QuantizedWeight(codes, scales)`, dequantized on the fly inside the matmul
(and again in its backward pass, so no dequantized copy is kept as a residual across layers):
  nf4:  4-bit NormalFloat codes (QLoRA's 16 levels), two per uint8, with an f32 absmax scale per
        block of `block_size` (64, as bitsandbytes) consecutive elements along the last axis;
  int8: symmetric int8 with an f32 absmax scale per output channel.

Trees (pure dicts, contracts.md layout):
  params    the base model, compute dtype; QLoRA: projections as QuantizedWeight.
  adapters  {"layers": {"attn": {"q": {"a": [L,D,r], "b": [L,r,N,H]}, ...}, ...}} f32 master.
  combine(params, adapters, lcfg) -> the tree `transformer.apply` runs (LoraWeight at targets).

Why not qwix: qwix's LoRA (`apply_lora_to_model`) is model surgery on Flax modules: it
intercepts `dot_general`/`einsum` calls inside a module's `__call__` and creates the adapter
variables on that module. gift's forward is a pure function of a params dict (the layer body is
scanned over stacked arrays, the sampler unrolls it over per-layer trees), so there is no module
call to intercept and the adapters must live in gift's own trees, checkpoints and sharding rules.
qwix's quantized arrays (QArray) also dequantize through its own dot_general, not gift's `dense`,
and its NF4 round trip (a vmapped argmin per element) is slower than the table lookup here.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from gift.model import layers

Array = jax.Array
PEFT_KINDS = ("none", "lora", "qlora")
QUANT_KINDS = ("nf4", "int8")
# Every linear projection of attention and MLP (not the embedding or unembedding).
DEFAULT_TARGETS = r"^layers/(attn/(q|k|v|o)|mlp/(gate|up|down))$"

# QLoRA's NormalFloat-4 levels (Dettmers et al. 2023, appendix E; bitsandbytes' table).
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """The adapter settings (config keys `train.peft` and `lora.*`)."""
  peft: str = "lora"  # lora | qlora
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  targets: str = DEFAULT_TARGETS
  quant: str = "nf4"  # qlora only: nf4 | int8
  block_size: int = 64  # nf4 block along the last axis

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def validate(self) -> "LoraConfig":
    if self.peft not in ("lora", "qlora"):
      raise ValueError(f"train.peft={self.peft!r}; expected one of {PEFT_KINDS}")
    if self.rank <= 0:
      raise ValueError(f"lora.rank={self.rank}; expected a positive rank")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"lora.dropout={self.dropout}; expected 0 <= dropout < 1")
    if self.quant not in QUANT_KINDS:
      raise ValueError(f"lora.quant={self.quant!r}; expected one of {QUANT_KINDS}")
    if self.block_size <= 0 or self.block_size % 2:
      raise ValueError(f"lora.block_size={self.block_size}; expected a positive even number")
    try:
      re.compile(self.targets)
    except re.error as e:
      raise ValueError(f"lora.targets={self.targets!r} is not a regular expression: {e}") from e
    return self

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "LoraConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names}).validate()


def config_of(cfg) -> LoraConfig | None:
  """The run config's LoraConfig, or None when `train.peft == "none"`."""
  peft = cfg.train.get("peft", "none")
  if peft == "none":
    return None
  return LoraConfig(peft=peft, **{k: cfg.lora[k] for k in (
      "rank", "alpha", "dropout", "targets", "quant", "block_size")}).validate()


# ------------------------------------------------------------------------------------------------
# Quantized weights
# ------------------------------------------------------------------------------------------------
@functools.partial(jax.tree_util.register_dataclass, data_fields=("codes", "scales"),
                   meta_fields=("kind", "dtype"))
@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
  """A frozen weight [*S] stored quantized. nf4: codes uint8 [*S[:-1], S[-1]/2] (element 2i in
  the high nibble), scales f32 [*S[:-1], S[-1]/block]; int8: codes int8 [*S], scales f32 [*S]
  with the contracted (input) axes of size 1. `dtype` is the dequantized compute dtype."""
  codes: Array
  scales: Array
  kind: str = "nf4"
  dtype: Any = jnp.float32

  @property
  def shape(self) -> tuple[int, ...]:
    if self.kind == "nf4":
      return (*self.codes.shape[:-1], 2 * self.codes.shape[-1])
    return tuple(self.codes.shape)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def astype(self, dtype) -> "QuantizedWeight":
    return dataclasses.replace(self, dtype=jnp.dtype(dtype))

  def dequantize(self, dtype=None) -> Array:
    return dequantize(self, self.dtype if dtype is None else dtype)

  def dense_apply(self, x: Array, contract: int, preferred_element_type=None) -> Array:
    return _quantized_dense(x, self, contract, preferred_element_type)


def nf4_block(n: int, block_size: int) -> int:
  """The block along an axis of `n`: `block_size`, or its largest even divisor of n below it."""
  if n % block_size == 0:
    return block_size
  for b in range(min(block_size, n), 1, -1):
    if n % b == 0 and b % 2 == 0:
      return b
  raise ValueError(f"nf4 needs an even last axis; got size {n}")


def quantize(w: Array, kind: str, in_axes: tuple[int, ...] = (0,), block_size: int = 64,
             dtype: Any = jnp.float32) -> QuantizedWeight:
  """w [*lead, *in, *out] -> QuantizedWeight. `in_axes`: the contracted axes (int8's
  per-output-channel scales reduce over them); nf4 blocks run along the last axis."""
  w = jnp.asarray(w, jnp.float32)
  if kind == "nf4":
    n = w.shape[-1]
    block = nf4_block(n, block_size)
    w_blk = w.reshape(*w.shape[:-1], n // block, block)
    absmax = jnp.max(jnp.abs(w_blk), axis=-1)
    safe = jnp.where(absmax > 0, absmax, 1.0)
    normed = (w_blk / safe[..., None]).reshape(w.shape)
    # Nearest level by the midpoints between sorted levels (what bitsandbytes' lookup does).
    mids = jnp.asarray((NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2)
    idx = jnp.searchsorted(mids, normed, side="left").astype(jnp.uint8)
    idx = idx.reshape(*w.shape[:-1], n // 2, 2)
    codes = (idx[..., 0] << 4) | idx[..., 1]
    return QuantizedWeight(codes, absmax.astype(jnp.float32), "nf4", jnp.dtype(dtype))
  if kind == "int8":
    absmax = jnp.max(jnp.abs(w), axis=tuple(in_axes), keepdims=True)
    scales = jnp.where(absmax > 0, absmax, 1.0) / 127.0
    codes = jnp.clip(jnp.round(w / scales), -127, 127).astype(jnp.int8)
    return QuantizedWeight(codes, scales.astype(jnp.float32), "int8", jnp.dtype(dtype))
  raise ValueError(f"quantization kind {kind!r}; expected one of {QUANT_KINDS}")


def dequantize(q: QuantizedWeight, dtype=jnp.float32) -> Array:
  """The float weight [*S] in `dtype` (the f32 product rounded once)."""
  if q.kind == "nf4":
    table = jnp.asarray(NF4_LEVELS)
    c = q.codes
    vals = jnp.stack([table[(c >> 4).astype(jnp.int32)], table[(c & 15).astype(jnp.int32)]],
                     axis=-1).reshape(*c.shape[:-1], 2 * c.shape[-1])
    nb = q.scales.shape[-1]
    vals = vals.reshape(*c.shape[:-1], nb, vals.shape[-1] // nb) * q.scales[..., None]
    return vals.reshape(*c.shape[:-1], 2 * c.shape[-1]).astype(dtype)
  return (q.codes.astype(jnp.float32) * q.scales).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _quantized_dense(x: Array, q: QuantizedWeight, contract: int, pet) -> Array:
  return jnp.tensordot(x, dequantize(q, x.dtype), contract, preferred_element_type=pet)


def _quantized_dense_fwd(x, q, contract, pet):
  return _quantized_dense(x, q, contract, pet), q  # residual: the codes, not the float weight


def _quantized_dense_bwd(contract, pet, q, dy):
  del pet
  return _frozen_dx(dy, dequantize(q, q.dtype), contract), None


_quantized_dense.defvjp(_quantized_dense_fwd, _quantized_dense_bwd)


# ------------------------------------------------------------------------------------------------
# The frozen base matmul and the LoRA weight
# ------------------------------------------------------------------------------------------------
def _frozen_dx(dy: Array, w: Array, contract: int) -> Array:
  """dx of x @ w for dy [..., *out]: dy [M, O] @ w [C, O]^T, as a plain matmul."""
  c = math.prod(w.shape[:contract])
  out = w.shape[contract:]
  m = dy.size // math.prod(out)
  dx = dy.reshape(m, -1) @ w.reshape(c, -1).astype(dy.dtype).T
  return dx.reshape(*dy.shape[:dy.ndim - len(out)], *w.shape[:contract])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def frozen_dense(x: Array, w: Array, contract: int, pet=None) -> Array:
  """x @ w with a gradient for x only: a frozen weight gets no dW (none is computed)."""
  return jnp.tensordot(x, w, contract, preferred_element_type=pet)


def _frozen_dense_fwd(x, w, contract, pet):
  return frozen_dense(x, w, contract, pet), w


def _frozen_dense_bwd(contract, pet, w, dy):
  del pet
  return _frozen_dx(dy, w, contract).astype(dy.dtype), None


frozen_dense.defvjp(_frozen_dense_fwd, _frozen_dense_bwd)


@functools.partial(jax.tree_util.register_dataclass, data_fields=("base", "a", "b", "key"),
                   meta_fields=("scale", "dropout"))
@dataclasses.dataclass(frozen=True)
class LoraWeight:
  """A frozen base weight [*S] (array or QuantizedWeight) plus adapters a [*in, r], b [r, *out];
  `key`: dropout PRNG key (None: no dropout)."""
  base: Any
  a: Array
  b: Array
  key: Any = None
  scale: float = 1.0
  dropout: float = 0.0

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.base.shape)

  @property
  def dtype(self):
    return self.base.dtype

  def astype(self, dtype) -> "LoraWeight":
    return dataclasses.replace(self, base=self.base.astype(dtype), a=self.a.astype(dtype),
                               b=self.b.astype(dtype))

  def dense_apply(self, x: Array, contract: int, preferred_element_type=None) -> Array:
    if isinstance(self.base, QuantizedWeight):
      y = self.base.dense_apply(x, contract, preferred_element_type)
    else:
      y = frozen_dense(x, self.base, contract, preferred_element_type)
    xd = x
    if self.key is not None and self.dropout > 0:
      keep = jax.random.bernoulli(self.key, 1.0 - self.dropout, x.shape)
      xd = jnp.where(keep, x / jnp.asarray(1.0 - self.dropout, x.dtype), jnp.zeros_like(x))
    h = layers.dense(xd, self.a, contract)
    delta = layers.dense(h, self.b, 1, preferred_element_type=preferred_element_type)
    return y + (delta * jnp.asarray(self.scale, delta.dtype)).astype(y.dtype)

  def merged(self, dtype=jnp.float32) -> Array:
    return merge_weight(self.base, self.a, self.b, self.scale, dtype)


def merge_weight(base: Any, a: Array, b: Array, scale: float, dtype=jnp.float32) -> Array:
  """base + (a @ b) * scale as one float array [*S] (base dequantized if quantized)."""
  w = base.dequantize(jnp.float32) if isinstance(base, QuantizedWeight) else jnp.asarray(
      base, jnp.float32)
  r = a.shape[-1]
  # a [*lead, *in, r], b [*lead, r, *out]: batch over the shared lead axes.
  n_lead = a.ndim + b.ndim - 2 - w.ndim
  lead_shape = a.shape[:n_lead]
  a3 = a.astype(jnp.float32).reshape(math.prod(lead_shape), -1, r)
  b3 = b.astype(jnp.float32).reshape(math.prod(lead_shape), r, -1)
  delta = jnp.matmul(a3, b3, precision=jax.lax.Precision.HIGHEST).reshape(w.shape)
  return (w + delta * scale).astype(dtype)


# ------------------------------------------------------------------------------------------------
# Trees: targets, adapters, the frozen base, combining and merging
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Target:
  """A targeted weight: its path, logical axes and shape, `lead` stack axes, `contract` in-axes."""
  path: tuple[str, ...]
  axes: tuple[str | None, ...]
  shape: tuple[int, ...]
  lead: int
  contract: int

  @property
  def name(self) -> str:
    return "/".join(self.path)

  @property
  def in_axes(self) -> tuple[int, ...]:
    return tuple(range(self.lead, self.lead + self.contract))

  def adapter_shapes(self, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    k = self.lead + self.contract
    return (*self.shape[:k], rank), (*self.shape[:self.lead], rank, *self.shape[k:])

  def adapter_axes(self) -> tuple[tuple, tuple]:
    k = self.lead + self.contract
    return (*self.axes[:k], None), (*self.axes[:self.lead], None, *self.axes[k:])


def _flat(tree: Mapping, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
  out = []
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out += _flat(v, prefix + (k,))
    else:
      out.append((prefix + (k,), v))
  return out


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
  for p in path:
    tree = tree[p]
  return tree


def _replace(tree: Mapping, updates: Mapping[tuple[str, ...], Any]) -> dict:
  """A copy of the nested dict `tree` with leaves at `updates`' paths replaced (shares the rest)."""
  out = dict(tree)
  heads: dict[str, dict] = {}
  for path, v in updates.items():
    if len(path) == 1:
      out[path[0]] = v
    else:
      heads.setdefault(path[0], {})[path[1:]] = v
  for k, sub in heads.items():
    out[k] = _replace(tree[k], sub)
  return out


def _nest(items: Mapping[tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for path, v in items.items():
    node = out
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = v
  return out


def _matches(model_cfg, pattern: str) -> list[Target]:
  from gift.model import transformer
  shapes = dict(_flat(transformer.abstract_params(model_cfg)))
  found = []
  for path, axes in _flat(transformer.logical_axes(model_cfg)):
    name = "/".join(path)
    if not re.search(pattern, name):
      continue
    shape = tuple(shapes[path].shape)
    lead = sum(1 for a in axes if a == "layers")
    rest = axes[lead:]
    if len(rest) < 2:
      raise ValueError(f"lora.targets={pattern!r} matches {name} {shape}, which is not a "
                       "projection matrix (norm scales and vectors cannot take an adapter)")
    # Kernels are [*in, *out]: [D, *out] (q, k, v, gate, up, unembed) or [*in, D] (o, down).
    contract = 1 if rest[0] == "embed" else len(rest) - 1
    found.append(Target(path, tuple(axes), shape, lead, contract))
  return found


def targets(model_cfg, lcfg: LoraConfig) -> list[Target]:
  """The weights that get adapters; an error if the regex matches nothing."""
  found = _matches(model_cfg, lcfg.targets)
  if not found:
    from gift.model import transformer
    names = ["/".join(p) for p, _ in _flat(transformer.logical_axes(model_cfg))]
    raise ValueError(f"lora.targets={lcfg.targets!r} matches no parameter; parameter paths: "
                     f"{', '.join(names)}")
  return found


def quantized_targets(model_cfg, lcfg: LoraConfig) -> list[Target]:
  """QLoRA quantizes every projection of attention and MLP plus any other target."""
  if lcfg.peft != "qlora":
    return []
  seen = {t.path: t for t in _matches(model_cfg, DEFAULT_TARGETS)}
  seen.update({t.path: t for t in targets(model_cfg, lcfg)})
  return list(seen.values())


def init_adapters(model_cfg, lcfg: LoraConfig, rng: Array) -> dict:
  """f32 adapters: a ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PEFT's kaiming_uniform(a=sqrt(5)))
  per layer, b = 0, so the adapted model starts as the base exactly. Jittable."""
  out = {}
  for i, t in enumerate(targets(model_cfg, lcfg)):
    a_shape, b_shape = t.adapter_shapes(lcfg.rank)
    fan_in = math.prod(t.shape[t.lead:t.lead + t.contract])
    bound = 1.0 / math.sqrt(fan_in)
    a = jax.random.uniform(jax.random.fold_in(rng, i), a_shape, jnp.float32, -bound, bound)
    out[t.path] = {"a": a, "b": jnp.zeros(b_shape, jnp.float32)}
  return _nest(out)


def abstract_adapters(model_cfg, lcfg: LoraConfig) -> dict:
  return jax.eval_shape(lambda: init_adapters(model_cfg, lcfg, jax.random.key(0)))


def adapter_logical_axes(model_cfg, lcfg: LoraConfig) -> dict:
  return _nest({t.path: dict(zip("ab", t.adapter_axes())) for t in targets(model_cfg, lcfg)})


def adapter_specs(model_cfg, lcfg: LoraConfig, sizes: Mapping[str, int]) -> dict:
  """PartitionSpecs of the adapters: a shares its base weight's input-axis sharding, b its
  output-axis sharding (e.g. q's a [L, D, r] splits D over fsdp, b [L, r, N, H] N over tensor)."""
  from gift import sharding
  out = {}
  for t in targets(model_cfg, lcfg):
    (sa, sb), (xa, xb) = t.adapter_shapes(lcfg.rank), t.adapter_axes()
    out[t.path] = {"a": sharding.logical_to_spec(xa, sa, sizes, t.name + "/a"),
                   "b": sharding.logical_to_spec(xb, sb, sizes, t.name + "/b")}
  return _nest(out)


def _mesh_sizes(mesh) -> dict[str, int]:
  return dict(zip(mesh.axis_names, mesh.devices.shape))


def _to_named(specs: Any, mesh) -> Any:
  from jax.sharding import NamedSharding, PartitionSpec
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def adapter_shardings(model_cfg, lcfg: LoraConfig, mesh) -> dict:
  return _to_named(adapter_specs(model_cfg, lcfg, _mesh_sizes(mesh)), mesh)


def prepare_base(model_cfg, lcfg: LoraConfig, params: Mapping) -> dict:
  """The frozen base: every parameter in the compute dtype; with QLoRA the projections
  quantized (QuantizedWeight). Jittable (see `base_shardings` for its out_shardings)."""
  dtype = jnp.dtype(model_cfg.dtype)
  base = jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), dict(params))
  quantized = {t.path: quantize(_get(params, t.path), lcfg.quant, t.in_axes, lcfg.block_size,
                                dtype) for t in quantized_targets(model_cfg, lcfg)}
  return _replace(base, quantized)


def abstract_base(model_cfg, lcfg: LoraConfig) -> dict:
  from gift.model import transformer
  return jax.eval_shape(lambda p: prepare_base(model_cfg, lcfg, p),
                        transformer.abstract_params(model_cfg))


def base_specs(model_cfg, lcfg: LoraConfig, sizes: Mapping[str, int]) -> dict:
  """PartitionSpecs of `prepare_base`'s tree: arrays as the full model's; quantized codes and
  scales by their weight's logical axes (a dimension the mesh does not divide is replicated)."""
  from gift import sharding
  specs = sharding.param_specs(model_cfg, sizes)
  shapes = abstract_base(model_cfg, lcfg)
  updates = {}
  for t in quantized_targets(model_cfg, lcfg):
    q = _get(shapes, t.path)
    updates[t.path] = dataclasses.replace(
        q, codes=sharding.logical_to_spec(t.axes, q.codes.shape, sizes, t.name + "/codes"),
        scales=sharding.logical_to_spec(t.axes, q.scales.shape, sizes, t.name + "/scales"))
  return _replace(specs, updates)


def base_shardings(model_cfg, lcfg: LoraConfig, mesh) -> dict:
  return _to_named(base_specs(model_cfg, lcfg, _mesh_sizes(mesh)), mesh)


def combine(model_cfg, lcfg: LoraConfig, base: Mapping, adapters: Mapping,
            key: Array | None = None) -> dict:
  """The tree `transformer.apply` runs: LoraWeight(base, a, b) at each target. `key` (training
  with dropout) gives each target and layer its own dropout key."""
  updates = {}
  for i, t in enumerate(targets(model_cfg, lcfg)):
    ad = _get(adapters, t.path)
    k = None
    if key is not None and lcfg.dropout > 0:
      k = jax.random.fold_in(key, i)
      if t.lead:
        k = jax.random.split(k, t.shape[0])
    updates[t.path] = LoraWeight(_get(base, t.path), ad["a"], ad["b"], k, lcfg.scale,
                                 lcfg.dropout)
  return _replace(base, updates)


def merge(model_cfg, lcfg: LoraConfig, base: Mapping, adapters: Mapping,
          dtype=jnp.float32) -> dict:
  """A plain params tree: base + a @ b * scale at the targets, quantized weights dequantized."""
  def plain(x):
    return x.dequantize(dtype) if isinstance(x, QuantizedWeight) else jnp.asarray(x, dtype)
  out = jax.tree.map(plain, dict(base), is_leaf=lambda x: isinstance(x, QuantizedWeight))
  updates = {}
  for t in targets(model_cfg, lcfg):
    ad = _get(adapters, t.path)
    updates[t.path] = merge_weight(_get(base, t.path), ad["a"], ad["b"], lcfg.scale, dtype)
  return _replace(out, updates)


def dequantized_base(base: Mapping, dtype=jnp.float32) -> dict:
  """The base with every QuantizedWeight replaced by its dequantized array."""
  return jax.tree.map(
      lambda x: x.dequantize(dtype) if isinstance(x, QuantizedWeight) else x, dict(base),
      is_leaf=lambda x: isinstance(x, QuantizedWeight))


# ------------------------------------------------------------------------------------------------
# Training: gradients and optimizer state for the adapters only
# ------------------------------------------------------------------------------------------------
def _step_count(opt_state: Any) -> Array:
  """The update count kept by optax.inject_hyperparams (the step being taken, from 0)."""
  for node in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "hyperparams")):
    if hasattr(node, "hyperparams"):
      return node.count
  raise ValueError("optimizer state has no inject_hyperparams count")


def make_train_step(model_cfg, lcfg: LoraConfig, optimizer, *, grad_accum: int = 1,
                    mesh=None, seed: int = 0, jit: bool = True):
  """`step(base, adapters, opt_state, batch) -> (adapters, opt_state, metrics)` (jitted; adapters
  and opt_state donated, the base not). The loss is `gift.step.loss_terms` of the combined tree,
  differentiated with respect to the adapters alone; metrics as `gift.step.make_train_step`."""
  import optax

  from gift import sharding
  from gift import step as step_lib

  def loss(adapters, base, mb, key):
    return step_lib.loss_terms(model_cfg, combine(model_cfg, lcfg, base, adapters, key), mb)

  grad_fn = jax.value_and_grad(loss, has_aux=True)

  def step(base, adapters, opt_state, batch):
    key = jax.random.fold_in(jax.random.key(seed), _step_count(opt_state))
    if grad_accum == 1:
      (loss_sum, weight), grads = grad_fn(adapters, base, batch, key)
    else:
      def accumulate(carry, mb_i):
        g_acc, l_acc, w_acc = carry
        mb, i = mb_i
        (l, w), g = grad_fn(adapters, base, mb, jax.random.fold_in(key, i))
        return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, w_acc + w), None

      zeros = (jax.tree.map(jnp.zeros_like, adapters), jnp.zeros((), jnp.float32),
               jnp.zeros((), jnp.float32))
      mbs = step_lib._microbatches(batch, grad_accum, mesh)  # noqa: SLF001 - same split
      (grads, loss_sum, weight), _ = jax.lax.scan(
          accumulate, zeros, (mbs, jnp.arange(grad_accum)))
    denom = jnp.maximum(weight, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, opt_state, adapters)
    adapters = optax.apply_updates(adapters, updates)
    metrics = dict(loss=loss_sum / denom, grad_norm=optax.global_norm(grads),
                   lr=jnp.asarray(step_lib.current_lr(opt_state), jnp.float32), num_tokens=weight)
    return adapters, opt_state, metrics

  if not jit:
    return step
  if mesh is None:
    return jax.jit(step, donate_argnums=(1, 2))
  b_sh, a_sh, o_sh = state_shardings(model_cfg, lcfg, optimizer, mesh)
  return jax.jit(step, donate_argnums=(1, 2),
                 in_shardings=(b_sh, a_sh, o_sh, sharding.batch_sharding(mesh)),
                 out_shardings=(a_sh, o_sh, sharding.replicated(mesh)))


def state_shardings(model_cfg, lcfg: LoraConfig, optimizer, mesh) -> tuple[Any, Any, Any]:
  """(base, adapter, optimizer-state) shardings."""
  from gift import sharding
  a_sh = adapter_shardings(model_cfg, lcfg, mesh)
  o_sh = sharding.opt_state_shardings(optimizer, abstract_adapters(model_cfg, lcfg), a_sh, mesh)
  return base_shardings(model_cfg, lcfg, mesh), a_sh, o_sh


def make_eval_step(model_cfg, lcfg: LoraConfig, mesh=None):
  """`eval_step(base, adapters, batch) -> {"loss_sum", "weight"}` (jitted)."""
  from gift import sharding
  from gift import step as step_lib

  def eval_step(base, adapters, batch):
    loss_sum, weight = step_lib.loss_terms(model_cfg, combine(model_cfg, lcfg, base, adapters),
                                           batch)
    return dict(loss_sum=loss_sum, weight=weight)

  if mesh is None:
    return jax.jit(eval_step)
  return jax.jit(eval_step, in_shardings=(
      base_shardings(model_cfg, lcfg, mesh), adapter_shardings(model_cfg, lcfg, mesh),
      sharding.batch_sharding(mesh)), out_shardings=sharding.replicated(mesh))
