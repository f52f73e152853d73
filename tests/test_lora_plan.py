"""`gift plan` for LoRA / QLoRA: states per device by train.peft, and the compiled step's memory."""
from gift import config as gc
from gift import lora, plan
from gift.model import transformer


def _cfg(**over):
  c = gc.base_config()
  gc.with_preset(c, "test_tiny")
  c.mesh.update(dict(data=1, fsdp=1, tensor=1))
  c.data.seq_len, c.train.batch_size = 32, 2
  for k, v in over.items():
    gc.set_value(c, k, v)
  return gc.finalize(c)


def test_states_per_device_by_peft():
  cfg = _cfg(**{"lora.rank": 4})
  p = plan.plan(cfg)["peft"]
  n = transformer.param_count(gc.model_config(cfg))
  n_ad = sum(x.size for x in __import__("jax").tree.leaves(
      lora.abstract_adapters(gc.model_config(cfg), lora.LoraConfig(rank=4))))
  assert p["none"] == dict(params=4 * n, adapters=0, grads=4 * n, opt_state=8 * n, total=16 * n)
  assert p["lora"]["params"] == 4 * n  # f32 compute dtype: the base as it is
  assert p["lora"]["adapters"] == p["lora"]["grads"] == 4 * n_ad
  assert p["lora"]["opt_state"] == 8 * n_ad
  assert p["qlora"]["params"] < 0.6 * p["lora"]["params"]  # 4-bit projections
  bf16 = plan.plan(_cfg(**{"model.dtype": "bfloat16"}))["peft"]
  assert bf16["lora"]["params"] == 2 * n  # the frozen base in the compute dtype


def test_compile_reports_peak_memory_for_full_lora_qlora(capsys):
  assert plan.main(["--config=configs/test_tiny.py", "--config.mesh.fsdp=1",
                    "--config.data.seq_len=32", "--config.train.batch_size=2", "--compile",
                    "--json"]) == 0
  import json
  out = json.loads(capsys.readouterr().out)
  c = out["compiled"]
  assert set(c) == {"none", "lora", "qlora"}
  for r in c.values():
    assert r["peak"] == r["argument"] + r["output"] + r["temp"] - r["alias"] > 0
  # Full fine-tuning returns new weights and AdamW state; LoRA only adapters and their state.
  assert c["lora"]["output"] < 0.3 * c["none"]["output"]
  assert c["qlora"]["argument"] < c["lora"]["argument"]
