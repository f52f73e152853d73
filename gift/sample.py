"""KV-cache sampler: batched prefill in prompt-length buckets, the decode loop compiled whole.

  sampler = Sampler.from_checkpoint("ckpt")            # or Sampler(model_cfg, params, tokenizer)
  sampler.generate(["def f(x):"], n=4, temperature=0.8, top_p=0.95, stop=("# In[ ]:",))
  -> [["\n  return x", ...]]                           # per prompt, n completions

How a batch runs: prompts are sorted by length and cut into batches of whole prompts, each
with all its n sample rows; a batch holds max(1, round(batch_size / n)) prompts (rounded up to
the data-parallel size, so every data shard gets whole prompts), i.e. about `batch_size` rows,
more when n > batch_size. The batch's prompts are left-padded to the smallest length bucket that
fits (so prompts of different lengths share one compiled prefill and every row writes its cache
at the same slot) and prefilled once each, in one call; the prompt cache and last-position
logits are then repeated to the prompt's n rows (row = prompt * n + sample), so pass@k sampling
pays one prefill per prompt, not n. One jitted `lax.while_loop` then decodes all rows, sampling
a token per step, and exits as soon as every row has emitted a stop id (EOS, or any of the
tokenizer's `stop_ids`, e.g. Qwen's `<|im_end|>` and `<|endoftext|>`). Stop strings are text,
not tokens (one string has many tokenizations), so they are matched on the host: with stop
strings the loop runs in chunks of `stop_check_every` tokens and rows whose decoded text
contains a stop string are marked finished between chunks; without them it runs once to the end.

Randomness: row r (= prompt_index * n + sample_index) at step t uses
fold_in(fold_in(key(seed), r), t), so a completion depends on the seed, its prompt and its
sample index only, not on batch composition or batch size.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import gift
from gift.model import cpu_kernels, transformer
from gift.model import layers as model_layers
from gift.model.presets import ModelConfig

Array = jax.Array
# Prompt-length buckets ~1.25-1.5x apart: with prompts sorted by length a batch pads to the next
# one, and power-of-2 buckets left ~half of the prefill's slots padding for held-out evaluation
# prompts (BENCHMARKS.md); each bucket used costs one prefill compilation (the decode loop
# compiles per cache length, see CACHE_LENGTHS).
DEFAULT_BUCKETS = (32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024, 1536, 2048)
# KV-cache lengths of the decode loop (prompt bucket + max_new_tokens, rounded up to one of
# these): the loop then compiles once per cache length, not once per prompt bucket. Compiling
# was half of the held-out sampling time of `gift quickstart` (BENCHMARKS.md); the extra slots
# are empty (segment 0, masked) and cost attention per step: 192 was missing, and 64-token
# prompts + 128 new tokens decoded in a 256-slot cache at 3,572 tok/s (batch 32, greedy,
# benchmarks/bench_serve.py's model) against 4,299 in a 192-slot one.
CACHE_LENGTHS = (128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


class DecodeState(NamedTuple):
  """The decode loop's carry. B rows, M = max_new_tokens."""
  cache: transformer.KVCache
  tokens_bm: Array  # int32 [B, M] generated ids, pad after a row finishes
  last_b: Array  # int32 [B] last sampled token (next input)
  position_b: Array  # int32 [B] RoPE position of `last_b`
  done_b: Array  # bool [B] row finished (EOS, stop string)
  step: Array  # int32 scalar: tokens generated so far (columns of tokens_bm filled)
  keys_b: Array  # [B] per-row PRNG keys


NUCLEUS_CANDIDATES = 256  # the nucleus is looked for among the top ids first (see sample_logits)


