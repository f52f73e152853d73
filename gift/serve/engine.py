"""Continuous batching: a fixed set of KV-cache slots decoded together, sequences joining and
leaving between steps. The model side of `gift serve` (the HTTP side is gift/serve/app.py).

  engine = Engine(model_cfg, params, tokenizer, max_batch=32, max_seq_len=1024)
  engine.start()                                   # the decode loop, on a thread of its own
  seqs = engine.submit(prompt_ids, SamplingParams(max_tokens=64, temperature=0.0), n=1,
                       on_event=print)             # called on the engine thread per chunk
  engine.generate([prompt_ids], params)            # blocking helper (tests, benchmarks)
  engine.stop()

Layout. Every layer's cache is one array [B, K, W, H] over B = `max_batch` slots: slot b holds
one sequence, its prompt at cache positions 0..len-1 (position = cache slot, so no left
padding), then its generated tokens. W, the cache extent, is the smallest of a few buckets
(`extent_buckets`, up to `max_seq_len`) that holds every live sequence for the next chunk of
steps: decode attention reads W slots per row, so short traffic does not pay for the longest
context the server allows. The extent grows (and shrinks when long sequences leave) by one
jitted copy; each extent has its own compiled step.

One decode step (`_decode`) is `transformer.apply` over the slots with a cache index per row
(= its position), so every sequence writes its key/value at its own
length: per-slot positions inside one jitted step of fixed shape [B, 1], compiled once per
extent, whatever joins or leaves. Up to `decode_steps` steps run in one `lax.while_loop` per
host sync (fewer when every slot is busy and a request waits: up to the nearest max_tokens); the
loop stops early when every row is done. Requests that arrive during a chunk join at the next
one, all together: a burst of arrivals costs a few prefill calls, not a host round trip for
every running sequence per arrival. After a chunk that freed slots, while nobody waits yet,
the next chunk is short (`join_steps`): the freed slots' clients usually send their next
request right away, and it joins a few steps later instead of a whole chunk later. Rows end
on device at a stop id (EOS and the tokenizer's other stop ids) or at their `max_tokens`; stop
strings are matched on the host (text, not tokens) between chunks.

Joining. Waiting sequences are taken in arrival order up to the free slots, grouped by prompt
length bucket and prefilled together (`_prefill`: one `transformer.apply` over the group into a
fresh cache of P slots, the first token sampled from the last prompt position; jit per (U, P),
U a power of two: a group of 5 is prefilled as 4 + 1, never padded; prompts of 65-512 tokens
go one per call, padded to the next multiple of 32, `lone_buckets`); then `_insert` writes each
row's keys/values into its slot with `dynamic_update_slice` (one call per row, jit per (P, W),
the slot state donated, no model inside). `Engine.warmup` compiles every one of these shapes
(and the decode step of every (rows, extent), and every extent change) before serving, so the
engine thread never compiles while requests run (prompts longer than the warmed buckets
aside). The lowest free slot is taken first, so live sequences gather in the low slots, and a
decode call runs over the smallest bucket of leading slots (`row_buckets`) that holds them all:
at low traffic a step costs what its sequences need, not `max_batch` rows. A finished or
cancelled sequence's slot is free for the next admission at once; stale keys/values beyond a
row's length are masked by its segment ids (reset to 0 past the prompt on insertion).

Sampling (`sample_rows`) is per row: greedy rows take the argmax of the logits, as
`gift.sample.Sampler` does, so greedy output equals `gift sample`'s whatever else is in the
batch. Other rows draw by inverse CDF from one uniform per (row, step), with per-row
temperature, top-k (<= CANDIDATES) and top-p, the key fold_in(fold_in(key(seed), choice), step):
a sequence's samples depend only on its seed, choice index and prompt, not on its neighbours.

Sharding: with a mesh, parameters follow gift/sharding.py's rules and the slot axis is split
over ("data", "fsdp"), as in `gift sample`.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gift.model import cpu_kernels, transformer
from gift.model.presets import ModelConfig
from gift.sample import _nucleus_by_threshold, greedy_ids, inference_params

Array = jax.Array
log = logging.getLogger(__name__)
CANDIDATES = 256  # top-k is limited to this; top-p looks for its nucleus among these first
WARM_PROMPTS = 512  # warmup() compiles the prefill of prompt buckets up to this many tokens
LONE_STEP = 32  # prompts of LONE_ABOVE to WARM_PROMPTS tokens are prefilled one per call,
LONE_ABOVE = 64  # padded to a multiple of LONE_STEP (with the default prompt buckets)
TOP_LOGPROBS = 5  # the most alternatives `logprobs` can ask for


class QueueFull(RuntimeError):
  """More sequences are waiting than the engine admits (`max_queue`)."""


class EngineDead(RuntimeError):
  """The decode loop failed; the engine serves no more requests."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """What one request asks of each of its sequences.

  temperature 0 = greedy. top_k 0 = no top-k cut (at most CANDIDATES otherwise); top_p 1 = no
  nucleus cut. stop: strings that end a sequence (the text is cut before them). seed None = a
  random one. logprobs None = none; k >= 0: the chosen token's logprob plus the k most likely
  (k <= TOP_LOGPROBS). ignore_eos: run to max_tokens whatever is sampled (benchmarks).
  """
  max_tokens: int
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  stop: tuple[str, ...] = ()
  seed: int | None = None
  logprobs: int | None = None
  ignore_eos: bool = False


@dataclasses.dataclass
class TokenInfo:
  """One generated token: its id, text piece and, when asked, logprob and top alternatives."""
  id: int
  text: str
  logprob: float | None = None
  top: list[tuple[int, float]] | None = None


@dataclasses.dataclass(eq=False)
class Choice:
  """One choice of a request, as the engine tracks it. `on_event(seq, delta, tokens, finish)` is
  called on the engine thread with new text, the new TokenInfos, and the finish reason ("stop",
  "length", "cancelled", "error: ...") on the last call."""
  prompt_ids: list[int]
  params: SamplingParams
  choice: int
  seed: int
  on_event: Callable[..., None] | None = None
  slot: int = -1
  inserted: bool = False  # its prefilled cache is in its slot: it decodes
  ids: list[int] = dataclasses.field(default_factory=list)
  infos: list[TokenInfo] = dataclasses.field(default_factory=list)
  text: str = ""
  sent: int = 0  # characters of `text` handed to on_event
  sent_infos: int = 0  # entries of `infos` handed to on_event
  finish: str | None = None
  cancelled: bool = False
  prefix_offset: int = 0  # incremental detokenization (see _detokenize)
  read_offset: int = 0
  arrived: float = dataclasses.field(default_factory=time.perf_counter)
  first_token_at: float | None = None
  done_event: threading.Event = dataclasses.field(default_factory=threading.Event)


class SlotState(NamedTuple):
  """The device side of the B slots; W = the cache extent."""
  cache: transformer.KVCache  # k, v: L x [B, K, W, H]; segment_ids [B, W]; index unused (0)
  last_b: Array  # int32: last token (the next step's input)
  pos_b: Array  # int32: its position = the cache slot it is written to
  step_b: Array  # int32: tokens generated so far (the RNG step)
  budget_b: Array  # int32: max_tokens
  done_b: Array  # bool: finished (stop id / budget) or free
  keys_b: Array  # PRNG keys: fold_in(key(seed), choice)
  temperature_b: Array  # float32 (<= 0: greedy)
  top_k_b: Array  # int32 (0: off)
  top_p_b: Array  # float32
  logprobs_b: Array  # bool: compute logprobs
  stop_eos_b: Array  # bool: stop ids end the row (False: ignore_eos)


class StepOut(NamedTuple):
  """Per row and step k < K: token (-1 past a row's end), its logprob and top alternatives."""
  tokens_bk: Array
  logprob_bk: Array
  top_ids_bkn: Array
  top_lp_bkn: Array


def sample_rows(logits_bv: Array, keys_b: Array, step_b: Array, temperature_b: Array,
                top_k_b: Array, top_p_b: Array) -> Array:
  """One token per row (int32 [B]) from float32 logits [B, V], each row by its own settings.

  Greedy rows (temperature <= 0) take the argmax. The others scale by their temperature, keep
  their top-k (renormalized) then the smallest most-likely set reaching top_p, and draw by
  inverse CDF with one uniform from fold_in(key, step). A row whose top-k is set, or whose
  nucleus lies within the CANDIDATES most likely ids, draws among those (sorted); the rest over
  the whole vocabulary in id order, the nucleus then found by bisecting for its probability
  threshold. Which path a row takes depends on its own logits and settings only.
  """
  argmax_b = greedy_ids(logits_bv)
  greedy_b = temperature_b <= 0

  def sampled():
    vocab = logits_bv.shape[-1]
    scaled_bv = logits_bv / jnp.where(greedy_b, 1.0, temperature_b)[:, None]
    u_b = jax.vmap(lambda k, s: jax.random.uniform(jax.random.fold_in(k, s)))(keys_b, step_b)
    probs_bv = jax.nn.softmax(scaled_bv, axis=-1)
    c = min(vocab, CANDIDATES)
    probs_bc, ids_bc = jax.lax.top_k(probs_bv, c)
    k_b = jnp.where(top_k_b > 0, jnp.minimum(top_k_b, c), c)
    keep_bc = jnp.arange(c)[None] < k_b[:, None]
    probs_bc = jnp.where(keep_bc, probs_bc, 0.0)
    probs_bc = jnp.where((top_k_b > 0)[:, None], probs_bc / probs_bc.sum(-1, keepdims=True),
                         probs_bc)
    mass_before_bc = jnp.cumsum(probs_bc, axis=-1) - probs_bc
    keep_bc &= mass_before_bc < top_p_b[:, None]
    from_top_b = _inverse_cdf(jnp.where(keep_bc, probs_bc, 0.0), u_b)
    from_top_b = jnp.take_along_axis(ids_bc, from_top_b[:, None], axis=1)[:, 0]
    # Rows drawing over the whole vocabulary: no top-k, and either no nucleus or one that the
    # candidates do not hold.
    nucleus_b = top_p_b < 1.0
    on_top_b = (top_k_b > 0) | (nucleus_b & (probs_bc.sum(-1) >= top_p_b)) | (vocab <= c)
    bisect_b = ~on_top_b & nucleus_b & ~greedy_b
    full_bv = jax.lax.cond(
        jnp.any(bisect_b),
        lambda: jnp.where(bisect_b[:, None], jnp.where(
            jnp.isfinite(_nucleus_by_threshold(scaled_bv, probs_bv, top_p_b)), probs_bv, 0.0),
            probs_bv),
        lambda: probs_bv)
    from_all_b = _inverse_cdf(full_bv, u_b)
    return jnp.where(greedy_b, argmax_b, jnp.where(on_top_b, from_top_b, from_all_b))

  return jax.lax.cond(jnp.all(greedy_b), lambda: argmax_b, sampled)


def _inverse_cdf(weights_bn: Array, u_b: Array) -> Array:
  """The index i (int32 [B]) with cdf[i-1] <= u * total < cdf[i]: a draw from weights [B, N]
  (>= 0, not normalized); never an index of weight 0."""
  cdf_bn = jnp.cumsum(weights_bn, axis=-1)
  idx_b = jnp.sum(cdf_bn <= (u_b * cdf_bn[:, -1])[:, None], axis=-1)
  n = weights_bn.shape[-1]
  last_b = n - 1 - jnp.argmax((weights_bn > 0)[:, ::-1], axis=-1)  # last non-zero weight
  first_b = jnp.argmax(weights_bn > 0, axis=-1)
  return jnp.clip(idx_b, first_b, last_b).astype(jnp.int32)


def _logprobs(logits_bv: Array, token_b: Array, want_b: Array) -> tuple[Array, Array, Array]:
  """(logprob of token [B], top ids [B, N], top logprobs [B, N]) of the raw model distribution,
  computed only when some row wants them (zeros otherwise)."""
  b = logits_bv.shape[0]
  n = min(TOP_LOGPROBS, logits_bv.shape[-1])

  def compute():
    lp_bv = jax.nn.log_softmax(logits_bv, axis=-1)
    top_lp_bn, top_ids_bn = jax.lax.top_k(lp_bv, n)
    return jnp.take_along_axis(lp_bv, token_b[:, None], axis=1)[:, 0], top_ids_bn, top_lp_bn

  zeros = lambda: (jnp.zeros((b,), jnp.float32), jnp.zeros((b, n), jnp.int32),
                   jnp.zeros((b, n), jnp.float32))
  return jax.lax.cond(jnp.any(want_b), compute, zeros)


def _is_stop(token_b: Array, stop_ids: tuple[int, ...]) -> Array:
  return jnp.isin(token_b, jnp.asarray(stop_ids, jnp.int32))


def _decode(cfg: ModelConfig, params: Any, state: SlotState, alive_b: Array, num_steps: Array,
            *, max_steps: int, stop_ids: tuple[int, ...]) -> tuple[SlotState, StepOut]:
  """Up to `num_steps` (<= max_steps) decode steps of all slots; rows not `alive_b` are done."""
  b = state.last_b.shape[0]
  n = min(TOP_LOGPROBS, cfg.vocab_size)

  def body(carry):
    i, s, out = carry
    c = s.cache
    # Every slot at its own position: the cache index per row (= its position).
    logits_b1v, cache = transformer.apply(cfg, params, s.last_b[:, None], s.pos_b[:, None],
                                          None, c._replace(index=s.pos_b))
    logits_bv, k, v, segment_bs = logits_b1v[:, 0], cache.k, cache.v, cache.segment_ids
    token_b = sample_rows(logits_bv, s.keys_b, s.step_b, s.temperature_b, s.top_k_b, s.top_p_b)
    lp_b, top_ids_bn, top_lp_bn = _logprobs(logits_bv, token_b, s.logprobs_b & ~s.done_b)
    token_b = jnp.where(s.done_b, -1, token_b)
    live_b = ~s.done_b
    done_b = (s.done_b | (s.stop_eos_b & _is_stop(token_b, stop_ids))
              | (s.step_b + 1 >= s.budget_b))
    s = s._replace(
        cache=transformer.KVCache(k, v, segment_bs, c.index),
        last_b=jnp.where(live_b, token_b, s.last_b), pos_b=s.pos_b + live_b,
        step_b=s.step_b + live_b, done_b=done_b)
    out = StepOut(out.tokens_bk.at[:, i].set(token_b), out.logprob_bk.at[:, i].set(lp_b),
                  out.top_ids_bkn.at[:, i].set(top_ids_bn), out.top_lp_bkn.at[:, i].set(top_lp_bn))
    return i + 1, s, out

  out = StepOut(jnp.full((b, max_steps), -1, jnp.int32), jnp.zeros((b, max_steps), jnp.float32),
                jnp.zeros((b, max_steps, n), jnp.int32), jnp.zeros((b, max_steps, n), jnp.float32))
  state = state._replace(done_b=state.done_b | ~alive_b)
  _, state, out = jax.lax.while_loop(
      lambda carry: (carry[0] < num_steps) & ~jnp.all(carry[1].done_b), body,
      (jnp.int32(0), state, out))
  return state, out


def _prefill(cfg: ModelConfig, params: Any, tokens_up: Array, length_u: Array, seed_u: Array,
             choice_u: Array, temperature_u: Array, top_k_u: Array, top_p_u: Array,
             logprobs_u: Array) -> tuple[tuple[Any, ...], StepOut]:
  """Prefills U right-padded prompts [U, P] together and samples each one's first token.
  Returns (per row: its cache of P slots with segment ids [1, P], its key [1], its first token
  [1]; the first tokens of all rows as a StepOut with K = 1). Compiled per (U, P), whatever the
  slot state's extent."""
  u, p = tokens_up.shape
  segment_up = (jnp.arange(p)[None] < length_u[:, None]).astype(jnp.int32)
  # Padding at position 0; real tokens 0..len-1 (positions that depend on the lengths also let
  # the RoPE tables be computed once, see layers.rope_tables).
  positions_up = jnp.where(segment_up > 0, jnp.arange(p, dtype=jnp.int32)[None], 0)
  cache = transformer.init_cache(cfg, u, p)
  logits_u1v, cache = transformer.apply(cfg, params, tokens_up, positions_up, segment_up, cache,
                                        logits_at_bk=(length_u - 1)[:, None])
  logits_uv = logits_u1v[:, 0]
  keys_u = jax.vmap(lambda s, j: jax.random.fold_in(jax.random.key(s), j))(seed_u, choice_u)
  zero_u = jnp.zeros((u,), jnp.int32)
  first_u = sample_rows(logits_uv, keys_u, zero_u, temperature_u, top_k_u, top_p_u)
  lp_u, top_ids_un, top_lp_un = _logprobs(logits_uv, first_u, logprobs_u)
  # Each row's cache, segment ids, key and first token as arrays of their own (a leading axis
  # of 1), so the slot insert compiles per (P, W), not per group size U.
  row = lambda x, r: x[r:r + 1]
  rows = tuple((transformer.KVCache(tuple(row(x, r) for x in cache.k),
                                    tuple(row(x, r) for x in cache.v), row(segment_up, r),
                                    cache.index),
                row(keys_u, r), row(first_u, r)) for r in range(u))
  return rows, StepOut(first_u[:, None], lp_u[:, None], top_ids_un[:, None], top_lp_un[:, None])


def _insert(state: SlotState, cache: transformer.KVCache, keys_u: Array, first_u: Array,
            length_u: Array, slot_u: Array, budget_u: Array, temperature_u: Array,
            top_k_u: Array, top_p_u: Array, logprobs_u: Array, stop_eos_u: Array, *,
            stop_ids: tuple[int, ...]) -> SlotState:
  """Writes prefilled row u (cache [U, K, P, H], its segment ids [U, P]) into slot slot_u[u]
  (P <= W) with dynamic_update_slice. The engine inserts one row per call (U = 1), so this
  compiles per (P, W): no model inside, cheap to compile, all warmed up before serving."""
  u, p = cache.segment_ids.shape
  w = state.cache.segment_ids.shape[1]
  k, v, segment_bw = list(state.cache.k), list(state.cache.v), state.cache.segment_ids
  for r in range(u):  # u is small and static: one in-place slice write per row and layer
    at = (slot_u[r], 0, 0, 0)
    for layer in range(len(k)):
      k[layer] = jax.lax.dynamic_update_slice(k[layer], cache.k[layer][r][None], at)
      v[layer] = jax.lax.dynamic_update_slice(v[layer], cache.v[layer][r][None], at)
    row_w = jnp.pad(cache.segment_ids[r], (0, w - p))
    segment_bw = jax.lax.dynamic_update_slice(segment_bw, row_w[None], (slot_u[r], 0))
  s = state
  put = lambda x_b, x_u: x_b.at[slot_u].set(x_u)
  done_u = (stop_eos_u & _is_stop(first_u, stop_ids)) | (budget_u <= 1)
  return SlotState(
      transformer.KVCache(tuple(k), tuple(v), segment_bw, s.cache.index),
      put(s.last_b, first_u), put(s.pos_b, length_u), put(s.step_b, jnp.ones_like(length_u)),
      put(s.budget_b, budget_u), put(s.done_b, done_u), put(s.keys_b, keys_u),
      put(s.temperature_b, temperature_u), put(s.top_k_b, top_k_u), put(s.top_p_b, top_p_u),
      put(s.logprobs_b, logprobs_u), put(s.stop_eos_b, stop_eos_u))


def _decode_rows(cfg: ModelConfig, params: Any, state: SlotState, alive_b: Array,
                 num_steps: Array, *, rows: int, max_steps: int, stop_ids: tuple[int, ...]
                 ) -> tuple[SlotState, StepOut]:
  """`_decode` of slots [0, rows) only (the engine fills the lowest free slots first, so the
  live ones gather there): the step's work follows the traffic, not `max_batch`. The rows'
  state is sliced out and written back once per call, not per step."""
  b = state.last_b.shape[0]
  kw = dict(max_steps=max_steps, stop_ids=stop_ids)
  if rows == b:
    return _decode(cfg, params, state, alive_b, num_steps, **kw)
  head = jax.tree.map(lambda x: x[:rows] if x.ndim else x, state)
  head, out = _decode(cfg, params, head, alive_b[:rows], num_steps, **kw)
  state = jax.tree.map(lambda x, h: x.at[:rows].set(h) if x.ndim else h, state, head)
  return state, out


def _resize(state: SlotState, w: int) -> SlotState:
  """The state with cache extent w (pads with empty slots or drops the tail)."""
  def fit(x, axis):
    have = x.shape[axis]
    if have >= w:
      return jax.lax.slice_in_dim(x, 0, w, axis=axis)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, w - have)
    return jnp.pad(x, pad)
  c = state.cache
  return state._replace(cache=transformer.KVCache(
      tuple(fit(x, 2) for x in c.k), tuple(fit(x, 2) for x in c.v), fit(c.segment_ids, 1),
      c.index))


