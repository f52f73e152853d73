"""Device mesh and shardings: one table maps logical axis names to mesh axes.

The mesh has axes ("data", "fsdp", "tensor"), sizes from `cfg.mesh` (one of them may be -1:
whatever devices are left). Parameters carry logical axis names (`transformer.logical_axes`);
`RULES` maps each name to mesh axes. A rule whose mesh size does not divide the dimension (e.g.
MQA's kv_heads=1 over tensor=2) falls back to replicating that dimension, with a log line.
Optimizer state follows its parameters; batches are split over ("data", "fsdp").

  mesh = make_mesh(cfg.mesh)
  p_shard = param_shardings(model_cfg, mesh)
  params = jax.jit(transformer.init_params, static_argnums=0, out_shardings=p_shard)(model_cfg, rng)
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gift.model import transformer
from gift.model.presets import ModelConfig

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),  # activations and input batches
    "embed": "fsdp",  # ZeRO-3 style: every weight matrix is split along d_model over fsdp
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "layers": None,
    "head_dim": None,
    "norm": None,
}

log = logging.getLogger(__name__)


def mesh_sizes(mesh_cfg: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Resolves the config's mesh sizes (at most one -1) against `num_devices`."""
  sizes = {a: int(mesh_cfg[a]) for a in MESH_AXES}
  fill = [a for a, n in sizes.items() if n == -1]
  if len(fill) > 1 or any(n == 0 or n < -1 for n in sizes.values()):
    raise ValueError(f"config mesh {sizes}: sizes must be positive, with at most one -1")
  known = math.prod(n for n in sizes.values() if n != -1)
  if fill:
    if num_devices % known:
      raise ValueError(f"config mesh {sizes}: {num_devices} devices are not divisible by {known}")
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"config mesh {sizes} needs {math.prod(sizes.values())} devices, "
                     f"{num_devices} are available")
  return sizes


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh over `devices` (default: all), GSPMD-propagated."""
  devices = jax.devices() if devices is None else list(devices)
  sizes = mesh_sizes(mesh_cfg, len(devices))
  return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int],
                    sizes: Mapping[str, int], name: str = "") -> P:
  """PartitionSpec for one array with logical `axes` on a mesh of `sizes` (axis -> size).

  Mesh axes of size 1 are dropped; a dimension whose mesh size does not divide it, or whose
  mesh axis is already used by an earlier dimension, is replicated (logged).
  """
  spec, used = [], set()
  for dim, (logical, n) in enumerate(zip(axes, shape)):
    if logical is not None and logical not in RULES:
      raise ValueError(f"{name}: logical axis {logical!r} has no sharding rule; known: "
                       f"{sorted(RULES)}")
    rule = RULES.get(logical) if logical is not None else None
    mesh_axes = tuple(a for a in ((rule,) if isinstance(rule, str) else rule or ())
                      if sizes[a] > 1)
    split = math.prod(sizes[a] for a in mesh_axes)
    if mesh_axes and (n % split or used & set(mesh_axes)):
      log.info("%s: dim %d (%s, size %d) is not split over %s (size %d); replicated",
               name, dim, logical, n, mesh_axes, split)
      mesh_axes = ()
    used |= set(mesh_axes)
    spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return P(*spec)


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def param_specs(model_cfg: ModelConfig, sizes: Mapping[str, int]) -> Any:
  """PartitionSpecs for the parameters (pure dict tree) on a mesh of `sizes`; no devices needed."""
  shapes = transformer.abstract_params(model_cfg)
  axes = transformer.logical_axes(model_cfg)
  return jax.tree_util.tree_map_with_path(
      lambda path, s, a: logical_to_spec(a, s.shape, sizes, _path_name(path)), shapes, axes)


def _sizes(mesh: Mesh) -> dict[str, int]:
  return dict(zip(mesh.axis_names, mesh.devices.shape))


def param_shardings(model_cfg: ModelConfig, mesh: Mesh) -> Any:
  """NamedShardings for the parameters, by the rules table."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(model_cfg, _sizes(mesh)),
                      is_leaf=lambda x: isinstance(x, P))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def opt_state_shardings(optimizer, params_abstract: Any, p_shardings: Any,
                        mesh: Mesh) -> Any:
  """Optimizer state shardings: per-parameter slots (AdamW mu/nu) follow their parameter, the
  rest (step counts, scalar hyperparameters) is replicated."""
  state = jax.eval_shape(optimizer.init, params_abstract)
  return optax.tree_map_params(optimizer, lambda _, s: s, state, p_shardings,
                               transform_non_params=lambda _: replicated(mesh),
                               is_leaf=lambda x: isinstance(x, NamedSharding))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows of a [B, ...] batch split over ("data", "fsdp")."""
  return NamedSharding(mesh, P(RULES["batch"]))


def bytes_per_device(shape: Sequence[int], dtype: Any, spec: P, sizes: Mapping[str, int]) -> int:
  """Bytes one device holds of an array of `shape` laid out by `spec` on a mesh of `sizes`."""
  per_dim = list(shape)
  for d, entry in enumerate(spec):
    for a in (entry,) if isinstance(entry, str) else entry or ():
      per_dim[d] //= sizes[a]
  return math.prod(per_dim) * np.dtype(dtype).itemsize
