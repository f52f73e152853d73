"""The KV-cache sampler: cached decoding equals recomputation, batching/bucketing does not change
results, sampling modes, EOS and stop strings, determinism, the mesh, the CLI."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gift import checkpoint, sample
from gift import tokenizer as tokenizer_lib
from gift.model import presets, transformer

CFG = presets.get_preset("test_tiny", vocab_size=259, num_layers=2, max_seq_len=128)
TOK = tokenizer_lib.load(None)


@pytest.fixture(scope="module")
def params():
  # Larger-than-init weights give peaked, prompt-dependent distributions (varied greedy text).
  p = transformer.init_params(CFG, jax.random.key(0))
  return jax.tree.map(lambda x: x * 3.0 if x.ndim > 2 else x, p)


def _prompts(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [[TOK.bos_id] + rng.integers(3, 259, size=n - 1).tolist() for n in lengths]


def _sampler(params, tok=TOK, **kw):
  """Shared shapes (batch 4, buckets 16/32, 12 new tokens) so tests reuse compilations."""
  return sample.Sampler(CFG, params, tok, **{"batch_size": 4, "buckets": (16, 32), **kw})


@jax.jit
def _forward_1t(params, tokens_1t):
  t = tokens_1t.shape[1]
  return transformer.apply(CFG, params, tokens_1t, jnp.arange(t, dtype=jnp.int32)[None])[0]


def _greedy_by_recompute(params, prompt, steps, width=48):
  """Greedy decoding with a full forward pass per token: no cache, no left padding (the right
  padding up to `width` cannot affect earlier positions under the causal mask)."""
  ids = list(prompt)
  for _ in range(steps):
    logits = _forward_1t(params, jnp.asarray([ids + [0] * (width - len(ids))], jnp.int32))
    ids.append(int(jnp.argmax(logits[0, len(ids) - 1])))
  return ids[len(prompt):]


def test_cached_greedy_equals_full_recompute_for_left_padded_batch(params):
  prompts = _prompts([2, 7, 19])  # one batch, bucket 32: pads of 30, 25, 13
  out = _sampler(params).generate_ids(prompts, max_new_tokens=12, stop_at_eos=False)
  for prompt, (completion,) in zip(prompts, out):
    assert completion == _greedy_by_recompute(params, prompt, 12)


def test_batching_and_buckets_do_not_change_samples(params):
  prompts = _prompts([3, 11, 5, 17, 8])
  kw = dict(n=3, temperature=0.9, top_k=50, top_p=0.9, max_new_tokens=12, seed=7,
            stop_at_eos=False)
  a = _sampler(params).generate_ids(prompts, **kw)
  # 1 prompt (3 rows) per batch vs 2 prompts (6 rows), the last batch padded
  b = _sampler(params, batch_size=6, buckets=(8, 32)).generate_ids(prompts, **kw)
  assert a == b
  assert len({tuple(c) for row in a for c in row}) > 10  # the samples do differ


def test_the_decode_loop_compiles_per_cache_length_not_per_prompt_bucket(params, monkeypatch):
  """Prompts in buckets 16 and 32 (+ 13 new tokens) share one decode cache length (128, the
  model's max_seq_len here): one decode compilation instead of one per bucket, and the same
  completions as caches sized bucket + max_new_tokens."""
  prompts = _prompts([3, 11, 5, 20, 29, 25])  # sorted, two batches of 3: buckets 16 and 32
  kw = dict(n=1, temperature=0.0, max_new_tokens=13, stop_at_eos=False)
  assert sample._cache_len(16 + 13, 128) == sample._cache_len(32 + 13, 128) == 128
  assert sample._cache_len(500, 4096) == 512 and sample._cache_len(500, 300) == 500
  assert sample._cache_len(64 + 128, 4096) == 192  # the offline benchmark's shape
  before = sample._decode_jit._cache_size()
  laddered = _sampler(params, batch_size=3).generate_ids(prompts, **kw)
  assert sample._decode_jit._cache_size() - before == 1
  monkeypatch.setattr(sample, "CACHE_LENGTHS", ())
  before = sample._decode_jit._cache_size()
  per_bucket = _sampler(params, batch_size=3).generate_ids(prompts, **kw)
  assert sample._decode_jit._cache_size() - before == 2
  assert laddered == per_bucket


def test_each_prompt_is_prefilled_once_and_equals_a_prefill_per_sample(params, monkeypatch):
  prefilled = []  # prompts per prefill call

  def spy(cfg, params, tokens_up, *args, **kw):
    prefilled.append(tokens_up.shape[0])
    return prefill(cfg, params, tokens_up, *args, **kw)

  prefill = sample._prefill_jit
  monkeypatch.setattr(sample, "_prefill_jit", spy)
  prompts = _prompts([3, 11, 6])
  kw = dict(temperature=0.9, top_p=0.9, max_new_tokens=12, seed=4, stop_at_eos=False)
  sampler = _sampler(params, batch_size=8)
  shared = sampler.generate_ids(prompts, n=4, **kw)
  assert prefilled == [2, 2]  # 2 prompts x 4 samples per batch, one padding prompt
  # n = 1 on each prompt repeated 4 times: row i * 4 + j gets the same RNG stream as sample j
  # of prompt i above, but every row is prefilled on its own.
  separate = sampler.generate_ids([p for p in prompts for _ in range(4)], n=1, **kw)
  assert prefilled[2:] == [8, 8]
  assert shared == [[c for (c,) in separate[4 * i:4 * i + 4]] for i in range(3)]
  assert all(len(set(map(tuple, row))) > 1 for row in shared)  # samples of a prompt differ


def test_same_seed_same_samples_other_seed_differs(params):
  sampler = _sampler(params)
  kw = dict(n=4, temperature=1.0, max_new_tokens=12, stop_at_eos=False)
  prompts = _prompts([5, 9])
  first = sampler.generate_ids(prompts, seed=1, **kw)
  assert sampler.generate_ids(prompts, seed=1, **kw) == first
  assert sampler.generate_ids(prompts, seed=2, **kw) != first


@pytest.mark.parametrize("kw", [dict(top_k=1), dict(top_p=1e-6), dict(top_k=5, top_p=1e-6)])
def test_top_k_one_and_tiny_top_p_are_greedy(params, kw):
  sampler = _sampler(params)
  prompts = _prompts([4, 13])
  greedy = sampler.generate_ids(prompts, max_new_tokens=12, stop_at_eos=False)
  assert sampler.generate_ids(prompts, temperature=1.5, max_new_tokens=12, stop_at_eos=False,
                              seed=3, **kw) == greedy


def test_greedy_ids_is_argmax_with_its_tie_rule():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((16, 1000)).astype(np.float32)
  logits[3, [7, 500]] = 10.0  # ties: the first id wins, as in jnp.argmax
  logits[4, :] = 0.0
  logits[5, [999, 0]] = [5.0, 5.0]
  logits[6, :] = -np.inf
  logits[7, 998:] = [1e30, np.inf]  # the last id
  logits[8, :] = np.nan  # no largest logit: id 0
  got = np.asarray(sample.greedy_ids(jnp.asarray(logits)))
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, np.asarray(jnp.argmax(logits, axis=-1)))
  assert got[3] == 7 and got[4] == 0 and got[5] == 0 and got[6] == 0 and got[7] == 999
  assert got[8] == 0


def test_sample_logits_keeps_only_top_k_and_nucleus():
  # probabilities 0.5, 0.25, 0.125, ... over ids 0..7 (shuffled order in the vocabulary)
  perm = np.array([5, 2, 7, 0, 3, 6, 1, 4])
  logits_v = np.empty(8, np.float32)
  logits_v[perm] = -np.arange(8) * np.log(2.0)
  logits_bv = jnp.asarray(np.tile(logits_v, (4096, 1)))
  keys_b = jax.random.split(jax.random.key(0), 4096)

  def draw(top_k, top_p):
    return set(np.asarray(sample.sample_logits(logits_bv, keys_b, jnp.int32(0), jnp.float32(1.0),
                                               jnp.float32(top_p), top_k, False,
                                               nucleus=top_p < 1)).tolist())

  assert draw(3, 1.0) == set(perm[:3].tolist())
  assert draw(8, 0.7) == set(perm[:2].tolist())  # 0.5 < 0.7 <= 0.75
  assert draw(0, 0.7) == set(perm[:2].tolist())
  assert draw(0, 1.0) == set(perm.tolist())


@pytest.mark.parametrize("peaked", [True, False], ids=["top-candidates", "threshold"])
def test_nucleus_over_a_large_vocabulary_is_the_sorted_prefix(peaked):
  """Without top-k, a vocabulary larger than NUCLEUS_CANDIDATES: the nucleus comes from the top
  candidates (peaked: they hold top_p) or from the bisected threshold (flat); either way it is
  the smallest sorted prefix that reaches top_p, as a full sort would give."""
  vocab, top_p = 3000, 0.9
  rng = np.random.default_rng(0)
  logits_v = rng.standard_normal(vocab).astype(np.float32) * (6.0 if peaked else 0.3)
  probs = np.exp(logits_v - logits_v.max())
  probs /= probs.sum()
  order = np.argsort(-probs)
  cut = int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1
  want = set(order[:cut].tolist())
  assert (cut <= sample.NUCLEUS_CANDIDATES) == peaked
  rows = 8192
  got = np.asarray(sample.sample_logits(
      jnp.asarray(np.tile(logits_v, (rows, 1))), jax.random.split(jax.random.key(1), rows),
      jnp.int32(0), jnp.float32(1.0), jnp.float32(top_p), 0, False, nucleus=True))
  assert set(got.tolist()) <= want
  # The nucleus is not cut short: ids expected 20+ times are all drawn, and most of those
  # expected 3+ times (each missed with probability ~e^-3).
  expected = {int(i): probs[i] / probs[order[:cut]].sum() * rows for i in order[:cut]}
  drawn = set(got.tolist())
  assert {i for i, e in expected.items() if e > 20} <= drawn
  some = [i for i, e in expected.items() if e > 3]
  assert len(some) >= 10 and sum(i in drawn for i in some) >= 0.8 * len(some)


def test_eos_ends_a_row_and_the_loop(params):
  prompts = _prompts([6, 9])
  greedy = _sampler(params).generate_ids(prompts, max_new_tokens=12, stop_at_eos=False)
  row = greedy[0][0]
  eos = row[4]  # make the 5th greedy token of prompt 0 the end-of-sequence id
  tok = tokenizer_lib.ByteTokenizer()
  tok.eos_id, tok.stop_ids = eos, (eos,)
  out = _sampler(params, tok).generate_ids(prompts, max_new_tokens=12)
  assert out[0][0] == row[:row.index(eos)]
  other = greedy[1][0]
  assert out[1][0] == (other[:other.index(eos)] if eos in other else other)


def test_a_row_stops_at_any_of_several_stop_ids(params):
  """Qwen-style: generation_config lists two EOS ids; each row ends at the first of either."""
  prompts = _prompts([6, 9])
  greedy = _sampler(params).generate_ids(prompts, max_new_tokens=12, stop_at_eos=False)
  first, second = greedy[0][0], greedy[1][0]
  a = first[5]
  b = next((t for t in second[1:6] if t != a and t not in first[:6]), None)
  assert b is not None, "greedy rows too repetitive for this test"
  tok = tokenizer_lib.ByteTokenizer()
  tok.stop_ids = (b, a)  # neither is tok.eos_id
  out = _sampler(params, tok).generate_ids(prompts, max_new_tokens=12)
  cut = lambda row: row[:min([row.index(t) for t in (a, b) if t in row], default=len(row))]
  assert out[0][0] == cut(first) and len(out[0][0]) <= 5
  assert out[1][0] == cut(second) and len(out[1][0]) <= 5


def test_stop_strings_cut_the_text(params):
  sampler = _sampler(params, stop_check_every=4)
  prompt = "def f(x):"
  full = sampler.generate([prompt], max_new_tokens=40)[0][0]
  assert len(full) >= 20
  stop = full[10:13]
  cut = sampler.generate([prompt], max_new_tokens=40, stop=(stop, "\x00never"))[0][0]
  assert cut == full[:full.index(stop)]
  ids = sampler.generate_ids([[TOK.bos_id] + TOK.encode(prompt)], max_new_tokens=40,
                             stop=(stop,))[0][0]
  assert len(ids) < 40  # the loop stopped early, within a chunk of the stop string


def test_sharded_sampler_matches_single_device(params):
  sharding = pytest.importorskip("gift.sharding")
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  prompts = _prompts([3, 10, 6])
  kw = dict(n=2, temperature=0.8, top_p=0.95, max_new_tokens=12, seed=5, stop_at_eos=False)
  ref = _sampler(params).generate_ids(prompts, **kw)
  assert _sampler(params, mesh=mesh).generate_ids(prompts, **kw) == ref


def test_cli_prints_one_json_line_per_prompt(tmp_path, params, capsys):
  ckpt = str(tmp_path / "ckpt")
  checkpoint.save_model(ckpt, CFG, params)
  prompts_file = tmp_path / "prompts.jsonl"
  prompts_file.write_text(json.dumps({"prompt": "import pandas"}) + "\n")
  assert sample.main(["--checkpoint", ckpt, "--prompt", "x = 1", "--prompt_file",
                      str(prompts_file), "--n", "2", "--temperature", "0.8",
                      "--max_new_tokens", "12", "--seed", "0"]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["prompt"] for r in lines] == ["x = 1", "import pandas"]
  assert all(len(r["completions"]) == 2 for r in lines)
  again = sample.Sampler.from_checkpoint(ckpt).generate(
      ["x = 1", "import pandas"], n=2, temperature=0.8, max_new_tokens=12, stop=("# In[ ]:",))
  assert [r["completions"] for r in lines] == again
