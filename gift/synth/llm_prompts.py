"""The prompts the data builder sends to LLM backends (`gift`, `openai`), in one readable place.

Three roles, as in the paper: the generalist writes intents for a context and I/O summaries of
executed samples; the coder writes the code cell for an intent. Completion-style prompts are
notebook text (the coder's prompt is exactly the training format of `data/prompts.py`); chat
endpoints get the same text as the user message under a short system message.
"""
from __future__ import annotations

import re

from gift.data import prompts

SYSTEM = {
    "intents": "You are a data scientist exploring a dataset in a Jupyter notebook.",
    "code": "You are a data scientist writing the next cell of a Jupyter notebook. Reply with "
            "the Python code of that cell only: no explanation; its last line is an expression "
            "whose value answers the task.",
    "summary": "You describe what a piece of pandas code takes and returns, briefly and "
               "precisely.",
}

_EXAMPLE_CONTEXT = prompts.code_cell(
    "import pandas as pd\nsales = pd.read_csv('sales.csv')") + prompts.code_cell(
    "sales.head()", "   region product  units  price\n0  north  laptop      3  999.0\n"
                    "1  south   phone      5  499.0")
_EXAMPLE_INTENTS = ["What is the total number of units sold per region?",
                    "Show the 3 most expensive products.",
                    "Which rows have more than 4 units?"]


def intents_prompt(context_text: str, num: int) -> str:
  """Few-shot prompt for the generalist: a numbered list of `num` tasks for the context."""
  shots = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(_EXAMPLE_INTENTS))
  return (f"{_EXAMPLE_CONTEXT}# Tasks a data scientist could ask about this notebook:\n{shots}"
          f"\n\n###\n\n{context_text.rstrip()}\n\n# Tasks a data scientist could ask about this "
          f"notebook ({num} different ones, one per line):\n1.")


def parse_intents(completion: str, num: int) -> list[str]:
  """The numbered tasks of an intents completion (the prompt already wrote "1.")."""
  text = "1." + completion
  items = re.findall(r"^\s*\d+[.)]\s*(.+?)\s*$", text, flags=re.M)
  out = []
  for item in items:
    if item.startswith("#") or item in out or len(item) < 8:
      continue
    out.append(item)
  return out[:num]


def code_prompt(context_text: str, intent: str) -> str:
  """The coder's prompt: the training format (context, then the intent as a new cell)."""
  return prompts.render({"context": context_text, "intent": intent, "code": ""}, "none").prompt


_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


def parse_code(completion: str) -> str:
  """Code from a completion: the first fenced block if there is one (chat replies), else the
  text up to the next notebook cell."""
  m = _FENCE.search(completion)
  code = m.group(1) if m else completion
  return prompts.cut_at_stop(code).strip("\n")


_EXAMPLE_SUMMARY = (
    "Code:\nsales.groupby('region')['units'].sum()\n"
    "Types:\nInputs:\nsales: DataFrame (200 rows x 4 columns); columns: region (str), product "
    "(str), units (int64), price (float64)\nOutput:\nresult: Series (4 values of dtype int64); "
    "name: units; index: region\n"
    "Summary: The input `sales` has the relevant columns region (str) and units (int64). The "
    "output is a Series of total units indexed by region, one value per region.")


def summary_prompt(code: str, typedesc: str, io_examples: str) -> str:
  """Few-shot prompt for the generalist's I/O summary of an executed sample."""
  return (f"{_EXAMPLE_SUMMARY}\n\n###\n\nCode:\n{code.strip()}\nTypes:\n{typedesc.strip()}\n"
          f"Examples:\n{io_examples.strip()}\nSummary:")


def parse_summary(completion: str, max_chars: int) -> str:
  """The first paragraph of a summary completion, bounded."""
  text = completion.strip().split("\n\n")[0].split("###")[0].strip()
  return text if len(text) <= max_chars else text[:max_chars - 3].rstrip() + "..."
