"""The decoder: parameter layout, KV-cache decoding, packing, remat, scan, dtypes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gift.model import presets
from gift.model import transformer as tr

TINY = presets.get_preset("test_tiny", vocab_size=97)
GEMMA_LIKE = TINY.replace(mlp_activation="gelu_tanh", tie_embeddings=True, embed_scale=True,
                          norm_plus_one=True, num_kv_heads=1, rope_theta=500.0)
# Gemma 3-like: a sliding layer then a global one, local/global RoPE bases, q/k norms, biases.
SLIDING = GEMMA_LIKE.replace(sliding_window=3, layer_types=("sliding_attention", "full_attention"),
                             local_rope_theta=50.0, qk_norm=True, sandwich_norms=True,
                             qkv_bias=True, rope_scaling=dict(rope_type="linear", factor=2.0))


def _tokens(b, t, seed=0, vocab=97):
  return jnp.asarray(np.random.default_rng(seed).integers(1, vocab, size=(b, t)), jnp.int32)


def _positions(b, t):
  return jnp.tile(jnp.arange(t, dtype=jnp.int32), (b, 1))


@pytest.mark.parametrize("kv_heads,tie", [(4, False), (2, False), (1, True)])
def test_param_layout_matches_contract(kv_heads, tie):
  cfg = TINY.replace(num_kv_heads=kv_heads, tie_embeddings=tie)
  L, D, N, K, H, F, V = 2, 64, 4, kv_heads, 16, 128, 97
  expected = {
      ("embedder", "embedding"): ((V, D), ("vocab", "embed")),
      ("layers", "attn_norm", "scale"): ((L, D), ("layers", "norm")),
      ("layers", "attn", "q"): ((L, D, N, H), ("layers", "embed", "heads", "head_dim")),
      ("layers", "attn", "k"): ((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim")),
      ("layers", "attn", "v"): ((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim")),
      ("layers", "attn", "o"): ((L, N, H, D), ("layers", "heads", "head_dim", "embed")),
      ("layers", "mlp_norm", "scale"): ((L, D), ("layers", "norm")),
      ("layers", "mlp", "gate"): ((L, D, F), ("layers", "embed", "mlp")),
      ("layers", "mlp", "up"): ((L, D, F), ("layers", "embed", "mlp")),
      ("layers", "mlp", "down"): ((L, F, D), ("layers", "mlp", "embed")),
      ("final_norm", "scale"): ((D,), ("norm",)),
  }
  if not tie:
    expected[("unembed",)] = ((D, V), ("embed", "vocab"))
  shapes = tr.abstract_params(cfg)
  axes = tr.logical_axes(cfg)
  flat_shapes = {tuple(k.key for k in path): x.shape
                 for path, x in jax.tree_util.tree_leaves_with_path(shapes)}
  flat_axes = {tuple(k.key for k in path): x for path, x in jax.tree_util.tree_leaves_with_path(
      axes, is_leaf=lambda x: isinstance(x, tuple))}
  assert flat_shapes == {k: s for k, (s, _) in expected.items()}
  assert flat_axes == {k: a for k, (_, a) in expected.items()}
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))
  assert tr.param_count(cfg) == sum(int(np.prod(s)) for s, _ in expected.values())


def test_norm_init_follows_llama_and_gemma_conventions():
  llama = tr.init_params(TINY, jax.random.key(0))
  gemma = tr.init_params(GEMMA_LIKE, jax.random.key(0))
  assert np.all(np.asarray(llama["final_norm"]["scale"]) == 1.0)
  assert np.all(np.asarray(gemma["layers"]["attn_norm"]["scale"]) == 0.0)


def test_nnx_module_call_equals_pure_apply():
  params = tr.init_params(TINY, jax.random.key(1))
  tokens, positions = _tokens(2, 9), _positions(2, 9)
  model = tr.from_params(TINY, params)
  got, _ = model(tokens, positions)
  want, _ = tr.apply(TINY, params, tokens, positions)
  np.testing.assert_array_equal(got, want)
  jax.tree.map(np.testing.assert_array_equal, tr.params_of(model), params)


def test_output_at_t_does_not_depend_on_later_tokens():
  params = tr.init_params(TINY, jax.random.key(2))
  tokens = _tokens(1, 12)
  changed = tokens.at[:, 7:].set((tokens[:, 7:] + 5) % 97)
  a, _ = tr.apply(TINY, params, tokens, _positions(1, 12))
  b, _ = tr.apply(TINY, params, changed, _positions(1, 12))
  np.testing.assert_allclose(a[:, :7], b[:, :7], rtol=1e-6, atol=1e-6)
  assert not np.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("cfg", [TINY, GEMMA_LIKE, SLIDING], ids=["llama", "gemma", "sliding"])
def test_packed_row_equals_separate_rows(cfg):
  params = tr.init_params(cfg, jax.random.key(3))
  a, b = _tokens(1, 5, seed=4), _tokens(1, 7, seed=5)
  packed = jnp.concatenate([a, b, jnp.zeros((1, 3), jnp.int32)], 1)
  positions = jnp.concatenate([_positions(1, 5), _positions(1, 7), jnp.zeros((1, 3), jnp.int32)],
                              1)
  segments = jnp.array([[1] * 5 + [2] * 7 + [0] * 3])
  got, _ = tr.apply(cfg, params, packed, positions, segments)
  want_a, _ = tr.apply(cfg, params, a, _positions(1, 5))
  want_b, _ = tr.apply(cfg, params, b, _positions(1, 7))
  np.testing.assert_allclose(got[:, :5], want_a, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[:, 5:12], want_b, rtol=1e-5, atol=1e-5)
  assert np.isfinite(np.asarray(got)).all()  # padding rows too


@pytest.mark.parametrize("cfg", [TINY, GEMMA_LIKE], ids=["llama", "gemma"])
def test_kv_cache_prefill_then_decode_equals_full_forward(cfg):
  params = tr.init_params(cfg, jax.random.key(6))
  tokens, positions = _tokens(2, 10, seed=7), _positions(2, 10)
  full, _ = tr.apply(cfg, params, tokens, positions)
  step = jax.jit(tr.apply, static_argnums=0)
  cache = tr.init_cache(cfg, batch_size=2, max_len=16)
  logits, cache = step(cfg, params, tokens[:, :4], positions[:, :4], None, cache)
  chunks = [logits]
  for t in range(4, 10):
    logits, cache = step(cfg, params, tokens[:, t:t + 1], positions[:, t:t + 1], None, cache)
    chunks.append(logits)
  assert int(cache.index) == 10
  np.testing.assert_allclose(jnp.concatenate(chunks, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", [TINY, SLIDING], ids=["llama", "sliding"])
def test_kv_cache_with_left_padded_prompts_equals_each_prompt_alone(cfg):
  params = tr.init_params(cfg, jax.random.key(8))
  lengths, total, new = (3, 6), 6, 4
  seqs = [_tokens(1, n + new, seed=10 + i) for i, n in enumerate(lengths)]
  # Left-pad the prompts to a common length: segment 0, positions from 0 at the first real token.
  prompt = jnp.concatenate([jnp.pad(s[:, :n], ((0, 0), (total - n, 0)))
                            for s, n in zip(seqs, lengths)])
  segments = jnp.asarray([[0] * (total - n) + [1] * n for n in lengths], jnp.int32)
  positions = jnp.asarray([[0] * (total - n) + list(range(n)) for n in lengths], jnp.int32)
  cache = tr.init_cache(cfg, batch_size=2, max_len=total + new)
  step = jax.jit(tr.apply, static_argnums=0)
  logits, cache = step(cfg, params, prompt, positions, segments, cache)
  got = [[logits[i, total - n:]] for i, n in enumerate(lengths)]
  for j in range(new):
    tok = jnp.concatenate([s[:, n + j:n + j + 1] for s, n in zip(seqs, lengths)])
    pos = jnp.asarray([[n + j] for n in lengths], jnp.int32)
    logits, cache = step(cfg, params, tok, pos, jnp.ones((2, 1), jnp.int32), cache)
    for i in range(2):
      got[i].append(logits[i])
  for i, (s, n) in enumerate(zip(seqs, lengths)):
    want, _ = tr.apply(cfg, params, s, _positions(1, n + new))
    np.testing.assert_allclose(jnp.concatenate(got[i]), want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", [TINY, SLIDING], ids=["llama", "sliding"])
def test_per_row_cache_index_decodes_each_row_at_its_own_length(cfg):
  """A cache index per row (continuous batching): rows of 2, 7 and 5 prompt tokens, each
  prefilled alone into its row of one cache at slots 0..n-1, then decoded together one token
  per step, every row writing at its own slot; each row's logits equal its full forward. The
  7 + 5 tokens of row 1 pass the sliding window of 3."""
  params = tr.init_params(cfg, jax.random.key(12))
  lengths, new, slots = (2, 7, 5), 5, 16
  seqs = [_tokens(1, n + new, seed=20 + i) for i, n in enumerate(lengths)]
  cache = tr.init_cache(cfg, batch_size=3, max_len=slots)
  prefill = jax.jit(tr.apply, static_argnums=0)
  rows = []
  for s, n in zip(seqs, lengths):
    _, c = prefill(cfg, params, s[:, :n], _positions(1, n), None,
                   tr.init_cache(cfg, batch_size=1, max_len=slots))
    rows.append(c)
  stack = lambda get: tuple(jnp.concatenate([get(r)[i] for r in rows])
                            for i in range(len(cache.k)))
  cache = cache._replace(k=stack(lambda r: r.k), v=stack(lambda r: r.v),
                         segment_ids=jnp.concatenate([r.segment_ids for r in rows]))
  index = jnp.asarray(lengths, jnp.int32)
  step = jax.jit(tr.apply, static_argnums=0)
  got = [[] for _ in lengths]
  for j in range(new):
    tok = jnp.concatenate([s[:, n + j:n + j + 1] for s, n in zip(seqs, lengths)])
    logits, cache = step(cfg, params, tok, index[:, None], None, cache._replace(index=index))
    index = cache.index
    for i in range(3):
      got[i].append(logits[i])
  assert cache.index.tolist() == [n + new for n in lengths]
  for i, (s, n) in enumerate(zip(seqs, lengths)):
    want, _ = tr.apply(cfg, params, s, _positions(1, n + new))
    np.testing.assert_allclose(jnp.concatenate(got[i]), want[0, n:], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="one token per row"):
    tr.apply(cfg, params, _tokens(3, 2), _positions(3, 2), None, cache)


@pytest.mark.parametrize("cached", [False, True])
def test_sliding_layer_never_sees_past_its_window(cached):
  """One sliding layer of window 3: the logits at t depend on tokens t-2..t only, in a full
  forward and when decoding token by token through the (full-length) KV cache."""
  cfg = TINY.replace(num_layers=1, sliding_window=3)
  params = tr.init_params(cfg, jax.random.key(12))
  tokens = _tokens(1, 9, seed=13)
  changed = tokens.at[:, :2].set((tokens[:, :2] + 7) % 97)  # positions 0, 1

  def run(toks):
    if not cached:
      return tr.apply(cfg, params, toks, _positions(1, 9))[0]
    cache, out = tr.init_cache(cfg, 1, 9), []
    for t in range(9):
      logits, cache = tr.apply(cfg, params, toks[:, t:t + 1], _positions(1, 9)[:, t:t + 1],
                               None, cache)
      out.append(logits)
    return jnp.concatenate(out, 1)

  a, b = run(tokens), run(changed)
  np.testing.assert_allclose(a[:, 4:], b[:, 4:], rtol=1e-6, atol=1e-6)  # t >= 4 sees 2.. only
  assert not np.allclose(a[:, 3], b[:, 3])  # t = 3 sees position 1


def _loss_and_grads(cfg, params, tokens):
  def loss(p):
    logits, _ = tr.apply(cfg, p, tokens, _positions(*tokens.shape))
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
        logits, jnp.roll(tokens, -1, 1)[..., None], -1)[..., 0])
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("variant", [
    dict(remat_policy="full"), dict(remat_policy="dots_with_no_batch_dims_saveable"),
    dict(scan_layers=False),
    pytest.param(dict(remat_policy="nothing_saveable"), marks=pytest.mark.slow),
    pytest.param(dict(remat_policy="dots_saveable"), marks=pytest.mark.slow),
    pytest.param(dict(remat_policy="everything_saveable"), marks=pytest.mark.slow)])
def test_remat_policies_and_unscanned_layers_give_the_same_loss_and_grads(variant):
  params = tr.init_params(TINY, jax.random.key(9))
  tokens = _tokens(2, 8, seed=11)
  ref_loss, ref_grads = _loss_and_grads(TINY, params, tokens)
  loss, grads = _loss_and_grads(TINY.replace(**variant), params, tokens)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads,
               ref_grads)


def test_unknown_remat_policy_is_an_error_naming_the_key():
  with pytest.raises(ValueError, match="remat_policy"):
    jax.eval_shape(lambda p: tr.apply(TINY.replace(remat_policy="bogus"), p, _tokens(1, 4),
                                      _positions(1, 4)), tr.abstract_params(TINY))


def test_bf16_compute_keeps_f32_params_and_logits():
  cfg = GEMMA_LIKE.replace(dtype="bfloat16")
  params = tr.init_params(cfg, jax.random.key(12))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  tokens = _tokens(2, 8)
  logits, _ = tr.apply(cfg, params, tokens, _positions(2, 8))
  ref, _ = tr.apply(cfg.replace(dtype="float32"), params, tokens, _positions(2, 8))
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, ref, atol=0.15 * float(jnp.abs(ref).max()))
  cache = tr.init_cache(cfg, 2, 8)
  assert all(k.dtype == jnp.bfloat16 for k in cache.k)


def test_embed_scale_multiplies_by_sqrt_d_model():
  # A large eps makes the final RMSNorm sensitive to the residual's scale; with zero attention and
  # MLP outputs the logits are then rms_norm(e * sqrt(D)) @ E^T, a closed form.
  cfg = GEMMA_LIKE.replace(num_layers=1, norm_eps=1.0)
  params = tr.init_params(cfg, jax.random.key(13))
  params["layers"]["attn"]["o"] = jnp.zeros_like(params["layers"]["attn"]["o"])
  params["layers"]["mlp"]["down"] = jnp.zeros_like(params["layers"]["mlp"]["down"])
  tokens = _tokens(1, 3)
  logits, _ = tr.apply(cfg, params, tokens, _positions(1, 3))
  table = np.asarray(params["embedder"]["embedding"])
  x = table[np.asarray(tokens[0])] * 8.0  # sqrt(64)
  want = (x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + 1.0)) @ table.T
  np.testing.assert_allclose(logits[0], want, rtol=1e-4, atol=1e-5)


def _packed_batch():
  """Two rows: [segment 1 (5) | segment 2 (7) | padding (3)] and one full segment of 15."""
  segments = jnp.array([[1] * 5 + [2] * 7 + [0] * 3, [1] * 15], jnp.int32)
  positions = jnp.array([list(range(5)) + list(range(7)) + [0] * 3, list(range(15))], jnp.int32)
  return _tokens(2, 15, seed=21), positions, segments


@pytest.mark.parametrize("cfg", [TINY, GEMMA_LIKE, pytest.param(SLIDING, marks=pytest.mark.slow)],
                         ids=["llama-gqa", "gemma-mqa", "sliding"])
def test_attention_impl_xla_equals_default_with_packing_and_padding(cfg):
  """jax.nn.dot_product_attention (the path "cudnn" also takes, with the cuDNN kernel) gives
  gift's logits and gradients on packed rows with padding; padding rows stay finite."""
  params = tr.init_params(cfg, jax.random.key(22))
  tokens, positions, segments = _packed_batch()
  weight = (segments != 0).astype(jnp.float32)

  def loss(c, p):
    logits, _ = tr.apply(c, p, tokens, positions, segments)
    xent = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
        logits, jnp.roll(tokens, -1, 1)[..., None], -1)[..., 0]
    return jnp.sum(xent * weight), logits

  (ref, ref_logits), ref_grads = jax.value_and_grad(loss, 1, has_aux=True)(cfg, params)
  alt = cfg.replace(attention_impl="xla")
  (got, got_logits), grads = jax.jit(jax.value_and_grad(loss, 1, has_aux=True),
                                     static_argnums=0)(alt, params)
  assert np.isfinite(np.asarray(got_logits)).all()
  np.testing.assert_allclose(got_logits * weight[..., None], ref_logits * weight[..., None],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads,
               ref_grads)
  # Decoding with a cache keeps the default path whatever the setting.
  cache = tr.init_cache(alt, batch_size=2, max_len=16)
  logits, _ = tr.apply(alt, params, tokens, positions, segments, cache)
  np.testing.assert_allclose(logits * weight[..., None], ref_logits * weight[..., None],
                             rtol=1e-5, atol=1e-5)