def _all_rows_live(state: SlotState, w: int, steps: int) -> SlotState:
  """`state` with every row live and never done, each at position w - steps - 1 (a chunk of
  `steps` ends at extent w) and every cache slot in its segment: a full decode step at extent
  w, as `Engine.tune_extents` and benchmarks/bench_decode_step.py time it."""
  return state._replace(
      done_b=jnp.zeros_like(state.done_b), budget_b=jnp.full_like(state.budget_b, 1 << 30),
      stop_eos_b=jnp.zeros_like(state.stop_eos_b),
      pos_b=jnp.full_like(state.pos_b, max(0, w - steps - 1)),
      cache=state.cache._replace(segment_ids=jnp.ones_like(state.cache.segment_ids)))


# The model's computations take cpu_kernels.inference_options() (XLA's own dots on a CPU).
_decode_jit = cpu_kernels.inference_jit(_decode_rows, static_argnums=0, donate_argnums=(2,),
                                        static_argnames=("rows", "max_steps", "stop_ids"))
_prefill_jit = cpu_kernels.inference_jit(_prefill, static_argnums=0)
_insert_jit = jax.jit(_insert, donate_argnums=(0,), static_argnames=("stop_ids",))
_resize_jit = jax.jit(_resize, static_argnums=1)  # shapes change: nothing to donate
_all_rows_live_jit = jax.jit(_all_rows_live, static_argnums=(1, 2))


