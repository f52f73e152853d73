"""Tokenizers behind one interface: SentencePiece `.model` files (Gemma's, Llama 2's, gift's own)
and Hugging Face `tokenizer.json` files (byte-level BPE: Qwen, Llama 3, StarCoder2, ...).

`load(path)` picks the kind from what `path` is and returns a `Tokenizer` (see the Protocol):
`encode`/`decode`, the special ids (`bos_id`, `eos_id`, `pad_id`, `stop_ids`), whether a BOS
starts every sequence (`add_bos`), and the chat template. `load(None)` gives a byte-level
tokenizer (pad 0, bos 1, eos 2, byte b at b + 3) for tests and runs without a trained vocabulary.

Chat templates: `render_chat` renders messages as transformers does; `encode_chat` gives their
ids with special-token strings inside messages kept as text; `prompt_ids` is what the trainer
and the sampler feed for a prompt (plain, or as one user turn). `StreamDecoder` decodes a
growing sequence without ever cutting a UTF-8 character.

A vocabulary trained by `train` round-trips source code exactly: no normalization, no dummy
prefix, whitespace-only pieces allowed (indentation runs become tokens), newline and tab are
pieces of their own, digits are split one by one, anything unseen falls back to UTF-8 bytes, and
the notebook cell markers `# In[ ]:` / `# Out[ ]:` are single tokens.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import glob
import itertools
import json
import os
import re
import shutil
import tempfile
from typing import Any, Iterable, Iterator, Protocol

import sentencepiece as spm

import gift
from gift import InputError

# Always-whole pieces for notebook code: cell markers, newline/tab, indentation runs. Spaces are
# written as SentencePiece's "\u2581" because symbols are matched after whitespace is replaced.
CODE_SYMBOLS = tuple(s.replace(" ", "\u2581") for s in (
    "# In[ ]:", "# Out[ ]:", "\n", "\t", "  ", "    ", "        "))


# Files that make up a tokenizer folder (a Hugging Face model dir, a gift checkpoint root). They
# travel together through `gift import-hf`, training and `gift export-hf` (`copy_files`).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "chat_template.jinja", "generation_config.json")
# The named special tokens a chat template sees as variables (as in transformers).
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                "mask_token")


class Tokenizer(Protocol):
  """What every gift tokenizer provides.

  `encode(text)` never adds BOS/EOS and encodes special-token strings in `text` as plain text
  (training data cannot inject control tokens); `encode(text, allow_special=True)` maps them to
  their ids (for text a chat template wrote). Callers prepend `bos_id` when `add_bos`. `decode`
  drops special ids and ids past the vocabulary. `stop_ids` are every id generation ends at.
  """
  vocab_size: int
  bos_id: int | None
  eos_id: int
  pad_id: int
  stop_ids: tuple[int, ...]
  add_bos: bool
  chat_template: str | None
  named_tokens: dict[str, str]  # bos_token/eos_token/... -> token string (chat template variables)
  special_tokens: dict[str, int]  # special-token string -> id
  path: str | None

  def encode(self, text: str, allow_special: bool = False) -> list[int]: ...
  def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes as tokens: pad 0, bos 1, eos 2, byte b -> b + 3 (259 ids)."""

  pad_id, bos_id, eos_id, offset = 0, 1, 2, 3
  stop_ids, add_bos, chat_template = (2,), True, None
  vocab_size = 259
  path = None
  named_tokens: dict[str, str] = {}
  special_tokens: dict[str, int] = {}

  def encode(self, text: str, allow_special: bool = False) -> list[int]:
    return [b + self.offset for b in text.encode("utf-8")]

  def decode(self, ids: Iterable[int]) -> str:
    data = bytes(i - self.offset for i in map(int, ids) if self.offset <= i < 259)
    return data.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------
