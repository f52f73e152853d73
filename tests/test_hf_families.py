"""Exact parity with transformers for every supported family (CPU, f32, eager attention).

Per family a tiny random checkpoint is built with transformers' own config class and
`save_pretrained`, with the traps on: random (non-zero) biases and norm weights, sequences
longer than the sliding window, soft-caps small enough to matter, RoPE scaling with a short
`original_max_position_embeddings` and sequences past it, tied and untied embeddings, GQA and
MQA, head_dim != d_model / heads. Checked: full-sequence logits, prefill + step-by-step decoding
through gift's KV cache, greedy `Sampler` vs `generate`, import -> export -> transformers, and a
train step from the imported checkpoint.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gift import hf  # noqa: E402
from gift import tokenizer as tokenizer_lib  # noqa: E402
from gift.model import transformer  # noqa: E402
from gift.sample import Sampler  # noqa: E402

V = 128
T = 13  # > every sliding window (4) and every original_max_position_embeddings (6)
SHAPE = dict(vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)
# family: (config class, fields, what gift must have read). head_dim 16 != 48 / 4 unless noted.
FAMILIES = {
    # Qwen2.5: q/k/v biases; here GQA, untied, YaRN, and a sliding window on layer 1 only.
    "qwen2": ("Qwen2Config", dict(
        num_key_value_heads=2, use_sliding_window=True, sliding_window=4, max_window_layers=1,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                         "original_max_position_embeddings": 6}),
        dict(qkv_bias=True, o_bias=False, layer_types=("full_attention", "sliding_attention"))),
    # Qwen3: q/k RMSNorm (x * w); MQA, tied, head_dim 16, biases on q/k/v/o.
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
                                  attention_bias=True),
              dict(qk_norm=True, norm_plus_one=False, qkv_bias=True, o_bias=True)),
    # Llama 3.1/3.2: llama3 RoPE; MLP biases (Granite-style) too.
    "llama3": ("LlamaConfig", dict(
        num_key_value_heads=2, mlp_bias=True,
        rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 6,
                         "rope_theta": 500.0}),
        dict(mlp_bias=True)),
    # DeepSeek-Coder: Llama with linear RoPE scaling; MHA, tied.
    "deepseek_linear": ("LlamaConfig", dict(
        num_key_value_heads=4, tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 100000.0}),
        dict(rope_scaling=(("factor", 4.0), ("rope_type", "linear")))),
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, head_dim=16, sliding_window=4),
                dict(sliding_window=4, layer_types=())),
    # Gemma 2: soft-caps small enough to bite, query_pre_attn_scalar != head_dim, sandwich norms,
    # alternating sliding / full layers.
    "gemma2": ("Gemma2Config", dict(
        num_key_value_heads=2, head_dim=16, sliding_window=4, query_pre_attn_scalar=10,
        attn_logit_softcapping=2.0, final_logit_softcapping=8.0),
        dict(sandwich_norms=True, attn_logit_softcap=2.0, final_logit_softcap=8.0)),
    # Gemma 3: q/k norms (1 + w), local base 1e4 unscaled on sliding layers, global 1e6 with
    # linear scaling; MQA, untied.
    "gemma3": ("Gemma3TextConfig", dict(
        num_key_value_heads=1, head_dim=16, sliding_window=4, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=False,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0,
                                            "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
        dict(qk_norm=True, norm_plus_one=True, local_rope_theta=1e4, rope_theta=1e6)),
    # StarCoder2: LayerNorm with bias, plain GELU MLP, biases everywhere, sliding window; tied.
    "starcoder2": ("Starcoder2Config", dict(num_key_value_heads=2, sliding_window=4,
                                            bos_token_id=0, eos_token_id=0),
                   dict(norm_type="layer", mlp_gated=False, mlp_bias=True, sliding_window=4)),
}
# Every family runs the logits, KV-cache and round-trip checks; these also run the sampler and
# train step in the default suite (the rest under -m slow).
QUICK = ("gemma3", "starcoder2")


def _randomize(model, seed=0):
  """Random weights everywhere (biases and norm weights included), scaled so logits are O(10)
  and the soft-caps change them."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) * (0.3 if "bias" in name else 0.2))


def _build(family, root):
  cls_name, fields, _ = FAMILIES[family]
  cfg = getattr(transformers, cls_name)(**SHAPE, **fields)
  model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
  _randomize(model)
  path = os.path.join(root, family)
  model.save_pretrained(path)
  return model, path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """family -> (transformers model, saved dir, imported (cfg, params)); built once."""
  root = str(tmp_path_factory.mktemp("hf_families"))
  cache = {}

  def get(family):
    if family not in cache:
      model, path = _build(family, root)
      cache[family] = (model, path, hf.import_hf(path))
    return cache[family]
  return get


