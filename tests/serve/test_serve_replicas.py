"""`gift serve --replicas N`: engine processes on their own cores behind one front (real
processes, spawned; a tiny checkpoint). Greedy outputs equal `gift sample`'s, whichever replica
runs them; events add up to the text; cancel, the queue limit and bad requests behave as the
engine's; a replica that dies ends its requests with an error and fails the server."""
import os
import time

import jax
import pytest
from test_serve_engine import CFG, KW, _prompts, _reference  # tests/serve, on sys.path

from gift import checkpoint
from gift.model import transformer
from gift.serve import engine as engine_lib
from gift.serve import replicas as replicas_lib
from gift.serve.engine import SamplingParams

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"),
                                reason="replicas pin themselves with sched_setaffinity")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  params = transformer.init_params(CFG, jax.random.key(0))
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim > 2 else x, params)
  path = str(tmp_path_factory.mktemp("replicas") / "tiny")
  checkpoint.save_model(path, CFG, params)
  return path, params


@pytest.fixture(scope="module")
def pool(ckpt):
  # Two replicas even on one core (both pinned to it): the routing is what is tested here.
  cores = sorted(os.sched_getaffinity(0))
  kw = dict(KW, max_batch=4, max_queue=8)
  r = replicas_lib.Replicas(ckpt[0], 2, cores=cores[:2] if len(cores) > 1 else cores * 2, **kw)
  yield r
  r.stop()


def test_split_cores():
  assert replicas_lib.split_cores([3, 0, 1, 2, 4], 2) == [[0, 1], [2, 3]]
  with pytest.raises(ValueError, match=r"replicas=3; expected 1 to 2"):
    replicas_lib.split_cores([0, 1], 3)


@pytest.mark.slow  # spawned replica processes compile their shapes: ~25 s each
def test_greedy_equals_sampler_across_replicas_and_events_add_up(pool, ckpt):
  prompts = _prompts([2, 7, 19, 33, 50, 5, 12, 3, 9, 41], seed=1)
  ref = _reference(ckpt[1], prompts, 16)
  streamed = {}

  def on_event(seq, delta, infos, finish):
    streamed.setdefault(id(seq), []).append((delta, len(infos), finish))

  seqs = [pool.submit_many([(p, SamplingParams(max_tokens=16, temperature=0.0,
                                                ignore_eos=True), 1)], on_event)[0]
          for p in prompts]
  for s in seqs:
    assert s.done_event.wait(300)
  assert [s.ids for s in seqs] == ref
  assert {s.replica for s in seqs} == {0, 1}  # both replicas served
  for s in seqs:
    events = streamed[id(s)]
    assert "".join(d for d, _, _ in events) == s.text
    assert sum(n for _, n, _ in events) == len(s.ids) == len(s.infos) == 16
    assert events[-1][2] == s.finish == "length" and s.first_token_at is not None
  assert pool.load() == dict(busy=0, waiting=0, slots=4, replicas=2)


@pytest.mark.slow  # spawned replica processes compile their shapes: ~25 s each
def test_cancel_queue_limit_and_bad_requests(pool):
  long = SamplingParams(max_tokens=100, temperature=1.0, seed=3, ignore_eos=True)
  seqs = pool.submit_many([(_prompts([5])[0], long, 4)])
  with pytest.raises(engine_lib.QueueFull, match="the queue holds at most 8"):
    pool.submit_many([(_prompts([5])[0], long, 9)])
  while not all(s.ids or s.text or s.infos for s in seqs[:1]):
    time.sleep(0.01)
  pool.cancel(seqs)
  for s in seqs:
    assert s.done_event.wait(60)
  assert {s.finish for s in seqs} <= {"cancelled", "length"} and "cancelled" in {
      s.finish for s in seqs}
  with pytest.raises(engine_lib.ContextTooLong, match="exceeds this server's context of 128"):
    pool.submit_many([([1] * 100, SamplingParams(max_tokens=50), 1)])
  with pytest.raises(ValueError, match="out of the vocabulary"):
    pool.submit_many([([1, 9999], SamplingParams(max_tokens=5), 1)])
  deadline = time.time() + 30
  while pool.load()["busy"] and time.time() < deadline:
    time.sleep(0.05)
  assert pool.load()["busy"] == 0
  [[c]] = pool.generate([_prompts([6])[0]], SamplingParams(max_tokens=4, temperature=0.0,
                                                          ignore_eos=True), timeout_s=120)
  assert len(c.ids) == 4 and c.finish == "length"


@pytest.mark.slow  # spawned replica processes compile their shapes: ~25 s each
def test_a_replica_that_dies_fails_its_requests_and_the_server(ckpt):
  cores = sorted(os.sched_getaffinity(0))
  r = replicas_lib.Replicas(ckpt[0], 2, cores=cores[:2] if len(cores) > 1 else cores * 2,
                            **dict(KW, max_batch=2))
  try:
    seqs = r.submit_many([(_prompts([5])[0], SamplingParams(max_tokens=100, ignore_eos=True),
                           2)])
    r._procs[seqs[0].replica].kill()
    for s in seqs:
      assert s.done_event.wait(60)
    assert all(s.finish.startswith("error: replica") for s in seqs)
    with pytest.raises(engine_lib.EngineDead, match="exited"):
      r.submit_many([(_prompts([5])[0], SamplingParams(max_tokens=4), 1)])
  finally:
    r.stop()


def test_a_replica_that_cannot_start_says_why(ckpt):
  with pytest.raises(RuntimeError, match=r"replica 0 failed to start: TypeError: .*bogus"):
    core = min(os.sched_getaffinity(0))
    replicas_lib.Replicas(ckpt[0], 2, cores=[core, core], bogus=1)
