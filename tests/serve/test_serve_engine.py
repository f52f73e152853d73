"""The continuous-batching engine: greedy outputs equal `gift sample`'s whatever shares the
batch, seeded samples do not depend on their neighbours, sequences end at EOS / max_tokens /
stop strings, slots are reused and freed on cancel, the queue limit, per-row sampling."""
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gift import sample, sharding
from gift import tokenizer as tokenizer_lib
from gift.model import presets, transformer
from gift.serve import engine as engine_lib
from gift.serve.engine import Engine, SamplingParams

CFG = presets.get_preset("test_tiny", vocab_size=259, num_layers=2, max_seq_len=128)
TOK = tokenizer_lib.load(None)
# Few shapes, so the tests share compilations (test_serve_app.py uses the same): prompts pad
# to 128, one cache extent.
KW = dict(max_batch=16, max_seq_len=128, decode_steps=4, prompt_buckets=(128,),
          extent_buckets=(128,))


@pytest.fixture(scope="module")
def params():
  # Larger-than-init weights give peaked, prompt-dependent distributions (varied greedy text).
  p = transformer.init_params(CFG, jax.random.key(0))
  return jax.tree.map(lambda x: x * 3.0 if x.ndim > 2 else x, p)


@pytest.fixture(scope="module")
def engine(params):
  eng = Engine(CFG, params, TOK, **KW).start()
  yield eng
  eng.stop()