def greedy_ids(logits_bv: Array) -> Array:
  """int32 [B]: each row's argmax (the first id of the largest logit, as `jnp.argmax`). XLA:CPU
  runs `argmax` as a scalar (value, index) reduction, ~0.57 ms for [32, 8000]; the row max and
  then the least id where the row equals it are two vectorized reductions (0.26-0.30 ms vs
  0.36-0.40 for max then `argmax` of the equality mask, benchmarks of BENCHMARKS.md Round 9).
  A row of NaNs gives id 0 (jnp.argmax: the NaN's id): never a real token either way."""
  vocab = logits_bv.shape[-1]
  max_b1 = jnp.max(logits_bv, axis=-1, keepdims=True)
  first_b = jnp.min(jnp.where(logits_bv == max_b1, jnp.arange(vocab, dtype=jnp.int32), vocab),
                    axis=-1)
  return jnp.where(first_b == vocab, 0, first_b).astype(jnp.int32)


def sample_logits(logits_bv: Array, keys_b: Array, step: Array, temperature: Array,
                  top_p: Array, top_k: int, greedy: bool, nucleus: bool = False) -> Array:
  """Samples one token per row from float32 logits [B, V]; returns int32 [B].

  `greedy` (static) takes the argmax. Otherwise logits are divided by `temperature` (> 0);
  `top_k` (static) 0 keeps the whole vocabulary, else the k most likely ids; with `nucleus`
  (static; top_p < 1) top-p then keeps the smallest set of most likely ids whose mass reaches
  `top_p` (always at least one id). A full sort of the vocabulary costs ~9 ms per step on a CPU,
  so without top-k the nucleus is found among the NUCLEUS_CANDIDATES most likely ids when they
  hold `top_p` of the mass in every row (the usual case for a trained model: the same set a
  sort would give), else by bisecting for the probability threshold over the whole vocabulary
  (the same set up to ties at the threshold).
  """
  if greedy:
    return greedy_ids(logits_bv)
  scaled_bv = logits_bv / temperature
  keys_b = jax.vmap(jax.random.fold_in, (0, None))(keys_b, step)
  draw = lambda scaled: jax.vmap(jax.random.categorical)(keys_b, scaled).astype(jnp.int32)

  def from_top(scaled_bv, k, probs_bv=None):
    """Draws among the k most likely ids; with `nucleus`, their smallest prefix reaching top_p
    of the mass (of `probs_bv` when given, else renormalized over the k, as after a top-k)."""
    scaled_bk, ids_bk = jax.lax.top_k(scaled_bv, k)
    if nucleus:
      probs_bk = (jax.nn.softmax(scaled_bk, axis=-1) if probs_bv is None
                  else jnp.take_along_axis(probs_bv, ids_bk, axis=1))
      mass_before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk  # sorted: descending
      scaled_bk = jnp.where(mass_before_bk < top_p, scaled_bk, -jnp.inf)
    return jnp.take_along_axis(ids_bk, draw(scaled_bk)[:, None], axis=1)[:, 0]

  if top_k:
    return from_top(scaled_bv, top_k)
  if not nucleus:
    return draw(scaled_bv)
  vocab = scaled_bv.shape[-1]
  if vocab <= NUCLEUS_CANDIDATES:
    return from_top(scaled_bv, vocab)
  probs_bv = jax.nn.softmax(scaled_bv, axis=-1)
  top_mass_b = jnp.sum(jax.lax.top_k(probs_bv, NUCLEUS_CANDIDATES)[0], axis=-1)
  return jax.lax.cond(jnp.all(top_mass_b >= top_p),
                      lambda: from_top(scaled_bv, NUCLEUS_CANDIDATES, probs_bv),
                      lambda: draw(_nucleus_by_threshold(scaled_bv, probs_bv, top_p)))


