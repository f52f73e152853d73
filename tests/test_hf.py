"""HF import/export: logit and greedy-generation parity with transformers (CPU, f32, eager
attention) on tiny random Llama/Gemma checkpoints, round trips, file formats and errors."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from gift import checkpoint, hf  # noqa: E402
from gift import tokenizer as tokenizer_lib  # noqa: E402
from gift.model import transformer  # noqa: E402
from gift.sample import Sampler  # noqa: E402

V = 128
SHAPE = dict(vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=256)
# name: (config class, fields). Gemma's explicit head_dim (16) differs from D/N (12).
CASES = {
    "llama_gqa_untied": ("LlamaConfig", dict(num_key_value_heads=2, rope_theta=10000.0)),
    "llama_mqa_tied_theta1e6": ("LlamaConfig", dict(
        num_key_value_heads=1, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "llama_mha_head_dim_theta500": ("LlamaConfig", dict(num_key_value_heads=4, head_dim=8,
                                                        rope_theta=500.0)),
    "gemma_mqa_tied": ("GemmaConfig", dict(num_key_value_heads=1, head_dim=16)),
    "gemma_gqa_untied_theta3e4": ("GemmaConfig", dict(
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=False, rope_theta=30000.0)),
}


def _make_hf(tmp_path, case: str, dtype=None, legacy_rope=False):
  """A random HF model saved with save_pretrained; weights scaled up so logits are O(1-10)."""
  cls_name, fields = CASES[case]
  cfg = getattr(transformers, cls_name)(**SHAPE, **fields)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn_like(p) * (0.3 if "norm" in name else 0.15))
  path = str(tmp_path / case)
  if dtype is not None:
    model = model.to(dtype)
  model.save_pretrained(path)
  if legacy_rope:  # transformers v4 style: top-level rope_theta, no rope_parameters
    with open(os.path.join(path, "config.json")) as f:
      c = json.load(f)
    c["rope_theta"] = c.pop("rope_parameters")["rope_theta"]
    with open(os.path.join(path, "config.json"), "w") as f:
      json.dump(c, f)
  return model.float(), path


def _tokens(b=2, t=13, seed=0):
  return np.random.default_rng(seed).integers(0, V, size=(b, t))


def _gift_logits(cfg, params, tokens_bt):
  b, t = tokens_bt.shape
  positions = np.broadcast_to(np.arange(t), (b, t))
  logits, _ = transformer.apply(cfg, params, jnp.asarray(tokens_bt, jnp.int32),
                                jnp.asarray(positions, jnp.int32))
  return np.asarray(logits)


def _hf_logits(model, tokens_bt):
  with torch.no_grad():
    return model(torch.tensor(tokens_bt)).logits.float().numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_imported_logits_match_transformers(tmp_path, case):
  model, path = _make_hf(tmp_path, case)
  cfg, params = hf.import_hf(path)
  tokens = _tokens()
  ref = _hf_logits(model, tokens)
  assert np.abs(ref).max() > 1.0  # the comparison is not between near-zero logits
  np.testing.assert_array_less(np.abs(_gift_logits(cfg, params, tokens) - ref), 1e-4)


def test_legacy_rope_theta_key_is_read(tmp_path):
  model, path = _make_hf(tmp_path, "llama_mqa_tied_theta1e6", legacy_rope=True)
  cfg, params = hf.import_hf(path)
  assert cfg.rope_theta == 1e6
  tokens = _tokens()
  np.testing.assert_array_less(np.abs(_gift_logits(cfg, params, tokens) -
                                      _hf_logits(model, tokens)), 1e-4)


@pytest.mark.parametrize("case", ["llama_gqa_untied", "gemma_mqa_tied"])
def test_greedy_generation_matches_transformers_generate(tmp_path, case):
  model, path = _make_hf(tmp_path, case)
  cfg, params = hf.import_hf(path)
  tok = tokenizer_lib.load(None)
  sampler = Sampler(cfg, params, tok, batch_size=4, buckets=(8, 16))
  rng = np.random.default_rng(1)
  prompts = [rng.integers(3, V, size=n).tolist() for n in (3, 9, 14)]  # left-padded together
  ours = sampler.generate_ids(prompts, max_new_tokens=16, stop_at_eos=False)
  for prompt, (completion,) in zip(prompts, ours):
    ref = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                         eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert completion == ref


@pytest.mark.parametrize("case", ["llama_gqa_untied", "gemma_mqa_tied"])
def test_export_loads_in_transformers_with_same_logits(tmp_path, case):
  model, path = _make_hf(tmp_path, case)
  cfg, params = hf.import_hf(path)
  out = str(tmp_path / "exported")
  hf.export_hf(cfg, params, out)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
  assert type(reloaded) is type(model)
  tokens = _tokens()
  np.testing.assert_array_less(np.abs(_hf_logits(reloaded, tokens) - _hf_logits(model, tokens)),
                               1e-6)


def test_sharded_export_round_trips_exactly(tmp_path):
  _, path = _make_hf(tmp_path, "gemma_gqa_untied_theta3e4")
  cfg, params = hf.import_hf(path)
  out = str(tmp_path / "sharded")
  hf.export_hf(cfg, params, out, max_shard_bytes=20_000)
  with open(os.path.join(out, "model.safetensors.index.json")) as f:
    shards = set(json.load(f)["weight_map"].values())
  assert len(shards) > 2 and not os.path.exists(os.path.join(out, "model.safetensors"))
  cfg2, params2 = hf.import_hf(out)
  assert cfg2 == cfg
  for a, b in zip(_leaves(params), _leaves(params2)):
    np.testing.assert_array_equal(a, b)
  transformers.AutoModelForCausalLM.from_pretrained(out)  # transformers reads the shards too


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_files_import_exactly(tmp_path, dtype):
  model, path = _make_hf(tmp_path, "llama_gqa_untied", dtype=getattr(torch, dtype))
  _, params = hf.import_hf(path)
  ref = model.model.layers[1].self_attn.q_proj.weight.detach().to(getattr(torch, dtype)).float()
  np.testing.assert_array_equal(params["layers"]["attn"]["q"][1].reshape(48, -1).T, ref.numpy())
  # and back: a bf16 export holds the same values
  out = str(tmp_path / "exported")
  hf.export_hf(*hf.import_hf(path), out, dtype=dtype)
  stored = load_file(os.path.join(out, "model.safetensors"))
  assert stored["lm_head.weight"].dtype.name == dtype
  np.testing.assert_array_equal(
      stored["model.layers.1.self_attn.q_proj.weight"].astype(np.float32), ref.numpy())


def test_unknown_architecture_is_named(tmp_path):
  _, path = _make_hf(tmp_path, "llama_gqa_untied")
  cfg_path = os.path.join(path, "config.json")
  with open(cfg_path) as f:
    c = json.load(f)
  c["architectures"] = ["MixtralForCausalLM"]
  with open(cfg_path, "w") as f:
    json.dump(c, f)
  with pytest.raises(ValueError, match="MixtralForCausalLM"):
    hf.import_hf(path)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
  _, path = _make_hf(tmp_path, "llama_gqa_untied")
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(48, np.float32)
  save_file(tensors, file, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*"
                                       r"model\.layers\.0\.self_attn\.q_proj\.bias"):
    hf.import_hf(path)


def test_unimplemented_rope_type_is_rejected_by_name(tmp_path):
  _, path = _make_hf(tmp_path, "llama_gqa_untied")
  cfg_path = os.path.join(path, "config.json")
  with open(cfg_path) as f:
    c = json.load(f)
  c["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 5e5, "factor": 8.0}
  with open(cfg_path, "w") as f:
    json.dump(c, f)
  with pytest.raises(ValueError, match="longrope"):
    hf.import_hf(path)


def test_cli_import_then_export_keeps_weights_and_tokenizer(tmp_path):
  model, path = _make_hf(tmp_path, "gemma_mqa_tied")
  spm_path = tokenizer_lib.train(["def f(x):\n    return x + 1\n" * 50], str(tmp_path / "spm"),
                                 vocab_size=290)  # only its ids and bytes are checked
  os.replace(spm_path, os.path.join(path, "tokenizer.model"))
  ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "back")
  assert hf.import_main(["--hf_dir", path, "--out", ckpt]) == 0
  cfg, params, tok_path = checkpoint.load_model(ckpt)
  assert tok_path is not None and cfg.embed_scale and cfg.tie_embeddings
  assert hf.export_main(["--checkpoint", ckpt, "--out", out]) == 0
  assert os.path.exists(os.path.join(out, "tokenizer.model"))
  with open(os.path.join(out, "config.json")) as f:
    exported = json.load(f)
  tok = tokenizer_lib.load(tok_path)
  assert (exported["bos_token_id"], exported["eos_token_id"]) == (tok.bos_id, tok.eos_id)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
  tokens = _tokens()
  np.testing.assert_array_less(np.abs(_hf_logits(reloaded, tokens) - _hf_logits(model, tokens)),
                               1e-6)


def _leaves(tree):
  if isinstance(tree, dict):
    return [x for k in sorted(tree) for x in _leaves(tree[k])]
  return [np.asarray(tree)]


def test_import_peak_memory_is_about_one_copy_of_the_params(tmp_path):
  import tracemalloc
  cfg = transformers.LlamaConfig(vocab_size=2000, hidden_size=128, intermediate_size=352,
                                 num_hidden_layers=6, num_attention_heads=4)
  transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "m")
  tracemalloc.start()
  try:
    _, params = hf.import_hf(str(tmp_path / "m"))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  total = sum(x.nbytes for x in _leaves(params))
  assert peak < 1.2 * total, (peak, total)  # f32 stacks + one tensor in flight, not 2x


def _hf_config(cls_name, arch, **fields):
  c = json.loads(getattr(transformers, cls_name)(**SHAPE, **fields).to_json_string())
  c["architectures"] = [arch]
  return c


@pytest.mark.parametrize("cls_name,arch,key,value", [
    ("Qwen2Config", "Qwen2ForCausalLM", "num_experts", 8),  # an MoE field
    ("LlamaConfig", "LlamaForCausalLM", "attention_sinks", 4),
    ("MistralConfig", "MistralForCausalLM", "layer_types", ["full_attention"] * 2),
    ("Gemma3TextConfig", "Gemma3ForCausalLM", "use_bidirectional_attention", True),
    ("Starcoder2Config", "Starcoder2ForCausalLM", "norm_type", "rms_norm"),
    ("LlamaConfig", "LlamaForCausalLM", "partial_rotary_factor", 0.5),
    ("LlamaConfig", "LlamaForCausalLM", "hidden_act", "relu"),
])
def test_math_changing_config_fields_are_refused_by_name(cls_name, arch, key, value):
  c = _hf_config(cls_name, arch)
  hf.config_from_hf(c)  # as saved by transformers: accepted
  c[key] = value
  with pytest.raises(ValueError, match=key):
    hf.config_from_hf(c)


@pytest.mark.parametrize("rope", [{"rope_type": "dynamic", "factor": 2.0},
                                  {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "beta_fast": 3}])
def test_unimplemented_rope_variants_and_parameters_are_refused(rope):
  c = _hf_config("LlamaConfig", "LlamaForCausalLM")
  c["rope_parameters"] = dict(rope, rope_theta=10000.0)
  with pytest.raises(ValueError, match="dynamic" if rope["rope_type"] == "dynamic" else
                     "beta_fast"):
    hf.config_from_hf(c)


def test_v4_rope_scaling_key_is_read_as_v5_rope_parameters():
  c = _hf_config("LlamaConfig", "LlamaForCausalLM")
  del c["rope_parameters"]
  c.update(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 4.0})  # DeepSeek-Coder
  cfg = hf.config_from_hf(c)
  assert cfg.rope_theta == 5e5 and dict(cfg.rope_scaling) == {"rope_type": "linear",
                                                               "factor": 4.0}


def test_tying_follows_the_flag_else_the_files(tmp_path):
  _, path = _make_hf(tmp_path, "llama_gqa_untied")
  cfg_path, file = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
  with open(cfg_path) as f:
    c = json.load(f)
  tensors = load_file(file)
  del tensors["lm_head.weight"]
  save_file(tensors, file, metadata={"format": "pt"})
  with pytest.raises(ValueError, match="lm_head.weight"):  # untied by flag, no lm_head
    hf.import_hf(path)
  del c["tie_word_embeddings"]
  with open(cfg_path, "w") as f:
    json.dump(c, f)
  cfg, params = hf.import_hf(path)  # no flag: no lm_head in the files means tied
  assert cfg.tie_embeddings and "unembed" not in params


def test_config_vocab_larger_than_the_tokenizer_is_kept(tmp_path):
  """Qwen-style padding rows: the embedding keeps config.json's vocab_size; a smaller
  tokenizer loads against it and export writes the config's size back."""
  qwen = transformers.Qwen2Config(**dict(SHAPE, vocab_size=320, num_key_value_heads=2))
  transformers.Qwen2ForCausalLM(qwen).save_pretrained(tmp_path / "m")
  cfg, params = hf.import_hf(str(tmp_path / "m"))
  spm = tokenizer_lib.train(["def f(x):\n    return x + 1\n" * 50], str(tmp_path / "spm"),
                            vocab_size=290)
  tok = tokenizer_lib.load(spm, cfg.vocab_size)
  assert tok.vocab_size < cfg.vocab_size == params["embedder"]["embedding"].shape[0] == 320
  out = str(tmp_path / "out")
  hf.export_hf(cfg, params, out, tokenizer_path=spm)
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["vocab_size"] == 320
