"""LoRA / QLoRA training on CPU: gift full vs LoRA vs QLoRA step time and memory, and the same
LoRA in Hugging Face transformers + peft, timed in the same run.

The model of benchmarks/bench_train.py (Llama shape: vocab 8000, d_model 256, 4 layers, 4 heads
of 64, MLP 704, untied, float32), a batch of 4 x 256 tokens, next-token cross-entropy on every
token, AdamW + global-norm clipping (gift's defaults). Adapters: rank 8, alpha 16, no dropout,
on every attention and MLP projection (q, k, v, o, gate, up, down) in both libraries.

- gift full: `gift.step.make_train_step` (all weights trained).
- gift LoRA / QLoRA (nf4, block 64): `gift.lora.make_train_step` (frozen base, adapters only).
- peer: `transformers.LlamaForCausalLM` + `peft.get_peft_model(LoraConfig(...))`, AdamW on the
  trainable (adapter) parameters, `clip_grad_norm_`, attention "sdpa" and/or "eager".

Each runner lives in its own child process (`common.ChildRunner`) and reports its peak resident
memory (VmHWM) after the timed steps; gift's runners also report the compiled step's XLA memory
analysis (arguments + outputs + temporaries - aliased). Timing windows interleave the runners
after a warm-up; figures are medians over windows. The f32 matmul peak of this machine is
measured before and after, as in the other benchmarks. Prints a markdown block for
BENCHMARKS.md:

  python benchmarks/bench_lora.py
  python benchmarks/bench_lora.py --vocab 512 --d_model 64 --layers 2 --seq 32 --windows 2  # tiny
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from gift import cpu_env  # imports no JAX/torch

os.environ.setdefault("JAX_PLATFORMS", "cpu")
cpu_env.reexec_with_cpu_env()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train  # noqa: E402
import common  # noqa: E402

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  for name, default in (("vocab", 8000), ("d_model", 256), ("layers", 4), ("heads", 4),
                        ("kv_heads", 4), ("head_dim", 64), ("mlp", 704), ("batch", 4),
                        ("seq", 256), ("cores", os.cpu_count()), ("warmup", 12), ("steps", 4),
                        ("windows", 7), ("peak_n", 2048), ("rank", 8)):
    p.add_argument(f"--{name}", type=int, default=default)  # model flags as bench_train.py
  p.add_argument("--peak_s", type=float, default=2.0, help="seconds per matmul-peak measurement")
  p.add_argument("--alpha", type=float, default=16.0)
  p.add_argument("--attn", default="sdpa,eager", help="peer attention implementations to time")
  p.add_argument("--runners", default="full,lora,qlora", help="gift runners: full, lora, qlora")
  p.add_argument("--same_process", action="store_true",
                 help="run every runner in this process rather than one child process each")
  return p.parse_args(argv)


def _peak_rss() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  return 0


def gift_runner(args, kind, tokens, targets):
  """run(k) -> (loss, about, peak RSS, compiled peak bytes) for gift's full/LoRA/QLoRA step."""
  import jax
  import jax.numpy as jnp

  from gift import lora
  from gift import step as gift_step
  from gift.model import transformer

  model_cfg, train_cfg = bench_train.model_config(args), bench_train.train_config()
  optimizer = gift_step.make_optimizer(train_cfg)
  b, t = tokens.shape
  batch = dict(inputs=jnp.asarray(tokens), targets=jnp.asarray(targets),
               loss_mask=jnp.ones((b, t), jnp.float32),
               positions=jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
               segment_ids=jnp.ones((b, t), jnp.int32))
  if kind == "full":
    params, opt_state = gift_step.init_train_state(model_cfg, optimizer, seed=0)
    fn = gift_step.make_train_step(model_cfg, optimizer)
    state = {"a": params, "o": opt_state}
    call = lambda: fn(state["a"], state["o"], batch)  # noqa: E731
    lowered = fn.lower(params, opt_state, batch)
  else:
    lcfg = lora.LoraConfig(peft=kind, rank=args.rank, alpha=args.alpha)
    base = jax.jit(lambda r: lora.prepare_base(model_cfg, lcfg, transformer.init_params(
        model_cfg, r)))(jax.random.key(0))
    adapters = jax.jit(lambda r: lora.init_adapters(model_cfg, lcfg, r))(jax.random.key(1))
    opt_state = jax.jit(optimizer.init)(adapters)
    fn = lora.make_train_step(model_cfg, lcfg, optimizer)
    state = {"a": adapters, "o": opt_state}
    call = lambda: fn(base, state["a"], state["o"], batch)  # noqa: E731
    lowered = fn.lower(base, adapters, opt_state, batch)
  m = lowered.compile().memory_analysis()
  compiled = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
              - m.alias_size_in_bytes)

  def run(k):
    loss = None
    for _ in range(k):
      state["a"], state["o"], metrics = call()
      loss = metrics["loss"]
    return (None if loss is None else float(loss)), f"gift devices: {jax.devices()}", \
        _peak_rss(), compiled

  return run


