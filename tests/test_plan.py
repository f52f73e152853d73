"""`gift plan` and gift/flops.py: parameter count, bytes, FLOPs per token, memory per device."""
import json

import pytest

from gift import config as gc
from gift import flops, plan
from gift.model import presets


def _cfg(preset, **mesh):
  c = gc.base_config()
  gc.with_preset(c, preset)
  c.mesh.update(mesh)
  c.data.seq_len = 2048
  c.train.batch_size = 256
  return gc.finalize(c)


def test_paper_62b_has_62b_parameters_and_sharded_memory():
  p = plan.plan(_cfg("paper_62b", data=1, fsdp=64, tensor=4))
  assert abs(p["num_params"] - 62e9) <= 0.03 * 62e9
  assert p["param_bytes"] == 4 * p["num_params"]
  assert p["opt_state_bytes"] >= 8 * p["num_params"]  # AdamW mu + nu in f32
  # Every big matrix is split 256 ways (embed over fsdp, heads/mlp/vocab over tensor); with
  # MQA the single kv head is replicated over tensor (+17 MB), so slightly more than 1/256 stays.
  assert p["param_bytes"] / 256 < p["per_device"]["params"] < 1.02 * p["param_bytes"] / 256
  assert p["num_devices"] == 256
  assert p["per_device"]["rows_per_microbatch"] == 4


def test_flops_per_token_is_maxtext_formula():
  m = presets.get_preset("test_tiny")  # L=2 D=64 N=4 K=2 H=16 F=128 V=512
  per_layer = 64 * 4 * 16 + 2 * 64 * 2 * 16 + 4 * 16 * 64 + 3 * 64 * 128
  assert flops.matmul_params(m) == 2 * per_layer + 64 * 512
  attention = 6 * 2 * 128 * 4 * 16  # 6 * L * T * N * H
  assert flops.train_flops_per_token(m, 128) == 6 * (2 * per_layer + 64 * 512) + attention
  p = plan.plan(_cfg("test_tiny", data=1, fsdp=-1, tensor=1), num_devices=8)
  assert p["flops_per_token"] == flops.train_flops_per_token(m, 2048)
  assert p["mesh"] == dict(data=1, fsdp=8, tensor=1)


@pytest.mark.parametrize("kind,peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L4", 121e12),
    ("cpu", None), ("TFRT_CPU_0", None)])
def test_peak_flops_by_device_kind(kind, peak):
  assert flops.peak_flops(kind) == peak


def test_main_prints_plan_and_json(capsys, repo_root):
  config_file = repo_root / "configs" / "paper_62b_tpu.py"
  assert plan.main([f"--config={config_file}", "--num_devices", "128"]) == 0
  out = capsys.readouterr().out
  assert "62.4" in out or "62.5" in out
  assert "per device" in out
  assert plan.main(["--config.mesh.fsdp=2", "--num_devices", "2", "--json"]) == 0
  assert json.loads(capsys.readouterr().out)["mesh"] == dict(data=1, fsdp=2, tensor=1)


def test_main_explains_a_mesh_the_devices_cannot_fill(capsys):
  assert plan.main(["--config.mesh.tensor=3", "--num_devices", "8"]) == 2
  assert "--num_devices" in capsys.readouterr().out


def test_plan_lists_every_preset_with_its_parameter_count(capsys):
  assert plan.main(["--presets"]) == 0
  out = capsys.readouterr().out
  for name in ("qwen2.5-coder-7b", "qwen3-32b", "llama3.2-1b", "deepseek-coder-33b",
               "gemma2-27b", "gemma3-270m", "starcoder2-15b"):
    assert name in out
  assert "7.616 B" in out  # qwen2.5-coder-7b


@pytest.mark.parametrize("config,devices", [("configs/qwen25_coder_7b_gpu.py", 8),
                                            ("configs/qwen25_coder_7b_tpu.py", 16)])
def test_shipped_qwen25_coder_7b_configs_fit(repo_root, config, devices):
  cfg, _ = gc.parse_args([f"--config={repo_root / config}"])
  p = plan.plan(cfg, num_devices=devices)
  assert p["model"] == "qwen2.5-coder-7b" and abs(p["num_params"] - 7.61e9) < 0.01 * 7.61e9
  per_device = p["per_device"]
  # 80 GB H100s / 32 GB TPU v4 chips (the smallest the configs name), with room to spare.
  budget = (80 if devices == 8 else 32) * 2**30
  assert per_device["states_total"] + per_device["activations_estimate"] < 0.8 * budget


def test_sliding_window_layers_count_only_the_keys_they_see():
  m = presets.get_preset("gemma2-2b")  # half the layers slide over 4096 keys
  full = m.replace(sliding_window=0, layer_types=())
  # T = 8192: a sliding layer sees 4096 - 4096^2 / 16384 = 3072 keys on average, a full one 4096.
  assert flops.attention_flops_per_token(m, 8192) == pytest.approx(
      0.875 * flops.attention_flops_per_token(full, 8192))
  assert flops.attention_flops_per_token(m, 2048) == flops.attention_flops_per_token(full, 2048)