def select_extents(times: dict[int, float], buckets: Sequence[int], margin: float = 0.05
                   ) -> tuple[int, ...]:
  """The extents worth keeping, from seconds per decode step by extent (`Engine.tune_extents`):
  one is dropped when a larger one is faster by more than `margin` (whatever fits the smaller
  fits the larger), and an extent not in `buckets` (an extra candidate) must also beat the
  largest bucket below it by that margin. The largest extent always stays."""
  ws = sorted(times)
  fast = lambda a, b: times[a] < (1.0 - margin) * times[b]  # a clearly faster than b
  below = lambda w: max((x for x in buckets if x < w and x in times), default=None)

  def keep(i, w):
    if i == len(ws) - 1:
      return True
    if w not in buckets and below(w) is not None and not fast(w, below(w)):
      return False
    return not any(fast(x, w) for x in ws[i + 1:])
  return tuple(w for i, w in enumerate(ws) if keep(i, w))


def _bucket(n: int, buckets: Sequence[int]) -> int:
  return next(b for b in buckets if b >= n)


def _pow2_up_to(lo: int, hi: int) -> tuple[int, ...]:
  out, x = [], lo
  while x < hi:
    out.append(x)
    x *= 2
  return tuple(out) + (hi,)


class Engine:
  """Continuous batching over `max_batch` KV-cache slots; see the module docstring.

  Args:
    model_cfg, params, tokenizer: the model (params: pure dict, cast to model_cfg.dtype once)
      and a gift tokenizer (stop ids: its `stop_ids`, else its EOS id).
    max_batch: KV-cache slots = sequences decoded together (a multiple of the data-parallel
      size with a mesh).
    max_seq_len: prompt + generated tokens per sequence (default: the model's max_seq_len).
    max_queue: sequences that may wait for a slot; `submit` raises QueueFull beyond it.
    decode_steps: decode steps per host sync while nobody waits.
    join_steps: decode steps of the chunk after one that freed slots (or while prefills run
      on their thread), so that new requests join sooner (default decode_steps // 4;
      decode_steps: off).
    max_prefill_tokens: padded prompt tokens per prefill call (bounds the stall of the
      running sequences while others join).
    mesh: optional jax Mesh (parameters by gift's sharding rules, slots over data x fsdp).
    overlap_prefill: prefill on a thread of its own while the engine thread decodes, new
      sequences joining when their prefill is done (see `_run_prefills`; off: prefills run
      between decode chunks).
  """

  def __init__(self, model_cfg: ModelConfig, params: Any, tokenizer: Any, *,
               max_batch: int = 32, max_seq_len: int | None = None, max_queue: int = 256,
               decode_steps: int = 8, join_steps: int | None = None,
               max_prefill_tokens: int = 4096, mesh: Any = None,
               prompt_buckets: Sequence[int] | None = None,
               extent_buckets: Sequence[int] | None = None, overlap_prefill: bool = False):
    self.cfg, self.tokenizer, self.mesh = model_cfg, tokenizer, mesh
    self.overlap_prefill = overlap_prefill
    self.cfg = cpu_kernels.for_mesh(model_cfg, mesh)  # the decode attention a mesh allows
    self.max_seq_len = int(max_seq_len or model_cfg.max_seq_len)
    if self.max_seq_len < 2:
      raise ValueError(f"max_seq_len={self.max_seq_len}; expected >= 2")
    self.max_queue, self.decode_steps = max_queue, max(1, decode_steps)
    self.join_steps = max(1, self.decode_steps // 4 if join_steps is None else join_steps)
    self.max_prefill_tokens = max_prefill_tokens
    self.stop_ids = tuple(int(i) for i in (getattr(tokenizer, "stop_ids", None)
                                           or (tokenizer.eos_id,)))
    self.pad_id = tokenizer.pad_id
    s = self.max_seq_len
    self.prompt_buckets = tuple(sorted({min(b, s) for b in (prompt_buckets or
                                                           _pow2_up_to(16, s))} | {s}))
    self.extent_buckets = tuple(sorted({min(b, s) for b in (extent_buckets or
                                                           _pow2_up_to(64, s))} | {s}))
    # The extents warmup() times when none were given (see tune_extents): each power of two
    # and that plus 8 slots. Given extent_buckets are used as they are.
    self.extent_candidates = () if extent_buckets else tuple(sorted(
        set(self.extent_buckets) | {w + 8 for w in self.extent_buckets if w + 8 < s}))
    self.extent_times: dict[int, float] = {}
    # Prompts of LONE_ABOVE+1 to WARM_PROMPTS tokens are prefilled one per call, padded to the
    # next multiple of LONE_STEP instead of their power-of-two bucket: a 260-token prompt
    # costs 288 tokens, not 512 (benchmarks/bench_serve.py's load: 40.4k -> 30.1k padded
    # tokens, prefill 2.3 -> 1.8 s). So long a prompt fills a prefill call's matmuls alone,
    # and one compile per size (U = 1) keeps the warm-up short. Only with the default prompt
    # buckets; given ones are used as they are.
    self.lone_buckets = () if prompt_buckets else tuple(
        range(LONE_ABOVE + LONE_STEP, min(WARM_PROMPTS, s - 1) + 1, LONE_STEP))
    dtype = jnp.dtype(model_cfg.dtype)
    dp = 1
    if mesh is not None:
      from gift import sharding
      shardings = sharding.param_shardings(model_cfg, mesh)
      self._rows = sharding.batch_sharding(mesh)
      dp = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    else:
      # One device, every array committed to it (parameters, slot state, arguments): a jit's
      # outputs are committed, and a compile for uncommitted inputs is not reused for
      # committed ones, so a warm-up on fresh arrays would compile every step again.
      shardings = self._rows = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    self.max_batch = -(-max_batch // dp) * dp
    # Decode steps run over the lowest `rows` slots: a few sizes, each a multiple of dp.
    self.row_buckets = tuple(r for r in _pow2_up_to(dp, self.max_batch)
                             if r >= min(8, self.max_batch))
    if all(x.dtype == dtype for x in jax.tree.leaves(params)):
      params = jax.device_put(params, shardings)
    else:
      params = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p),
                       out_shardings=shardings)(params)
    self.params = inference_params(params, mesh)
    self._state = self._empty_state(self.extent_buckets[0])
    self.width = self.extent_buckets[0]
    self._slots: list[Choice | None] = [None] * self.max_batch
    self._waiting: collections.deque[Choice] = collections.deque()
    self._lock = threading.Condition()
    self._thread: threading.Thread | None = None
    self._prefill_thread: threading.Thread | None = None
    self._prefill_jobs: collections.deque[tuple[int, list[Choice]]] = collections.deque()
    self._prefilled: collections.deque[Any] = collections.deque()  # results to insert
    self._stopping = False
    self.error: BaseException | None = None
    self._seeds = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    self.stats = collections.Counter()

  # ---------------------------------------------------------------------------------------------
  # Public API (any thread).

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, mesh: Any = None, step: int | None = None,
                      **kw: Any) -> "Engine":
    from gift import checkpoint
    from gift import tokenizer as tokenizer_lib
    shardings = None
    if mesh is not None:
      from gift import sharding
      shardings = sharding.param_shardings(checkpoint.read_model_config(ckpt_dir), mesh)
    cfg, params, tok_path = checkpoint.load_model(ckpt_dir, step=step, shardings=shardings)
    return cls(cfg, params, tokenizer_lib.load(tok_path, cfg.vocab_size), mesh=mesh, **kw)

  def check(self, prompt_ids: Sequence[int], params: SamplingParams) -> None:
    """Raises ValueError naming the problem when a request cannot be served as asked."""
    check_request(prompt_ids, params, self.cfg.vocab_size, self.max_seq_len)

  def submit(self, prompt_ids: Sequence[int], params: SamplingParams, n: int = 1,
             on_event: Callable[..., None] | None = None) -> list[Choice]:
    """Queues n sequences of one prompt; raises ValueError/ContextTooLong (bad request),
    QueueFull, EngineDead."""
    return self.submit_many([(list(prompt_ids), params, n)], on_event)

  def submit_many(self, items: Sequence[tuple[list[int], SamplingParams, int]],
                  on_event: Callable[..., None] | None = None) -> list[Choice]:
    """Queues every (prompt_ids, params, n) at once, or none of them."""
    for prompt_ids, params, n in items:
      self.check(prompt_ids, params)
      if n < 1:
        raise ValueError(f"n={n}; expected >= 1")
    seqs = []
    for prompt_ids, params, n in items:
      seed = params.seed if params.seed is not None else int(self._seeds.integers(1 << 31))
      seqs += [Choice(list(prompt_ids), params, j, seed % (1 << 32), on_event)
               for j in range(n)]
    with self._lock:
      if self.error is not None:
        raise EngineDead(f"the engine failed: {self.error!r}")
      if len(self._waiting) + len(seqs) > self.max_queue:
        raise QueueFull(f"{len(self._waiting)} sequences are waiting for a slot and this request "
                        f"adds {len(seqs)}; the queue holds at most {self.max_queue}")
      self._waiting.extend(seqs)
      self.stats["submitted"] += len(seqs)
      self._lock.notify_all()
    return seqs

  def cancel(self, seqs: Sequence[Choice]) -> None:
    """Ends the sequences (no more events except a final "cancelled" one if still running);
    their slots are freed before the next step."""
    with self._lock:
      for s in seqs:
        s.cancelled = True
      self._lock.notify_all()

  def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, n: int = 1,
               timeout_s: float | None = None) -> list[list[Choice]]:
    """Blocking: per prompt, its n finished Choices (`.ids`, `.text`, `.finish`)."""
    seqs = self.submit_many([(list(p), params, n) for p in prompts])
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for s in seqs:
      left = None if deadline is None else max(0.0, deadline - time.monotonic())
      if not s.done_event.wait(left):
        raise TimeoutError(f"generation did not finish within {timeout_s}s")
    return [seqs[i * n:(i + 1) * n] for i in range(len(prompts))]

  def load(self) -> dict[str, int]:
    """Busy slots, waiting sequences and slots in all (for /health)."""
    with self._lock:
      return dict(busy=sum(s is not None for s in self._slots), waiting=len(self._waiting),
                  slots=self.max_batch, extent=self.width)

  def start(self) -> "Engine":
    self._thread = threading.Thread(target=self._run, name="gift-serve-engine", daemon=True)
    self._thread.start()
    if self.overlap_prefill:
      self._prefill_thread = threading.Thread(target=self._run_prefills,
                                              name="gift-serve-prefill", daemon=True)
      self._prefill_thread.start()
    return self

  def stop(self, timeout_s: float = 30.0) -> None:
    with self._lock:
      self._stopping = True
      self._lock.notify_all()
    for thread in (self._thread, self._prefill_thread):
      if thread is not None:
        thread.join(timeout_s)

  def tune_extents(self, candidates: Sequence[int] | None = None, repeats: int = 5
                   ) -> tuple[int, ...]:
    """Sets `extent_buckets` to the candidate extents (default `extent_candidates`) that no
    larger one beats: each is timed on a chunk of `decode_steps` steps of every slot, all
    live, and dropped when a larger extent's chunk took under 95% of its time (a sequence
    that fits the smaller extent fits the larger one too). A candidate that is not one of the
    current buckets must also beat the largest bucket below it. The largest always stays.

    Why measure: a decode step's attention is one product per (slot, KV head) over the
    extent, and XLA:CPU runs each of those on one thread below a size (S x head_dim ~ 32k
    multiply-adds here) and on the whole thread pool above it, so on a 2-core VM a step at
    extent 520 took 10.1 ms and at 512 took 12.1 ms (benchmarks/bench_serve.py's model, 32
    slots). Where that threshold lies depends on the CPU, the head size and XLA's version.
    Returns the new buckets; `extent_times` keeps every candidate's seconds per step."""
    cands = sorted({min(int(w), self.max_seq_len) for w in (candidates or
                                                         self.extent_candidates
                                                         or self.extent_buckets)})
    steps = self.decode_steps
    alive_b = self._put(np.ones(self.max_batch, bool))
    times = {}
    for w in cands:
      state = _all_rows_live_jit(self._empty_state(w), w, steps)
      best = float("inf")
      for i in range(repeats + 1):  # the first call compiles
        t0 = time.perf_counter()
        state, out = _decode_jit(self.cfg, self.params, state, alive_b, jnp.int32(steps),
                                 rows=self.max_batch, max_steps=steps, stop_ids=self.stop_ids)
        jax.block_until_ready(out)
        took = time.perf_counter() - t0
        state = _all_rows_live_jit(state, w, steps)  # back to the positions before the chunk
        if i:
          best = min(best, took / steps)
          if took > 0.5:  # a large model: one timed chunk per extent is enough
            break
      times[w] = best
      del state
    keep = select_extents(times, self.extent_buckets)
    self.extent_times = times
    self.extent_buckets = keep
    self._state = self._empty_state(keep[0])
    self.width = keep[0]
    log.info("decode ms/step by extent (%d slots): %s; extents kept: %s", self.max_batch,
             ", ".join(f"{w}: {t * 1e3:.2f}" for w, t in times.items()), keep)
    return keep

  def warmup(self, prompt_lengths: Sequence[int] | None = None, tune_extents: bool = True
             ) -> None:
    """Compiles every shape the engine thread can meet, so no request ever waits for a compile:
    the decode step for every (rows, extent) bucket, the extent change between every two
    extents, the prefill of every warmed prompt bucket (default: those up to 512 tokens) at
    every group size the scheduler uses (`prefill_sizes`), and the slot insert of each of those
    buckets into every extent that holds it. A prompt in a longer bucket compiles its prefill
    when first seen. With `tune_extents` and no extent_buckets given to the constructor, on
    CPU, first picks the cache extents by timing them (`tune_extents`). Call before start()."""
    # On CPU only: the threading size that makes a larger extent faster is XLA:CPU's (on an
    # accelerator the power-of-two buckets stand; not measured there, no accelerator here).
    if tune_extents and len(self.extent_candidates) > 1 and jax.default_backend() == "cpu":
      self.tune_extents()
    if prompt_lengths is None:
      prompt_lengths = ([p for p in self.prompt_buckets if p <= WARM_PROMPTS]
                        or self.prompt_buckets[:1]) + list(self.lone_buckets)
    lengths = [min(n, self.max_seq_len - 1) for n in prompt_lengths]
    lone_n = {n: self._lone_bucket(n) for n in lengths}
    lone = sorted(set(lone_n.values()) - {None})
    buckets = sorted({_bucket(n, self.prompt_buckets) for n, x in lone_n.items() if x is None})
    alive_b = self._put(np.zeros(self.max_batch, bool))
    for w in self.extent_buckets:
      self._ensure_extent(w, exact=True)
      for rows in self.row_buckets:
        self._state, _ = _decode_jit(self.cfg, self.params, self._state, alive_b, jnp.int32(1),
                                     rows=rows, max_steps=self.decode_steps,
                                     stop_ids=self.stop_ids)
    for a in self.extent_buckets:  # extent a -> b, from a state as the engine thread holds
      self._ensure_extent(a, exact=True)  # one (a jit's output: a fresh one can differ in how
      for b in self.extent_buckets:       # it is placed, and compile again)
        if a != b:
          jax.block_until_ready(_resize_jit(self._state, b))
    arr = lambda x, dtype, u: np.full((u,), x, dtype)  # numpy, as the engine thread passes

    def prefill(p: int, u: int):
      return _prefill_jit(self.cfg, self.params, np.zeros((u, p), np.int32),
                          arr(1, np.int32, u), arr(0, np.uint32, u), arr(0, np.int32, u),
                          arr(0, np.float32, u), arr(0, np.int32, u), arr(1, np.float32, u),
                          arr(False, bool, u))

    # Prefills compile independently of each other and of the slot state: on a thread pool.
    jobs = [(p, u) for p in buckets for u in self.prefill_sizes(p)] + [(p, 1) for p in lone]
    with concurrent.futures.ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
      outs = dict(zip(jobs, pool.map(lambda job: prefill(*job), jobs)))
    # Inserting one prefilled prompt into every extent it fits (a finished row in slot 0: the
    # engine is idle).
    one = lambda x, dtype: arr(x, dtype, 1)
    for w in self.extent_buckets:
      self._ensure_extent(w, exact=True)
      for p in buckets + lone:
        if p <= w:
          (cache, keys, first), = outs[(p, 1)][0]
          self._state = _insert_jit(
              self._state, cache, keys, first, one(1, np.int32), one(0, np.int32),
              one(1, np.int32), one(0, np.float32), one(0, np.int32), one(1, np.float32),
              one(False, bool), one(True, bool), stop_ids=self.stop_ids)
    self._ensure_extent(self.extent_buckets[0], exact=True)
    jax.block_until_ready(self._state)
    self.stats.clear()

  # ---------------------------------------------------------------------------------------------
  # The engine thread.

  def _empty_state(self, w: int) -> SlotState:
    b = self.max_batch
    cache = transformer.init_cache(self.cfg, b, w)
    z = lambda dtype: jnp.zeros((b,), dtype)
    state = SlotState(cache, z(jnp.int32), z(jnp.int32), z(jnp.int32), z(jnp.int32) + 1,
                      jnp.ones((b,), bool), jax.random.split(jax.random.key(0), b),
                      z(jnp.float32), z(jnp.int32), z(jnp.float32) + 1, z(bool), z(bool))
    if self.mesh is None:
      return jax.device_put(state, self._rows)
    from gift import sharding  # slots over data x fsdp; the scalar index replicated
    return jax.tree.map(lambda x: jax.device_put(
        x, self._rows if x.ndim else sharding.replicated(self.mesh)), state)

  def _put(self, x: np.ndarray) -> Array:
    return jax.device_put(x, self._rows)

  def _run(self) -> None:
    freed = False
    try:
      while True:
        with self._lock:
          while not self._stopping and self._idle():
            self._lock.wait(0.5)
          if self._stopping:
            break
          self._drop_cancelled()
          admit = self._take_admissible()
          prefilled = list(self._prefilled)
          self._prefilled.clear()
        if admit:
          self._admit(admit)
        for result in prefilled:
          if isinstance(result, BaseException):
            raise result
          self._insert_prefilled(*result)
        with self._lock:
          self._drop_cancelled()
          live = [s for s in self._slots if s is not None and s.inserted]
          blocked = bool(self._waiting) and all(s is not None for s in self._slots)
          joining = len(live) < sum(s is not None for s in self._slots)  # prefills in flight
        if live:
          # A whole chunk of steps: arrivals join at the next chunk, all of them prefilled
          # together (a chunk is a few tens of ms; one step per arrival costs every running
          # sequence a host round trip and a prefill call). Someone waits for a slot and all
          # are busy: stop when the nearest sequence reaches its max_tokens.
          steps = self.decode_steps
          if blocked:
            steps = min([steps] + [s.params.max_tokens - len(s.ids) for s in live])
          elif (freed and not self._waiting) or joining:
            # Slots came free in the last chunk and their clients' next requests are likely on
            # the way, or prefills are running: a short chunk lets them join sooner.
            steps = min(steps, self.join_steps)
          finished = self.stats["finished"]
          self._decode(max(1, steps))
          freed = self.stats["finished"] > finished
    except BaseException as e:  # every waiting client gets an error, none hangs
      log.exception("gift serve engine failed")
      with self._lock:
        self.error = e
        self._stopping = True  # the prefill thread too
        pending = [s for s in self._slots if s is not None] + list(self._waiting)
        self._slots = [None] * self.max_batch
        self._waiting.clear()
      for s in pending:
        self._finish(s, f"error: {type(e).__name__}: {e}")
    finally:
      with self._lock:
        pending = [s for s in self._slots if s is not None] + list(self._waiting)
        self._slots = [None] * self.max_batch
        self._waiting.clear()
        self._prefill_jobs.clear()
        self._stopping = True
        self._lock.notify_all()
      for s in pending:
        self._finish(s, "cancelled")

  def _idle(self) -> bool:
    """(Lock held.) Nothing for the engine thread to do until something changes: no sequence
    decoding, no prefill to insert, no cancellation to handle, nobody waiting for a free slot."""
    slots = [s for s in self._slots if s is not None]
    return not (self._prefilled or any(s.inserted or s.cancelled for s in slots)
                or (self._waiting and len(slots) < self.max_batch)
                or any(s.cancelled for s in self._waiting))

  def _run_prefills(self) -> None:
    """The prefill thread (`overlap_prefill`): computes the groups `_admit` queued while the
    engine thread decodes, and hands each result (or its exception) back for insertion.

    Off by default: XLA:CPU does run the two computations at once (a decode chunk at 32 rows
    and single 288-token prefills in two threads did 1.39x the work per second of either
    alone), but serving gained little from it on a 2-core VM (benchmarks/bench_serve.py's
    load, engine alone, interleaved: 32 clients 2,552-2,645 vs 2,505-2,547 tok/s with a p99
    latency of 1.92-1.99 vs 1.72-1.77 s; 8 clients 1,138-1,206 vs 1,133-1,523): the decode
    steps' small ops queue behind the prefill's large ones on the shared thread pool (6.3 ->
    8.6-9.0 ms per step). Worth measuring on hosts with more cores."""
    while True:
      with self._lock:
        while not self._stopping and not self._prefill_jobs:
          self._lock.wait(0.5)
        if self._stopping:
          return
        p, group = self._prefill_jobs.popleft()
      try:
        result = self._prefill_compute(p, group)
      except BaseException as e:  # the engine thread raises it: every client gets the error
        result = e
      with self._lock:
        self._prefilled.append(result)
        self._lock.notify_all()

  def _drop_cancelled(self) -> None:
    """(Lock held.) Frees the slots of cancelled sequences and drops cancelled waiters."""
    for i, s in enumerate(self._slots):
      if s is not None and s.cancelled:
        self._slots[i] = None
        self._finish(s, "cancelled")
    if any(s.cancelled for s in self._waiting):
      for s in [s for s in self._waiting if s.cancelled]:
        self._finish(s, "cancelled")
      self._waiting = collections.deque(s for s in self._waiting if not s.cancelled)

  def _take_admissible(self) -> list[Choice]:
    """(Lock held.) Waiting sequences for the free slots, in arrival order, slots assigned."""
    free = [i for i, s in enumerate(self._slots) if s is None]
    taken = []
    while self._waiting and free:
      seq = self._waiting.popleft()
      seq.slot = free.pop(0)
      self._slots[seq.slot] = seq
      taken.append(seq)
    return taken

  def _ensure_extent(self, need: int, exact: bool = False) -> None:
    """Grows the cache extent to hold `need` slots, or shrinks it when far more than needed
    (`exact`: to the bucket of `need` either way)."""
    w = _bucket(min(need, self.max_seq_len), self.extent_buckets)
    if w > self.width or w * 2 <= self.width or (exact and w != self.width):
      self._state = _resize_jit(self._state, w)
      self.width = w
      self.stats["resizes"] += 1

  def _admit(self, seqs: list[Choice]) -> None:
    """Prefills the sequences in groups of one prompt bucket and inserts them into their slots:
    with `overlap_prefill` the groups go to the prefill thread (inserted when done, by
    `_run`), else here and now. A group is cut into calls of the warmed-up sizes
    (`prefill_sizes`), largest first, so no call pads rows and none compiles while serving.
    Prompts with a `_lone_bucket` are prefilled one per call, padded to it."""
    groups: dict[int, list[Choice]] = collections.defaultdict(list)
    for s in seqs:
      lone = self._lone_bucket(len(s.prompt_ids))
      if lone is None:
        groups[_bucket(len(s.prompt_ids), self.prompt_buckets)].append(s)
      else:
        self._prefill_group(lone, [s])
    for p, group in sorted(groups.items()):
      while group:
        u = max(x for x in self.prefill_sizes(p) if x <= len(group))
        self._prefill_group(p, group[:u])
        group = group[u:]

  def _lone_bucket(self, n: int) -> int | None:
    """The padded length of an n-token prompt that is prefilled alone (the smallest
    `lone_buckets` entry that holds it, when one is above LONE_ABOVE), else None."""
    return next((x for x in self.lone_buckets if x >= n), None) if n > LONE_ABOVE else None

  def prefill_sizes(self, p: int) -> tuple[int, ...]:
    """Numbers of prompts of bucket p prefilled in one call: powers of two up to max_batch and
    `max_prefill_tokens` padded tokens (at least one prompt)."""
    cap = max(1, min(self.max_batch, self.max_prefill_tokens // p))
    return tuple(x for x in _pow2_up_to(1, self.max_batch) if x <= cap and x & (x - 1) == 0)

  def _live_need(self, extra: int) -> int:
    """Cache slots the live sequences need for `extra` more steps."""
    need = 0
    for s in self._slots:
      if s is not None and s.finish is None:
        left = s.params.max_tokens - len(s.ids)
        need = max(need, len(s.prompt_ids) + len(s.ids) + min(extra, left))
    return need

  def _prefill_group(self, p: int, group: list[Choice]) -> None:
    if self.overlap_prefill:
      with self._lock:
        self._prefill_jobs.append((p, group))
        self._lock.notify_all()
    else:
      self._insert_prefilled(*self._prefill_compute(p, group))

  def _prefill_compute(self, p: int, group: list[Choice]) -> tuple[Any, ...]:
    """One group's prefill (either thread; no slot state involved): (p, group, per-row caches,
    first tokens, per-row columns, seconds)."""
    t0 = time.perf_counter()
    tokens_up = np.full((len(group), p), self.pad_id, np.int32)
    for r, s in enumerate(group):
      tokens_up[r, :len(s.prompt_ids)] = s.prompt_ids
    col = lambda f, dtype: np.asarray([f(s) for s in group], dtype)
    sp = lambda s: s.params
    length_u = col(lambda s: len(s.prompt_ids), np.int32)
    temperature_u = col(lambda s: sp(s).temperature, np.float32)
    top_k_u = col(lambda s: sp(s).top_k, np.int32)
    top_p_u = col(lambda s: sp(s).top_p, np.float32)
    logprobs_u = col(lambda s: sp(s).logprobs is not None, bool)
    seed_u, choice_u = col(lambda s: s.seed, np.uint32), col(lambda s: s.choice, np.int32)
    # numpy arguments: jit transfers them (jnp.asarray would compile a staging op per shape
    # on this thread)
    rows, out = _prefill_jit(self.cfg, self.params, tokens_up, length_u, seed_u, choice_u,
                             temperature_u, top_k_u, top_p_u, logprobs_u)
    cols = (length_u, col(lambda s: sp(s).max_tokens, np.int32), temperature_u, top_k_u,
            top_p_u, logprobs_u, col(lambda s: not sp(s).ignore_eos, bool))
    out = jax.device_get(out)
    return p, group, rows, out, cols, time.perf_counter() - t0

  def _insert_prefilled(self, p: int, group: list[Choice], rows: Any, out: StepOut,
                        cols: tuple[np.ndarray, ...], seconds: float) -> None:
    """(Engine thread.) Writes a prefilled group into its slots (a sequence cancelled since it
    was admitted has lost its slot and is skipped) and hands out the first tokens."""
    t1 = time.perf_counter()
    self._ensure_extent(max(p, self._live_need(self.decode_steps)))
    length_u, budget_u, temperature_u, top_k_u, top_p_u, logprobs_u, stop_eos_u = cols
    kept = []
    for r, (s, (cache, keys, first)) in enumerate(zip(group, rows)):
      if self._slots[s.slot] is not s:
        continue
      one = lambda x_u, r=r: x_u[r:r + 1]
      self._state = _insert_jit(
          self._state, cache, keys, first, one(length_u), np.asarray([s.slot], np.int32),
          one(budget_u), one(temperature_u), one(top_k_u), one(top_p_u), one(logprobs_u),
          one(stop_eos_u), stop_ids=self.stop_ids)
      s.inserted = True
      kept.append(r)
    self.stats.update(prefills=1, prefill_rows=len(group), prefill_padded_tokens=len(group) * p,
                      prefill_s=seconds)
    self._take_output([group[r] for r in kept], out, kept)
    self.stats["host_s"] += time.perf_counter() - t1

  def _decode(self, steps: int) -> None:
    t0 = time.perf_counter()
    with self._lock:
      live = [s for s in self._slots if s is not None and s.inserted]
    self._ensure_extent(self._live_need(steps))
    alive_b = np.zeros(self.max_batch, bool)
    for s in live:
      alive_b[s.slot] = True
    rows = _bucket(max(s.slot for s in live) + 1, self.row_buckets)
    self._state, out = _decode_jit(self.cfg, self.params, self._state, self._put(alive_b),
                                   jnp.int32(steps), rows=rows, max_steps=self.decode_steps,
                                   stop_ids=self.stop_ids)
    out = jax.device_get(out)
    t1 = time.perf_counter()
    ran = int((out.tokens_bk >= 0).any(0).sum())
    self.stats.update(decode_calls=1, decode_steps=ran, decode_row_steps=ran * rows,
                      decode_extent_steps=ran * self.width, decode_s=t1 - t0)
    self._take_output(live, out, [s.slot for s in live])
    self.stats["host_s"] += time.perf_counter() - t1

  def _take_output(self, seqs: list[Choice], out: StepOut, rows: list[int]) -> None:
    """Hands each sequence its new tokens (row rows[i] of `out`), ends finished ones."""
    now = time.perf_counter()
    for s, r in zip(seqs, rows):
      if s.finish is not None:
        continue
      new = [int(t) for t in out.tokens_bk[r] if t >= 0]
      if not new:
        continue
      if s.first_token_at is None:
        s.first_token_at = now
      want = s.params.logprobs
      base = len(s.ids)
      for k, t in enumerate(new):
        info = TokenInfo(t, "")
        if want is not None:
          info.logprob = float(out.logprob_bk[r, k])
          info.top = [(int(i), float(lp)) for i, lp in
                      zip(out.top_ids_bkn[r, k, :want], out.top_lp_bkn[r, k, :want])]
        s.infos.append(info)
      s.ids += new
      self.stats["tokens"] += len(new)
      finish = None
      if not s.params.ignore_eos and s.ids[-1] in self.stop_ids:
        finish = "stop"
      elif len(s.ids) >= s.params.max_tokens:
        finish = "length"
      finish = self._detokenize(s, base, finish is not None) or finish
      self._emit(s, finish)

  def _detokenize(self, s: Choice, base: int, finishing: bool) -> str | None:
    """Extends s.text with the new ids s.ids[base:] (stop ids excluded) and fills each new
    TokenInfo's text; on a stop string, cuts the text before it, drops the tokens after the one
    that completed it and returns "stop".

    Incremental: only the ids from `prefix_offset` are decoded again (a token's text can depend
    on its neighbours); text ending in an incomplete character (U+FFFD) is held back for up to 3
    more tokens (UTF-8 characters and byte-fallback pieces are at most 4 bytes), all of it once
    the sequence ends."""
    tok = self.tokenizer
    for i in range(base, len(s.ids)):
      s.infos[i].text = tok.decode([s.ids[i]])
    ids = [t for t in s.ids if s.params.ignore_eos or t not in self.stop_ids]
    prefix = tok.decode(ids[s.prefix_offset:s.read_offset])
    end, full = len(ids), tok.decode(ids[s.prefix_offset:])
    if full.endswith("\ufffd") and not finishing:
      # Hold back the last tokens while they may still complete a character: commit the
      # longest text that agrees with `full` and does not end in U+FFFD, else all but the
      # last 3 tokens (a replacement char older than that is final), else nothing.
      lo = max(s.read_offset, len(ids) - 3)
      end, held = s.read_offset, prefix
      for j in range(len(ids) - 1, lo - 1, -1):
        t = tok.decode(ids[s.prefix_offset:j])
        if full.startswith(t) and (not t.endswith("\ufffd") or j == lo):
          end, held = j, t
          break
      full = held
    if len(full) > len(prefix) and full.startswith(prefix):
      s.text += full[len(prefix):]
      s.prefix_offset, s.read_offset = s.read_offset, end
    elif finishing and full != prefix:
      s.text = tok.decode(ids)
    stop = s.params.stop
    if not stop:
      return None
    start = max(0, s.sent - max(map(len, stop)))
    hits = [i for i in (s.text.find(x, start) for x in stop if x) if i >= 0]
    if not hits:
      return None
    cut = min(hits)
    # The first token whose text completes a stop string ends the sequence (usage counts it).
    for j in range(max(1, base - 3), len(s.ids) + 1):
      head = tok.decode([t for t in s.ids[:j] if s.params.ignore_eos or t not in self.stop_ids])
      if any(x and x in head for x in stop):
        del s.ids[j:], s.infos[j:]
        break
    s.text = s.text[:cut]
    return "stop"

  def _emit(self, s: Choice, finish: str | None) -> None:
    """Calls on_event with the new text (holding back a possible start of a stop string while
    running) and frees the slot when finished."""
    text = s.text
    if finish is None:
      hold = 0
      for x in s.params.stop:
        for k in range(min(len(x) - 1, len(text)), 0, -1):
          if text.endswith(x[:k]):
            hold = max(hold, k)
            break
      text = text[:len(text) - hold]
    delta, new_infos = text[s.sent:], s.infos[s.sent_infos:]
    s.sent, s.sent_infos = max(s.sent, len(text)), len(s.infos)
    if finish is not None:
      with self._lock:
        if 0 <= s.slot < len(self._slots) and self._slots[s.slot] is s:
          self._slots[s.slot] = None
        self.stats["finished"] += 1
      s.finish = finish
    if s.on_event is not None and (delta or new_infos or finish):
      s.on_event(s, delta, new_infos, finish)
    if finish is not None:
      s.done_event.set()

  def _finish(self, s: Choice, reason: str) -> None:
    """Ends a sequence that will get no more tokens (cancelled, or the engine failed)."""
    if s.finish is not None:
      return
    s.finish = reason
    if s.on_event is not None:
      s.on_event(s, "", [], reason)
    s.done_event.set()


def check_request(prompt_ids: Sequence[int], params: SamplingParams, vocab_size: int,
                max_seq_len: int) -> None:
  """Raises ValueError naming the problem when a request cannot be served as asked."""
  if not prompt_ids:
    raise ValueError("the prompt is empty (no tokens)")
  bad = [i for i in prompt_ids if not 0 <= int(i) < vocab_size]
  if bad:
    raise ValueError(f"token id {bad[0]} is out of the vocabulary [0, {vocab_size})")
  if len(prompt_ids) >= max_seq_len:
    raise ContextTooLong(f"the prompt has {len(prompt_ids)} tokens; this server's context is "
                         f"{max_seq_len} tokens (prompt + max_tokens)")
  if params.max_tokens < 1:
    raise ValueError(f"max_tokens={params.max_tokens}; expected >= 1")
  if len(prompt_ids) + params.max_tokens > max_seq_len:
    raise ContextTooLong(
        f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) = "
        f"{len(prompt_ids) + params.max_tokens} exceeds this server's context of "
        f"{max_seq_len} tokens")
  if not 0.0 < params.top_p <= 1.0:
    raise ValueError(f"top_p={params.top_p}; expected 0 < top_p <= 1")
  if not 0 <= params.top_k <= CANDIDATES:
    raise ValueError(f"top_k={params.top_k}; expected 0 (off) to {CANDIDATES}")
  if params.temperature < 0:
    raise ValueError(f"temperature={params.temperature}; expected >= 0")
  if params.logprobs is not None and not 0 <= params.logprobs <= TOP_LOGPROBS:
    raise ValueError(f"logprobs={params.logprobs}; expected 0 to {TOP_LOGPROBS}")


class ContextTooLong(ValueError):
  """Prompt (+ max_tokens) longer than the server's context."""


