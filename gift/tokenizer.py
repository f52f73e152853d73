"""SentencePiece tokenizers: load any `.model` (Gemma's, Llama's, gift's own) or train one for code.

`load(path)` returns a `Tokenizer` with `encode`/`decode` and the special ids. `load(None)` gives a
byte-level tokenizer (pad 0, bos 1, eos 2, byte b at b + 3) for tests and for runs without a
trained vocabulary.

A vocabulary trained by `train` round-trips source code exactly: no normalization, no dummy
prefix, whitespace-only pieces allowed (indentation runs become tokens), newline and tab are
pieces of their own, digits are split one by one, anything unseen falls back to UTF-8 bytes, and
the notebook cell markers `# In[ ]:` / `# Out[ ]:` are single tokens.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
from typing import Iterable, Iterator, Protocol

import sentencepiece as spm

# Always-whole pieces for notebook code: cell markers, newline/tab, indentation runs. Spaces are
# written as SentencePiece's "\u2581" because symbols are matched after whitespace is replaced.
CODE_SYMBOLS = tuple(s.replace(" ", "\u2581") for s in (
    "# In[ ]:", "# Out[ ]:", "\n", "\t", "  ", "    ", "        "))


class Tokenizer(Protocol):
  vocab_size: int
  bos_id: int
  eos_id: int
  pad_id: int
  path: str | None

  def encode(self, text: str) -> list[int]: ...
  def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes as tokens: pad 0, bos 1, eos 2, byte b -> b + 3 (259 ids)."""

  pad_id, bos_id, eos_id, offset = 0, 1, 2, 3
  vocab_size = 259
  path = None

  def encode(self, text: str) -> list[int]:
    return [b + self.offset for b in text.encode("utf-8")]

  def decode(self, ids: Iterable[int]) -> str:
    data = bytes(i - self.offset for i in map(int, ids) if self.offset <= i < 259)
    return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A SentencePiece model; BOS/EOS are never added by `encode` (callers add them)."""

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"tokenizer model {path!r} not found")
    self.path = path
    self.sp = spm.SentencePieceProcessor()
    try:
      self.sp.Load(path)
    except Exception as e:
      raise ValueError(f"{path!r} is not a SentencePiece model: {e}") from e
    self.vocab_size = self.sp.GetPieceSize()
    self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
    if self.bos_id < 0 or self.eos_id < 0:
      raise ValueError(f"tokenizer {path!r} defines no BOS or EOS id "
                       f"(bos={self.bos_id}, eos={self.eos_id})")
    # Llama's model has no pad piece (pad_id -1): pad with 0 (<unk>); pads are always masked.
    self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else 0

  def encode(self, text: str) -> list[int]:
    return self.sp.EncodeAsIds(text)

  def decode(self, ids: Iterable[int]) -> str:
    ids = [int(i) for i in ids]
    return self.sp.DecodeIds([i for i in ids if 0 <= i < self.vocab_size
                              and not self.sp.IsControl(i)])


def load(path: str | None, vocab_size: int | None = None) -> Tokenizer:
  """Loads a SentencePiece model, or the byte tokenizer for `path=None`/"".

  Args:
    path: a `.model` file, or a directory holding `tokenizer.model` (e.g. a gift checkpoint).
    vocab_size: the model's embedding rows; when given, the tokenizer must fit in it.
  """
  if path and os.path.isdir(path):
    path = os.path.join(path, "tokenizer.model")
  tok: Tokenizer = SentencePieceTokenizer(path) if path else ByteTokenizer()
  if vocab_size is not None and tok.vocab_size > vocab_size:
    raise ValueError(f"tokenizer {path or 'bytes'} has {tok.vocab_size} ids but the model's "
                     f"vocab_size is {vocab_size}; set model.vocab_size >= {tok.vocab_size}")
  return tok


def _chunks(texts: Iterable[str], size: int = 4000) -> Iterator[str]:
  """Splits documents at line ends into pieces SentencePiece accepts as sentences."""
  for text in texts:
    buf = ""
    for line in text.splitlines(keepends=True):
      if len(buf) + len(line) > size and buf:
        yield buf
        buf = ""
      buf += line[:size]
    if buf:
      yield buf


def train(texts: Iterable[str], out_prefix: str, vocab_size: int,
          max_sentences: int = 200_000) -> str:
  """Trains a code-friendly SentencePiece BPE model; returns the `.model` path.

  Written under a temporary name and renamed, so a crash never leaves a half-written model.
  """
  out_dir = os.path.dirname(os.path.abspath(out_prefix))
  os.makedirs(out_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
    tmp_prefix = os.path.join(tmp, "spm")
    spm.SentencePieceTrainer.Train(
        sentence_iterator=_chunks(texts), model_prefix=tmp_prefix, vocab_size=vocab_size,
        model_type="bpe", character_coverage=1.0, byte_fallback=True, split_digits=True,
        split_by_whitespace=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, add_dummy_prefix=False,
        normalization_rule_name="identity", user_defined_symbols=list(CODE_SYMBOLS),
        max_sentence_length=16384, input_sentence_size=max_sentences,
        shuffle_input_sentence=True, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        num_threads=os.cpu_count() or 1, minloglevel=2)
    for ext in (".model", ".vocab"):
      os.replace(tmp_prefix + ext, out_prefix + ext)
  return out_prefix + ".model"


def read_corpus(patterns: Iterable[str]) -> Iterator[str]:
  """Documents from text files (one per file) and JSONL files (string fields of each line)."""
  for pattern in patterns:
    paths = sorted(glob.glob(pattern)) or [pattern]
    for path in paths:
      if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer training input {path!r} not found")
      with open(path, encoding="utf-8", errors="replace") as f:
        if path.endswith(".jsonl"):
          for n, line in enumerate(f, 1):
            if line.strip():
              try:
                row = json.loads(line)
              except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e})") from e
              yield "\n".join(v for v in row.values() if isinstance(v, str))
        else:
          yield f.read()


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="gift tokenizer")
  sub = parser.add_subparsers(dest="cmd", required=True)
  t = sub.add_parser("train", help="train a code-friendly SentencePiece model")
  t.add_argument("--input", nargs="+", required=True, help="text/.py/.jsonl files or globs")
  t.add_argument("--vocab_size", type=int, required=True)
  t.add_argument("--out", default="tokenizer", help="output prefix (writes PREFIX.model)")
  e = sub.add_parser("encode", help="print the pieces of a text")
  e.add_argument("--model", required=True)
  e.add_argument("text")
  args = parser.parse_args(argv)
  if args.cmd == "train":
    path = train(read_corpus(args.input), args.out, args.vocab_size)
    print(f"wrote {path} ({load(path).vocab_size} pieces)")
  else:
    tok = load(args.model)
    ids = tok.encode(args.text)
    print(json.dumps({"ids": ids, "pieces": [tok.sp.IdToPiece(i) for i in ids]}))
  return 0
