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


@pytest.mark.parametrize("kv_heads,tie", [(2, False), (1, True)])  # GQA untied, MQA tied
def test_model_gradients_match_autodiff(monkeypatch, kv_heads, tie):
  cfg = TINY.replace(num_kv_heads=kv_heads, tie_embeddings=tie)
  params = tr.init_params(cfg, jax.random.key(0))
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
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for path, got in jax.tree_util.tree_leaves_with_path(grads):
    want = want_grads
    for key in path:
      want = want[key.key]
    # float32 summation order differs: tolerance relative to the leaf's largest entry
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()),
                               err_msg=jax.tree_util.keystr(path))
