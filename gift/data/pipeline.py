"""Input pipeline: records -> prompt/target -> tokens + loss mask -> packed rows -> global batches.

Sources (random access, `len` + `get(i, g)`): GIFT records (`data/records.py`, rendered by
`data/prompts.py` with a spec kind from the config) or JSONL lines `{"prompt", "completion"}`.

Tokenization: `[BOS] + prompt + target + [EOS]` (no BOS for tokenizers without one, e.g. Qwen);
with `data.chat_template`, `head + prompt + tail + target + [end of turn]` where head/tail are the
chat template's user turn (`gift.tokenizer.chat_frame`). The loss mask is 1 on target tokens and
EOS, 0 on the rest. Too long: the context is cut from the left first, then the instruction; the
target never is. An example whose target alone does not fit is dropped and counted.

Determinism, exact resume and multi-host, by construction:
- The example stream is global: stream index g is example `perm_e[g % N]` of epoch `e = g // N`,
  `perm_e` a permutation seeded by (seed, e). In a mixture, g's spec kind is drawn from (seed, g)
  (so one record may show a different spec each epoch).
- Row r of every global batch (B rows of T tokens) packs, greedily, the stream indices
  `r, r + B, r + 2B, ...`: the k-th example of row r is g = k * B + r. An example that does not fit
  in the current row opens the row at the next step. So the only state is `next_b` (each row's k,
  B ints) plus `dropped_b`, and the global batch at step s is a pure function of (seed, s),
  independent of how many processes build it.
- Each process builds only the rows its devices hold (`local_rows`) and the global array is
  assembled with `jax.make_array_from_process_local_data`. The state is saved as global int32
  arrays sharded like the batch rows, so every process restores exactly its rows' state.

Batch (numpy, `[rows, T]`): `inputs`, `targets` int32, `loss_mask` float32, `positions` int32
(from 0 in each segment), `segment_ids` int32 (1, 2, ... per row; 0 = padding).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import queue
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gift import tokenizer as tokenizer_lib
from gift.data import prompts

BATCH_KEYS = ("inputs", "targets", "loss_mask", "positions", "segment_ids")


# ---------------------------------------------------------------------------------------------
# Sources: random access to rendered examples.
# ---------------------------------------------------------------------------------------------
def spec_kind_for(seed: int, g: int, kinds: Sequence[str], cum_weights: np.ndarray) -> str:
  """The spec kind of stream index g in a weighted mixture (a pure function of seed and g)."""
  u = np.random.default_rng((seed, 0x5bec, g)).random()
  return kinds[min(int(np.searchsorted(cum_weights, u, side="right")), len(kinds) - 1)]


def spec_chooser(spec_kind: str, mixture: Mapping[str, float], seed: int) -> Callable[[int], str]:
  """Maps a stream index to a spec kind: fixed, or drawn from the mixture weights."""
  if spec_kind != "mixture":
    return lambda g: spec_kind
  kinds = [k for k, w in mixture.items() if w > 0]
  unknown = sorted(set(kinds) - set(prompts.SPEC_KINDS))
  if unknown or not kinds:
    raise ValueError(f"data.spec_mixture={dict(mixture)}: needs positive weights over "
                     f"{prompts.SPEC_KINDS}; bad keys {unknown}")
  w = np.array([mixture[k] for k in kinds], np.float64)
  cum = np.cumsum(w / w.sum())
  return lambda g: spec_kind_for(seed, g, kinds, cum)


class RecordSource:
  """GIFT records rendered with a per-example spec kind. `[i, g]` renders record i as stream g."""

  def __init__(self, records: Any, choose_spec: Callable[[int], str], context: str = "full",
               chat: bool = False):
    self.records, self.choose_spec, self.context = records, choose_spec, context
    self.chat = chat

  def __len__(self) -> int:
    return len(self.records)

  def get(self, i: int, g: int) -> prompts.Rendered:
    return prompts.render(self.records[i], self.choose_spec(g), self.context, self.chat)


class JsonlSource:
  """Lines `{"prompt": str, "completion": str}` from one or more files (a glob, sorted)."""

  def __init__(self, pattern: str, chat: bool = False):
    self.chat = chat
    paths = sorted(glob.glob(pattern))
    if not paths:
      raise FileNotFoundError(f"data.path={pattern!r} matches no JSONL file")
    self.pairs: list[tuple[str, str]] = []
    for path in paths:
      with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
          if not line.strip():
            continue
          try:
            obj = json.loads(line)
            self.pairs.append((str(obj["prompt"]), str(obj["completion"])))
          except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: expected a JSON object with string fields 'prompt' "
                             f"and 'completion' ({type(e).__name__}: {e})") from e

  def __len__(self) -> int:
    return len(self.pairs)

  def get(self, i: int, g: int) -> prompts.Rendered:
    del g
    return prompts.render_prompt_completion(*self.pairs[i], chat=self.chat)


def make_source(data_cfg: Any, split: str, seed: int) -> RecordSource | JsonlSource | None:
  """The source for `split` ("train" or "eval") from the `data` config; None if it has none."""
  chat = bool(data_cfg.get("chat_template", False))
  if data_cfg.source == "jsonl":
    pattern = data_cfg.path if split == "train" else data_cfg.eval_path
    return JsonlSource(pattern, chat) if pattern else None
  if data_cfg.source != "tfds":
    raise ValueError(f"data.source={data_cfg.source!r}; expected 'tfds' or 'jsonl'")
  if not data_cfg.path:
    raise ValueError("data.path is empty: set it to a GIFT dataset directory (gift build-data)")
  from gift.data import records
  name = data_cfg.train_split if split == "train" else data_cfg.eval_split
  if not name:
    return None
  chooser = spec_chooser(data_cfg.spec_kind, data_cfg.spec_mixture, seed)
  return RecordSource(records.load_split(data_cfg.path, name), chooser, data_cfg.context, chat)


# ---------------------------------------------------------------------------------------------
# Tokenization with the loss mask and left truncation.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Tokenized:
  """`tokens_n` = [BOS] + prompt + target + [EOS] (see the module docstring for chats);
  `target_n` is 1 on target tokens and the closing EOS."""
  tokens_n: np.ndarray
  target_n: np.ndarray


def tokenize(rendered: prompts.Rendered, tokenizer: Any, seq_len: int) -> Tokenized | None:
  """Tokenizes one example so that it occupies at most `seq_len` slots (n - 1 <= seq_len).

  The prompt is encoded whole (`tokenizer.prompt_ids`, as the sampler does); only when it is too
  long are context and instruction encoded apart and cut from the left: context first, then
  instruction (between the chat template's head and tail, which are kept). Returns None when
  even BOS + target + EOS does not fit.
  """
  if rendered.chat:
    frame = tokenizer_lib.chat_frame(tokenizer)
    head, tail, end = list(frame.head), list(frame.tail), frame.end_id
  else:
    head, tail, end = [tokenizer.bos_id] if tokenizer.add_bos else [], [], tokenizer.eos_id
  target = tokenizer.encode(rendered.target) + [end]
  # n tokens fill n - 1 slots, so head + prompt + tail + target fit when len(prompt) <= budget.
  budget = seq_len + 1 - len(head) - len(tail) - len(target)
  if budget < 0:
    return None
  prompt = tokenizer_lib.prompt_ids(tokenizer, rendered.prompt, rendered.chat)
  if len(prompt) > budget + len(head) + len(tail):
    instruction = tokenizer.encode(rendered.instruction)[-budget:] if budget > 0 else []
    room = budget - len(instruction)
    context = tokenizer.encode(rendered.context)[-room:] if room > 0 else []
    prompt = head + context + instruction + tail
  tokens = np.array(prompt + target, np.int32)
  target_n = np.zeros(len(tokens), np.float32)
  target_n[len(prompt):] = 1.0
  return Tokenized(tokens, target_n)


# ---------------------------------------------------------------------------------------------
# Packing rows.
# ---------------------------------------------------------------------------------------------
def empty_rows(num_rows: int, seq_len: int) -> dict[str, np.ndarray]:
  return {"inputs": np.zeros((num_rows, seq_len), np.int32),
          "targets": np.zeros((num_rows, seq_len), np.int32),
          "loss_mask": np.zeros((num_rows, seq_len), np.float32),
          "positions": np.zeros((num_rows, seq_len), np.int32),
          "segment_ids": np.zeros((num_rows, seq_len), np.int32)}


def place(batch: dict[str, np.ndarray], row: int, start: int, segment: int, ex: Tokenized) -> int:
  """Writes example `ex` as segment `segment` of `row` from slot `start`; returns the next slot.

  The example fills n - 1 slots: inputs tokens[:-1], targets tokens[1:], loss on targets that are
  target tokens (the prompt's last token predicts the first code token).
  """
  n = len(ex.tokens_n) - 1
  sl = slice(start, start + n)
  batch["inputs"][row, sl] = ex.tokens_n[:-1]
  batch["targets"][row, sl] = ex.tokens_n[1:]
  batch["loss_mask"][row, sl] = ex.target_n[1:]
  batch["positions"][row, sl] = np.arange(n, dtype=np.int32)
  batch["segment_ids"][row, sl] = segment
  return start + n


class Pipeline:
  """Builds this process's rows of each global batch; `next()` -> (batch, state after it).

  Args:
    source: `len(source)` examples, `source.get(i, g)` renders example i as stream index g.
    tokenizer: a `gift.tokenizer.Tokenizer`.
    seq_len: T, slots per row.
    global_batch: B, rows in the global batch.
    rows: the global row indices this process builds (sorted), see `local_rows`.
    seed: shuffling and spec-mixture seed.
    num_epochs: 0 repeats forever; otherwise rows past the end are padding (see `exhausted`).
    pack: several examples per row; False puts one example per row.
  """

  def __init__(self, source: Any, tokenizer: Any, seq_len: int, global_batch: int,
               rows: Sequence[int], seed: int = 0, num_epochs: int = 0, pack: bool = True):
    if len(source) == 0:
      raise ValueError("the data source holds no examples")
    self.source, self.tokenizer, self.seq_len = source, tokenizer, seq_len
    self.global_batch, self.rows = global_batch, np.asarray(rows, np.int64)
    self.seed, self.num_epochs, self.pack = seed, num_epochs, pack
    self.next_b = np.zeros(global_batch, np.int64)  # only `rows` are meaningful here
    self.dropped_b = np.zeros(global_batch, np.int64)
    self._pending: dict[int, Tokenized] = {}  # row -> tokenized example at next_b[row]
    self._perms: dict[int, np.ndarray] = {}

  # State: per-row stream position and drop count, only this process's rows.
  def state(self) -> dict[str, np.ndarray]:
    return {"next_b": self.next_b[self.rows].astype(np.int32),
            "dropped_b": self.dropped_b[self.rows].astype(np.int32)}

  def set_state(self, state: Mapping[str, np.ndarray]) -> None:
    for key in ("next_b", "dropped_b"):
      if np.shape(state[key]) != (len(self.rows),):
        raise ValueError(f"data state {key!r} has shape {np.shape(state[key])}, expected "
                         f"({len(self.rows)},) for this process's rows")
    self.next_b[self.rows] = np.asarray(state["next_b"], np.int64)
    self.dropped_b[self.rows] = np.asarray(state["dropped_b"], np.int64)
    self._pending.clear()

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) > 2:
        self._perms.pop(min(self._perms))
      self._perms[epoch] = np.random.default_rng((self.seed, epoch)).permutation(len(self.source))
    return self._perms[epoch]

  def _stream_index(self, row: int) -> int | None:
    """The stream index g of row's next example, or None past the last epoch."""
    g = int(self.next_b[row]) * self.global_batch + row
    if self.num_epochs and g >= self.num_epochs * len(self.source):
      return None
    return g

  def _peek(self, row: int) -> Tokenized | None:
    """Row's next example (tokenized, cached), skipping and counting ones that cannot fit."""
    while row not in self._pending:
      g = self._stream_index(row)
      if g is None:
        return None
      n = len(self.source)
      ex = tokenize(self.source.get(int(self._perm(g // n)[g % n]), g), self.tokenizer,
                    self.seq_len)
      if ex is None:
        self.next_b[row] += 1
        self.dropped_b[row] += 1
      else:
        self._pending[row] = ex
    return self._pending[row]

  def exhausted(self) -> bool:
    """True when every local row is past the last epoch (never with num_epochs=0)."""
    return all(self._peek(int(r)) is None for r in self.rows)

  def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    return self

  def __next__(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    batch = empty_rows(len(self.rows), self.seq_len)
    for i, row in enumerate(map(int, self.rows)):
      start, segment = 0, 0
      while (ex := self._peek(row)) is not None and start + len(ex.tokens_n) - 1 <= self.seq_len:
        segment += 1
        start = place(batch, i, start, segment, ex)
        del self._pending[row]
        self.next_b[row] += 1
        if not self.pack:
          break
    return batch, self.state()


def prefetch(iterator: Iterator[Any], size: int = 2) -> Iterator[Any]:
  """Runs `iterator` in a background thread, `size` items ahead (order and items unchanged)."""
  if size <= 0:
    yield from iterator
    return
  q: queue.Queue = queue.Queue(maxsize=size)
  done = object()

  def work():
    try:
      for item in iterator:
        q.put(item)
      q.put(done)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer and re-raised there
      q.put(e)

  threading.Thread(target=work, daemon=True).start()
  while (item := q.get()) is not done:
    if isinstance(item, BaseException):
      raise item
    yield item


# ---------------------------------------------------------------------------------------------
# Multi-host assembly.
# ---------------------------------------------------------------------------------------------
def local_rows(sharding: jax.sharding.Sharding, global_batch: int, seq_len: int) -> list[int]:
  """Global row indices held by this process's devices under `sharding` (sorted, unique)."""
  rows = set()
  for index in sharding.addressable_devices_indices_map((global_batch, seq_len)).values():
    rows.update(range(*index[0].indices(global_batch)))
  return sorted(rows)


def row_sharding(batch_sharding: NamedSharding) -> NamedSharding:
  """The sharding of a per-row vector `[B]` that matches the batch's row sharding."""
  return NamedSharding(batch_sharding.mesh, PartitionSpec(batch_sharding.spec[0]))


def to_global(local: Mapping[str, np.ndarray], sharding: NamedSharding, global_batch: int
              ) -> dict[str, jax.Array]:
  """Assembles per-process rows (`[rows, ...]`) into global arrays (`[B, ...]`)."""
  out = {}
  for key, x in local.items():
    s = sharding if x.ndim == 2 else row_sharding(sharding)
    out[key] = jax.make_array_from_process_local_data(s, x, (global_batch,) + x.shape[1:])
  return out


def local_state(global_state: Mapping[str, jax.Array], rows: Sequence[int]
                ) -> dict[str, np.ndarray]:
  """This process's rows of a restored (global, row-sharded) pipeline state."""
  out = {}
  for key, arr in global_state.items():
    values = {}
    for shard in arr.addressable_shards:
      start = shard.index[0].start or 0
      for j, v in enumerate(np.asarray(shard.data)):
        values[start + j] = v
    out[key] = np.array([values[r] for r in rows], np.int32)
  return out


def abstract_state(batch_sharding: NamedSharding, global_batch: int) -> dict[str, Any]:
  """ShapeDtypeStructs of the pipeline state, for restoring a checkpoint into its sharding."""
  s = row_sharding(batch_sharding)
  return {k: jax.ShapeDtypeStruct((global_batch,), np.int32, sharding=s)
          for k in ("next_b", "dropped_b")}