def _prompts(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [[TOK.bos_id] + rng.integers(3, 259, size=n - 1).tolist() for n in lengths]


def _reference(params, prompts, max_new_tokens):
  s = sample.Sampler(CFG, params, TOK, batch_size=8, buckets=(128,))
  return [row[0] for row in s.generate_ids(prompts, max_new_tokens=max_new_tokens,
                                           stop_at_eos=False)]


def test_greedy_equals_sampler_with_mixed_concurrent_traffic(engine, params):
  """Greedy sequences join a batch already decoding sampled ones, at staggered times, in more
  sequences than slots (so slots are reused); each equals the Sampler's output for its prompt."""
  greedy_prompts = _prompts([2, 7, 19, 33, 50, 5, 12, 3, 9, 41, 16, 27, 6, 60], seed=1)
  ref = _reference(params, greedy_prompts, 24)
  noise = engine.submit_many([(p, SamplingParams(max_tokens=m, temperature=1.0, top_p=0.9,
                                                 ignore_eos=True), 1)
                              for p, m in zip(_prompts([9, 40, 3], seed=2), (30, 10, 45))])
  first = engine.submit_many([(p, SamplingParams(max_tokens=24, temperature=0.0,
                                                 ignore_eos=True), 1)
                              for p in greedy_prompts[:3]])
  while not any(s.ids for s in first):  # the rest join while these decode
    time.sleep(0.01)
  rest = engine.submit_many([(p, SamplingParams(max_tokens=24, temperature=0.0,
                                                ignore_eos=True), 1)
                             for p in greedy_prompts[3:]])
  for s in noise + first + rest:
    assert s.done_event.wait(300)
  assert [s.ids for s in first + rest] == ref
  assert all(s.finish == "length" for s in first + rest)
  assert [len(s.ids) for s in noise] == [30, 10, 45]
  assert engine.load()["busy"] == 0


def _compile_threads():
  """(names of the threads that compiled, in order; the listener that records them, already
  registered: unregister it with jax.monitoring.unregister_event_duration_listener)."""
  compiled = []

  def on_event(event, duration_s, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
      compiled.append(threading.current_thread().name)

  jax.monitoring.register_event_duration_secs_listener(on_event)
  return compiled, on_event


def test_after_warmup_the_engine_thread_never_compiles(params):
  """Every shape the scheduler produces is compiled by warmup(): a burst of arrivals in two
  prompt buckets (groups of 3 = 2 + 1), an extent that grows and shrinks, more sequences than
  slots; greedy outputs still equal the Sampler's."""
  eng = Engine(CFG, params, TOK, max_batch=4, max_seq_len=128, decode_steps=4,
               prompt_buckets=(32, 64), extent_buckets=(64, 128))
  eng.warmup()
  compiled, on_event = _compile_threads()
  eng.start()
  try:
    prompts = _prompts([5, 20, 50, 9, 60, 30], seed=4)
    greedy = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    first = eng.submit_many([(p, greedy, 1) for p in prompts[:3]])
    while not any(s.ids for s in first):
      time.sleep(0.01)
    rest = eng.submit_many([(p, greedy, 1) for p in prompts[3:]])
    for s in first + rest:
      assert s.done_event.wait(300)
  finally:
    eng.stop()
    jax.monitoring.unregister_event_duration_listener(on_event)
  assert not {"gift-serve-engine", "gift-serve-prefill"} & set(compiled)
  assert eng.stats["resizes"] >= 1 and eng.stats["prefills"] >= 3
  assert [s.ids for s in first + rest] == _reference(params, prompts, 24)


def test_prompts_past_64_tokens_are_prefilled_alone_padded_to_a_multiple_of_32(params):
  """With the default prompt buckets, a prompt of 65 to 512 tokens is prefilled in a call of
  its own, padded to the next multiple of 32 (70 and 90 tokens: 96, not their bucket 128),
  compiled by warmup(); shorter ones (and those past the last such size) are still grouped by
  power-of-two bucket; greedy outputs equal the Sampler's."""
  eng = Engine(CFG, params, TOK, max_batch=8, max_seq_len=128, decode_steps=4,
               extent_buckets=(128,))
  assert eng.prompt_buckets == (16, 32, 64, 128) and eng.lone_buckets == (96,)
  eng.warmup()
  compiled, on_event = _compile_threads()
  eng.start()
  prompts = _prompts([70, 20, 90, 100, 30, 110], seed=6)
  greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
  try:
    burst = eng.submit_many([(p, greedy, 1) for p in prompts])
    assert all(s.done_event.wait(300) for s in burst)
  finally:
    eng.stop()
    jax.monitoring.unregister_event_duration_listener(on_event)
  assert not {"gift-serve-engine", "gift-serve-prefill"} & set(compiled)
  # 70, 90: alone at 96; 20 and 30: together at 32; 100 and 110: together at 128.
  assert eng.stats["prefills"] == 4
  assert eng.stats["prefill_padded_tokens"] == 96 + 96 + 2 * 32 + 2 * 128
  assert [s.ids for s in burst] == _reference(params, prompts, 8)


def test_the_chunk_after_a_finish_is_short_so_followers_join_sooner(params):
  """A chunk that frees a slot is followed by a `join_steps` chunk (the freed slot's client
  usually sends its next request at once), then whole chunks again; outputs are unchanged."""
  eng = Engine(CFG, params, TOK, **{**KW, "decode_steps": 8, "join_steps": 2})
  calls, decode = [], eng._decode
  eng._decode = lambda steps: (calls.append(steps), decode(steps))[1]
  prompts = _prompts([5, 9], seed=7)
  greedy = lambda m: SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True)
  short, long = eng.submit_many([(prompts[0], greedy(4), 1), (prompts[1], greedy(30), 1)])
  eng.start()  # both join the first chunk
  try:
    assert short.done_event.wait(300) and long.done_event.wait(300)
  finally:
    eng.stop()
  # 1 token from the prefill + 3 in the first chunk end `short`: the next chunk is short.
  assert calls[:3] == [8, 2, 8]
  ref = _reference(params, prompts, 30)
  assert short.ids == ref[0][:4] and long.ids == ref[1]


def test_select_extents_keeps_an_extent_only_where_no_larger_one_is_faster():
  # ms per decode step by extent, as a 2-core VM measured them (XLA:CPU threads the attention
  # products above 512 x 64): 512 is slower than 520 and 544, so it goes; 264 is an extra
  # candidate no faster than the bucket 256 below it, so it goes too.
  times = {64: 5.0, 72: 5.2, 128: 6.0, 136: 6.0, 256: 8.4, 264: 8.3, 512: 12.2, 520: 11.2,
           544: 10.8}
  buckets = (64, 128, 256, 512, 544)
  assert engine_lib.select_extents(times, buckets) == (64, 128, 256, 520, 544)
  # The largest stays even when slower; a bucket beaten only within the margin stays.
  assert engine_lib.select_extents({64: 1.0, 128: 0.97, 256: 3.0}, (64, 128, 256)) == (
      64, 128, 256)
  assert engine_lib.select_extents({64: 2.0, 128: 1.0, 256: 3.0}, (64, 128, 256)) == (128, 256)
  # An extra candidate that clearly beats its bucket replaces it.
  assert engine_lib.select_extents({256: 9.0, 264: 6.0, 512: 7.0}, (256, 512)) == (264, 512)


def test_warmup_tunes_the_default_extents_and_serves_the_same_tokens(params):
  """With no extent_buckets given, warmup() times each candidate extent (powers of two and
  those plus 8) on real decode chunks and keeps the ones no larger extent beats; greedy
  outputs still equal the Sampler's."""
  eng = Engine(CFG, params, TOK, max_batch=4, max_seq_len=128, decode_steps=4,
               prompt_buckets=(32, 64))
  assert eng.extent_candidates == (64, 72, 128)
  eng.warmup()
  assert set(eng.extent_times) == {64, 72, 128} and all(t > 0 for t in eng.extent_times.values())
  assert eng.extent_buckets == engine_lib.select_extents(eng.extent_times, (64, 128))
  assert eng.extent_buckets[-1] == 128 and eng.width == eng.extent_buckets[0]
  eng.start()
  try:
    prompts = _prompts([5, 50, 20], seed=9)
    got = eng.generate(prompts, SamplingParams(max_tokens=40, temperature=0.0,
                                               ignore_eos=True), timeout_s=300)
  finally:
    eng.stop()
  assert [row[0].ids for row in got] == _reference(params, prompts, 40)
  # Given extents are used as they are: nothing to tune.
  assert Engine(CFG, params, TOK, **KW).extent_candidates == ()


def test_a_fresh_slot_state_and_a_decoded_one_share_one_compile(params):
  """The engine's arrays are all committed to its device, so the decode step compiled for a
  fresh state (warmup, the extent tuner) is the one its outputs run: the tuner times steps,
  not a second compile (uncommitted fresh arrays once compiled again for the committed
  outputs, and every tuned time was a compile's)."""
  committed = jax.device_put(params, jax.local_devices()[0])  # as a checkpoint loads them
  eng = Engine(CFG, committed, TOK, max_batch=4, max_seq_len=128, decode_steps=4,
               prompt_buckets=(32,), extent_buckets=(40, 128))  # 40: no other test's shape
  run = lambda state: engine_lib._decode_jit(
      CFG, eng.params, state, eng._put(np.ones(4, bool)), jnp.int32(2), rows=4,
      max_steps=4, stop_ids=eng.stop_ids)[0]
  before = engine_lib._decode_jit._cache_size()
  state = run(eng._empty_state(40))
  run(state)
  assert engine_lib._decode_jit._cache_size() == before + 1


def test_seeded_samples_do_not_depend_on_the_batch(engine):
  prompts = _prompts([4, 20, 9])
  p = SamplingParams(max_tokens=16, temperature=0.9, top_k=40, top_p=0.95, seed=5,
                     ignore_eos=True)
  together = engine.generate(prompts, p, n=2, timeout_s=300)
  alone = [engine.generate([q], p, n=2, timeout_s=300)[0] for q in prompts[::-1]][::-1]
  ids = lambda rows: [[c.ids for c in row] for row in rows]
  assert ids(together) == ids(alone)
  assert together[0][0].ids != together[0][1].ids  # choices differ
  other = engine.generate(prompts[:1], SamplingParams(**{**p.__dict__, "seed": 6}), n=2,
                          timeout_s=300)
  assert ids(other) != ids(together[:1])


def test_eos_stop_string_and_max_tokens_end_sequences(engine, params):
  prompt = _prompts([6], seed=3)[0]
  (ids,) = _reference(params, [prompt], 24)
  # The 5th generated id made EOS: a custom stop id set ends there.
  stopper = Engine(CFG, params, TOK, **KW)
  stopper.stop_ids = (ids[4],)
  stopper.start()
  try:
    (s,), = stopper.generate([prompt], SamplingParams(max_tokens=24, temperature=0.0),
                             timeout_s=300)
  finally:
    stopper.stop()
  assert s.finish == "stop" and s.ids == ids[:ids.index(ids[4]) + 1]
  # A stop string: the text is cut before it and no later token is kept.
  text = TOK.decode(ids)
  at = next(i for i in range(4, len(text)) if text[i:i + 2].isascii() and
            text[i:i + 2].isprintable() and text[i:i + 2] not in text[:i + 1])
  stop = text[at:at + 2]
  (s,), = engine.generate([prompt], SamplingParams(max_tokens=24, temperature=0.0, stop=(stop,),
                                                   ignore_eos=True), timeout_s=300)
  assert s.finish == "stop" and s.text == text[:text.find(stop)]
  assert stop in TOK.decode(s.ids) and stop not in TOK.decode(s.ids[:-1])
  (s,), = engine.generate([prompt], SamplingParams(max_tokens=3, temperature=0.0,
                                                   ignore_eos=True), timeout_s=300)
  assert s.finish == "length" and s.ids == ids[:3]


def test_streamed_events_add_up_to_the_text(engine):
  events = []
  done = threading.Event()

  def on_event(seq, delta, infos, finish):
    events.append((delta, [i.id for i in infos], finish))
    if finish:
      done.set()

  (s,) = engine.submit(_prompts([5])[0], SamplingParams(max_tokens=20, temperature=0.0,
                                                         logprobs=2, ignore_eos=True),
                       on_event=on_event)
  assert done.wait(300)
  assert "".join(d for d, _, _ in events) == s.text
  assert [i for _, ids, _ in events for i in ids] == s.ids
  assert [f for _, _, f in events][-1] == "length"
  assert all(len(i.top) == 2 and i.logprob <= 0 for i in s.infos)
  # greedy: the chosen token is the most likely one
  assert all(i.top[0][0] == i.id and abs(i.top[0][1] - i.logprob) < 1e-5 for i in s.infos)


def test_cancel_frees_the_slot_and_queue_limit(params):
  eng = Engine(CFG, params, TOK, **{**KW, "max_queue": 3})
  long = SamplingParams(max_tokens=120, temperature=0.0, ignore_eos=True)
  seqs = eng.submit(_prompts([4])[0], long, n=3)  # not started: all wait
  with pytest.raises(engine_lib.QueueFull):
    eng.submit(_prompts([4])[0], long)
  eng.start()
  try:
    while eng.load()["busy"] < 3:
      time.sleep(0.01)
    eng.cancel(seqs)
    for s in seqs:
      assert s.done_event.wait(60) and s.finish == "cancelled"
    deadline = time.time() + 60
    while eng.load()["busy"] and time.time() < deadline:
      time.sleep(0.01)
    assert eng.load() == dict(busy=0, waiting=0, slots=16, extent=128)
    assert all(len(s.ids) < 120 for s in seqs)
    (s,), = eng.generate(_prompts([4])[:1], SamplingParams(max_tokens=5, temperature=0.0),
                         timeout_s=300)  # still serving
    assert len(s.ids) >= 1
  finally:
    eng.stop()


def test_bad_requests_are_refused_with_the_reason(engine):
  p = SamplingParams(max_tokens=10)
  with pytest.raises(engine_lib.ContextTooLong, match="context"):
    engine.submit([1] * 128, p)
  with pytest.raises(engine_lib.ContextTooLong, match="max_tokens"):
    engine.submit([1] * 100, SamplingParams(max_tokens=29))
  with pytest.raises(ValueError, match="vocabulary"):
    engine.submit([1, 300], p)
  with pytest.raises(ValueError, match="top_k"):
    engine.submit([1], SamplingParams(max_tokens=4, top_k=engine_lib.CANDIDATES + 1))
  with pytest.raises(ValueError, match="empty"):
    engine.submit([], p)


@pytest.mark.slow  # compiles the engine again for the mesh: ~40 s on 2 cores
@pytest.mark.parametrize("tuned", [False, True], ids=["given_extents", "tuned_extents"])
def test_greedy_equals_sampler_on_a_mesh(params, tuned):
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  kw = {k: v for k, v in KW.items() if not (tuned and k == "extent_buckets")}
  eng = Engine(CFG, params, TOK, mesh=mesh, **kw)
  if tuned:  # the extents timed on sharded slots
    assert eng.tune_extents() == engine_lib.select_extents(eng.extent_times, (64, 128))
  eng.start()
  try:
    prompts = _prompts([3, 17, 8, 30, 11])
    out = eng.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
                       timeout_s=300)
  finally:
    eng.stop()
  assert [row[0].ids for row in out] == _reference(params, prompts, 12)