def peer_runner(args, attn, tokens, targets):
  """run(k) -> (loss, about, peak RSS, None): transformers Llama + peft LoRA, AdamW on the
  adapters, global-norm clipping."""
  import peft
  import torch
  import transformers

  torch.set_num_threads(args.cores)
  c, tc = bench_train.model_config(args), bench_train.train_config()
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.mlp_dim,
      num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
      num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim, hidden_act="silu",
      max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta,
      tie_word_embeddings=False, use_cache=False, attn_implementation=attn)
  model = transformers.LlamaForCausalLM(config).float().train()
  model = peft.get_peft_model(model, peft.LoraConfig(
      r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGET_MODULES,
      task_type="CAUSAL_LM"))
  trainable = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(trainable, lr=tc.lr, betas=(tc.b1, tc.b2), eps=tc.eps,
                          weight_decay=tc.weight_decay)
  inputs_bt = torch.from_numpy(tokens).long()
  targets_n = torch.from_numpy(targets).long().reshape(-1)

  def run(k):
    loss = torch.zeros(())
    for _ in range(k):
      opt.zero_grad(set_to_none=True)
      logits = model(input_ids=inputs_bt, use_cache=False).logits
      loss = torch.nn.functional.cross_entropy(logits.reshape(-1, c.vocab_size).float(),
                                               targets_n)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip)
      opt.step()
    return (float(loss.detach()), f"torch threads: {torch.get_num_threads()}, peft "
            f"{peft.__version__}", _peak_rss(), None)

  return run


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  os.sched_setaffinity(0, range(args.cores))
  import numpy as np

  rng = np.random.default_rng(0)
  tokens = rng.integers(0, args.vocab, (args.batch, args.seq + 1)).astype(np.int32)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  make = (lambda f, *a: f(*a)) if args.same_process else common.ChildRunner
  runners = {}
  for kind in args.runners.split(","):
    runners[f"gift {kind}" + (" (nf4)" if kind == "qlora" else "")] = make(
        gift_runner, args, kind, inputs, targets)
  for attn in args.attn.split(","):
    runners[f"transformers + peft LoRA ({attn})"] = make(peer_runner, args, attn, inputs,
                                                         targets)
  first, about, t0 = {}, {}, time.perf_counter()
  for name, run in runners.items():
    first[name], info, _, _ = run(1)
    about[info] = None
    run(args.warmup)
  warm_s = time.perf_counter() - t0
  peaks = common.matmul_peak(args.peak_n, args.peak_s)
  times = common.interleaved_windows(runners, args.steps, args.windows)
  peaks2 = common.matmul_peak(args.peak_n, args.peak_s)
  mem = {name: run(0) for name, run in runners.items()}
  for run in runners.values():
    getattr(run, "close", lambda: None)()
  peak = max(*peaks.values(), *peaks2.values())

  step_s = {n: common.median(ts) for n, ts in times.items()}
  peers = [n for n in runners if "peft" in n]
  best_peer = min(peers, key=step_s.get) if peers else None
  full = next((n for n in runners if n == "gift full"), None)
  tokens_per_step = args.batch * args.seq
  rows = []
  for name in runners:
    spread = (max(times[name]) - min(times[name])) / step_s[name]
    compiled = mem[name][3]
    rows.append([name + (" (reference)" if name == best_peer else ""),
                 f"{step_s[name] * 1e3:.1f}", f"{spread:.0%}", tokens_per_step / step_s[name],
                 f"{step_s[full] / step_s[name]:.2f}x" if full else "-",
                 f"{step_s[best_peer] / step_s[name]:.2f}x" if best_peer else "-",
                 f"{compiled / 2**20:.1f}" if compiled is not None else "-",
                 f"{mem[name][2] / 2**20:.0f}", f"{first[name]:.3f}"])
  print("## LoRA / QLoRA training, CPU, float32\n")
  print(common.header(("jax", "jaxlib", "flax", "optax", "torch", "transformers", "peft")))
  print(f"- model: Llama, vocab {args.vocab}, d_model {args.d_model}, {args.layers} layers, "
        f"{args.heads} heads ({args.kv_heads} kv) x {args.head_dim}, MLP {args.mlp}, untied; "
        f"batch {args.batch} x {args.seq} tokens; AdamW + clip 1.0; adapters rank {args.rank}, "
        f"alpha {args.alpha:g} on q, k, v, o, gate, up, down")
  print(f"- cores used: {len(os.sched_getaffinity(0))}; {'; '.join(about)}; runners in "
        + ("this process" if args.same_process else "one child process each"))
  print(f"- measured f32 matmul peak ({args.peak_n}^3, before/after): "
        + ", ".join(f"{k} {v / 1e9:.0f}/{peaks2[k] / 1e9:.0f} GFLOP/s" for k, v in peaks.items())
        + f" -> peak {peak / 1e9:.0f} GFLOP/s")
  print(f"- timing: {args.warmup + 1} warm-up steps each ({warm_s:.0f} s incl. compile), then "
        f"{args.windows} interleaved windows of {args.steps} steps; median step time; compiled "
        "peak = XLA memory analysis of the step (arguments + outputs + temporaries - aliased); "
        "RSS = the runner process's peak resident memory (VmHWM)\n")
  print(common.table(["runner", "step ms", "spread", "tokens/s", "vs gift full",
                      "vs peft LoRA", "compiled peak MiB", "peak RSS MiB", "loss@1"], rows))
  if best_peer and "gift lora" in runners:
    print(f"\ngift LoRA / peft LoRA ({best_peer}) tokens/s ratio: "
          f"{step_s[best_peer] / step_s['gift lora']:.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
