"""The user's path end to end: a Hugging Face checkpoint -> `gift import-hf` -> `gift train`
(`init_from`) -> `gift export-hf` -> transformers `from_pretrained` gives the fine-tuned logits."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gift import checkpoint, hf  # noqa: E402
from gift import config as gc  # noqa: E402
from gift import train as train_lib  # noqa: E402
from gift.model import transformer  # noqa: E402


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_import_finetune_export_round_trip(tmp_path, family):
  shape = dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
  if family == "llama":
    hf_cfg = transformers.LlamaConfig(**shape, rope_theta=20000.0)
  else:
    hf_cfg = transformers.GemmaConfig(**shape, head_dim=8)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="eager")
  model.save_pretrained(tmp_path / "hf")
  assert hf.import_main(["--hf_dir", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0

  data = tmp_path / "train.jsonl"
  data.write_text("".join(json.dumps({"prompt": f"# sum of column {c}\n",
                                      "completion": f"df['{c}'].sum()"}) + "\n"
                          for c in ("a", "b", "units", "price", "total", "qty")))
  imported = checkpoint.read_model_config(str(tmp_path / "ckpt"))
  cfg = gc.base_config()
  with cfg.unlocked():
    cfg.model = ml_collections.ConfigDict(dict(preset="imported", **imported.to_dict()))
  for key, value in [("init_from", str(tmp_path / "ckpt")), ("data.source", "jsonl"),
                     ("data.path", str(data)), ("data.seq_len", 64), ("train.batch_size", 8),
                     ("train.num_steps", 3), ("train.lr", 1e-2), ("train.warmup_steps", 1),
                     ("train.progress", False), ("checkpoint.async_save", False)]:
    gc.set_value(cfg, key, value)
  workdir = str(tmp_path / "run")
  train_lib.train(gc.finalize(cfg), workdir)

  assert hf.export_main(["--checkpoint", workdir, "--out", str(tmp_path / "out")]) == 0
  exported = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "out", attn_implementation="eager").eval()
  model_cfg, params, _ = checkpoint.load_model(workdir)
  _, start = checkpoint.load_model(str(tmp_path / "ckpt"))[:2]
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(start)))
  assert moved > 1e-4  # fine-tuning changed the weights

  tokens = np.random.default_rng(0).integers(3, 259, size=(2, 11))
  positions = np.broadcast_to(np.arange(11), tokens.shape)
  ours, _ = transformer.apply(model_cfg, params, jnp.asarray(tokens, jnp.int32),
                              jnp.asarray(positions, jnp.int32))
  with torch.no_grad():
    theirs = exported(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)