def _nucleus_by_threshold(scaled_bv: Array, probs_bv: Array, top_p: Array,
                          iters: int = 32) -> Array:
  """scaled_bv with every id of probability below tau set to -inf, where tau is the largest
  threshold whose kept mass is still >= top_p, found by bisection in [0, max p] (each step
  keeps the invariant mass(p >= lo) >= top_p)."""
  def body(_, bounds):
    lo_b, hi_b = bounds
    mid_b = 0.5 * (lo_b + hi_b)
    ok_b = jnp.sum(jnp.where(probs_bv >= mid_b[:, None], probs_bv, 0.0), axis=-1) >= top_p
    return jnp.where(ok_b, mid_b, lo_b), jnp.where(ok_b, hi_b, mid_b)

  lo_b, _ = jax.lax.fori_loop(0, iters, body, (jnp.zeros(probs_bv.shape[:1], probs_bv.dtype),
                                               jnp.max(probs_bv, axis=-1)))
  return jnp.where(probs_bv >= lo_b[:, None], scaled_bv, -jnp.inf)


def _prefill(cfg: ModelConfig, params: Any, tokens_up: Array, segment_ids_up: Array,
             keys_b: Array, temperature: Array, top_p: Array, *, n: int, max_new_tokens: int,
             top_k: int, greedy: bool, nucleus: bool, stop_ids: tuple[int, ...],
             pad_id: int, cache_len: int = 0) -> DecodeState:
  """Runs the U left-padded prompts [U, P] through the model once, repeats each prompt's cache
  and last-position logits to its n rows (row b = u * n + j, B = U * n; keys_b [B]) and
  samples every row's first token. The decode cache holds `cache_len` slots (at least, and by
  default, P + max_new_tokens)."""
  u, p = tokens_up.shape
  positions_up = jnp.maximum(jnp.cumsum(segment_ids_up, axis=1) - 1, 0).astype(jnp.int32)
  # Prompt slots only: the prefill's attention spans P slots, not P + M. The M decode slots
  # (segment 0 = empty) are appended after the repeat.
  cache = transformer.init_cache(cfg, u, p)
  last_u1 = jnp.full((u, 1), p - 1, jnp.int32)  # prompts are left-padded: all end at P - 1
  logits_u1v, cache = transformer.apply(cfg, params, tokens_up, positions_up, segment_ids_up,
                                        cache, logits_at_bk=last_u1)
  extra = max(cache_len - p, max_new_tokens)
  kv_pad = ((0, 0), (0, 0), (0, extra), (0, 0))
  grow = lambda x_bksh: jnp.pad(jnp.repeat(x_bksh, n, axis=0), kv_pad)
  cache = transformer.KVCache(
      tuple(map(grow, cache.k)), tuple(map(grow, cache.v)),
      jnp.pad(jnp.repeat(cache.segment_ids, n, axis=0), ((0, 0), (0, extra))),
      cache.index)
  logits_bv = jnp.repeat(logits_u1v[:, 0], n, axis=0)
  first_b = sample_logits(logits_bv, keys_b, jnp.int32(0), temperature, top_p, top_k, greedy,
                          nucleus)
  tokens_bm = jnp.full((u * n, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first_b)
  position_b = jnp.repeat(positions_up[:, -1] + 1, n)
  return DecodeState(cache, tokens_bm, first_b, position_b, _is_stop(first_b, stop_ids),
                     jnp.int32(1), keys_b)


def _decode(cfg: ModelConfig, params: Any, state: DecodeState, end_step: Array,
            temperature: Array, top_p: Array, *, top_k: int, greedy: bool, nucleus: bool,
            stop_ids: tuple[int, ...], pad_id: int) -> DecodeState:
  """Decodes until step == end_step or every row is done; one compiled while loop."""

  params = transformer.unstack_layers(params)  # a no-op for a Sampler's (unstacked) params

  def cond(s: DecodeState) -> Array:
    return (s.step < end_step) & ~jnp.all(s.done_b)

  def body(s: DecodeState) -> DecodeState:
    ones_b1 = jnp.ones_like(s.last_b)[:, None]
    logits_b1v, cache = transformer.apply(cfg, params, s.last_b[:, None], s.position_b[:, None],
                                          ones_b1, s.cache)
    token_b = sample_logits(logits_b1v[:, 0], s.keys_b, s.step, temperature, top_p, top_k,
                            greedy, nucleus)
    token_b = jnp.where(s.done_b, pad_id, token_b)
    tokens_bm = jax.lax.dynamic_update_slice(s.tokens_bm, token_b[:, None], (0, s.step))
    return DecodeState(cache, tokens_bm, token_b, s.position_b + 1,
                       s.done_b | _is_stop(token_b, stop_ids), s.step + 1, s.keys_b)

  return jax.lax.while_loop(cond, body, state)


def _is_stop(token_b: Array, stop_ids: tuple[int, ...]) -> Array:
  """bool [B]: the token is one of the stop ids (EOS, or any of generation_config's)."""
  return jnp.isin(token_b, jnp.asarray(stop_ids, jnp.int32)) if stop_ids else token_b < 0


# Module-level, so Samplers of the same config share compilations; with
# cpu_kernels.inference_options() (XLA's own dots on a CPU).
_prefill_jit = cpu_kernels.inference_jit(_prefill, static_argnums=0, static_argnames=(
    "n", "max_new_tokens", "top_k", "greedy", "nucleus", "stop_ids", "pad_id", "cache_len"))
_decode_jit = cpu_kernels.inference_jit(
    _decode, static_argnums=0, donate_argnums=(2,),
    static_argnames=("top_k", "greedy", "nucleus", "stop_ids", "pad_id"))


def _unstack_leafwise(params: dict) -> dict:
  """`transformer.unstack_layers`, one stacked array at a time (`params["layers"]` is popped, so
  each stacked array is freed once split, unless the caller holds it too): decoding then reads
  each layer's own arrays, and splitting never holds more than one stacked array twice."""
  flat, treedef = jax.tree.flatten(params.pop("layers"))
  n = flat[0].shape[0]
  split = jax.jit(lambda x: tuple(x[i] for i in range(n)))
  per_layer = [[] for _ in range(n)]
  for j in range(len(flat)):
    parts, flat[j] = split(flat[j]), None  # the stacked array is freed unless shared
    for i, part in enumerate(parts):
      per_layer[i].append(part)
  return dict(params, layers=tuple(jax.tree.unflatten(treedef, leaves) for leaves in per_layer))


def inference_params(params: dict, mesh: Any = None) -> dict:
  """The parameters as `Sampler` and `gift serve`'s Engine decode with: one dict per layer
  (`_unstack_leafwise`), and without a mesh of several devices, each layer's q/k/v and
  gate/up weights fused into one matmul each (`layers.fuse_projections`; on a mesh they stay
  apart, so each keeps the sharding gift/sharding.py gives it)."""
  params = _unstack_leafwise(params)
  if mesh is None or mesh.size == 1:
    params["layers"] = tuple(model_layers.fuse_projections(p) for p in params["layers"])
  return params


class Sampler:
  """Samples completions from a gift model. See the module docstring.

  Args:
    model_cfg, params: the model (params: the pure dict, f32; cast to `model_cfg.dtype` once).
    tokenizer: a `gift.tokenizer` Tokenizer (its BOS, if it adds one, starts every prompt; a
      row ends at any of its `stop_ids`).
    mesh: optional `jax.sharding.Mesh`; params are sharded with gift/sharding.py's rules and
      rows over ("data", "fsdp"), as in training.
    batch_size: rows per compiled batch, about: a batch holds whole prompts with their n
      samples, max(1, round(batch_size / n)) prompts rounded up to the data-parallel size.
    buckets: prompt lengths (tokens, BOS included) that batches are padded to; longer prompts
      round up to a multiple of the largest bucket.
    stop_check_every: decode tokens between host-side stop-string checks.
  """

  def __init__(self, model_cfg: ModelConfig, params: Any, tokenizer: Any, mesh: Any = None,
               batch_size: int = 8, buckets: Sequence[int] = DEFAULT_BUCKETS,
               stop_check_every: int = 32):
    self.cfg, self.tokenizer, self.mesh = model_cfg, tokenizer, mesh
    self.cfg = cpu_kernels.for_mesh(model_cfg, mesh)  # the decode attention a mesh allows
    self.buckets = tuple(sorted(buckets))
    self.stop_check_every = stop_check_every
    dtype = jnp.dtype(model_cfg.dtype)
    shardings, self.row_sharding, self.dp = None, None, 1
    if mesh is not None:
      from gift import sharding
      shardings = sharding.param_shardings(model_cfg, mesh)
      self.row_sharding = sharding.batch_sharding(mesh)
      self.dp = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
      batch_size = -(-batch_size // self.dp) * self.dp
    if all(x.dtype == dtype for x in jax.tree.leaves(params)):
      # No cast, so no copy (a jitted identity would hold an f32 7B model twice).
      params = jax.device_put(params, shardings)
    else:
      params = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p),
                       out_shardings=shardings)(params)
    # device_put/jit made new dicts: the caller's is whole
    self.params = inference_params(params, mesh)
    self.batch_size = batch_size

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, mesh: Any = None, step: int | None = None,
                      merge_lora: bool = True, **kw: Any) -> "Sampler":
    """Loads a gift checkpoint (restored straight into the mesh's shardings when given). A LoRA
    run loads as its base plus adapters, merged (`merge_lora`) or run unmerged."""
    from gift import checkpoint
    from gift import tokenizer as tokenizer_lib
    shardings = None
    if mesh is not None:
      from gift import sharding
      shardings = sharding.param_shardings(checkpoint.read_model_config(ckpt_dir), mesh)
    cfg, params, tok_path = checkpoint.load_model(ckpt_dir, step=step, shardings=shardings,
                                                  merge_lora=merge_lora or mesh is not None)
    return cls(cfg, params, tokenizer_lib.load(tok_path, cfg.vocab_size), mesh=mesh, **kw)

  def _bucket(self, length: int) -> int:
    for b in self.buckets:
      if length <= b:
        return b
    top = self.buckets[-1]
    return -(-length // top) * top

  def generate(self, prompts: Sequence[str], n: int = 1, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, max_new_tokens: int = 256,
               stop: Sequence[str] = (), seed: int = 0,
               chat_template: bool = False) -> list[list[str]]:
    """Per prompt, `n` completions (text after the prompt, cut before a stop id / string).

    `chat_template` sends each prompt as one user turn through the tokenizer's chat template
    (instruct checkpoints); otherwise the prompt is plain text after BOS.
    """
    from gift import tokenizer as tokenizer_lib
    ids = [tokenizer_lib.prompt_ids(self.tokenizer, p, chat_template) for p in prompts]
    out = self.generate_ids(ids, n=n, temperature=temperature, top_k=top_k, top_p=top_p,
                            max_new_tokens=max_new_tokens, stop=stop, seed=seed)
    return [[_cut_at_stop(self.tokenizer.decode(c), stop) for c in row] for row in out]

  def generate_ids(self, prompt_ids: Sequence[Sequence[int]], n: int = 1,
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   max_new_tokens: int = 256, stop: Sequence[str] = (), seed: int = 0,
                   stop_at_eos: bool = True) -> list[list[list[int]]]:
    """Like `generate` on token ids (BOS not added): per prompt, n lists of new ids, cut
    before the first stop id. A row stopped by a stop string keeps the ids through the chunk
    where the string appeared (`generate` cuts the text). `stop_at_eos=False` always runs
    `max_new_tokens` steps (benchmarks)."""
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens}; expected >= 1")
    if not 0.0 < top_p <= 1.0:
      raise ValueError(f"top_p={top_p}; expected 0 < top_p <= 1")
    if any(len(p) == 0 for p in prompt_ids):
      raise ValueError("empty prompt: every prompt needs at least one token (e.g. BOS)")
    vocab = self.cfg.vocab_size
    # Static sampling mode: greedy, or the top-k size (0 = whole vocabulary) and the nucleus.
    greedy = temperature <= 0
    top_k = 0 if greedy else min(top_k, vocab)
    nucleus = not greedy and top_p < 1.0
    stop_ids = tuple(int(i) for i in self.tokenizer.stop_ids) if stop_at_eos else ()
    pad = self.tokenizer.pad_id
    # Prompts per batch: rows ~= batch_size, whole prompts on every data-parallel shard (so the
    # U prompts and the U * n rows both split evenly over the mesh).
    per_batch = max(1, (self.batch_size + n // 2) // n)
    per_batch = -(-per_batch // self.dp) * self.dp
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))  # shared buckets
    results: dict[int, list[list[int]]] = {}
    for start in range(0, len(order), per_batch):
      group = order[start:start + per_batch]
      batch = group + [group[-1]] * (per_batch - len(group))  # fixed shapes
      p = self._bucket(max(len(prompt_ids[i]) for i in batch))
      tokens_up = np.full((len(batch), p), pad, np.int32)
      segment_ids_up = np.zeros((len(batch), p), np.int32)
      for u, i in enumerate(batch):
        ids = prompt_ids[i]
        tokens_up[u, p - len(ids):] = ids
        segment_ids_up[u, p - len(ids):] = 1
      keys_b = _row_keys(seed, self._put(np.asarray([i * n + j for i in batch for j in range(n)],
                                                    np.uint32)))
      new_bm, length_b = self._run(tokens_up, segment_ids_up, keys_b, temperature, top_p,
                                   max_new_tokens, stop, n=n, top_k=top_k, greedy=greedy,
                                   nucleus=nucleus, stop_ids=stop_ids, pad_id=pad)
      for u, i in enumerate(group):
        results[i] = [new_bm[b, :length_b[b]].tolist() for b in range(u * n, (u + 1) * n)]
    return [results[i] for i in range(len(prompt_ids))]

  def _put(self, x: np.ndarray) -> Array:
    """A host array onto the rows' sharding (every process passes the same global value)."""
    if self.row_sharding is None:
      return jnp.asarray(x)
    if self.row_sharding.is_fully_addressable:
      return jax.device_put(x, self.row_sharding)
    return jax.make_array_from_callback(x.shape, self.row_sharding, lambda index: x[index])

  def _run(self, tokens_up: np.ndarray, segment_ids_up: np.ndarray, keys_b: Array,
           temperature: float, top_p: float, max_new_tokens: int, stop: Sequence[str], n: int,
           **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """Prefill of U prompts [U, P] + decode of their B = U * n rows (keys_b [B]). Returns (ids
    int32 [B, M], lengths int [B]): row b's completion is ids[b, :lengths[b]] (EOS excluded;
    through the chunk that hit a stop)."""
    put = self._put
    temperature, top_p = jnp.float32(temperature), jnp.float32(top_p)
    state = _prefill_jit(self.cfg, self.params, put(tokens_up), put(segment_ids_up), keys_b,
                         temperature, top_p, n=n, max_new_tokens=max_new_tokens,
                         cache_len=_cache_len(tokens_up.shape[1] + max_new_tokens,
                                              self.cfg.max_seq_len), **kw)
    chunk = self.stop_check_every if stop else max_new_tokens
    stopped_at_b = np.full(keys_b.shape[0], max_new_tokens)  # host-detected stop strings
    while True:
      end = min(int(state.step) + chunk, max_new_tokens)
      state = _decode_jit(self.cfg, self.params, state, jnp.int32(end), temperature, top_p, **kw)
      step, done_b = int(state.step), _to_host(state.done_b)
      tokens_bm = _to_host(state.tokens_bm)
      if step >= max_new_tokens or done_b.all():
        break
      hit_b = ~done_b & np.array([_has_stop(self.tokenizer.decode(row[:step]), stop)
                                  for row in tokens_bm])
      stopped_at_b[hit_b] = step
      if (done_b | hit_b).all():
        break
      if hit_b.any():
        state = state._replace(done_b=put(done_b | hit_b))
    eos_b = np.isin(tokens_bm, kw["stop_ids"])
    length_b = np.where(eos_b.any(axis=1), eos_b.argmax(axis=1), np.minimum(stopped_at_b, step))
    return tokens_bm, length_b


def _cache_len(need: int, max_seq_len: int) -> int:
  """The decode cache length for `need` = prompt bucket + max_new_tokens slots: the next of
  CACHE_LENGTHS, within the model's max_seq_len (never below `need`)."""
  fit = next((c for c in CACHE_LENGTHS if c >= need), need)
  return max(need, min(fit, max_seq_len))


@jax.jit
def _row_keys(seed: int, rows_b: Array) -> Array:
  """Row r's PRNG key, fold_in(key(seed), r), computed where the rows live."""
  return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), rows_b)


