"""LoRA / QLoRA core (gift/lora.py): step 0 == base, unmerged == merged, adapter gradients vs
plain autodiff, no gradient or optimizer state for the base, NF4/int8 against references,
adapter shardings on the 8-device CPU mesh, grad accumulation, remat, dropout, config errors."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gift import config as gc
from gift import lora, sharding, step
from gift.model import layers, transformer
from gift.model.presets import ModelConfig

CFG = ModelConfig()  # test_tiny shape, f32
LCFG = lora.LoraConfig(rank=4, alpha=8.0)


def _batch(b=4, t=16, v=256, seed=0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
  seg = np.ones((b, t), np.int32)
  seg[:, t // 2:] = 2  # two packed segments per row
  pos = np.concatenate([np.arange(t // 2)] * 2)[None].repeat(b, 0)
  return dict(inputs=tokens, targets=jnp.roll(tokens, -1, 1), loss_mask=jnp.ones((b, t)),
              positions=jnp.asarray(pos, jnp.int32), segment_ids=jnp.asarray(seg))


def _random_adapters(cfg, lcfg, seed=1, scale=0.1):
  ad = lora.init_adapters(cfg, lcfg, jax.random.key(seed))
  leaves, tree = jax.tree.flatten(ad)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


@functools.partial(jax.jit, static_argnums=0)
def _logits(cfg, params, batch):
  return transformer.apply(cfg, params, batch["inputs"], batch["positions"],
                           batch["segment_ids"])[0]


@pytest.fixture(scope="module")
def params():
  return transformer.init_params(CFG, jax.random.key(0))


def test_default_targets_are_every_attention_and_mlp_projection():
  names = {t.name: (t.lead, t.contract) for t in lora.targets(CFG, LCFG)}
  assert names == {f"layers/attn/{k}": (1, 2 if k == "o" else 1) for k in "qkvo"} | {
      f"layers/mlp/{k}": (1, 1) for k in ("gate", "up", "down")}
  ad = lora.abstract_adapters(CFG, LCFG)
  assert ad["layers"]["attn"]["q"]["a"].shape == (2, 64, 4)
  assert ad["layers"]["attn"]["q"]["b"].shape == (2, 4, 4, 16)
  assert ad["layers"]["attn"]["o"]["a"].shape == (2, 4, 16, 4)
  assert ad["layers"]["attn"]["o"]["b"].shape == (2, 4, 64)


def test_step_0_is_the_base_exactly_and_unmerged_equals_merged(params):
  batch = _batch()
  base = lora.prepare_base(CFG, LCFG, params)
  fresh = lora.init_adapters(CFG, LCFG, jax.random.key(3))
  assert all(not np.any(np.asarray(d["b"])) for d in jax.tree.leaves(
      fresh, is_leaf=lambda x: isinstance(x, dict) and "b" in x))
  want = _logits(CFG, params, batch)
  np.testing.assert_array_equal(_logits(CFG, lora.combine(CFG, LCFG, base, fresh), batch), want)
  trained = _random_adapters(CFG, LCFG)
  unmerged = _logits(CFG, lora.combine(CFG, LCFG, base, trained), batch)
  merged = _logits(CFG, lora.merge(CFG, LCFG, base, trained), batch)
  np.testing.assert_allclose(unmerged, merged, atol=2e-5, rtol=0)
  assert np.abs(unmerged - want).max() > 1e-2


@pytest.mark.parametrize("remat", [pytest.param("none", marks=pytest.mark.slow), "full"])
def test_adapter_gradients_match_autodiff_of_the_merged_model(params, monkeypatch, remat):
  """The hand-written paths (frozen-base dx, CPU row-major dense for a and b) against JAX's own
  autodiff of the merged weights with every CPU fast path off."""
  cfg = dataclasses.replace(CFG, remat_policy=remat)
  batch = _batch()
  base = lora.prepare_base(cfg, LCFG, params)
  adapters = _random_adapters(cfg, LCFG)

  def loss(fn):
    def f(ad):
      s, w = step.loss_terms(cfg, fn(ad), batch)
      return s / w
    return f

  got = jax.jit(jax.grad(loss(lambda ad: lora.combine(cfg, LCFG, base, ad))))(adapters)
  monkeypatch.setattr(layers, "_cpu_float32", lambda *a: False)
  want = jax.jit(jax.grad(loss(lambda ad: lora.merge(cfg, LCFG, base, ad))))(adapters)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-4)


def test_frozen_dense_gradient_matches_autodiff():
  x = jax.random.normal(jax.random.key(0), (3, 5, 4, 6))
  w = jax.random.normal(jax.random.key(1), (4, 6, 7))
  f = lambda x: jnp.sum(jnp.sin(lora.frozen_dense(x, w, 2)))  # noqa: E731
  g = lambda x: jnp.sum(jnp.sin(jnp.tensordot(x, w, 2)))  # noqa: E731
  np.testing.assert_allclose(jax.grad(f)(x), jax.grad(g)(x), atol=1e-5, rtol=1e-5)


def _params_heavy():
  """A model whose weights dwarf its activations at a tiny batch (so buffers are visible)."""
  return ModelConfig(vocab_size=256, num_layers=6, d_model=256, num_heads=4, num_kv_heads=4,
                     head_dim=64, mlp_dim=1024)


@pytest.mark.slow
def test_no_gradient_or_optimizer_state_for_the_frozen_base():
  cfg = _params_heavy()
  opt = step.make_optimizer(gc.base_config().train)
  batch = _batch(b=1, t=8)
  base_bytes = 4 * transformer.param_count(cfg)
  abstract_ad = lora.abstract_adapters(cfg, LCFG)
  ad_leaves = jax.tree.leaves(abstract_ad)
  opt_state = jax.eval_shape(opt.init, abstract_ad)
  per_param = [x for x in jax.tree.leaves(opt_state) if x.ndim]
  assert sorted(x.shape for x in per_param) == sorted(2 * [x.shape for x in ad_leaves])

  lstep = lora.make_train_step(cfg, LCFG, opt)
  base = jax.eval_shape(lambda: lora.prepare_base(
      cfg, LCFG, transformer.init_params(cfg, jax.random.key(0))))
  mem = lstep.lower(base, abstract_ad, opt_state, batch).compile().memory_analysis()
  full = step.make_train_step(cfg, opt)
  abstract_p = transformer.abstract_params(cfg)
  full_mem = full.lower(abstract_p, jax.eval_shape(opt.init, abstract_p), batch
                        ).compile().memory_analysis()
  # Full fine-tuning materializes a gradient per weight (>= the weights' bytes); LoRA's step
  # holds the adapters' gradients, activations and the scanned layer's weight slice (1/6).
  assert full_mem.temp_size_in_bytes >= base_bytes
  assert mem.temp_size_in_bytes < 0.3 * base_bytes, (mem.temp_size_in_bytes, base_bytes)
  assert mem.output_size_in_bytes < 0.1 * base_bytes  # adapters + AdamW state + metrics


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_nf4_matches_a_numpy_reference(dtype):
  w = np.asarray(jax.random.normal(jax.random.key(0), (2, 48, 3, 128)), np.float32)
  q = lora.quantize(w, "nf4", (1,), 64, dtype)
  assert q.codes.dtype == jnp.uint8 and q.codes.shape == (2, 48, 3, 64)
  assert q.scales.shape == (2, 48, 3, 2) and q.shape == w.shape
  blocks = w.reshape(2, 48, 3, 2, 64)
  absmax = np.abs(blocks).max(-1, keepdims=True)
  idx = np.abs((blocks / absmax)[..., None] - lora.NF4_LEVELS).argmin(-1).reshape(w.shape)
  codes = np.asarray(q.codes)
  got_idx = np.stack([codes >> 4, codes & 15], -1).reshape(w.shape)
  assert (got_idx == idx).mean() > 0.999  # ties at midpoints may round either way
  ref = (lora.NF4_LEVELS[idx].reshape(blocks.shape) * absmax).reshape(w.shape)
  np.testing.assert_allclose(np.asarray(q.dequantize(jnp.float32)), ref, atol=1e-6)
  assert np.abs(ref - w).max() <= 0.2 * np.abs(w).max()  # 4 bits: coarse but bounded


def test_int8_is_per_output_channel():
  w = np.asarray(jax.random.normal(jax.random.key(0), (2, 4, 16, 64)), np.float32)
  q = lora.quantize(w, "int8", (1, 2))  # o: contracts (N, H)
  assert q.codes.dtype == jnp.int8 and q.scales.shape == (2, 1, 1, 64)
  scale = np.abs(w).max(axis=(1, 2), keepdims=True) / 127
  ref = np.clip(np.round(w / scale), -127, 127) * scale
  np.testing.assert_allclose(np.asarray(q.dequantize()), ref, atol=1e-6)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_quantized_matmul_matches_the_dequantized_reference(kind, dtype):
  w = jax.random.normal(jax.random.key(0), (32, 4, 16))
  x = jax.random.normal(jax.random.key(1), (2, 5, 32)).astype(dtype)
  q = lora.quantize(w, kind, (0,), 16, dtype)
  ref_w = q.dequantize(dtype)
  f = lambda x: layers.dense(x, q)  # noqa: E731
  g = lambda x: jnp.tensordot(x, ref_w, 1)  # noqa: E731
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(f(x), np.float32), np.asarray(g(x), np.float32),
                             atol=tol * 10, rtol=tol)
  dx = jax.grad(lambda x: jnp.sum(f(x).astype(jnp.float32) ** 2))(x)
  dx_ref = jax.grad(lambda x: jnp.sum(g(x).astype(jnp.float32) ** 2))(x)
  np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32),
                             atol=tol * 20, rtol=tol * 2)


@pytest.mark.parametrize("quant", ["nf4", pytest.param("int8", marks=pytest.mark.slow)])
def test_qlora_model_equals_its_dequantized_reference(params, quant):
  lq = lora.LoraConfig(peft="qlora", rank=4, quant=quant, block_size=16)
  base = jax.jit(lambda p: lora.prepare_base(CFG, lq, p))(params)
  assert isinstance(base["layers"]["mlp"]["down"], lora.QuantizedWeight)
  assert not isinstance(base["embedder"]["embedding"], lora.QuantizedWeight)
  ad = _random_adapters(CFG, lq)
  batch = _batch()
  deq = jax.jit(lora.dequantized_base)(base)
  got = _logits(CFG, lora.combine(CFG, lq, base, ad), batch)
  ref = _logits(CFG, lora.combine(CFG, lq, deq, ad), batch)
  np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)
  grad = jax.jit(jax.grad(lambda a, b: step.loss_terms(CFG, lora.combine(CFG, lq, b, a),
                                                       batch)[0]))
  g1, g2 = grad(ad, base), grad(ad, deq)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_adapters_and_quantized_base_shard_like_their_weights_on_8_devices(params):
  mesh = sharding.make_mesh(dict(data=1, fsdp=4, tensor=2))
  lq = lora.LoraConfig(peft="qlora", rank=4, block_size=16)
  specs = jax.tree.map(lambda s: s.spec, lora.adapter_shardings(CFG, lq, mesh))
  attn, mlp = specs["layers"]["attn"], specs["layers"]["mlp"]
  assert attn["q"] == {"a": P(None, "fsdp", None), "b": P(None, None, "tensor", None)}
  assert attn["k"] == {"a": P(None, "fsdp", None), "b": P(None, None, "tensor", None)}
  assert attn["o"] == {"a": P(None, "tensor", None, None), "b": P(None, None, "fsdp")}
  assert mlp["gate"] == {"a": P(None, "fsdp", None), "b": P(None, None, "tensor")}
  assert mlp["down"] == {"a": P(None, "tensor", None), "b": P(None, None, "fsdp")}
  b_sh = lora.base_shardings(CFG, lq, mesh)
  q = b_sh["layers"]["attn"]["q"]
  assert q.codes.spec == P(None, "fsdp", "tensor", None)
  assert q.scales.spec == P(None, "fsdp", "tensor", None)

  opt = step.make_optimizer(gc.base_config().train)
  lstep = lora.make_train_step(CFG, lq, opt, mesh=mesh)
  base = jax.jit(lambda p: lora.prepare_base(CFG, lq, p), out_shardings=b_sh)(params)
  a_sh = lora.adapter_shardings(CFG, lq, mesh)
  ad = jax.jit(lambda: lora.init_adapters(CFG, lq, jax.random.key(0)), out_shardings=a_sh)()
  o = jax.jit(opt.init)(ad)
  ad2, o2, m = lstep(base, ad, o, _batch(b=8))
  for x, s in zip(jax.tree.leaves(ad2), jax.tree.leaves(a_sh)):
    assert x.sharding.spec == s.spec
  mu = [x for x in jax.tree.leaves(o2) if x.ndim]
  assert {x.sharding.spec for x in mu} == {s.spec for s in jax.tree.leaves(a_sh)}
  assert np.isfinite(float(m["loss"]))


@pytest.mark.slow
def test_grad_accumulation_and_remat_match_one_step(params):
  opt = step.make_optimizer(gc.base_config().train)
  batch = _batch(b=4)
  base = lora.prepare_base(CFG, LCFG, params)
  out = {}
  for name, cfg, accum in [("one", CFG, 1), ("accum", CFG, 2),
                           ("remat", dataclasses.replace(CFG, remat_policy="full"), 2)]:
    ad = _random_adapters(cfg, LCFG)
    new, _, m = lora.make_train_step(cfg, LCFG, opt, grad_accum=accum)(base, ad, opt.init(ad),
                                                                       batch)
    out[name] = (new, m)
  for name in ("accum", "remat"):
    np.testing.assert_allclose(out[name][1]["loss"], out["one"][1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(out[name][1]["grad_norm"], out["one"][1]["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(out[name][0]), jax.tree.leaves(out["one"][0])):
      np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


def test_dropout_is_seeded_and_active():
  """Dropout on the adapter input only: per key deterministic, off without a key. (Seeded per
  step in training: the e2e resume test runs with dropout and resumes bitwise.)"""
  x = jax.random.normal(jax.random.key(0), (4, 8, 16))
  base = jax.random.normal(jax.random.key(1), (16, 12))
  a, b = jax.random.normal(jax.random.key(2), (16, 4)), jax.random.normal(jax.random.key(3),
                                                                          (4, 12))
  y = lambda key: layers.dense(x, lora.LoraWeight(base, a, b, key, 2.0, 0.5))  # noqa: E731
  k1, k2 = jax.random.key(7), jax.random.key(8)
  np.testing.assert_array_equal(y(k1), y(k1))
  assert np.abs(y(k1) - y(k2)).max() > 1e-3
  no_drop = x @ base + (x @ a @ b) * 2.0
  np.testing.assert_allclose(y(None), no_drop, atol=1e-4, rtol=1e-5)
  keep = jax.random.bernoulli(k1, 0.5, x.shape)
  np.testing.assert_allclose(y(k1), x @ base + ((jnp.where(keep, x / 0.5, 0)) @ a @ b) * 2.0,
                             atol=1e-4, rtol=1e-5)


def test_config_errors_name_the_field():
  with pytest.raises(gc.ConfigError, match="train.peft='dora'"):
    gc.parse_args(["--config.train.peft=dora"])
  with pytest.raises(gc.ConfigError, match="lora.targets"):
    gc.parse_args(["--config.train.peft=lora", "--config.lora.targets=(("])
  with pytest.raises(gc.ConfigError, match="lora.quant"):
    gc.parse_args(["--config.train.peft=qlora", "--config.lora.quant=fp4"])
  cfg, _ = gc.parse_args(["--config.train.peft=qlora", "--config.lora.rank=16"])
  assert lora.config_of(cfg).rank == 16 and lora.config_of(cfg).peft == "qlora"
  with pytest.raises(ValueError, match="matches no parameter; parameter paths: .*layers/attn/q"):
    lora.targets(CFG, dataclasses.replace(LCFG, targets="nothing_here"))
  with pytest.raises(ValueError, match="not a projection matrix"):
    lora.targets(CFG, dataclasses.replace(LCFG, targets="norm"))
