"""The benchmark scripts run end to end at a tiny size and print their tables (so they cannot rot).

Each runs in a subprocess without the test suite's 8 fake CPU devices, as a user would run it.
"""
import math
import os
import re
import subprocess
import sys

import pytest


def _run(repo_root, script, *args, timeout=240):
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  proc = subprocess.run([sys.executable, str(repo_root / "benchmarks" / script), *args],
                        cwd=repo_root, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_bench_train_tiny_prints_table_with_ratio(repo_root):
  vocab = 512
  out = _run(repo_root, "bench_train.py", "--vocab", str(vocab), "--d_model", "64", "--layers",
             "2", "--heads", "2", "--kv_heads", "1", "--head_dim", "32", "--mlp", "128",
             "--batch", "2", "--seq", "32", "--attn", "sdpa", "--warmup", "1", "--steps", "1",
             "--windows", "2", "--peak_n", "256", "--peak_s", "0.2")
  assert "- command: `python benchmarks/bench_train.py --vocab 512" in out
  assert "gift devices: [CpuDevice(id=0)]" in out  # one real device, no fake ones
  assert "runners in one child process each" in out
  rows = {m.group(1).strip(): m.group(2) for m in re.finditer(r"^\| (gift[^|]*|transformers[^|]*)"
                                                                 r"\|(.*)\|$", out, re.M)}
  assert set(rows) == {"gift (JAX)", "transformers + torch (sdpa) (reference)"}, out
  for cells in rows.values():
    step_ms, _, tokens_s, tflops, mfu, _, loss = [c.strip() for c in cells.split("|")]
    assert float(step_ms) > 0 and float(tokens_s.replace(",", "")) > 0 and float(tflops) >= 0
    assert 0 <= float(mfu.rstrip("%")) < 100
    assert abs(float(loss) - math.log(vocab)) < 1.5  # both models start near uniform
  ratio = float(re.search(r"throughput ratio: ([\d.]+)x", out).group(1))
  assert ratio > 0


def test_bench_mfu_tiny_runs_gift_and_the_peer_and_reports_mfu(repo_root):
  out = _run(repo_root, "bench_mfu.py", "--preset", "test_tiny", "--dtype", "float32",
             "--batch", "2", "--seq", "32", "--warmup", "1", "--steps", "1", "--windows", "2",
             "--peer", "cpu")
  assert "the f32 matmul peak measured here ('cpu' is not in gift.flops.PEAK_FLOPS)" in out
  rows = {m.group(1).strip(): m.group(2) for m in re.finditer(r"^\| (gift[^|]*|transformers[^|]*)"
                                                                 r"\|(.*)\|$", out, re.M)}
  assert set(rows) == {"gift (JAX)", "transformers + torch (cpu)"}, out
  for cells in rows.values():
    step_ms, tokens_s, _, mfu, loss = [c.strip() for c in cells.split("|")]
    assert float(step_ms) > 0 and float(tokens_s.replace(",", "")) > 0
    assert 0 < float(mfu.rstrip("%")) < 100 and math.isfinite(float(loss))  # 3 significant digits
  assert re.search(r"gift MFU: [\d.]+%", out) and "gift / peer throughput ratio" in out


@pytest.mark.slow  # two tiny builds and evaluations, each runner started twice: ~2 min
def test_bench_beam_tiny_prints_both_runners_and_checks_equality(repo_root, shared_dir):
  out = _run(repo_root, "bench_beam.py", "--override=--config.synth.num_bundled=2",
             "--override=--config.synth.bundled_real=False",
             "--override=--config.synth.intents_per_context=4", "--limit", "3",
             "--answers", str(shared_dir / "datasets" / "ds1000" / "answers" /
                              "codex002-pandas.jsonl"), timeout=600)
  assert "| gift build-data --runner local |" in out and "| gift build-data --runner beam |" in out
  assert "identical dataset and card: True" in out and "same pass counts: True" in out
  assert re.search(r"f32 matmul peak \(JAX, 1024\^3\): \d+ GFLOP/s", out)


@pytest.mark.slow  # gift serve start-up (compiling its decode shapes) + the Sampler: ~1-2 min
def test_bench_serve_tiny_runs_gift_offline_and_online(repo_root):
  pytest.importorskip("fastapi")
  out = _run(repo_root, "bench_serve.py", "--no_vllm", "--offline_batches", "2", "--windows",
             "1", "--repeats", "1", "--offline_new_tokens", "8", "--requests", "6",
             "--c1_requests", "2", "--concurrency", "1", "3", "--prompt_len", "16", "40",
             "--new_tokens", "4", "8", "--online_windows", "2", timeout=900)
  assert re.search(r"\| 2 \| greedy \| [\d,]+ \| - \| - \|", out)
  rows = re.findall(r"\| (\d+) \| (\d+) \| gift \| [\d.]+ \| [\d,]+ \|.*\| (\d+) \|\n", out)
  assert [(c, n, errors) for c, n, errors in rows] == [("1", "2", "0"), ("3", "6", "0")]
  # Each level's median over 2 alternating windows, with the windows' own figures listed.
  windows = re.findall(r"- concurrency (\d+), output tok/s by window: gift ([\d,]+) / ([\d,]+)\n",
                       out)
  assert [c for c, *_ in windows] == ["1", "3"]
  # Each level's work, the host's ceiling for it and the share of it gift reached.
  assert re.search(r"memory bandwidth: \d+ GB/s", out)
  shares = re.findall(r"- concurrency (\d+), work: .* a ceiling of [\d,]+ output tok/s; "
                      r"reached: gift (\d+)%\n", out)
  assert [c for c, _ in shares] == ["1", "3"] and all(0 < int(x) < 100 for _, x in shares)
  # The engine alone, in-process: one row per repeat and schedule, with its tuned extents and
  # stats.
  out = _run(repo_root, "bench_serve.py", "--engine", "--requests", "6", "--repeats", "1",
             "--concurrency", "3", "--prompt_len", "16", "40", "--new_tokens", "4", "8",
             "--overlap_prefill", "both", "--dots", "ynnpack", timeout=900)
  assert re.search(r"extents kept: \[[\d, ]+\]", out)
  rows = re.findall(r"\| 3 \| 6 \| (in turn|overlapped) \| [\d,]+ \| [\d,]+ ms \|.*\| "
                    r"[\d.]+ \(\d+, [\d.]+, \d+\) \| [\d.]+ \(\d+, [\d,]+\) \| "
                    r"\d+% of \d+ cores \| [\d.]+ CPU s \|", out)
  assert sorted(rows) == ["in turn", "overlapped"]
  assert re.search(r"- median output tok/s: in turn [\d,]+, overlapped [\d,]+\n", out)
  assert re.search(r"- concurrency 3, work: .* reached: gift engine \(best run\) \d+%\n", out)


@pytest.mark.slow  # three engine processes compile their shapes (two at once): ~2-3 min
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) % 2,
                    reason="needs an even number of cores to pin 2 replicas")
