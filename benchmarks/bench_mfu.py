"""Model FLOPs utilization (MFU) of gift's train step on this machine's devices, MaxText-style.

A model preset (default `llama_1b`: 1.1B parameters, Llama shape, vocab 32000) trains on random
tokens with gift's jitted, donated step (`gift/step.py`: AdamW, clipping, masked cross-entropy),
parameters and optimizer state sharded by gift's rules over a (data, fsdp, tensor) mesh of all
devices. MFU = analytic FLOPs (`gift/flops.py`: 6 x matmul parameters + causal attention, per
token) x tokens/s / (devices x peak), with the peak from `gift.flops.PEAK_FLOPS` (dense bf16 of
the device kind). Where the table has no peak (a CPU), the f32 matmul peak measured in this run
is the denominator instead, and the table says so.

The peer (`--peer auto`: when PyTorch sees a CUDA device) is transformers' LlamaForCausalLM on
the same shape: float32 master weights, bf16 autocast, sdpa attention, fused AdamW, clipping.
Each runs in a child process of its own, one after the other (never sharing device memory).
`--peer cpu` runs it on the CPU (for smoke tests), `--peer none` skips it.

  python benchmarks/bench_mfu.py                                  # llama_1b, bf16, batch 8 x 2048
  python benchmarks/bench_mfu.py --batch 16 --remat dots_with_no_batch_dims_saveable \\
      --attention cudnn
  python benchmarks/bench_mfu.py --preset test_tiny --dtype float32 --batch 2 --seq 64 \\
      --steps 2 --windows 2 --peer cpu                            # CPU smoke run
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="llama_1b")
  p.add_argument("--dtype", default="bfloat16", help="compute dtype (params stay float32)")
  p.add_argument("--batch", type=int, default=8, help="global batch (rows)")
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--remat", default="none", help="model.remat_policy")
  p.add_argument("--attention", default="default", help="model.attention_impl")
  p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (-1: the rest)")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps")
  p.add_argument("--steps", type=int, default=5, help="steps per timing window")
  p.add_argument("--windows", type=int, default=5, help="timing windows")
  p.add_argument("--peer", default="auto", choices=("auto", "cuda", "cpu", "none"))
  return p.parse_args(argv)


def model_config(args):
  from gift.model import presets
  return presets.get_preset(args.preset, dtype=args.dtype, param_dtype="float32",
                            remat_policy=args.remat, attention_impl=args.attention,
                            max_seq_len=args.seq)


def random_batch(args):
  import numpy as np
  cfg = model_config(args)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.seq + 1))
  return tokens[:, :-1].astype(np.int32), tokens[:, 1:].astype(np.int32)


def gift_runner(args):
  """run(k) -> (loss, note) for k of gift's sharded train steps over all devices."""
  import jax
  import numpy as np

  from gift import config as gift_config
  from gift import sharding
  from gift import step as gift_step

  cfg = model_config(args)
  data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
  mesh = sharding.make_mesh(dict(data=data, fsdp=fsdp, tensor=tensor))
  optimizer = gift_step.make_optimizer(gift_config.base_config().train)
  params, opt_state = gift_step.init_train_state(cfg, optimizer, seed=0, mesh=mesh)
  step = gift_step.make_train_step(cfg, optimizer, mesh=mesh)
  inputs, targets = random_batch(args)
  b, t = inputs.shape
  host = dict(inputs=inputs, targets=targets, loss_mask=np.ones((b, t), np.float32),
              positions=np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
              segment_ids=np.ones((b, t), np.int32))
  batch = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in host.items()}
  state = {"params": params, "opt_state": opt_state}
  devices = jax.devices()

  def run(k):
    for _ in range(k):
      state["params"], state["opt_state"], metrics = step(state["params"], state["opt_state"],
                                                          batch)
    loss = float(metrics["loss"])  # waits for the step
    stats = devices[0].memory_stats() or {}
    peak_gib = stats.get("peak_bytes_in_use", 0) / 2 ** 30
    note = (f"gift: {len(devices)} x {devices[0].device_kind}, mesh {dict(mesh.shape)}"
            + (f", peak memory {peak_gib:.1f} GiB on device 0" if peak_gib else ""))
    return loss, dict(note=note, kind=devices[0].device_kind, count=len(devices))

  return run


