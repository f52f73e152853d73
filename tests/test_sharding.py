"""Mesh sizes, the logical-axis rules, and shardings of parameters, optimizer state, batches."""
import logging

import jax
import pytest
from jax.sharding import PartitionSpec as P

from gift import config as gc
from gift import sharding, step
from gift.model import presets

TINY = presets.get_preset("test_tiny")  # N=4, K=2, D=64, F=128, V=512, untied

# What the rules must give on a (data=2, fsdp=2, tensor=2) mesh, written out by hand.
EXPECTED_222 = {
    "embedder/embedding": P("tensor", "fsdp"),
    "layers/attn_norm/scale": P(None, None),
    "layers/attn/q": P(None, "fsdp", "tensor", None),
    "layers/attn/k": P(None, "fsdp", "tensor", None),
    "layers/attn/v": P(None, "fsdp", "tensor", None),
    "layers/attn/o": P(None, "tensor", None, "fsdp"),
    "layers/mlp_norm/scale": P(None, None),
    "layers/mlp/gate": P(None, "fsdp", "tensor"),
    "layers/mlp/up": P(None, "fsdp", "tensor"),
    "layers/mlp/down": P(None, "tensor", "fsdp"),
    "final_norm/scale": P(None),
    "unembed": P("fsdp", "tensor"),
}


def flat(tree, is_leaf=None):
  return {"/".join(k.key for k in path): x
          for path, x in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)}


def test_mesh_sizes_fill_minus_one_and_reject_bad_sizes():
  assert sharding.mesh_sizes(dict(data=1, fsdp=-1, tensor=2), 8) == dict(data=1, fsdp=4,
                                                                          tensor=2)
  with pytest.raises(ValueError, match="needs 4 devices, 3 are available"):
    sharding.mesh_sizes(dict(data=2, fsdp=2, tensor=1), 3)
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.mesh_sizes(dict(data=-1, fsdp=-1, tensor=1), 8)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.mesh_sizes(dict(data=3, fsdp=-1, tensor=1), 8)
  mesh = sharding.make_mesh(dict(data=2, fsdp=-1, tensor=2))
  assert dict(zip(mesh.axis_names, mesh.devices.shape)) == dict(data=2, fsdp=2, tensor=2)


def test_param_specs_follow_the_rules_table():
  specs = sharding.param_specs(TINY, dict(data=2, fsdp=2, tensor=2))
  assert flat(specs, is_leaf=lambda x: isinstance(x, P)) == EXPECTED_222


def test_size_one_mesh_axes_are_dropped():
  specs = flat(sharding.param_specs(TINY, dict(data=1, fsdp=8, tensor=1)),
               is_leaf=lambda x: isinstance(x, P))
  assert specs["layers/attn/q"] == P(None, "fsdp", None, None)
  assert specs["embedder/embedding"] == P(None, "fsdp")


def test_indivisible_dimension_falls_back_to_replication(caplog):
  mqa = TINY.replace(num_kv_heads=1)
  with caplog.at_level(logging.INFO, logger="gift.sharding"):
    specs = flat(sharding.param_specs(mqa, dict(data=2, fsdp=2, tensor=2)),
                 is_leaf=lambda x: isinstance(x, P))
  assert specs["layers/attn/k"] == P(None, "fsdp", None, None)
  assert specs["layers/attn/q"] == P(None, "fsdp", "tensor", None)
  assert "layers/attn/k" in caplog.text and "replicated" in caplog.text
  # 4 heads over tensor=8 do not divide either; the model still gets a sharding.
  specs = flat(sharding.param_specs(TINY, dict(data=1, fsdp=1, tensor=8)),
               is_leaf=lambda x: isinstance(x, P))
  assert specs["layers/attn/q"] == P(None, None, None, None)
  assert specs["layers/mlp/gate"] == P(None, None, "tensor")


def test_optimizer_state_follows_params_and_batch_splits_over_data_and_fsdp():
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  optimizer = step.make_optimizer(gc.base_config().train)
  p_sh, o_sh = step.state_shardings(TINY, optimizer, mesh)
  adam = [s for s in jax.tree.leaves(o_sh, is_leaf=lambda x: hasattr(x, "mu"))
          if hasattr(s, "mu")]
  assert len(adam) == 1
  for slot in (adam[0].mu, adam[0].nu):
    assert {k: s.spec for k, s in flat(slot).items()} == EXPECTED_222
  # Everything else (step counts, hyperparameters) is replicated: only mu/nu are split.
  split = [s for s in jax.tree.leaves(o_sh) if any(a is not None for a in s.spec)]
  assert len(split) == 2 * sum(any(a is not None for a in v) for v in EXPECTED_222.values())
  assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))


def test_bytes_per_device_divides_sharded_dims():
  sizes = dict(data=2, fsdp=4, tensor=2)
  assert sharding.bytes_per_device((8, 16), "float32", P("fsdp", "tensor"), sizes) == 2 * 8 * 4
  assert sharding.bytes_per_device((8,), "bfloat16", P(None), sizes) == 16