def test_bench_replicas_tiny_runs_both_setups(repo_root, tmp_path):
  out = _run(repo_root, "bench_replicas.py", "--rounds", "1", "--requests", "4",
             "--concurrency", "2", "--max_batch", "2", "--prompt_len", "8", "24",
             "--new_tokens", "4", "8", "--keep", str(tmp_path), timeout=900)
  rows = re.findall(r"\| 1 \| (one engine|2 replicas) \| [\d,]+ \| ([\d./ ]+) \|\n", out)
  assert sorted((name, walls.count("/")) for name, walls in rows) == [
      ("2 replicas", 1), ("one engine", 0)]
  assert re.search(r"replicas / one engine: \*\*\d+\.\d\dx\*\*", out)
  assert re.search(r"matmul peak: \d+ GFLOP/s .* memory bandwidth: \d+ GB/s", out)


def test_bench_serve_workload_counts_by_hand():
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
  import bench_serve
  shape = dict(vocab_size=10, hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=1, intermediate_size=3)
  # One request: a 2-token prompt, 3 new tokens (the first from the prefill, then 2 decode
  # steps, over contexts of 3 and 4 slots). Head size 2; per token through the layer:
  # 2 * (4 * (2 + 2) * 2 + 2 * 2 * 4 + 3 * 4 * 3) = 168 FLOPs, the unembedding 2 * 4 * 10 = 80.
  work = bench_serve.workload([2], [3], 1, shape)
  assert work["matmul"] == 2 * 168 + 80 + 2 * (168 + 80)
  assert work["attention"] == 4 * 2 * 2 * (1 + 2 + 3 + 4)  # causal 1 + 2, then 3 and 4 keys
  assert work["kv_bytes"] == 2 * 1 * 2 * 4 * (3 + 4)  # keys and values, 1 kv head, f32
  # 84 weights in the layer, 40 in the unembedding, f32, read by each of the 2 decode steps.
  assert work["weight_bytes"] == 2 * (84 + 40) * 4
  assert work["output_tokens"] == 3
  # Two such requests at concurrency 2 share their 2 decode steps; 4 at concurrency 2 need 4;
  # one alone needs its 2 steps whatever the concurrency.
  assert bench_serve.workload([2, 2], [3, 3], 2, shape)["weight_bytes"] == 2 * 124 * 4
  assert bench_serve.workload([2] * 4, [3] * 4, 2, shape)["weight_bytes"] == 4 * 124 * 4
  assert bench_serve.workload([2], [3], 4, shape)["weight_bytes"] == 2 * 124 * 4
  seconds, tok_s = bench_serve.ceiling(work, peak_flops=1e3, bandwidth=100.0)
  assert math.isclose(seconds, (912 + 160) / 1e3 + (112 + 992) / 100)
  assert math.isclose(tok_s, 3 / seconds)
  line = bench_serve.ceiling_line(32, work, 1e3, 100.0, {"gift": tok_s / 2, "vllm": tok_s / 4})
  assert "reached: gift 50%, vllm 25%; 1.5x vLLM would be 38% of the ceiling" in line


