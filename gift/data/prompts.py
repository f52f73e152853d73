"""The one place that renders a GIFT record into (prompt, target).

Training, sampling for evaluation and the data builder's few-shot prompts all use `render`, so a
model is always asked in the format it was trained on. The format is a notebook serialized as a
Python script, the way ARCADE shows it:

    # In[ ]:
    import pandas as pd
    df = pd.read_csv("sales.csv")

    # In[ ]:
    df.head()
    # Out[ ]:
    #    region  units
    # 0  north   12

    # In[ ]:
    # Total units per region, largest first.
    # Specification (I/O summary):
    # The input `df` has columns region (str) and units (int). The output is a Series ...
    <target: the code the model writes, then EOS>

`context` is the notebook prefix, already rendered (cells and their outputs) by the data builder.
The spec kind chooses which (if any) of the record's three specifications is shown:
"none" gives the ungrounded baseline.

Instruct checkpoints (`data.chat_template`, `gift sample/eval --chat_template`): the same prompt
text becomes the content of one user turn rendered by the tokenizer's chat template, and the
target is the assistant's answer, closed by the template's end of turn (`Rendered.chat`; the ids
are built by `gift.tokenizer.prompt_ids` / `chat_frame`). Off by default: base models get the
notebook text after BOS.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

CELL = "# In[ ]:"
OUT = "# Out[ ]:"
SPEC_KINDS = ("none", "typedesc", "io_examples", "io_summary")
SPEC_FIELDS = {"typedesc": "spec_typedesc", "io_examples": "spec_io_examples",
               "io_summary": "spec_io_summary"}
SPEC_TITLES = {"typedesc": "Specification (variable types):",
               "io_examples": "Specification (input/output examples):",
               "io_summary": "Specification (I/O summary):"}
STOP = (CELL,)  # generation ends where the model starts a new cell


@dataclasses.dataclass(frozen=True)
class Rendered:
  """A rendered example. `prompt = context + instruction`; the loss is on `target` only.

  The pieces are kept apart so that truncation can cut `context` from the left first, then
  `instruction`, and never `target`. With `chat`, the prompt is a user turn of the tokenizer's
  chat template and the target the assistant's answer.
  """
  context: str
  instruction: str
  target: str
  chat: bool = False

  @property
  def prompt(self) -> str:
    return self.context + self.instruction


def comment(text: str) -> str:
  """Turns text into `#` comment lines (empty lines become a bare `#`)."""
  return "\n".join(("# " + line).rstrip() for line in text.strip("\n").split("\n"))


def code_cell(source: str, output: str | None = None) -> str:
  """One notebook cell as script text, with its rendered output as comment lines."""
  cell = f"{CELL}\n{source.strip(chr(10))}\n"
  if output is not None and output.strip():
    cell += f"{OUT}\n{comment(output)}\n"
  return cell + "\n"


def markdown_cell(text: str) -> str:
  return f"{CELL}\n{comment(text)}\n\n"


def spec_block(spec_kind: str, spec_text: str) -> str:
  """The comment lines that state a specification; "" for spec kind "none" or an empty spec."""
  if spec_kind not in SPEC_KINDS:
    raise ValueError(f"spec kind {spec_kind!r}; expected one of {SPEC_KINDS}")
  if spec_kind == "none" or not spec_text.strip():
    return ""
  return f"# {SPEC_TITLES[spec_kind]}\n{comment(spec_text)}\n"


def instruction(intent: str, spec_kind: str = "none", spec_text: str = "") -> str:
  """The final cell's header: the intent as comments, then the spec."""
  return f"{CELL}\n{comment(intent)}\n{spec_block(spec_kind, spec_text)}"


def render(record: Mapping[str, Any], spec_kind: str = "none", context: str = "full",
           chat: bool = False) -> Rendered:
  """Renders a GIFT record (see `data/records.py`) into prompt pieces and target.

  Args:
    record: has `context`, `intent`, `code` and the `spec_*` fields (str or bytes).
    spec_kind: none | typedesc | io_examples | io_summary.
    context: "full" keeps the notebook prefix, "none" drops it (an eval variant).
    chat: render as a chat (one user turn and the answer) for an instruct model.
  """
  get = lambda k: _text(record.get(k, ""))
  if spec_kind not in SPEC_KINDS:
    raise ValueError(f"spec kind {spec_kind!r}; expected one of {SPEC_KINDS}")
  if context not in ("full", "none"):
    raise ValueError(f"context {context!r}; expected 'full' or 'none'")
  missing = [k for k in ("intent", "code") if k not in record]
  if missing:
    raise KeyError(f"record {get('id') or '?'} lacks field(s) {missing}")
  ctx = get("context") if context == "full" else ""
  if ctx and not ctx.endswith("\n\n"):
    ctx = ctx.rstrip("\n") + "\n\n"
  spec_text = get(SPEC_FIELDS[spec_kind]) if spec_kind != "none" else ""
  target = get("code").strip("\n") + "\n"
  return Rendered(ctx, instruction(get("intent"), spec_kind, spec_text), target, chat)


def render_prompt_completion(prompt: str, completion: str, chat: bool = False) -> Rendered:
  """A user's own {"prompt", "completion"} pair: no context split, loss on the completion."""
  return Rendered("", prompt, completion, chat)


def cut_at_stop(text: str, stops: tuple[str, ...] = STOP) -> str:
  """Cuts generated text at the first stop string (a new cell by default)."""
  cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
  return text[:cut].rstrip() + "\n" if text[:cut].strip() else ""


def _text(v: Any) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)
