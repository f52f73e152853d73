"""Training throughput on CPU: gift's jitted train step vs Hugging Face transformers + PyTorch.

The same Llama-architecture model in both (default: vocab 8000, d_model 256, 4 layers, 4 heads
(4 kv heads) of 64, gated MLP 704, untied embeddings, float32), AdamW with global-norm clipping,
a batch of 4 x 256 tokens, one causal segment per row, next-token cross-entropy on every token.

- gift: `gift.step.make_train_step` (jitted, params/opt_state donated) on one CPU device.
- peer: `transformers.LlamaForCausalLM` (attention "eager" and/or "sdpa"; the faster one is the
  reference) + `torch.optim.AdamW` + `clip_grad_norm_`, `torch.set_num_threads(<cores>)`.

`--cores 1` pins both to one core: a check that is robust to a busy machine (on a loaded 2-core
box, PyTorch's OpenMP barriers suffer more from preemption than XLA's thread pool).

Each runner lives in a child process of its own (`common.ChildRunner`), as each library's
training job would, all with `gift.cpu_env`'s malloc tunables (this process re-executes once
with them; the children inherit them, and they help both libraries). They take turns in timing
windows (order rotating per round) after a warm-up; each figure is the median over windows.
`--same_process` runs them all in this process instead: there the peer's freed tensors fragment
the heap that gift reuses, so gift's steps sometimes fault in fresh huge pages (see
BENCHMARKS.md). The f32 matmul peak of this machine is measured
in the same run (best of JAX and PyTorch on a large square matmul), and MFU is achieved model
FLOP/s (the MaxText-style analytic count of `gift/flops.py`: 6 x matmul parameters including the
unembedding, plus causal attention) over that peak. Prints a markdown block for BENCHMARKS.md:

  python benchmarks/bench_train.py
  python benchmarks/bench_train.py --vocab 512 --d_model 64 --layers 2 --seq 32 --windows 2  # tiny
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from gift import cpu_env  # imports no JAX/torch

# A CPU benchmark, also on a GPU host; the malloc tunables (inherited by the runners' child
# processes) let XLA (and torch) reuse their large per-step buffers.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
cpu_env.reexec_with_cpu_env()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--vocab", type=int, default=8000)
  p.add_argument("--d_model", type=int, default=256)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--kv_heads", type=int, default=4)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--mlp", type=int, default=704)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--attn", default="eager,sdpa", help="peer attention implementations to time")
  p.add_argument("--cores", type=int, default=os.cpu_count(),
                 help="pin the process to the first N cores (XLA's and torch's thread counts)")
  p.add_argument("--warmup", type=int, default=12,
                 help="untimed steps per runner (gift's heap settles within ~10 steps)")
  p.add_argument("--steps", type=int, default=4, help="steps per timing window")
  p.add_argument("--windows", type=int, default=7, help="timing windows per runner")
  p.add_argument("--peak_n", type=int, default=2048, help="size of the matmul-peak matmul")
  p.add_argument("--peak_s", type=float, default=2.0, help="seconds per matmul-peak measurement")
  p.add_argument("--same_process", action="store_true",
                 help="run every runner in this process rather than one child process each")
  return p.parse_args(argv)


def model_config(args):
  from gift.model.presets import ModelConfig
  return ModelConfig(
      vocab_size=args.vocab, num_layers=args.layers, d_model=args.d_model, num_heads=args.heads,
      num_kv_heads=args.kv_heads, head_dim=args.head_dim, mlp_dim=args.mlp,
      max_seq_len=args.seq, norm_eps=1e-5, dtype="float32", param_dtype="float32")


def train_config():
  from gift import config as gift_config
  return gift_config.base_config().train


def gift_runner(args, tokens, targets):
  """run(k) -> (loss after k steps, devices) for gift's train step on the default CPU device."""
  import jax
  import jax.numpy as jnp

  from gift import step as gift_step

  model_cfg, train_cfg = model_config(args), train_config()
  optimizer = gift_step.make_optimizer(train_cfg)
  params, opt_state = gift_step.init_train_state(model_cfg, optimizer, seed=0)
  train_step = gift_step.make_train_step(model_cfg, optimizer)
  b, t = tokens.shape
  batch = dict(inputs=jnp.asarray(tokens), targets=jnp.asarray(targets),
               loss_mask=jnp.ones((b, t), jnp.float32),
               positions=jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
               segment_ids=jnp.ones((b, t), jnp.int32))
  state = {"params": params, "opt_state": opt_state}

  def run(k):
    for _ in range(k):
      state["params"], state["opt_state"], metrics = train_step(
          state["params"], state["opt_state"], batch)
    jax.block_until_ready(metrics["loss"])
    return float(metrics["loss"]), f"gift devices: {jax.devices()}"

  return run


