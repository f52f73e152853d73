"""gift's KV-cache sampler vs Hugging Face `generate`, same model, same prompts, one run.

A random Llama-shaped model is built with transformers, saved with `save_pretrained`, imported
with `gift.hf.import_hf`, and both sides decode the same prompts (different lengths, left-padded)
`--n` times each for exactly `--max_new_tokens` tokens (EOS ignored), after one warm-up run each
(gift's warm-up includes compilation). HF runs all prompt x sample rows as one batch (its
`num_return_sequences` also repeats the prompt before prefill); gift runs them in compiled
batches of about `--batch` rows, prefilling each prompt once for its n samples. Reports
generated tokens/s (prompts x n x max_new_tokens per run) and gift/HF ratio, and how many greedy
rows agree token for token (a parity sanity check; float ties may flip a few).

  python benchmarks/bench_sample.py                       # the quickstart-sized Llama, batch 8
  python benchmarks/bench_sample.py --size medium --max_new_tokens 64
  # pass@k-like: 16 prompts of ~400 tokens, 5 samples each, gift only
  python benchmarks/bench_sample.py --prompts 16 --prompt_len 380 420 --n 5 \
      --max_new_tokens 48 --temperature 0.8 --no_hf
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
import transformers

from gift import hf
from gift import tokenizer as tokenizer_lib
from gift.sample import Sampler

SIZES = {  # Llama shapes: (vocab, d_model, layers, heads, kv_heads, mlp)
    "small": (8000, 256, 4, 4, 4, 704),
    "medium": (32000, 512, 8, 8, 8, 1408),
}


def build(size: str, out_dir: str) -> transformers.PreTrainedModel:
  v, d, layers, heads, kv, mlp = SIZES[size]
  cfg = transformers.LlamaConfig(vocab_size=v, hidden_size=d, num_hidden_layers=layers,
                                 num_attention_heads=heads, num_key_value_heads=kv,
                                 intermediate_size=mlp, max_position_embeddings=2048)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(cfg).eval()
  with torch.no_grad():  # larger than init std, so greedy text is prompt-dependent
    for name, p in model.named_parameters():
      if "norm" not in name:
        p.normal_(0.0, 2.0 / p.shape[-1] ** 0.5)
  model.save_pretrained(out_dir)
  return model


def time_best(fn, repeats: int) -> tuple[float, object]:
  best, out = float("inf"), None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t0)
  return best, out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="small", choices=sorted(SIZES))
  p.add_argument("--batch", type=int, default=8, help="gift rows per compiled batch")
  p.add_argument("--prompts", type=int, default=8)
  p.add_argument("--prompt_len", type=int, nargs=2, default=(16, 64), metavar=("MIN", "MAX"),
                 help="prompt lengths in tokens, uniform in [MIN, MAX)")
  p.add_argument("--n", type=int, default=1, help="samples per prompt")
  p.add_argument("--no_hf", action="store_true", help="time gift only")
  p.add_argument("--max_new_tokens", type=int, default=128)
  p.add_argument("--repeats", type=int, default=3, help="timed runs per side (best is kept)")
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy on both sides")
  args = p.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    model = build(args.size, tmp)
    cfg, params = hf.import_hf(tmp)
  rng = np.random.default_rng(0)
  lengths = rng.integers(*args.prompt_len, size=args.prompts)
  prompts = [[1] + rng.integers(3, cfg.vocab_size, size=n - 1).tolist() for n in lengths]
  m, sampling, n_rows = args.max_new_tokens, args.temperature > 0, args.prompts * args.n

  # Hugging Face: one left-padded batch of prompt x sample rows with an attention mask, exactly
  # m new tokens.
  width = max(lengths)
  ids = torch.zeros((n_rows, width), dtype=torch.long)
  mask = torch.zeros((n_rows, width), dtype=torch.long)
  for r in range(n_rows):
    pr = prompts[r // args.n]
    ids[r, width - len(pr):], mask[r, width - len(pr):] = torch.tensor(pr), 1
  hf_kw = dict(max_new_tokens=m, min_new_tokens=m, do_sample=sampling, pad_token_id=0,
               eos_token_id=None, **({"temperature": args.temperature, "top_p": 0.95,
                                      "top_k": 0} if sampling else {}))

  def run_hf():
    with torch.no_grad():
      return model.generate(input_ids=ids, attention_mask=mask, **hf_kw)[:, width:].tolist()

  tok = tokenizer_lib.load(None)  # ids only: no text is decoded without stop strings
  sampler = Sampler(cfg, params, tok, batch_size=args.batch)
  gift_kw = dict(max_new_tokens=m, stop_at_eos=False, temperature=args.temperature,
                 top_p=0.95 if sampling else 1.0)

  def run_gift():
    return [c for row in sampler.generate_ids(prompts, n=args.n, **gift_kw) for c in row]

  t0 = time.perf_counter()
  run_gift()
  warm_gift = time.perf_counter() - t0
  gift_s, gift_out = time_best(run_gift, args.repeats)
  n_tokens = n_rows * m
  assert all(len(r) == m for r in gift_out)

  v, d, layers, heads, kv, mlp = SIZES[args.size]
  print(f"model: Llama vocab {v}, d {d}, {layers} layers, {heads} heads ({kv} kv), mlp {mlp}; "
        f"{args.prompts} prompts x n {args.n}, gift batch {args.batch} rows, prompts "
        f"{lengths.min()}-{lengths.max()} tokens, {m} new tokens, "
        f"{'sampling T=%g top_p 0.95' % args.temperature if sampling else 'greedy'}")
  print(f"threads: torch {torch.get_num_threads()}, cpus {os.cpu_count()}; gift first call "
        f"(compile + run) {warm_gift:.1f}s")
  print(f"{'':<28}{'seconds':>10}{'tokens/s':>12}")
  if not args.no_hf:
    run_hf()
    hf_s, hf_out = time_best(run_hf, args.repeats)
    assert all(len(r) == m for r in hf_out)
    print(f"{'transformers generate':<28}{hf_s:>10.3f}{n_tokens / hf_s:>12.1f}")
  print(f"{'gift Sampler':<28}{gift_s:>10.3f}{n_tokens / gift_s:>12.1f}")
  if not args.no_hf:
    print(f"speedup gift / transformers: {hf_s / gift_s:.1f}x")
    if not sampling:
      same = sum(a == b for a, b in zip(gift_out, hf_out))
      print(f"greedy rows identical to transformers: {same}/{n_rows}")


if __name__ == "__main__":
  main()