def test_attention_impl_errors_name_the_key():
  tokens, positions = _tokens(1, 4), _positions(1, 4)
  with pytest.raises(ValueError, match="attention_impl='flash'"):
    jax.eval_shape(lambda p: tr.apply(TINY.replace(attention_impl="flash"), p, tokens, positions),
                   tr.abstract_params(TINY))
  with pytest.raises(ValueError, match="attention_impl='cudnn' needs model.dtype bfloat16"):
    jax.eval_shape(lambda p: tr.apply(TINY.replace(attention_impl="cudnn"), p, tokens, positions),
                   tr.abstract_params(TINY))


STARCODER_LIKE = TINY.replace(mlp_activation="gelu_tanh", norm_type="layer", mlp_gated=False,
                              qkv_bias=True, o_bias=True, mlp_bias=True)


@pytest.mark.parametrize("cfg", [TINY, SLIDING, STARCODER_LIKE, TINY.replace(mlp_bias=True)],
                         ids=["llama", "sliding-qkv-bias", "plain-mlp-biases", "gated-biases"])
def test_fused_projections_give_the_same_logits(cfg):
  """sample.inference_params fuses q/k/v (and gate/up) per layer: same prefill and decode
  logits, biases (made non-zero) included; a LoRA-wrapped weight is left as it is."""
  from gift import lora, sample
  from gift.model import layers
  params = tr.init_params(cfg, jax.random.key(11))
  leaves, treedef = jax.tree.flatten(params)
  noise = jax.random.split(jax.random.key(12), len(leaves))
  params = jax.tree.unflatten(treedef, [x + 0.1 * jax.random.normal(k, x.shape)
                                        for x, k in zip(leaves, noise)])
  copy = lambda: jax.tree.map(jnp.copy, params)
  fused, split = sample.inference_params(copy()), sample._unstack_leafwise(copy())
  layer = fused["layers"][0]
  assert "qkv" in layer["attn"] and "q" not in layer["attn"]
  assert ("qkv_bias" in layer["attn"]) == cfg.qkv_bias
  assert ("gate_up" in layer["mlp"]) == cfg.mlp_gated
  assert ("gate_up_bias" in layer["mlp"]) == (cfg.mlp_gated and cfg.mlp_bias)
  tokens, positions = _tokens(2, 9, seed=13), _positions(2, 9)

  def run(p):
    cache = tr.init_cache(cfg, batch_size=2, max_len=12)
    first, cache = tr.apply(cfg, p, tokens[:, :6], positions[:, :6], None, cache)
    rest = [tr.apply(cfg, p, tokens[:, t:t + 1], positions[:, t:t + 1], None, cache)[0]
            for t in range(6, 9)]  # (each from the same 6-token cache)
    return jnp.concatenate([first] + rest, 1)

  want = run(split)
  assert float(jnp.abs(want).max()) > 1.0
  np.testing.assert_allclose(run(fused), want, rtol=1e-5, atol=1e-5)
  wrapped = dict(split["layers"][0], attn=dict(split["layers"][0]["attn"]))
  wrapped["attn"]["q"] = lora.LoraWeight(wrapped["attn"]["q"], jnp.zeros((64, 2)),
                                         jnp.zeros((2, 4, 16)))
  kept = layers.fuse_projections(wrapped)
  assert "qkv" not in kept["attn"] and kept["attn"]["q"] is wrapped["attn"]["q"]