def _tokens(b=2, t=T, seed=0):
  return np.random.default_rng(seed).integers(0, V, size=(b, t))


def _hf_logits(model, tokens_bt):
  with torch.no_grad():
    return model(torch.tensor(tokens_bt)).logits.float().numpy()


def _gift_logits(cfg, params, tokens_bt):
  b, t = tokens_bt.shape
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  logits, _ = transformer.apply(cfg, params, jnp.asarray(tokens_bt, jnp.int32), positions)
  return np.asarray(logits)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers_full_sequence_and_kv_cache(built, family):
  model, _, (cfg, params) = built(family)
  for field, value in FAMILIES[family][2].items():  # the trap reached gift's config
    assert getattr(cfg, field) == value, field
  tokens = _tokens()
  ref = _hf_logits(model, tokens)
  assert np.abs(ref).max() > 3.0
  np.testing.assert_array_less(np.abs(_gift_logits(cfg, params, tokens) - ref), 1e-4)

  # Prefill 5 tokens, then decode one at a time through the cache, past the window.
  cache = transformer.init_cache(cfg, 2, T)
  got = []
  for start, stop in [(0, 5)] + [(i, i + 1) for i in range(5, T)]:
    positions = jnp.broadcast_to(jnp.arange(start, stop, dtype=jnp.int32), (2, stop - start))
    logits, cache = transformer.apply(cfg, params, jnp.asarray(tokens[:, start:stop], jnp.int32),
                                      positions, jnp.ones((2, stop - start), jnp.int32), cache)
    got.append(np.asarray(logits))
  np.testing.assert_array_less(np.abs(np.concatenate(got, axis=1) - ref), 1e-4)

  # Continuous batching (gift serve): rows at different lengths, a cache index per row. Row 1
  # is prefilled with 3 tokens (slots 3-4 padding), row 0 with 5; then both decode together,
  # each writing at its own slot, row 0 past the window.
  segments = jnp.asarray([[1] * 5, [1, 1, 1, 0, 0]], jnp.int32)
  _, cache = transformer.apply(cfg, params, jnp.asarray(tokens[:, :5], jnp.int32),
                               jnp.broadcast_to(jnp.arange(5, dtype=jnp.int32), (2, 5)),
                               segments, transformer.init_cache(cfg, 2, T))
  index, got = jnp.asarray([5, 3], jnp.int32), []
  for _ in range(T - 5):
    step_tokens = jnp.asarray(tokens[[0, 1], np.asarray(index)][:, None], jnp.int32)
    logits, cache = transformer.apply(cfg, params, step_tokens, index[:, None], None,
                                      cache._replace(index=index))
    got.append(np.asarray(logits[:, 0]))
    index = cache.index
  got = np.stack(got, axis=1)
  np.testing.assert_array_less(np.abs(got[0] - ref[0, 5:]), 1e-4)
  np.testing.assert_array_less(np.abs(got[1] - ref[1, 3:T - 2]), 1e-4)


@pytest.mark.parametrize("family", ["gemma2", "gemma3",
                                    pytest.param("qwen2", marks=pytest.mark.slow),
                                    pytest.param("llama3", marks=pytest.mark.slow)])
def test_each_trap_changes_the_logits(built, family):
  """The checks above are not vacuous: turning the family's feature off moves the logits."""
  model, _, (cfg, params) = built(family)
  tokens = _tokens()
  ref = _gift_logits(cfg, params, tokens)
  off = {"gemma2": [dict(attn_logit_softcap=0.0), dict(final_logit_softcap=0.0),
                    dict(layer_types=(), sliding_window=0)],
         "qwen2": [dict(rope_scaling=()), dict(layer_types=(), sliding_window=0)],
         "gemma3": [dict(rope_scaling=()), dict(local_rope_theta=0.0)],
         "llama3": [dict(rope_scaling=())]}[family]
  for change in off:
    assert np.abs(_gift_logits(cfg.replace(**change), params, tokens) - ref).max() > 1e-2, change


def _round_trip(built, family, tmp_path):
  model, _, (cfg, params) = built(family)
  out = str(tmp_path / "exported")
  hf.export_hf(cfg, params, out)
  with open(os.path.join(out, "config.json")) as f:
    written = json.load(f)
  assert "rope_parameters" in written and "rope_scaling" in written  # v5 and v4.5x keys
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      out, attn_implementation="eager").eval()
  assert type(reloaded).__name__ == model.config.architectures[0]
  tokens = _tokens()
  np.testing.assert_array_less(np.abs(_hf_logits(reloaded, tokens) - _hf_logits(model, tokens)),
                               1e-5)
  cfg2, params2 = hf.import_hf(out)
  assert cfg2 == cfg
  jax.tree.map(np.testing.assert_array_equal, params2, params)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_import_export_round_trip_through_transformers(built, family, tmp_path):
  _round_trip(built, family, tmp_path)


