"""Data-parallel replicas of the serving engine: one engine process per group of cores.

`gift serve --replicas N` starts N worker processes (multiprocessing, spawn), each pinned to its
own share of this process's cores before JAX starts, each running an `Engine` with
max_batch / N slots. The HTTP process keeps no model: `Replicas` checks each request as the
engine would, sends it to the replica with the fewest unfinished sequences and relays the
replica's events (text deltas, token infos, the finish reason) to the request's callback, from
one reader thread per replica.

Why: one XLA:CPU process runs a computation's independent operations one after another, so a
decode step's memory-bound attention and its matmuls never overlap; replicas on their own
cores do. On a 2-core VM, 2 single-core replicas made 1.15x and 1.50x (medians of 3 rounds)
the output tokens/s of one engine on both cores under 32 closed-loop clients
(benchmarks/bench_replicas.py, BENCHMARKS.md "Round 12"). The price: each replica holds its own
copy of the weights and compiles its own shapes (start-up runs them in parallel), and a
request's sequences all go to one replica.

Each sequence runs start to end in one replica's engine, so its tokens are the engine's: the
same greedy output as `gift sample` whatever else runs. A replica that exits ends its
unfinished sequences with an error and marks the server failed (/health), as a failed engine.
"""
from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import threading
import time
from typing import Any, Callable, Sequence

from gift.serve import engine as engine_lib

log = logging.getLogger(__name__)


class ReplicaChoice:
  """One choice as the HTTP process sees it (the fields of engine.Choice that it reads)."""

  def __init__(self, params: engine_lib.SamplingParams,
               on_event: Callable[..., None] | None) -> None:
    self.params, self.on_event = params, on_event
    self.ids: list[int] = []
    self.infos: list[engine_lib.TokenInfo] = []
    self.text, self.finish = "", None
    self.arrived, self.first_token_at = time.perf_counter(), None
    self.done_event = threading.Event()
    self.replica, self.key = -1, -1  # which replica runs it, under which key


def split_cores(cores: Sequence[int], replicas: int) -> list[list[int]]:
  """`cores` in `replicas` contiguous groups of equal size (the remainder left unused)."""
  cores = sorted(cores)
  if replicas < 1 or len(cores) < replicas:
    raise ValueError(f"replicas={replicas}; expected 1 to {len(cores)} (this process may run on "
                     f"{len(cores)} cores: {cores})")
  per = len(cores) // replicas
  return [cores[i * per:(i + 1) * per] for i in range(replicas)]


def _worker(conn, cores: list[int], checkpoint: str, step: int | None, kw: dict) -> None:
  """A replica: pins itself, builds and warms its engine, then serves the parent's messages."""
  try:
    os.sched_setaffinity(0, cores)  # before JAX creates its thread pool
    engine = engine_lib.Engine.from_checkpoint(checkpoint, step=step, **kw)
    engine.warmup()
    engine.start()
  except BaseException as e:  # noqa: BLE001 -- reported to the parent, which fails loudly
    conn.send(("failed", f"{type(e).__name__}: {e}"))
    return
  # map_lock guards the key maps and is never held while calling into the engine: the engine
  # calls on_event with its own lock held (cancellations), so submit_many runs outside it and
  # events that come before their keys are mapped wait in `early`, flushed in order.
  send_lock, map_lock = threading.Lock(), threading.Lock()
  keys: dict[int, int] = {}  # id(engine.Choice) -> the parent's key
  live: dict[int, engine_lib.Choice] = {}
  early: dict[int, list[tuple]] = {}

  def send(msg):
    with send_lock:
      conn.send(msg)

  def forward(key, seq, delta, infos, finish):
    if finish is not None:
      keys.pop(id(seq), None)
      live.pop(key, None)
    final = (list(seq.ids), seq.text, list(seq.infos)) if finish is not None else None
    send(("event", key, delta, infos, finish, seq.first_token_at is not None, final))

  def on_event(seq, delta, infos, finish):
    with map_lock:
      key = keys.get(id(seq))
      if key is None:
        early.setdefault(id(seq), []).append((delta, list(infos), finish))
      else:
        forward(key, seq, delta, infos, finish)

  send(("ready", dict(max_seq_len=engine.max_seq_len, max_batch=engine.max_batch,
                      extent_buckets=list(engine.extent_buckets))))
  dead_sent = False
  try:
    while True:
      if engine.error is not None and not dead_sent:
        send(("dead", repr(engine.error)))
        dead_sent = True
      if not conn.poll(0.5):
        continue
      msg = conn.recv()
      if msg[0] == "submit":
        _, batch, items = msg
        try:
          seqs = engine.submit_many(items, on_event)
        except Exception as e:  # noqa: BLE001 -- the parent ends these keys with the error
          send(("rejected", batch, f"{type(e).__name__}: {e}"))
          continue
        with map_lock:
          for key, seq in zip(batch, seqs):
            keys[id(seq)], live[key] = key, seq
            for event in early.pop(id(seq), ()):
              forward(key, seq, *event)
      elif msg[0] == "cancel":
        with map_lock:
          seqs = [live[k] for k in msg[1] if k in live]
        engine.cancel(seqs)
      elif msg[0] == "stop":
        break
  except (EOFError, OSError):  # the parent went away
    pass
  finally:
    engine.stop()