def peer_runner(args, attn, tokens, targets):
  """run(k) -> (loss, threads) for LlamaForCausalLM + AdamW + clipping with `attn` attention."""
  import torch

  torch.set_num_threads(args.cores)
  run = common.hf_llama_runner(model_config(args), train_config(), tokens, targets, attn=attn)
  return lambda k: (run(k), f"torch threads: {torch.get_num_threads()}")


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  os.sched_setaffinity(0, range(args.cores))  # before JAX sizes its thread pool (inherited)
  import numpy as np
  import torch

  from gift import flops as gift_flops

  torch.set_num_threads(args.cores)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, args.vocab, (args.batch, args.seq + 1)).astype(np.int32)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]

  model_cfg = model_config(args)
  make = (lambda f, *a: f(*a)) if args.same_process else common.ChildRunner
  runners = {"gift (JAX)": make(gift_runner, args, inputs, targets)}
  for attn in args.attn.split(","):
    runners[f"transformers + torch ({attn})"] = make(peer_runner, args, attn, inputs, targets)

  first_loss, described = {}, {}
  t0 = time.perf_counter()
  for name, run in runners.items():
    first_loss[name], about = run(1)  # compiles gift's step
    described[about] = None
    run(args.warmup)
  warm_s = time.perf_counter() - t0
  peaks = common.matmul_peak(args.peak_n, args.peak_s)
  times = common.interleaved_windows(runners, args.steps, args.windows)
  peaks2 = common.matmul_peak(args.peak_n, args.peak_s)
  for run in runners.values():
    getattr(run, "close", lambda: None)()
  peak = max(*peaks.values(), *peaks2.values())

  tokens_per_step = args.batch * args.seq
  flops_per_token = gift_flops.train_flops_per_token(model_cfg, args.seq)
  step_s = {name: common.median(ts) for name, ts in times.items()}
  peers = [n for n in runners if n != "gift (JAX)"]
  best_peer = min(peers, key=step_s.get)
  rows = []
  for name in runners:
    tok_s = tokens_per_step / step_s[name]
    tflops = tok_s * flops_per_token / 1e12
    spread = (max(times[name]) - min(times[name])) / step_s[name]
    rows.append([name + (" (reference)" if name == best_peer else ""), f"{step_s[name]*1e3:.1f}",
                 f"{spread:.0%}", tok_s, f"{tflops:.3f}", f"{tflops * 1e12 / peak:.1%}",
                 f"{step_s[best_peer] / step_s[name]:.2f}x", f"{first_loss[name]:.3f}"])

  print("## Training throughput, CPU, float32\n")
  print(common.header())
  print(f"- model: Llama, vocab {args.vocab}, d_model {args.d_model}, {args.layers} layers, "
        f"{args.heads} heads ({args.kv_heads} kv) x {args.head_dim}, MLP {args.mlp}, untied; "
        f"batch {args.batch} x {args.seq} tokens; AdamW + clip 1.0")
  print(f"- cores used: {len(os.sched_getaffinity(0))}; {'; '.join(described)}; runners in "
        + ("this process" if args.same_process else "one child process each"))
  print(f"- analytic train FLOPs/token: {flops_per_token / 1e6:.2f} M "
        f"(6 x {gift_flops.matmul_params(model_cfg) / 1e6:.2f} M matmul params + causal attention)")
  print(f"- measured f32 matmul peak ({args.peak_n}^3, before/after): "
        + ", ".join(f"{k} {v / 1e9:.0f}/{peaks2[k] / 1e9:.0f} GFLOP/s" for k, v in peaks.items())
        + f" -> peak {peak / 1e9:.0f} GFLOP/s")
  print(f"- timing: {args.warmup + 1} warm-up steps each ({warm_s:.0f} s incl. compile), then "
        f"{args.windows} interleaved windows of {args.steps} steps; median step time; spread = "
        f"(max - min) / median over windows\n")
  print(common.table(["runner", "step ms", "spread", "tokens/s", "TFLOP/s", "MFU",
                      "vs reference", "loss@1"], rows))
  ratio = step_s[best_peer] / step_s["gift (JAX)"]
  print(f"\ngift / peer ({best_peer}) throughput ratio: {ratio:.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