def peer_runner(args, device):
  """run(k) -> (loss, note) for LlamaForCausalLM (fp32 weights, `--dtype` autocast, sdpa) +
  AdamW + clipping on `device`."""
  from gift import config as gift_config

  run = common.hf_llama_runner(model_config(args), gift_config.base_config().train,
                               *random_batch(args), device=device, amp_dtype=args.dtype)
  note = f"peer: transformers + torch on {device} (sdpa, autocast {args.dtype})"
  return lambda k: (run(k), dict(note=note))


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from gift import flops as gift_flops  # this process never computes on an accelerator

  cfg = model_config(args)
  peer_device = args.peer
  if peer_device == "auto":
    try:
      import torch
      peer_device = "cuda" if torch.cuda.is_available() else "none"
    except ImportError:
      peer_device = "none"

  # One runner at a time, each in a child process that exits before the next starts, so the two
  # never share the device's memory.
  makers = {"gift (JAX)": (gift_runner, args)}
  if peer_device != "none":
    makers[f"transformers + torch ({peer_device})"] = (peer_runner, args, peer_device)
  first_loss, about, times, warm_s = {}, {}, {}, {}
  for name, (factory, *factory_args) in makers.items():
    run = common.ChildRunner(factory, *factory_args)
    try:
      t0 = time.perf_counter()
      first_loss[name], about[name] = run(1)
      run(args.warmup)
      warm_s[name] = time.perf_counter() - t0
      times.update(common.interleaved_windows({name: run}, args.steps, args.windows))
      about[name] = run(1)[1]  # again, for the peak memory after timing
    finally:
      run.close()
  runners = list(makers)
  notes = [a["note"] for a in about.values()]
  kind, count = about["gift (JAX)"]["kind"], about["gift (JAX)"]["count"]

  table_peak = gift_flops.peak_flops(kind)
  if table_peak:
    gift_peak, peak_note = table_peak * count, (
        f"{count} x {table_peak / 1e12:.0f} TFLOP/s (dense bf16 peak of {kind!r}, "
        "gift.flops.PEAK_FLOPS)")
  else:
    measured = common.matmul_peak(2048, 2.0, libs=("jax",))["jax"]
    gift_peak, peak_note = measured, (f"{measured / 1e9:.0f} GFLOP/s, the f32 matmul peak "
                                      f"measured here ({kind!r} is not in "
                                      "gift.flops.PEAK_FLOPS)")
  tokens_per_step = args.batch * args.seq
  flops_per_token = gift_flops.train_flops_per_token(cfg, args.seq)
  step_s = {name: common.median(ts) for name, ts in times.items()}
  rows = []
  for name in runners:
    tok_s = tokens_per_step / step_s[name]
    achieved = tok_s * flops_per_token
    # The peer runs on one device (cuda:0 or the CPU); gift on all of them.
    peak = gift_peak if name == "gift (JAX)" else gift_peak / (count if table_peak else 1)
    rows.append([name, f"{step_s[name] * 1e3:.1f}", tok_s, f"{achieved / 1e12:.2f}",
                 _percent(achieved / peak), f"{first_loss[name]:.3f}"])

  print(f"## MFU of the {args.preset} train step, {args.dtype}\n")
  print(common.header())
  print(f"- model: {args.preset} ({gift_flops.matmul_params(cfg) / 1e6:,.1f}M matmul params), "
        f"remat {args.remat}, attention {args.attention}; batch {args.batch} x {args.seq} "
        "tokens; AdamW + clip 1.0")
  print(f"- {'; '.join(notes)}")
  print(f"- analytic train FLOPs/token: {flops_per_token / 1e9:.3f} G; peak: {peak_note}")
  print(f"- timing: one runner after the other, each {args.warmup + 1} warm-up steps ("
        + ", ".join(f"{n} {s:.0f} s" for n, s in warm_s.items()) + " incl. compile), then "
        f"{args.windows} windows of {args.steps} steps; median step time\n")
  print(common.table(["runner", "step ms", "tokens/s", "TFLOP/s", "MFU", "loss@1"], rows))
  if len(runners) > 1:
    peer = [n for n in runners if n != "gift (JAX)"][0]
    print(f"\ngift / peer throughput ratio: {step_s[peer] / step_s['gift (JAX)']:.2f}x")
  print(f"\ngift MFU: {rows[0][4]}")
  return 0


def _percent(fraction: float) -> str:
  """Fixed-point with enough decimals for three significant digits below 1%: a tiny model on a
  busy host still shows a non-zero MFU."""
  pct = 100 * fraction
  digits = 1 if pct >= 1 or pct <= 0 else min(8, 2 - math.floor(math.log10(pct)))
  return f"{pct:.{digits}f}%"


if __name__ == "__main__":
  sys.exit(main())
