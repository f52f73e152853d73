"""Fine-tuning an imported checkpoint without restating its shape, with a Hugging Face
`tokenizer.json` tokenizer carried through import -> train -> sample -> export."""
import json
import os
import shutil

import pandas as pd
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gift import checkpoint, hf  # noqa: E402
from gift import config as gc  # noqa: E402
from gift import sample as sample_lib  # noqa: E402
from gift import tokenizer as tokenizer_lib  # noqa: E402
from gift import train as train_lib  # noqa: E402
from gift.synth import backends, contexts  # noqa: E402
from gift.synth.templates import Intent  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "generation_config.json")


@pytest.fixture(scope="module")
def imported(tmp_path_factory, qwen_tokenizer_dir):
  """A tiny random Llama (shape unlike any preset) with a Qwen-like tokenizer, imported."""
  root = tmp_path_factory.mktemp("imported")
  hf_cfg = transformers.LlamaConfig(
      vocab_size=416, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
      num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
      rope_theta=50000.0)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
  model.save_pretrained(root / "hf")
  for name in TOKENIZER_FILES:
    shutil.copy(os.path.join(qwen_tokenizer_dir, name), root / "hf" / name)
  assert hf.import_main(["--hf_dir", str(root / "hf"), "--out", str(root / "ckpt")]) == 0
  return root


def _config(root, *overrides):
  """A run config that names no model shape: the base config plus data and the checkpoint."""
  data = root / "train.jsonl"
  data.write_text("".join(json.dumps({"prompt": f"# sum of column {c}\n",
                                      "completion": f"df['{c}'].sum()\n"}) + "\n"
                          for c in ("a", "b", "units", "price", "total", "qty")))
  cfg = gc.base_config()
  for key, value in [("init_from", str(root / "ckpt")), ("data.source", "jsonl"),
                     ("data.path", str(data)), ("data.seq_len", 96), ("train.batch_size", 8),
                     ("train.num_steps", 2), ("train.warmup_steps", 1),
                     ("train.progress", False), ("checkpoint.async_save", False),
                     *overrides]:
    gc.set_value(cfg, key, value)
  return gc.finalize(cfg)


def test_import_copies_the_tokenizer_files(imported, qwen_tokenizer_dir):
  for name in TOKENIZER_FILES:
    with open(imported / "ckpt" / name, "rb") as f, \
        open(os.path.join(qwen_tokenizer_dir, name), "rb") as g:
      assert f.read() == g.read(), name
  tok = tokenizer_lib.load(checkpoint.tokenizer_path(str(imported / "ckpt")))
  assert isinstance(tok, tokenizer_lib.HFTokenizer) and len(tok.stop_ids) == 2


def test_contradicting_shape_override_is_an_error_naming_the_field(imported, tmp_path):
  cfg = _config(imported, ("model.num_layers", 5))
  with pytest.raises(ValueError, match=r"config\.model\.num_layers=5 but the checkpoint has "
                                       r"num_layers=3"):
    train_lib.train(cfg, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "model_config.json")
  # What `gift plan` and the trainer see for a config that states no shape: the checkpoint's.
  ckpt = checkpoint.read_model_config(str(imported / "ckpt"))
  assert gc.model_config(_config(imported)) == ckpt
  assert gc.model_config(_config(imported, ("model.dtype", "bfloat16"),
                                 ("model.d_model", 48))) == ckpt.replace(dtype="bfloat16")


def test_train_sample_export_without_stating_the_shape(imported, capsys):
  """`gift train` from the imported checkpoint with a config that states no shape (the chat
  template on), `gift sample` (plain and chat) and the build-data gift backend from the run,
  `gift export-hf` of it."""
  workdir = str(imported / "run")
  cfg = _config(imported, ("model.max_seq_len", 128), ("data.chat_template", True))
  train_lib.train(cfg, workdir)
  trained = checkpoint.read_model_config(workdir)
  start = checkpoint.read_model_config(str(imported / "ckpt"))
  assert trained == start.replace(max_seq_len=128)  # shape from the checkpoint, seq len from cfg
  assert (trained.num_layers, trained.d_model, trained.num_kv_heads) == (3, 48, 1)
  for name in TOKENIZER_FILES:
    assert os.path.isfile(os.path.join(workdir, name)), name

  capsys.readouterr()
  assert sample_lib.main(["--checkpoint", workdir, "--prompt", "# sum of column a\n",
                          "--max_new_tokens", "6", "--stop", ""]) == 0
  assert sample_lib.main(["--checkpoint", workdir, "--prompt", "# sum of column a\n",
                          "--max_new_tokens", "6", "--chat_template"]) == 0
  lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
  assert [len(x["completions"]) for x in lines] == [1, 1]
  assert all(isinstance(x["completions"][0], str) for x in lines)

  # `gift build-data`'s gift backend samples the run through the same tokenizer and template.
  coder = backends.GiftBackend(workdir, temperature=0.0, max_tokens=6, chat_template=True)
  frame = pd.DataFrame({"units": [1, 2, 3]})
  ctx = contexts.Context("t/x", [("code", "df.head()", "")], contexts.PRELUDE, {"df": frame},
                         "csv", inputs={"df": frame})
  codes = coder.codes(ctx, [Intent("t/x", 0, "llm", "Sum the units.")], 2, 0)
  assert [len(c) for c in codes] == [2] and all(isinstance(c, str) for c in codes[0])

  out = str(imported / "export")
  assert hf.export_main(["--checkpoint", workdir, "--out", out]) == 0
  for name in TOKENIZER_FILES:
    assert os.path.isfile(os.path.join(out, name)), name
  theirs = transformers.AutoTokenizer.from_pretrained(out)
  ours = tokenizer_lib.load(out)
  text = "df['units'].sum() 🐼"
  assert ours.encode(text) == theirs.encode(text, add_special_tokens=False)
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["eos_token_id"] == ours.eos_id


@pytest.mark.slow  # the DS-1000 oracle runs in the sandbox: ~30-60 s on 2 cores
def test_eval_ds1000_with_the_chat_template(imported, shared_dir):
  from gift.eval import cli
  work = imported / "eval"
  data = str(shared_dir / "datasets" / "ds1000" / "ds1000_pandas.jsonl")
  assert cli.main(["ds1000", "--dataset", data, "--checkpoint", str(imported / "ckpt"),
                   "--chat_template", "--max_new_tokens", "4", "--limit", "2",
                   "--workdir", str(work), "--no_progress", "--num_workers", "1"]) == 0
  results = json.loads((work / "results.json").read_text())
  assert results["oracle"]["total"] == 2 and list(results["runs"]) == ["none"]