class Replicas:
  """`Engine`'s serving interface (submit_many, cancel, load, error, stop) over N engine
  processes. Blocks in the constructor until every replica has warmed up."""

  def __init__(self, checkpoint: str, replicas: int, *, step: int | None = None,
               max_batch: int = 32, max_queue: int = 256, cores: Sequence[int] | None = None,
               start_timeout_s: float = 3600.0, **engine_kw: Any) -> None:
    from gift import checkpoint as checkpoint_lib
    from gift import tokenizer as tokenizer_lib
    groups = split_cores(cores if cores is not None else os.sched_getaffinity(0), replicas)
    if max_batch < replicas:
      raise ValueError(f"max_batch={max_batch} cannot give {replicas} replicas a slot each")
    cfg = checkpoint_lib.read_model_config(checkpoint)
    self.vocab_size = cfg.vocab_size
    self.tokenizer = tokenizer_lib.load(checkpoint_lib.tokenizer_path(checkpoint), cfg.vocab_size)
    self.max_queue, self.error, self._stopping = max_queue, None, False
    slots = [max_batch // replicas + (i < max_batch % replicas) for i in range(replicas)]
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited JAX state
    self._conns, self._procs = [], []
    for group, n in zip(groups, slots):
      parent, child = ctx.Pipe()
      proc = ctx.Process(target=_worker, args=(child, group, checkpoint, step,
                                                dict(engine_kw, max_batch=n,
                                                     max_queue=max_queue)),
                         name=f"gift-serve-replica-{len(self._procs)}", daemon=True)
      proc.start()
      child.close()
      self._conns.append(parent)
      self._procs.append(proc)
    self._lock = threading.Lock()
    self._send_locks = [threading.Lock() for _ in self._procs]
    self._seqs: dict[int, tuple[int, ReplicaChoice]] = {}
    self._open = [0] * replicas  # unfinished sequences per replica
    self._keys = itertools.count()
    self.slots, infos = slots, []
    try:
      for i, conn in enumerate(self._conns):
        if not conn.poll(start_timeout_s):
          raise RuntimeError(f"replica {i} was not ready after {start_timeout_s:.0f}s")
        try:
          msg = conn.recv()
        except EOFError:
          self._procs[i].join(5)
          raise RuntimeError(f"replica {i} exited during start-up (code "
                             f"{self._procs[i].exitcode}); its output is above") from None
        if msg[0] != "ready":
          raise RuntimeError(f"replica {i} failed to start: {msg[1]}")
        infos.append(msg[1])
    except BaseException:
      self.stop()
      raise
    self.max_seq_len = min(x["max_seq_len"] for x in infos)
    self.max_batch = sum(x["max_batch"] for x in infos)
    self.extent_buckets = infos[0]["extent_buckets"]
    self._readers = [threading.Thread(target=self._read, args=(i,), daemon=True,
                                      name=f"gift-serve-replica-reader-{i}")
                     for i in range(replicas)]
    for t in self._readers:
      t.start()

  # The engine's life-cycle calls: the replicas warmed up and started in the constructor.
  def warmup(self, *args, **kw) -> None:
    pass

  def start(self) -> "Replicas":
    return self

  def _send(self, i: int, msg: tuple) -> None:
    with self._send_locks[i]:
      self._conns[i].send(msg)

  def submit_many(self, items: Sequence[tuple[list[int], engine_lib.SamplingParams, int]],
                  on_event: Callable[..., None] | None = None) -> list[ReplicaChoice]:
    """Queues every (prompt_ids, params, n) on the least busy replica, or none of them."""
    for prompt_ids, params, n in items:
      engine_lib.check_request(prompt_ids, params, self.vocab_size, self.max_seq_len)
      if n < 1:
        raise ValueError(f"n={n}; expected >= 1")
    count = sum(n for _, _, n in items)
    with self._lock:
      if self.error is not None:
        raise engine_lib.EngineDead(f"the engine failed: {self.error!r}")
      waiting = self._busy_waiting()[1]
      if waiting + count > self.max_queue:
        raise engine_lib.QueueFull(f"{waiting} sequences are waiting for a slot and this request "
                                   f"adds {count}; the queue holds at most {self.max_queue}")
      i = min(range(len(self._open)), key=lambda r: self._open[r] / self.slots[r])
      seqs, keys = [], []
      for _, params, n in items:
        for _ in range(n):
          key, s = next(self._keys), ReplicaChoice(params, on_event)
          s.replica, s.key = i, key
          self._seqs[key] = (i, s)
          seqs.append(s)
          keys.append(key)
      self._open[i] += count
    try:
      self._send(i, ("submit", keys, [(list(p), params, n) for p, params, n in items]))
    except OSError as e:
      self._fail(i, f"replica {i} cannot be reached: {e}")
    return seqs

  def cancel(self, seqs: Sequence[ReplicaChoice]) -> None:
    by_replica: dict[int, list[int]] = {}
    for s in seqs:
      if s.finish is None:
        by_replica.setdefault(s.replica, []).append(s.key)
    for i, keys in by_replica.items():
      try:
        self._send(i, ("cancel", keys))
      except OSError:
        pass  # the reader ends them when the replica is gone

  def _busy_waiting(self) -> tuple[int, int]:
    """(Lock held.) Sequences holding a slot and sequences waiting for one, over the replicas."""
    return (sum(min(o, s) for o, s in zip(self._open, self.slots)),
            sum(max(0, o - s) for o, s in zip(self._open, self.slots)))

  def load(self) -> dict[str, int]:
    with self._lock:
      busy, waiting = self._busy_waiting()
    return dict(busy=busy, waiting=waiting, slots=self.max_batch, replicas=len(self._procs))

  def _end(self, key: int, finish: str, final=None, delta: str = "", infos=()) -> None:
    """Sequence `key` finished (its last event's delta and infos, the replica's final ids, text
    and infos when it sent them)."""
    with self._lock:
      i, s = self._seqs.pop(key, (None, None))
      if s is None:
        return
      self._open[i] -= 1
    if final is not None:
      s.ids, s.text, s.infos = final
    s.finish = finish
    if s.on_event is not None:
      s.on_event(s, delta, list(infos), finish)
    s.done_event.set()

  def _fail(self, i: int, why: str) -> None:
    """Replica i is gone: the server is failed and its unfinished sequences end in error."""
    with self._lock:
      if self.error is None:
        self.error = engine_lib.EngineDead(why)
      keys = [k for k, (r, _) in self._seqs.items() if r == i]
    for key in keys:
      self._end(key, f"error: {why}")

  def _read(self, i: int) -> None:
    conn = self._conns[i]
    while True:
      try:
        msg = conn.recv()
      except (EOFError, OSError):
        if not self._stopping:
          self._fail(i, f"replica {i} exited (code {self._procs[i].exitcode})")
        return
      if msg[0] == "event":
        _, key, delta, infos, finish, started, final = msg
        with self._lock:
          s = self._seqs.get(key, (None, None))[1]
        if s is None:
          continue
        if started and s.first_token_at is None:
          s.first_token_at = time.perf_counter()
        if finish is not None:
          self._end(key, finish, final, delta, infos)
          continue
        s.text += delta
        s.infos.extend(infos)
        if s.on_event is not None and (delta or infos):
          s.on_event(s, delta, infos, None)
      elif msg[0] == "rejected":
        for key in msg[1]:
          self._end(key, f"error: {msg[2]}")
      elif msg[0] == "dead":
        self._fail(i, f"replica {i}'s engine failed: {msg[1]}")

  # Blocking: per prompt, its n finished choices (only submit_many is the engine's own).
  generate = engine_lib.Engine.generate

  def stop(self, timeout_s: float = 30.0) -> None:
    self._stopping = True
    for i in range(len(self._conns)):
      try:
        self._send(i, ("stop",))
      except (OSError, ValueError):
        pass
    for proc in self._procs:
      proc.join(timeout_s)
      if proc.is_alive():
        proc.kill()
        proc.join()
    for conn in self._conns:
      conn.close()