def test_sample_rows_keeps_each_rows_top_k_and_nucleus():
  # probabilities 0.5, 0.25, 0.125, ... over 8 ids (shuffled), rows with different settings
  perm = np.array([5, 2, 7, 0, 3, 6, 1, 4])
  logits_v = np.empty(8, np.float32)
  logits_v[perm] = -np.arange(8) * np.log(2.0)
  settings = [(0.0, 0, 1.0), (1.0, 2, 1.0), (1.0, 0, 0.7), (1.0, 0, 1.0), (1.0, 3, 0.6)]
  b = 4096
  rows = len(settings)
  logits_bv = jnp.asarray(np.tile(logits_v, (b * rows, 1)))
  temp, top_k, top_p = (jnp.asarray(np.repeat([s[i] for s in settings], b)) for i in range(3))
  keys = jax.random.split(jax.random.key(0), b * rows)
  got = np.asarray(engine_lib.sample_rows(logits_bv, keys, jnp.zeros(b * rows, jnp.int32),
                                          temp.astype(jnp.float32), top_k.astype(jnp.int32),
                                          top_p.astype(jnp.float32))).reshape(rows, b)
  assert set(got[0]) == {5}  # greedy
  assert set(got[1]) == {5, 2}  # top-k 2
  assert set(got[2]) == {5, 2}  # mass before id 2 is 0.5 < 0.7, before id 7 is 0.75
  assert set(got[3]) == set(range(8)) - {4} or set(got[3]) == set(range(8))  # whole vocabulary
  assert set(got[4]) == {5, 2}  # top-k 3 then top-p 0.6 of the renormalized mass
  # frequencies follow the distribution (whole vocabulary row)
  freq = np.bincount(got[3], minlength=8)[perm[:3]] / b
  np.testing.assert_allclose(freq, [0.5, 0.25, 0.125], atol=0.03)


