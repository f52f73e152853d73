"""LoRA / QLoRA end to end on a tiny imported Llama: train -> kill -9 -> resume (bitwise) ->
sample (unmerged == merged) -> export the adapter -> Hugging Face `peft` loads it onto the
transformers base with the same logits; adapter-only checkpoints are small; PEFT adapters made
by `peft` itself import; `export-hf --merge` writes the merged model."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import jax.numpy as jnp  # noqa: E402

from gift import checkpoint as ck  # noqa: E402
from gift import hf, peft_io  # noqa: E402
from gift import metrics as metrics_lib  # noqa: E402
from gift import train as train_lib  # noqa: E402
from gift.model import transformer  # noqa: E402
from gift.sample import Sampler  # noqa: E402

STEPS = 12
# The test_tiny preset's shape, so configs/test_tiny.py matches the imported model.
SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0)


def _write_data(path, n=200, seed=0):
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for _ in range(n):
      a, b = (int(x) for x in rng.integers(0, 50, 2))
      f.write(json.dumps({"prompt": f"# add {a} and {b}\n", "completion": f"r = {a} + {b}\n"})
              + "\n")
  return str(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """(transformers model, HF dir, gift base checkpoint) of a tiny random Llama."""
  root = tmp_path_factory.mktemp("base")
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn_like(p) * (0.3 if "norm" in name else 0.1))
  model.save_pretrained(str(root / "hf"))
  cfg, params = hf.import_hf(str(root / "hf"))
  ck.save_model(str(root / "gift"), cfg, params)
  return model, str(root / "hf"), str(root / "gift")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
  return _write_data(tmp_path_factory.mktemp("data") / "train.jsonl")


def _args(data_path, workdir, base_dir, *extra):
  return ["--config=configs/test_tiny.py", f"--workdir={workdir}",
          "--config.data.source=jsonl", f"--config.data.path={data_path}",
          "--config.data.seq_len=64", f"--config.train.num_steps={STEPS}",
          "--config.train.log_every=1", "--config.train.lr=1e-2", "--config.train.warmup_steps=1",
          "--config.checkpoint.every=3", "--config.checkpoint.async_save=True",
          f"--config.init_from={base_dir}", "--config.lora.rank=4", "--config.lora.block_size=16",
          *extra]


def _losses(workdir):
  out = {}
  for row in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    if "loss" in row:
      assert out.setdefault(row["step"], row["loss"]) == row["loss"], row
  return out


def _gift(repo_root, *args):
  return subprocess.Popen([sys.executable, "-m", "gift.cli", *args], cwd=repo_root,
                          env=dict(os.environ), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _dir_bytes(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _tokens(b=2, t=11, seed=0):
  return np.random.default_rng(seed).integers(3, 500, size=(b, t))


@pytest.mark.slow
@pytest.mark.parametrize("peft_kind,quant,stop", [("lora", "nf4", signal.SIGKILL),
                                                   ("qlora", "nf4", signal.SIGTERM)])
def test_lora_train_kill9_resume_sample_export_peft(base, data_path, tmp_path, repo_root,
                                                     monkeypatch, peft_kind, quant, stop):
  hf_model, hf_dir, base_dir = base
  monkeypatch.chdir(repo_root)
  extra = (f"--config.train.peft={peft_kind}", f"--config.lora.quant={quant}",
           "--config.lora.dropout=0.1")
  reference = str(tmp_path / "reference")
  assert train_lib.main(_args(data_path, reference, base_dir, *extra)) == 0
  ref_losses = _losses(reference)
  assert sorted(ref_losses) == list(range(1, STEPS + 1))
  assert np.mean([ref_losses[s] for s in range(STEPS - 2, STEPS + 1)]) < 0.9 * ref_losses[1]

  # Adapter-only checkpoints: the step holds adapters (+ their AdamW state), not the model.
  model_cfg = ck.read_model_config(reference)
  _, adapters, _ = ck.load_model(reference, raw=True)
  assert set(adapters) == {"layers"} and set(adapters["layers"]["attn"]["q"]) == {"a", "b"}
  step_dir = os.path.join(reference, str(STEPS))
  full_bytes = 4 * transformer.param_count(model_cfg)
  adapter_bytes = sum(x.nbytes for x in jax.tree.leaves(adapters))
  assert adapter_bytes < 0.1 * full_bytes
  # On disk, Orbax adds ~100 KB of metadata whatever the size (it varies from run to run), so
  # compare with the base checkpoint's own params folder, overhead included: a full-model step
  # would be >= 1x (params) and >= 3x (params + two AdamW moments) of it.
  base_params_bytes = _dir_bytes(os.path.join(base_dir, "0", "params"))
  assert _dir_bytes(os.path.join(step_dir, "params")) < 0.5 * base_params_bytes
  assert _dir_bytes(step_dir) < 1.5 * base_params_bytes

  # kill -9 (LoRA) or SIGTERM (QLoRA: saves, exits 0) after the first finalized step, then
  # resume: bitwise the uninterrupted run.
  workdir = str(tmp_path / "run")
  proc = _gift(repo_root, "train", *_args(data_path, workdir, base_dir, *extra))
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if any(d.isdigit() for d in (os.listdir(workdir) if os.path.isdir(workdir) else ())):
      break
    time.sleep(0.01)
  proc.send_signal(stop)
  out = proc.communicate(timeout=300)[0]
  if stop == signal.SIGKILL:
    assert proc.returncode == -signal.SIGKILL, f"run ended before the kill:\n{out[-2000:]}"
  else:
    assert proc.returncode == 0 and "preempted (SIGTERM): saved step" in out, out[-2000:]
  assert max(_losses(workdir)) < STEPS
  proc = _gift(repo_root, "train", *_args(data_path, workdir, base_dir, *extra))
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out[-3000:]
  assert "resumed from step" in out
  assert _losses(workdir) == ref_losses
  for a, b in zip(jax.tree.leaves(ck.load_model(workdir, raw=True)[1]),
                  jax.tree.leaves(adapters)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # Sampling the run: unmerged (base + LoraWeight) and merged give the same completions.
  prompts = ["# add 3 and 4\n", "# add 10 and 7\n"]
  outs = {}
  for merge in (True, False):
    sampler = Sampler.from_checkpoint(workdir, merge_lora=merge, batch_size=2)
    outs[merge] = sampler.generate(prompts, max_new_tokens=12)
  assert outs[True] == outs[False]
  proc = _gift(repo_root, "sample", "--checkpoint", workdir, "--prompt", prompts[0],
               "--max_new_tokens", "12", "--lora", "unmerged")
  out = proc.communicate(timeout=240)[0]
  assert proc.returncode == 0, out[-2000:]
  assert json.loads(out.splitlines()[0])["completions"] == outs[True][0]

  # Export the adapter; peft loads it onto the transformers base: the same logits as gift's
  # (for QLoRA: gift's adapters on the unquantized base, which is what peft runs).
  adapter_dir = str(tmp_path / "adapter")
  proc = _gift(repo_root, "export-hf", "--checkpoint", workdir, "--out", adapter_dir,
               "--adapter_only")
  assert proc.communicate(timeout=240)[0] is not None and proc.returncode == 0
  assert sorted(os.listdir(adapter_dir)) == ["adapter_config.json", "adapter_model.safetensors"]
  peft_model = peft.PeftModel.from_pretrained(
      transformers.LlamaForCausalLM.from_pretrained(hf_dir), adapter_dir).eval()
  tokens = _tokens()
  with torch.no_grad():
    want = peft_model(torch.tensor(tokens)).logits.numpy()
  _, base_params, _ = ck.load_model(base_dir)
  from gift import lora as lora_lib
  lcfg, _ = peft_io.read_root(workdir)
  merged = lora_lib.merge(model_cfg, lcfg, base_params, ck.load_model(workdir, raw=True)[1])
  pos = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  got, _ = transformer.apply(model_cfg, merged, jnp.asarray(tokens), jnp.asarray(pos))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
  assert np.abs(want - hf_model(torch.tensor(tokens)).logits.detach().numpy()).max() > 1e-2

  # export-hf --merge: a plain HF model with the merged weights.
  merged_dir = str(tmp_path / "merged")
  proc = _gift(repo_root, "export-hf", "--checkpoint", workdir, "--out", merged_dir, "--merge")
  out = proc.communicate(timeout=240)[0]
  assert proc.returncode == 0, out[-2000:]
  merged_hf = transformers.LlamaForCausalLM.from_pretrained(merged_dir).eval()
  with torch.no_grad():
    merged_logits = merged_hf(torch.tensor(tokens)).logits.numpy()
  if peft_kind == "lora":
    np.testing.assert_allclose(merged_logits, want, atol=1e-4, rtol=0)
  else:  # merged onto the dequantized base, as trained
    _, run_merged, _ = ck.load_model(workdir)
    got_q, _ = transformer.apply(model_cfg, run_merged, jnp.asarray(tokens), jnp.asarray(pos))
    np.testing.assert_allclose(merged_logits, np.asarray(got_q), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_import_peft_adapter_made_by_peft(base, tmp_path, monkeypatch, repo_root):
  """An adapter written by `peft` itself (random B, rsLoRA off) imports; gift's logits with it
  match peft's; `gift train` continues from it."""
  hf_model, hf_dir, base_dir = base
  cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        lora_dropout=0.0, task_type="CAUSAL_LM")
  model = peft.get_peft_model(transformers.LlamaForCausalLM.from_pretrained(hf_dir), cfg)
  torch.manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "lora_B" in name:
        p.copy_(torch.randn_like(p) * 0.1)
  adapter_dir = str(tmp_path / "peft_adapter")
  model.save_pretrained(adapter_dir)
  tokens = _tokens()
  with torch.no_grad():
    want = model.eval()(torch.tensor(tokens)).logits.numpy()

  out = str(tmp_path / "imported")
  from gift import hf as hf_mod
  assert hf_mod.import_main(["--peft_adapter", adapter_dir, "--base", base_dir,
                             "--out", out]) == 0
  model_cfg, params, _ = ck.load_model(out, merge_lora=False)
  pos = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  got, _ = transformer.apply(model_cfg, params, jnp.asarray(tokens), jnp.asarray(pos))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
  lcfg, _ = peft_io.read_root(out)
  assert lcfg.rank == 4 and lcfg.scale == 2.0

  # Continue training from it (the adapters, not a fresh init: step-0 loss equals its loss).
  monkeypatch.chdir(repo_root)
  data = _write_data(tmp_path / "d.jsonl", n=40)
  run = str(tmp_path / "cont")
  assert train_lib.main(_args(data, run, out, "--config.train.peft=lora",
                              f"--config.lora.targets={lcfg.targets}", "--config.lora.alpha=8.0",
                              "--config.train.num_steps=2", "--config.checkpoint.every=0")) == 0
  assert peft_io.read_root(run)[1] == os.path.abspath(base_dir)
  _, ad, _ = ck.load_model(run, raw=True)
  assert ad["layers"]["attn"]["q"]["b"].shape == (2, 4, 4, 16)
  assert "k" not in ad["layers"]["attn"]
