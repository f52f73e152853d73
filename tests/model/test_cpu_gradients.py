"""The hand-written CPU float32 gradients (layers.dense, the attention core) equal autodiff of the
generic einsum path, on packed rows with padding, GQA and MQA, tied and untied embeddings."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gift.model import layers, presets
from gift.model import transformer as tr

TINY = presets.get_preset("test_tiny", vocab_size=97)


def _packed_batch(b=2, t=16, seed=0):
  """Two segments per row and trailing padding (segment 0), positions restarting per segment."""
  rng = np.random.default_rng(seed)
  seg = np.array([[1] * 7 + [2] * 6 + [0] * 3, [1] * 10 + [2] * 6])[:b, :t]
  pos = np.concatenate([np.arange(7), np.arange(6), np.zeros(3, int)])[None].repeat(b, 0)
  tokens = rng.integers(1, 97, size=(b, t))
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(pos, jnp.int32), jnp.asarray(seg, jnp.int32)


def _generic_path(monkeypatch):
  monkeypatch.setattr(layers, "_cpu_float32", lambda *xs: False)


def test_dense_gradient_matches_tensordot(monkeypatch):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 5, 3, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 4, 6)), jnp.float32)

  def grads():
    return jax.grad(lambda x, w: jnp.sum(jnp.sin(layers.dense(x, w, contract=2))), (0, 1))(x, w)

  custom = grads()
  _generic_path(monkeypatch)
  for got, want in zip(custom, grads()):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# The families' math on the fast path: biases, q/k norm, mixed sliding/full layers (a scanned
# per-layer flag) with local/global RoPE bases and scaling, sandwich norms, LayerNorm and a plain
# MLP; with attention soft-capping the hand-written attention gradient is bypassed (autodiff's
# form runs), the dense one still applies.
FAMILY_MATH = {
    # Qwen2/3 + Gemma 3: the hand-written attention gradient with sliding masks.
    "biases_qknorm_mixed_windows": dict(
        mlp_activation="gelu_tanh", norm_plus_one=True, embed_scale=True, qkv_bias=True,
        o_bias=True, mlp_bias=True, qk_norm=True, sandwich_norms=True, sliding_window=3,
        layer_types=("sliding_attention", "full_attention"), local_rope_theta=100.0,
        query_pre_attn_scalar=10.0,
        rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=4)),
    # StarCoder2 + Gemma 2 soft-caps: autodiff's attention, the hand-written dense gradient.
    "layernorm_plain_mlp_softcap": dict(
        norm_type="layer", mlp_gated=False, mlp_activation="gelu_tanh", qkv_bias=True,
        o_bias=True, mlp_bias=True, sliding_window=5, attn_logit_softcap=1.0,
        final_logit_softcap=5.0),
}


def _randomized(cfg, seed=0):
  """init_params with every zero-initialized weight (biases, Gemma norms) made random."""
  params = tr.init_params(cfg, jax.random.key(seed))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(treedef, [x + 0.3 * jax.random.normal(k, x.shape)
                                      for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("kv_heads,tie,family", [(2, False, None), (1, True, None)]
                         + [(2, False, f) for f in FAMILY_MATH])  # GQA untied, MQA tied
def test_model_gradients_match_autodiff(monkeypatch, kv_heads, tie, family):
  cfg = TINY.replace(num_kv_heads=kv_heads, tie_embeddings=tie, **FAMILY_MATH.get(family, {}))
  params = _randomized(cfg) if family else tr.init_params(cfg, jax.random.key(0))
  tokens, positions, segments = _packed_batch()
  weights = jnp.asarray(np.random.default_rng(1).standard_normal((2, 16, 97)), jnp.float32)

  def value_and_grads():
    # Every position weighted, padding included: padding rows must get no gradient from their
    # (fully masked) attention, exactly as through autodiff's select.
    def loss(p):
      logits, _ = tr.apply(cfg, p, tokens, positions, segments)
      return jnp.sum(logits * weights)
    return jax.jit(jax.value_and_grad(loss))(params)

  value, grads = value_and_grads()
  _generic_path(monkeypatch)
  want_value, want_grads = value_and_grads()
  np.testing.assert_allclose(value, want_value, rtol=5e-5)  # a sum of 3k f32 logits
  for path, got in jax.tree_util.tree_leaves_with_path(grads):
    want = want_grads
    for key in path:
      want = want[key.key]
    # float32 summation order differs: tolerance relative to the leaf's largest entry
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()),
                               err_msg=jax.tree_util.keystr(path))