def test_sample_rows_full_vocabulary_nucleus_by_threshold():
  """A nucleus that the top CANDIDATES ids do not hold (a flat distribution over 1024 ids)."""
  v = 1024
  logits_bv = jnp.zeros((2048, v), jnp.float32)
  keys = jax.random.split(jax.random.key(1), 2048)
  ones = jnp.ones(2048, jnp.float32)
  got = np.asarray(engine_lib.sample_rows(logits_bv, keys, jnp.zeros(2048, jnp.int32), ones,
                                          jnp.zeros(2048, jnp.int32), ones * 0.5))
  assert len(set(got.tolist())) > 400 and got.max() < v


def test_serve_without_the_extra_says_how_to_install(monkeypatch):
  import sys

  from gift import serve
  monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed
  with pytest.raises(SystemExit, match=r'fastapi is not installed.*pip install "gift\[serve\]"'):
    serve.main(["--checkpoint", "x"])


def test_an_engine_failure_ends_every_request_with_an_error(params, monkeypatch):
  """No client hangs when the decode loop dies: running and waiting sequences end with the
  error, and new requests are refused (the HTTP layer answers 500 / /health 503)."""
  eng = Engine(CFG, params, TOK, **KW)

  def boom(steps):
    raise RuntimeError("device lost")

  monkeypatch.setattr(eng, "_decode", boom)
  eng.start()
  try:
    seqs = eng.submit(_prompts([5])[0], SamplingParams(max_tokens=10, temperature=0.0), n=20)
    for s in seqs:  # 16 were admitted (prefilled), 4 still waited
      assert s.done_event.wait(120) and s.finish == "error: RuntimeError: device lost"
    with pytest.raises(engine_lib.EngineDead, match="device lost"):
      eng.submit(_prompts([5])[0], SamplingParams(max_tokens=10))
  finally:
    eng.stop()


