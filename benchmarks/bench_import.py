"""`gift import-hf` time and peak memory on a real-size checkpoint, beside transformers'
`from_pretrained` of the same files.

  python benchmarks/bench_import.py --preset qwen2.5-coder-0.5b [--shard_gb 0.5] [--dir /tmp/x]

Writes a random-weight checkpoint of the preset's shape as a Hugging Face directory (bf16,
sharded safetensors + index, config.json from gift's export table) without materializing the
model (one tensor at a time), then runs, each in a fresh child process measured by
`/usr/bin/time -v`:
  gift:         gift import-hf --hf_dir DIR --out CKPT          (f32 stacks + Orbax save)
  transformers: AutoModelForCausalLM.from_pretrained(DIR, dtype=float32)   (load only)
and prints wall seconds and peak RSS (GiB) of each, with the f32 parameter bytes for scale.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from gift import hf  # noqa: E402
from gift.model import presets, transformer  # noqa: E402


def write_random_checkpoint(preset: str, out: str, shard_bytes: int) -> None:
  """A HF dir of `preset`'s shape with N(0, 0.02) bf16 weights (norm scales 1)."""
  cfg = presets.get_preset(preset)
  arch, _ = hf._arch_for(cfg)
  rng = np.random.default_rng(0)

  def tensors():
    for name, path, _, kind, shape in hf._tensor_plan(cfg, arch):
      hf_shape = hf._hf_shape(kind, shape)
      if "norm" in path[-2 if len(path) > 1 else 0]:
        t = np.ones(hf_shape, ml_dtypes.bfloat16)
      else:
        t = (rng.standard_normal(hf_shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
      yield name, t

  os.makedirs(out, exist_ok=True)
  hf._write_safetensors(tensors(), out, shard_bytes)
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(hf.config_to_hf(cfg, dtype="bfloat16"), f, indent=2)


def measure(cmd: list[str]) -> tuple[float, float]:
  """(wall seconds, peak RSS GiB) of a command run under /usr/bin/time -v."""
  t0 = time.perf_counter()
  proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if proc.returncode:
    raise RuntimeError(f"{shlex.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
  rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
  return wall, rss_kb / 2**20


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="qwen2.5-coder-0.5b")
  p.add_argument("--shard_gb", type=float, default=0.5)
  p.add_argument("--dir", default=None, help="work dir (default: a temp dir, removed)")
  p.add_argument("--skip_peer", action="store_true", help="gift only")
  args = p.parse_args()
  work = args.dir or tempfile.mkdtemp(prefix="bench_import_")
  try:
    hf_dir, ckpt = os.path.join(work, "hf"), os.path.join(work, "ckpt")
    shutil.rmtree(ckpt, ignore_errors=True)
    if not os.path.exists(os.path.join(hf_dir, "config.json")):  # else reuse --dir's
      write_random_checkpoint(args.preset, hf_dir, int(args.shard_gb * 2**30))
    n = transformer.param_count(presets.get_preset(args.preset))
    shards = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
    size = sum(os.path.getsize(os.path.join(hf_dir, f)) for f in shards)
    rows = []
    gift_cmd = [sys.executable, "-m", "gift.cli", "import-hf", "--hf_dir", hf_dir, "--out", ckpt]
    wall, rss = measure(gift_cmd)
    rows.append(["gift import-hf (read + f32 stacks + Orbax save)", wall, rss])
    if not args.skip_peer:
      peer = ("import torch, transformers; transformers.AutoModelForCausalLM.from_pretrained("
              f"{hf_dir!r}, dtype=torch.float32)")
      wall_p, rss_p = measure([sys.executable, "-c", peer])
      rows.append(["transformers from_pretrained(dtype=float32) (load only)", wall_p, rss_p])
    print(common.header())
    print(f"\ncheckpoint: preset {args.preset}, {n:,} parameters, {len(shards)} bf16 safetensors "
          f"shards, {size / 2**30:.2f} GiB; f32 parameters = {4 * n / 2**30:.2f} GiB\n")
    print(common.table(["run", "wall s", "peak RSS GiB"], rows))
    if len(rows) == 2:
      print(f"\nratios gift / transformers: time {rows[0][1] / rows[1][1]:.2f}, "
            f"peak RSS {rows[0][2] / rows[1][2]:.2f}")
  finally:
    if not args.dir:
      shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