# What a Hugging Face tokenizer folder says beside the vocabulary.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FolderConfig:
  """tokenizer_config.json (+ special_tokens_map.json, chat_template.jinja) and the EOS ids of
  generation_config.json; every field empty/None when its file is absent."""
  named_tokens: dict[str, str]  # set ones only
  added_tokens: dict[int, tuple[str, bool]]  # added_tokens_decoder: id -> (content, special)
  extra_special: tuple[str, ...]  # additional_special_tokens (v4) / extra_special_tokens (v5)
  add_bos: bool | None  # add_bos_token when the config states it
  chat_template: str | None
  generation_eos_ids: tuple[int, ...]

  @classmethod
  def read(cls, folder: str | None) -> "FolderConfig":
    if not folder:
      return cls({}, {}, (), None, None, ())
    config = _read_json(os.path.join(folder, "tokenizer_config.json"))
    special_map = _read_json(os.path.join(folder, "special_tokens_map.json"))
    named = {k: s for k, v in special_map.items() if k in NAMED_TOKENS and (s := _token_text(v))}
    named.update({k: _token_text(config[k]) for k in NAMED_TOKENS if k in config})
    named = {k: v for k, v in named.items() if v}
    added = {int(i): (_token_text(t), bool(t.get("special", False)))
             for i, t in (config.get("added_tokens_decoder") or {}).items()}
    extra = [_token_text(t) for source in (special_map, config)
             for key in ("additional_special_tokens", "extra_special_tokens")
             for t in (source.get(key) or [])]
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}]: the default one
      template = next((t["template"] for t in template if t.get("name") == "default"), None)
    jinja = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(jinja):  # transformers >= 4.43 saves it beside the config; it wins
      with open(jinja, encoding="utf-8") as f:
        template = f.read()
    eos = _read_json(os.path.join(folder, "generation_config.json")).get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if not all(isinstance(i, int) for i in eos):
      raise InputError(f"{folder}/generation_config.json: eos_token_id={eos!r}; expected an int "
                       "or a list of ints")
    add_bos = config.get("add_bos_token")  # gift adds EOS itself: add_eos_token is not read
    return cls(named, added, tuple(dict.fromkeys(t for t in extra if t)),
               None if add_bos is None else bool(add_bos), template or None, tuple(eos))


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(out, dict):
    raise InputError(f"{path}: expected a JSON object, got {type(out).__name__}")
  return out