def test_bench_decode_step_sorts_operations_by_kind():
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
  import bench_decode_step
  hlo = """HloModule m

%fused_dot (p0: f32[2,4], p1: f32[4,8]) -> f32[2,8] {
  %p0 = f32[2,4]{1,0} parameter(0)
  %p1 = f32[4,8]{1,0} parameter(1)
  ROOT %dot.1 = f32[2,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_add (p0.1: f32[2,8]) -> f32[2,8] {
  %p0.1 = f32[2,8]{1,0} parameter(0)
  ROOT %add.1 = f32[2,8]{1,0} add(%p0.1, %p0.1)
}

%body (arg: (s32[], f32[2,8])) -> (s32[], f32[2,8]) {
  %arg = (s32[], f32[2,8]{1,0}) parameter(0)
  %x = f32[2,8]{1,0} get-tuple-element(%arg), index=1
  %ynn_fusion.3 = f32[2,8]{1,0} fusion(%x, %x), kind=kCustom, calls=%fused_dot
  %loop_fusion.2 = f32[2,8]{1,0} fusion(%ynn_fusion.3), kind=kLoop, calls=%fused_add
  %ffi_call.4 = f32[2,8]{1,0} custom-call(%loop_fusion.2), custom_call_target="gift_attn"
  ROOT %t = (s32[], f32[2,8]{1,0}) tuple(%i, %ffi_call.4)
}

ENTRY %main (a: f32[2,8]) -> f32[2,8] {
  %a = f32[2,8]{1,0} parameter(0)
  %while.9 = (s32[], f32[2,8]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %copy.1 = f32[2,8]{1,0} copy(%a)
}
"""
  assert bench_decode_step.kinds_of(hlo) == {
      "ynn_fusion.3": "dots", "loop_fusion.2": "other", "ffi_call.4": "kernels",
      "copy.1": "other"}


def test_bench_decode_step_counts_only_the_decode_modules_operations():
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
  import bench_decode_step
  kinds = {"ynn_fusion.3": "dots", "copy.7": "other", "ffi_call.4": "kernels"}
  ev = lambda name, us, module: {"ph": "X", "name": name, "dur": us,
                                 "args": {"hlo_module": module}}
  events = [ev("ynn_fusion.3", 300.0, "jit__decode_rows"), ev("ffi_call.4", 200.0,
                                                              "jit__decode_rows"),
            ev("copy.7", 50.0, "jit__decode_rows"),
            ev("copy.7", 4000.0, "jit__all_rows_live"),  # the reset between chunks: not counted
            {"ph": "X", "name": "ynn_fusion.3", "dur": 100.0},  # no module named: counted
            {"ph": "i", "name": "copy.7", "dur": 9.0, "args": {"hlo_module": "jit__decode_rows"}},
            ev("while.2", 900.0, "jit__decode_rows")]  # not an operation of its own
  split = bench_decode_step.split_events(events, kinds, "jit__decode_rows")
  assert dict(split) == pytest.approx({"dots": 400e-6, "kernels": 200e-6, "other": 50e-6})


@pytest.mark.slow  # builds the benchmark model, compiles one decode chunk: ~1 min
def test_bench_decode_step_tiny_prints_the_split(repo_root):
  out = _run(repo_root, "bench_decode_step.py", "--rows", "2", "--extents", "32", "--steps",
             "2", "--chunks", "2", timeout=600)
  row = re.search(r"\| 32 \| ([\d.]+) \| (\d+)% \| (\d+)% \| (\d+)% \| \d+ \(\d+%\) \| "
                  r"\d+ MB \(\d+ GB/s in the kernels\) \|", out)
  assert row, out[-2000:]
  assert float(row.group(1)) > 0 and int(row.group(2)) > 0  # the step has matmuls
  assert 98 <= sum(int(row.group(i)) for i in (2, 3, 4)) <= 102
  for m in (2, 4, 8, 16, 32):  # the layer-matmul table, --rows x 1, 2, 4, 8, 16
    assert re.search(rf"\n\| {m} \| [\d.]+ \| \d+ \| \d+ \(\d+%\) \|\n", out), out[-2000:]
  assert re.search(r"- at 2 rows \(a decode step\) the layers' matmuls cost \d+ us per row; at "
                   r"\d+ rows \d+: .* of the step at extent 32", out), out[-2000:]