def _greedy_matches_generate(built, family):
  model, _, (cfg, params) = built(family)
  sampler = Sampler(cfg, params, tokenizer_lib.load(None), batch_size=4, buckets=(8, 16))
  rng = np.random.default_rng(1)
  prompts = [rng.integers(3, V, size=n).tolist() for n in (3, 7)]  # left-padded together
  ours = sampler.generate_ids(prompts, max_new_tokens=9, stop_at_eos=False)
  for prompt, (completion,) in zip(prompts, ours):
    ref = model.generate(torch.tensor([prompt]), max_new_tokens=9, do_sample=False,
                         eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert completion == ref


def _train_step_moves_weights(built, family):
  from gift import step
  from gift.config import base_config
  _, _, (cfg, params) = built(family)
  train_cfg = base_config().train
  with train_cfg.unlocked():
    train_cfg.lr, train_cfg.warmup_steps = 1e-2, 0
  optimizer = step.make_optimizer(train_cfg)
  params = jax.tree.map(jnp.asarray, params)
  opt_state = optimizer.init(params)
  tokens = _tokens(2, 12, seed=3)
  seg = np.array([[1] * 7 + [2] * 5, [1] * 9 + [0] * 3])  # packed row + padding, > window
  pos = np.array([list(range(7)) + list(range(5)), list(range(9)) + [0] * 3])
  batch = dict(inputs=tokens, targets=np.roll(tokens, -1, axis=1),
               loss_mask=(seg > 0).astype(np.float32), positions=pos, segment_ids=seg)
  batch = {k: jnp.asarray(v, jnp.float32 if k == "loss_mask" else jnp.int32)
           for k, v in batch.items()}
  train_step = step.make_train_step(cfg, optimizer)
  before = jax.tree.map(np.asarray, params)
  new_params, _, metrics = train_step(params, opt_state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), new_params, before)
  assert min(jax.tree.leaves(moved)) > 0  # every parameter, biases and norms included


@pytest.mark.parametrize("family", QUICK)
def test_greedy_sampler_equals_generate(built, family):
  _greedy_matches_generate(built, family)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(set(FAMILIES) - set(QUICK)))
def test_greedy_sampler_equals_generate_all_families(built, family):
  _greedy_matches_generate(built, family)


@pytest.mark.parametrize("family", ["gemma3"])
def test_train_step_from_imported_checkpoint(built, family):
  _train_step_moves_weights(built, family)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"gemma3"}))
def test_train_step_from_imported_checkpoint_all_families(built, family):
  _train_step_moves_weights(built, family)


@pytest.mark.parametrize("layout", ["v4", pytest.param("v5", marks=pytest.mark.slow)])
def test_gemma3_multimodal_checkpoint_imports_its_text_tower(tmp_path, layout):
  """Gemma3ForConditionalGeneration: the decoder under `language_model.model.` (as
  save_pretrained writes it) or `model.language_model.` (transformers v5's module names),
  text_config read, the vision tower skipped; exported as Gemma3ForCausalLM."""
  from safetensors.numpy import load_file, save_file
  text = dict(SHAPE, num_key_value_heads=1, head_dim=16, sliding_window=4,
              layer_types=["sliding_attention", "full_attention"])
  vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                image_size=28, patch_size=14)
  cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                  image_token_index=V - 1, boi_token_index=V - 3,
                                  eoi_token_index=V - 2)
  model = transformers.Gemma3ForConditionalGeneration(cfg).eval()
  _randomize(model)
  path = str(tmp_path / "mm")
  model.save_pretrained(path)
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  assert any(k.startswith("vision_tower.") for k in tensors)
  if layout == "v5":
    tensors = {k.replace("language_model.model.", "model.language_model."): v
               for k, v in tensors.items()}
    save_file(tensors, file, metadata={"format": "pt"})
  cfg_g, params = hf.import_hf(path)
  assert cfg_g.qk_norm and cfg_g.tie_embeddings and cfg_g.local_rope_theta == 1e4
  tokens = _tokens(t=10) % (V - 3)  # no image tokens
  ref = _hf_logits(model, tokens)
  np.testing.assert_array_less(np.abs(_gift_logits(cfg_g, params, tokens) - ref), 1e-4)
  out = str(tmp_path / "text_only")
  hf.export_hf(cfg_g, params, out)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
  assert type(reloaded).__name__ == "Gemma3ForCausalLM"
  np.testing.assert_array_less(np.abs(_hf_logits(reloaded.eval(), tokens) - ref), 1e-5)