def _token_text(v: Any) -> str | None:
  """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
  return v.get("content") if isinstance(v, dict) else v if isinstance(v, str) else None


def _stop_ids(eos_id: int, cfg: FolderConfig) -> tuple[int, ...]:
  return tuple(dict.fromkeys((eos_id,) + cfg.generation_eos_ids))


# ---------------------------------------------------------------------------------------------
# SentencePiece.
# ---------------------------------------------------------------------------------------------
class SentencePieceTokenizer:
  """A SentencePiece model; BOS/EOS are never added by `encode` (callers add them).

  Loaded from a folder, it also reads the folder's tokenizer_config.json (chat template) and
  generation_config.json (stop ids), as Gemma's Hugging Face folders carry them.
  """

  add_bos = True

  def __init__(self, path: str, folder: str | None = None):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"tokenizer model {path!r} not found")
    self.path = folder or path
    self.sp = spm.SentencePieceProcessor()
    try:
      self.sp.Load(path)
    except Exception as e:
      raise InputError(f"{path!r} is not a SentencePiece model: {e}") from e
    self.vocab_size = self.sp.GetPieceSize()
    self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
    if self.bos_id < 0 or self.eos_id < 0:
      raise InputError(f"tokenizer {path!r} defines no BOS or EOS id "
                       f"(bos={self.bos_id}, eos={self.eos_id})")
    # Llama's model has no pad piece (pad_id -1): pad with 0 (<unk>); pads are always masked.
    self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else 0
    cfg = FolderConfig.read(folder)
    self.stop_ids = _stop_ids(self.eos_id, cfg)
    self.chat_template = cfg.chat_template
    piece = self.sp.IdToPiece
    self.named_tokens = {"bos_token": piece(self.bos_id), "eos_token": piece(self.eos_id),
                         **({"unk_token": piece(self.sp.unk_id())} if self.sp.unk_id() >= 0
                            else {}), **cfg.named_tokens}
    # Control pieces (<s>, </s>, <pad>, ...) are never matched in text by SentencePiece itself.
    self.special_tokens = {piece(i): i for i in range(self.vocab_size) if self.sp.IsControl(i)}
    self._special_re = _alternation(self.special_tokens)

  def encode(self, text: str, allow_special: bool = False) -> list[int]:
    if not allow_special:
      return self.sp.EncodeAsIds(text)
    ids: list[int] = []
    for piece, special in _split(text, self._special_re):
      ids += [self.special_tokens[piece]] if special else self.sp.EncodeAsIds(piece)
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    ids = [int(i) for i in ids]
    return self.sp.DecodeIds([i for i in ids if 0 <= i < self.vocab_size
                              and not self.sp.IsControl(i)])


def _alternation(strings: Iterable[str]) -> re.Pattern | None:
  """A regex matching any of `strings`, longest first (so a token wins over the ones it holds)."""
  strings = sorted((s for s in strings if s), key=len, reverse=True)
  return re.compile("|".join(map(re.escape, strings))) if strings else None


def _split(text: str, pattern: re.Pattern | None) -> Iterator[tuple[str, bool]]:
  """(piece, is_match) for the text between and at the matches of `pattern`; no empty pieces."""
  pos = 0
  for m in (pattern.finditer(text) if pattern else ()):
    if m.start() > pos:
      yield text[pos:m.start()], False
    yield m.group(), True
    pos = m.end()
  if pos < len(text):
    yield text[pos:], False


# ---------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json (byte-level BPE: Qwen, Llama 3, StarCoder2, DeepSeek-Coder; ...).
# ---------------------------------------------------------------------------------------------
class HFTokenizer:
  """A Hugging Face `tokenizer.json` through the `tokenizers` library, read as transformers'
  `AutoTokenizer` reads the folder:

  - Special tokens: bos/eos/pad/unk from tokenizer_config.json (or special_tokens_map.json);
    those, `added_tokens_decoder`'s and `additional_special_tokens` are added when the
    vocabulary lacks them, as transformers does. No BOS is fine (Qwen).
  - BOS: added when tokenizer.json's post-processor adds it (Llama 3), or when the config sets
    `add_bos_token` (which overrides the post-processor, as transformers does). gift adds it
    itself (`add_bos`), so the post-processor never runs and BOS is never doubled.
  - Stop ids: the EOS token and every `eos_token_id` of generation_config.json.
  """

  def __init__(self, folder: str):
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as RustTokenizer

    path = os.path.join(folder, "tokenizer.json")
    self.path = folder
    cfg = FolderConfig.read(folder)
    try:
      # Two instances: one encodes special-token strings as text, one as their ids (thread-safe,
      # unlike flipping one instance's flag per call).
      self._plain, self._special = RustTokenizer.from_file(path), RustTokenizer.from_file(path)
    except Exception as e:
      raise InputError(f"{path} is not a Hugging Face tokenizer.json: {e}") from e
    # Special tokens the config names but the vocabulary lacks are added, as transformers adds
    # them at load time (tokens tokenizer.json has keep its flags there, as in transformers).
    specials = [content for _, (content, special) in sorted(cfg.added_tokens.items()) if special]
    specials += [*cfg.named_tokens.values(), *cfg.extra_special]
    for tok in (self._plain, self._special):
      known = tok.get_vocab(with_added_tokens=True)
      missing = list(dict.fromkeys(t for t in specials if t not in known))
      if missing:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    self._plain.encode_special_tokens = True

    vocab = self._plain.get_vocab(with_added_tokens=True)
    name_id = lambda key: vocab.get(cfg.named_tokens[key]) if key in cfg.named_tokens else None
    self.bos_id = name_id("bos_token")
    eos_id = name_id("eos_token")
    if eos_id is None:
      eos_id = cfg.generation_eos_ids[0] if cfg.generation_eos_ids else None
    if eos_id is None:
      raise InputError(f"{folder}: no EOS token (tokenizer_config.json eos_token, or "
                       "generation_config.json eos_token_id); generation could never stop")
    self.eos_id = eos_id
    pad_id = name_id("pad_token")
    self.pad_id = pad_id if pad_id is not None else eos_id  # pads are always masked
    self.stop_ids = _stop_ids(eos_id, cfg)
    self.vocab_size = max(self._plain.get_vocab_size(with_added_tokens=True),
                          max(vocab.values()) + 1)
    self.chat_template = cfg.chat_template
    self.named_tokens = dict(cfg.named_tokens)
    self.special_tokens = {t.content: i for i, t in
                           self._special.get_added_tokens_decoder().items() if t.special}
    if cfg.add_bos is not None:
      self.add_bos = cfg.add_bos and self.bos_id is not None
    else:
      enc = self._special.encode("a", add_special_tokens=True)
      lead = list(itertools.takewhile(lambda x: x[1], zip(enc.ids, enc.special_tokens_mask)))
      prefix = [i for i, _ in lead]
      if prefix not in ([], [self.bos_id]):
        raise InputError(f"{path}: the post-processor puts {prefix} before the text; gift "
                         f"supports only the BOS token ({self.bos_id}) there")
      self.add_bos = bool(prefix)

  def encode(self, text: str, allow_special: bool = False) -> list[int]:
    tok = self._special if allow_special else self._plain
    return tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Iterable[int]) -> str:
    ids = [i for i in map(int, ids) if 0 <= i < self.vocab_size]
    return self._plain.decode(ids, skip_special_tokens=True)


def load(path: str | None, vocab_size: int | None = None) -> Tokenizer:
  """Loads a tokenizer; its kind follows from what `path` is.

  Args:
    path: None/"" for the byte tokenizer; a SentencePiece `.model` file; a `tokenizer.json` file;
      or a folder (a Hugging Face model dir, a gift checkpoint) holding `tokenizer.json` (used
      when present, as transformers' AutoTokenizer does) or `tokenizer.model`.
    vocab_size: the model's embedding rows; when given, the tokenizer must fit in it.
  """
  if not path:
    tok: Tokenizer = ByteTokenizer()
  elif os.path.isdir(path):
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
      tok = HFTokenizer(path)
    elif os.path.isfile(os.path.join(path, "tokenizer.model")):
      tok = SentencePieceTokenizer(os.path.join(path, "tokenizer.model"), folder=path)
    else:
      raise FileNotFoundError(f"tokenizer folder {path!r} holds neither tokenizer.json (Hugging "
                              "Face) nor tokenizer.model (SentencePiece)")
  elif os.path.basename(path) == "tokenizer.json" and os.path.isfile(path):
    tok = HFTokenizer(os.path.dirname(os.path.abspath(path)))
  else:
    tok = SentencePieceTokenizer(path)
  if vocab_size is not None and tok.vocab_size > vocab_size:
    raise InputError(f"tokenizer {path or 'bytes'} has {tok.vocab_size} ids but the model's "
                     f"vocab_size is {vocab_size}; set model.vocab_size >= {tok.vocab_size}")
  return tok


def copy_files(src: str, dst_dir: str) -> None:
  """Copies a tokenizer (a `.model` file, a `tokenizer.json` file or a folder) into `dst_dir` as
  the files of TOKENIZER_FILES it has; the folder's other TOKENIZER_FILES are removed, so
  `load(dst_dir)` gives exactly the source's tokenizer. Each file is written to a temporary name
  and renamed. A no-op when `src` is `dst_dir` or a file in it."""
  src = os.path.abspath(src)
  if os.path.isdir(src):
    folder = src
  elif os.path.isfile(src):
    folder = os.path.dirname(src) if os.path.basename(src) == "tokenizer.json" else None
  else:
    raise FileNotFoundError(f"tokenizer {src!r} not found (copying into {dst_dir})")
  os.makedirs(dst_dir, exist_ok=True)
  if os.path.samefile(folder or os.path.dirname(src), dst_dir) and (
      folder or os.path.basename(src) == "tokenizer.model"):
    return
  files = ({name: os.path.join(folder, name) for name in TOKENIZER_FILES
            if os.path.isfile(os.path.join(folder, name))} if folder
           else {"tokenizer.model": src})
  if not any(name in files for name in ("tokenizer.json", "tokenizer.model")):
    raise FileNotFoundError(f"{src} holds neither tokenizer.json nor tokenizer.model")
  for name in TOKENIZER_FILES:
    dst = os.path.join(dst_dir, name)
    if name in files:
      tmp = f"{dst}.tmp-{os.getpid()}"
      shutil.copyfile(files[name], tmp)
      os.replace(tmp, dst)
    elif os.path.isfile(dst):
      os.remove(dst)


# ---------------------------------------------------------------------------------------------
# Streaming decode.
# ---------------------------------------------------------------------------------------------
class StreamDecoder:
  """Text of a growing id sequence, chunk by chunk, never cut inside a character.

  A byte-level token can end in the middle of a UTF-8 character (an emoji is 4 bytes, often 2+
  tokens); decoding such a prefix gives U+FFFD. `push` holds that tail back until the character
  is complete, so the concatenated chunks never contain a broken character that the whole
  sequence does not. Each push decodes only the ids since the last emitted chunk (plus that
  chunk, so tokenizers that drop a leading space at the start of a decode give the same text).
  """

  def __init__(self, tokenizer: Tokenizer):
    self.tokenizer, self.ids = tokenizer, []
    self._prefix = self._read = 0  # ids[prefix:read]: the last emitted chunk; read: emitted

  def push(self, ids: Iterable[int]) -> str:
    """Adds ids; returns the text they complete ("" while a character is unfinished)."""
    self.ids += [int(i) for i in ids]
    return self._emit(final=False)

  def flush(self) -> str:
    """The text still held back (an unfinished character decodes as U+FFFD here)."""
    return self._emit(final=True)

  def _emit(self, final: bool) -> str:
    decode = self.tokenizer.decode
    before = decode(self.ids[self._prefix:self._read])
    text = decode(self.ids[self._prefix:])
    if len(self.ids) == self._read or (text.endswith("\ufffd") and not final):
      return ""
    self._prefix, self._read = self._read, len(self.ids)
    return text[len(os.path.commonprefix([before, text])):]


# ---------------------------------------------------------------------------------------------
# Chat templates (tokenizer_config.json's Jinja), rendered as transformers renders them.
# ---------------------------------------------------------------------------------------------
# Private-use characters wrapped around special-token strings in message text (transformers'
# markers), so that encoding tells them from the ones the template writes.
_MARK_START, _MARK_END = "\U000f0000", "\U000f0001"


@functools.lru_cache(maxsize=16)
def _compile_template(template: str) -> Any:
  import jinja2
  import jinja2.ext
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own filter escapes HTML characters; templates expect plain JSON (as transformers).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  class Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (marks assistant text for transformers' masks):
    rendered as its body."""
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[Generation, jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(template)


def render_chat(tokenizer: Tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                **kwargs: Any) -> str:
  """The conversation as text, through the tokenizer's chat template (the Jinja template of
  tokenizer_config.json / chat_template.jinja), as `transformers`' `apply_chat_template(
  tokenize=False)` renders it: a sandboxed environment, `raise_exception`, and the named special
  tokens (`bos_token`, `eos_token`, ...) as variables. `kwargs` become variables too (e.g.
  `enable_thinking=False` for Qwen3). Messages whose value is None drop that key, as there.
  """
  import jinja2
  if not tokenizer.chat_template:
    raise InputError(f"tokenizer {tokenizer.path or '(bytes)'} has no chat template (no "
                     "chat_template in its tokenizer_config.json and no chat_template.jinja); "
                     "use a plain prompt, or an instruct model's tokenizer folder")
  messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
  variables = {"tools": None, "documents": None, **tokenizer.named_tokens, **kwargs}
  try:
    return _compile_template(tokenizer.chat_template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **variables)
  except jinja2.exceptions.TemplateError as e:  # raise_exception(), syntax errors
    raise InputError(f"chat template of {tokenizer.path}: {type(e).__name__}: {e}") from e


def encode_chat(tokenizer: Tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                **kwargs: Any) -> list[int]:
  """Ids of the rendered conversation: the template's own special tokens become their ids, the
  special-token strings inside messages stay plain text (a user cannot forge `<|im_end|>`).

  Equal to transformers' `apply_chat_template(tokenize=True, sanitize_control_tokens=True)`; for
  messages without special-token strings, to plain `apply_chat_template(tokenize=True)`. No BOS
  is added beyond what the template writes (templates that need one write `bos_token`).
  """
  specials = _alternation(tokenizer.special_tokens)

  def mark(obj: Any) -> Any:
    if isinstance(obj, str):
      obj = obj.replace(_MARK_START, "").replace(_MARK_END, "")
      return specials.sub(lambda m: _MARK_START + m.group() + _MARK_END, obj) if specials else obj
    if isinstance(obj, dict):
      return {k: mark(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
      return [mark(v) for v in obj]
    return obj

  text = render_chat(tokenizer, mark(messages), add_generation_prompt, **mark(kwargs))
  # Pieces: [text, marked token, text, ..., text]; a lone marker (a template that split a marked
  # token) is dropped but still separates the text on either side.
  alternatives = f"({specials.pattern})" if specials else "(?!)"
  pieces = re.split(f"{_MARK_START}{alternatives}{_MARK_END}|[{_MARK_START}{_MARK_END}]", text)
  newline = tokenizer.encode("\n")
  ids = tokenizer.encode(pieces[0], allow_special=True)
  for i, piece in enumerate(pieces[1:], start=1):
    if piece:
      ids += _encode_inner(tokenizer, piece, allow_special=i % 2 == 0, newline=newline)
  return ids


def _encode_inner(tokenizer: Tokenizer, piece: str, allow_special: bool,
                  newline: list[int]) -> list[int]:
  """Encodes text from the middle of a string: after a newline that is then removed, so that
  SentencePiece-style tokenizers add no start-of-text space (transformers' trick)."""
  ids = tokenizer.encode("\n" + piece, allow_special=allow_special)
  if ids[:len(newline)] == newline:
    return ids[len(newline):]
  return tokenizer.encode(piece, allow_special=allow_special)


@dataclasses.dataclass(frozen=True)
class ChatFrame:
  """A single user turn through the chat template: `head + content + tail` are the ids of the
  prompt up to the assistant's answer; `end_id` closes the answer (the template's end of turn,
  e.g. `<|im_end|>`, when it is a stop id; else EOS)."""
  head: tuple[int, ...]
  tail: tuple[int, ...]
  end_id: int


def chat_frame(tokenizer: Tokenizer) -> ChatFrame:
  """The tokenizer's `ChatFrame` (computed once per tokenizer object)."""
  if getattr(tokenizer, "_chat_frame", None) is not None:
    return tokenizer._chat_frame
  slot, answer = "\U000f0002", "\U000f0003"  # private-use stand-ins for the content
  text = render_chat(tokenizer, user_turn(slot))
  if text.count(slot) != 1:
    raise InputError(f"chat template of {tokenizer.path} does not show a user message's content "
                     "exactly once; gift cannot frame prompts with it")
  head, tail = text.split(slot)
  done = render_chat(tokenizer, user_turn(slot) + [{"role": "assistant", "content": answer}],
                     add_generation_prompt=False)
  after = done.split(answer)[-1] if done.count(answer) == 1 else ""
  first = tokenizer.encode(after, allow_special=True)[:1]
  end_id = first[0] if first and first[0] in tokenizer.stop_ids else tokenizer.eos_id
  frame = ChatFrame(tuple(tokenizer.encode(head, allow_special=True)),
                    tuple(_encode_inner(tokenizer, tail, True, tokenizer.encode("\n"))), end_id)
  tokenizer._chat_frame = frame
  return frame


def user_turn(prompt: str) -> list[dict]:
  """A gift prompt as a conversation: one user message, no system message (the template adds
  its default one, if it has one)."""
  return [{"role": "user", "content": prompt}]


def prompt_ids(tokenizer: Tokenizer, prompt: str, chat: bool = False) -> list[int]:
  """The ids a model is given for `prompt`: BOS (if the tokenizer adds one) + the text; with
  `chat`, the prompt as one user turn through the chat template, up to the assistant's answer."""
  if chat:
    return encode_chat(tokenizer, user_turn(prompt))
  return ([tokenizer.bos_id] if tokenizer.add_bos else []) + tokenizer.encode(prompt)


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
                raise InputError(f"{path}:{n}: not a JSON line ({e})") from e
              yield "\n".join(v for v in row.values() if isinstance(v, str))
        else:
          yield f.read()


def main(argv: list[str]) -> int:
  parser = gift.ArgumentParser(prog="gift tokenizer")
  sub = parser.add_subparsers(dest="cmd", required=True)
  t = sub.add_parser("train", help="train a code-friendly SentencePiece model")
  t.add_argument("--input", nargs="+", required=True, help="text/.py/.jsonl files or globs")
  t.add_argument("--vocab_size", type=int, required=True)
  t.add_argument("--out", default="tokenizer", help="output prefix (writes PREFIX.model)")
  e = sub.add_parser("encode", help="print the pieces of a text")
  e.add_argument("--model", required=True, help="a .model file or a tokenizer folder")
  e.add_argument("text")
  args = parser.parse_args(argv)
  if args.cmd == "train":
    path = train(read_corpus(args.input), args.out, args.vocab_size)
    print(f"wrote {path} ({load(path).vocab_size} pieces)")
  else:
    tok = load(args.model)
    ids = tok.encode(args.text)
    piece = tok.sp.IdToPiece if hasattr(tok, "sp") else (lambda i: tok.decode([i]))
    print(json.dumps({"ids": ids, "pieces": [piece(i) for i in ids]}))
  return 0
