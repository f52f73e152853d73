"""benchmarks/bench_lora.py runs end to end at a tiny size and prints its table."""
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("peft")


def _run(repo_root, script, *args, timeout=600):
  env = dict(os.environ)  # as a user runs it: without the suite's 8 fake CPU devices
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  proc = subprocess.run([sys.executable, str(repo_root / "benchmarks" / script), *args],
                        cwd=repo_root, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


@pytest.mark.slow
def test_bench_lora_tiny_prints_table_with_ratio(repo_root):
  out = _run(repo_root, "bench_lora.py", "--vocab", "512", "--d_model", "64", "--layers", "2",
             "--heads", "2", "--kv_heads", "1", "--head_dim", "32", "--mlp", "128", "--batch",
             "2", "--seq", "32", "--attn", "sdpa", "--warmup", "1", "--steps", "1",
             "--windows", "2", "--peak_n", "256", "--peak_s", "0.2")
  rows = {m.group(1).strip(): m.group(2) for m in re.finditer(
      r"^\| (gift[^|]*|transformers[^|]*)\|(.*)\|$", out, re.M)}
  assert set(rows) == {"gift full", "gift lora", "gift qlora (nf4)",
                       "transformers + peft LoRA (sdpa) (reference)"}, out
  for name, cells in rows.items():
    step_ms, _, tokens_s, _, _, compiled, rss, _ = [c.strip() for c in cells.split("|")]
    assert float(step_ms) > 0 and float(tokens_s.replace(",", "")) > 0 and float(rss) > 0
    assert (compiled == "-") == ("peft" in name)
  assert float(re.search(r"tokens/s ratio: ([\d.]+)x", out).group(1)) > 0
