"""RMSNorm, RoPE and the attention mask against direct NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np

from gift.model import layers


def _rope_reference(x_btnh, positions_bt, theta):
  """Hugging Face Llama's rotate-half RoPE written out in NumPy float64."""
  h = x_btnh.shape[-1]
  inv_freq = 1.0 / theta ** (np.arange(0, h, 2) / h)
  angle = positions_bt[..., None].astype(np.float64) * inv_freq  # [B, T, H/2]
  cos = np.concatenate([np.cos(angle), np.cos(angle)], -1)[:, :, None]
  sin = np.concatenate([np.sin(angle), np.sin(angle)], -1)[:, :, None]
  rotated = np.concatenate([-x_btnh[..., h // 2:], x_btnh[..., :h // 2]], -1)
  return x_btnh * cos + rotated * sin


def test_rope_matches_numpy_rotate_half_reference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 3, 16)).astype(np.float32)
  positions = rng.integers(0, 3000, size=(2, 7))
  for theta in (10_000.0, 1_000_000.0):
    sin, cos = layers.rope_tables(jnp.asarray(positions), 16, theta)
    got = layers.apply_rope(jnp.asarray(x), sin, cos)
    np.testing.assert_allclose(got, _rope_reference(x, positions, theta), atol=2e-3, rtol=0)
  # Position 0 is the identity; relative positions are what queries and keys see.
  sin, cos = layers.rope_tables(jnp.zeros((1, 1), jnp.int32), 16, 10_000.0)
  np.testing.assert_allclose(layers.apply_rope(jnp.asarray(x[:1, :1]), sin, cos), x[:1, :1])


def test_rope_dot_product_depends_only_on_relative_position():
  rng = np.random.default_rng(1)
  q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 32)), jnp.float32) for _ in range(2))

  def score(pq, pk):
    sq, cq = layers.rope_tables(jnp.array([[pq]]), 32, 10_000.0)
    sk, ck = layers.rope_tables(jnp.array([[pk]]), 32, 10_000.0)
    return float(jnp.sum(layers.apply_rope(q, sq, cq) * layers.apply_rope(k, sk, ck)))

  np.testing.assert_allclose(score(10, 3), score(107, 100), rtol=1e-4)


def test_rms_norm_in_float32_with_llama_and_gemma_scales():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 8)), jnp.bfloat16)
  w = jnp.linspace(-0.5, 0.5, 8)
  x64 = np.asarray(x, np.float64)
  normed = x64 / np.sqrt(np.mean(x64 ** 2, -1, keepdims=True) + 1e-6)
  out = layers.rms_norm(x, w, 1e-6, plus_one=False)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float64), normed * np.asarray(w), atol=2e-2)
  np.testing.assert_allclose(layers.rms_norm(x.astype(jnp.float32), w, 1e-6, plus_one=True),
                             normed * (1 + np.asarray(w)), rtol=1e-5, atol=1e-6)


def test_mask_never_sees_future_or_other_segment():
  segments = jnp.array([[1, 1, 1, 2, 2, 0, 0], [0, 0, 3, 3, 3, 3, 3]])
  slots = jnp.arange(7)
  mask = np.asarray(layers.attention_mask(segments, slots[None], segments, slots))
  seg = np.asarray(segments)
  for b in range(2):
    for t in range(7):
      for s in range(7):
        expected = s <= t and seg[b, t] == seg[b, s] and seg[b, t] != 0
        assert mask[b, t, s] == expected, (b, t, s)


def test_attention_output_ignores_future_and_other_segments_and_padding_is_finite():
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 6, 4, 8)), jnp.float32) for _ in range(3))
  k, v = k[:, :, :2], v[:, :, :2]  # GQA: 4 query heads over 2 kv heads
  segments = jnp.array([[1, 1, 1, 2, 2, 0]])
  slots = jnp.arange(6)
  mask = layers.attention_mask(segments, slots[None], segments, slots)
  out = layers.attend(q, k, v, mask)
  assert np.isfinite(np.asarray(out)).all()
  # Perturbing keys/values at t=4 (segment 2) and t=5 (padding) leaves segment 1 unchanged.
  k2 = k.at[:, 4:].add(5.0)
  v2 = v.at[:, 4:].add(5.0)
  out2 = layers.attend(q, k2, v2, mask)
  np.testing.assert_allclose(out2[:, :4], out[:, :4], rtol=1e-6)
  assert not np.allclose(out2[:, 4], out[:, 4])
  grad = jax.grad(lambda kk: layers.attend(q, kk, v, mask)[:, :5].sum())(k)
  assert np.isfinite(np.asarray(grad)).all()