def test_prefills_overlapping_decode_give_the_tokens_of_prefills_in_turn(params):
  """`overlap_prefill` (prefills on a thread of their own while the engine thread decodes)
  changes when sequences join, not what they generate: greedy output equals the Sampler's,
  and both schedules agree on seeded samples."""
  prompts = _prompts([5, 40, 9, 70, 3, 22, 51, 12], seed=9)
  greedy = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
  seeded = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.9, seed=5, ignore_eos=True)
  got = {}
  for overlap in (True, False):
    eng = Engine(CFG, params, TOK, **KW, overlap_prefill=overlap).start()
    try:
      first = eng.submit_many([(p, greedy, 1) for p in prompts[:3]])
      while not any(s.ids for s in first):
        time.sleep(0.005)
      rest = eng.submit_many([(p, greedy, 1) for p in prompts[3:]]
                             + [(p, seeded, 2) for p in prompts[:2]])
      assert all(s.done_event.wait(300) for s in first + rest)
      assert (eng._prefill_thread is not None) == overlap
    finally:
      eng.stop()
    got[overlap] = [s.ids for s in first + rest]
  assert got[True] == got[False]
  assert got[True][:len(prompts)] == _reference(params, prompts, 20)


def test_a_sequence_cancelled_while_its_prefill_runs_never_takes_its_slot(params, monkeypatch):
  eng = Engine(CFG, params, TOK, **KW, overlap_prefill=True)
  started, release = threading.Event(), threading.Event()
  compute = eng._prefill_compute

  def slow(p, group):  # holds the prefill until the test has cancelled
    started.set()
    assert release.wait(60)
    return compute(p, group)

  monkeypatch.setattr(eng, "_prefill_compute", slow)
  eng.start()
  try:
    (s,) = eng.submit(_prompts([6])[0], SamplingParams(max_tokens=30, temperature=0.0))
    assert started.wait(60)
    assert eng.load()["busy"] == 1 and not s.inserted
    eng.cancel([s])
    assert s.done_event.wait(60) and s.finish == "cancelled" and not s.ids
    monkeypatch.setattr(eng, "_prefill_compute", compute)
    release.set()
    (t,), = eng.generate(_prompts([4], seed=1)[:1], SamplingParams(max_tokens=5,
                                                                    temperature=0.0),
                         timeout_s=300)  # still serving, the cancelled one never decoded
    assert len(t.ids) == 5 and not s.ids and eng.load()["busy"] == 0
  finally:
    release.set()
    eng.stop()


def test_a_prefill_thread_failure_ends_every_request_with_an_error(params, monkeypatch):
  eng = Engine(CFG, params, TOK, **KW, overlap_prefill=True)

  def boom(p, group):
    raise RuntimeError("prefill failed")

  monkeypatch.setattr(eng, "_prefill_compute", boom)
  eng.start()
  try:
    seqs = eng.submit(_prompts([5])[0], SamplingParams(max_tokens=10, temperature=0.0), n=20)
    for s in seqs:
      assert s.done_event.wait(120) and s.finish == "error: RuntimeError: prefill failed"
    with pytest.raises(engine_lib.EngineDead, match="prefill failed"):
      eng.submit(_prompts([5])[0], SamplingParams(max_tokens=10))
  finally:
    eng.stop()