def _to_host(x: Array) -> np.ndarray:
  """The whole array on this host; rows held by other processes are gathered (multi-host)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _has_stop(text: str, stop: Sequence[str]) -> bool:
  return any(s in text for s in stop)


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
  """Text before the earliest occurrence of any stop string."""
  cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
  return text[:cut]


# ----------------------------------------------------------------------------------------------
# Command line.


def _read_prompts(path: str) -> list[str]:
  """A .jsonl file of {"prompt": ...} (or JSON strings) per line, else the file as one prompt."""
  with open(path) as f:
    text = f.read()
  if not path.endswith(".jsonl"):
    return [text]
  prompts = []
  for lineno, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    item = json.loads(line)
    if isinstance(item, dict) and "prompt" not in item:
      raise ValueError(f"{path}:{lineno}: expected a JSON string or an object with 'prompt'")
    prompts.append(item["prompt"] if isinstance(item, dict) else str(item))
  return prompts


def main(argv: list[str]) -> int:
  """`gift sample --checkpoint CKPT --prompt TEXT [--prompt_file F] [--n 20] ...`; prints one
  JSON line per prompt: {"prompt_index", "prompt", "completions"}."""
  from gift.config import base_config
  d = base_config().sample
  p = gift.ArgumentParser(prog="gift sample", description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", required=True, help="gift checkpoint dir")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
  p.add_argument("--prompt_file", default=None,
                 help='.jsonl of {"prompt": ...} lines, or a text file used as one prompt')
  p.add_argument("--n", type=int, default=d.n, help="samples per prompt")
  p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
  p.add_argument("--top_k", type=int, default=d.top_k, help="0 = no top-k cut")
  p.add_argument("--top_p", type=float, default=d.top_p, help="1 = no nucleus cut")
  p.add_argument("--max_new_tokens", type=int, default=d.max_new_tokens)
  p.add_argument("--stop", action="append", default=None,
                 help=f"stop string (repeatable; default {list(d.stop)}; --stop '' for none)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch_size", type=int, default=d.batch_size, help="rows per batch")
  p.add_argument("--lora", default="merge", choices=("merge", "unmerged"),
                 help="a LoRA run: merge the adapters into the base, or run them unmerged")
  p.add_argument("--chat_template", action="store_true",
                 help="send each prompt as a user turn through the tokenizer's chat template "
                      "(instruct checkpoints)")
  args = p.parse_args(argv)
  prompts = list(args.prompt) + (_read_prompts(args.prompt_file) if args.prompt_file else [])
  if not prompts:
    p.error("give at least one --prompt or a --prompt_file")
  stop = tuple(s for s in (d.stop if args.stop is None else args.stop) if s)

  sampler = Sampler.from_checkpoint(args.checkpoint, step=args.step, batch_size=args.batch_size,
                                    buckets=d.prompt_buckets, merge_lora=args.lora == "merge")
  t0 = time.perf_counter()
  out = sampler.generate(prompts, n=args.n, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, max_new_tokens=args.max_new_tokens, stop=stop,
                         seed=args.seed, chat_template=args.chat_template)
  for i, (prompt, completions) in enumerate(zip(prompts, out)):
    print(json.dumps({"prompt_index": i, "prompt": prompt, "completions": completions}))
  print(f"sampled {len(prompts)} prompts x {args.n} in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr)
  return 0
