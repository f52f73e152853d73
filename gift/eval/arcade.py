"""Notebook-context tasks in ARCADE's episode format: build them from held-out GIFT contexts,
run them (or real ARCADE files), score outputs with lenient matching.

An episode file is a JSON list of `{"notebook_name", "turns": [turn, ...]}`; a turn is
`{"input": full prompt text, "turn": {"intent": {"value"} | str, "code": {"value": reference},
"code_context": preceding executable code}, "metadata": {...}}`. gift-built episodes add, in
`metadata`: `context_text` (the rendered notebook prefix), `specs` (spec kind -> text),
`output_var` (the reference's output variable, or null for the cell's final expression) and
`inputs` (values the context is given, as a `codec` document). Real ARCADE files lack these: their
prompt is `input` as is, their output the cell's final expression, their data files are read
from `--artifacts`.

A task's output: the value of `output_var` when the code defines it, else of the final expression
statement (notebook `Out[]`). A candidate passes when `compare.fuzzy_match` accepts its output
against the reference output (ARCADE's lenient rules, `compare.FuzzyRules`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Mapping, Sequence

from gift import InputError
from gift.data import prompts as prompts_lib
from gift.execution import codec, compare
from gift.execution.sandbox import Job, Sandbox


@dataclasses.dataclass(frozen=True)
class Task:
  """One turn of an episode. `context` is "full" (notebook prefix in the prompt) or "none"."""
  task_id: str
  notebook_name: str
  intent: str
  reference: str
  code_context: str
  input_text: str
  context_text: str | None
  specs: Mapping[str, str]
  output_var: str | None
  inputs: dict[str, Any] | None
  context: str = "full"

  def prompt(self, spec_kind: str = "none") -> str:
    """The prompt for a spec kind; real ARCADE turns (no `context_text`) support only "none"."""
    spec = self.specs.get(spec_kind, "") if spec_kind != "none" else ""
    if spec_kind != "none" and not spec:
      raise ValueError(f"task {self.task_id}: no {spec_kind} spec (real ARCADE turns have none)")
    header = prompts_lib.instruction(self.intent, spec_kind, spec)
    if self.context == "none":
      return header
    if self.context_text is None:
      return self.input_text
    ctx = self.context_text.rstrip("\n") + "\n\n" if self.context_text.strip() else ""
    return ctx + header


def _text(v: Any) -> str:
  return v.get("value", "") if isinstance(v, dict) else str(v or "")


def load(path: str) -> list[dict]:
  """Reads an episode file, checking the fields a runner needs."""
  with open(path) as f:
    try:
      episodes = json.load(f)
    except json.JSONDecodeError as e:
      raise InputError(f"{path}: not JSON ({e}); expected a list of ARCADE episodes") from e
  if not isinstance(episodes, list):
    raise InputError(f"{path}: expected a JSON list of episodes")
  for i, ep in enumerate(episodes):
    for j, t in enumerate(ep.get("turns", None) or []):
      turn = t.get("turn", {})
      if "code" not in turn or "intent" not in turn:
        raise InputError(f"{path}: episode {i} ({ep.get('notebook_name')}) turn {j} lacks "
                         "turn.intent or turn.code")
    if "notebook_name" not in ep or "turns" not in ep:
      raise InputError(f"{path}: episode {i} lacks notebook_name or turns")
  return episodes


def tasks(episodes: Sequence[dict], context: str = "full") -> list[Task]:
  """Flattens episodes into tasks (ids `<notebook_name>/<turn index>`)."""
  if context not in ("full", "none"):
    raise ValueError(f"context {context!r}; expected 'full' or 'none'")
  out = []
  for ep in episodes:
    for j, t in enumerate(ep["turns"]):
      turn, meta = t["turn"], t.get("metadata") or {}
      inputs = codec.decode(json.dumps(meta["inputs"]).encode()) if meta.get("inputs") else None
      out.append(Task(f"{ep['notebook_name']}/{j}", ep["notebook_name"], _text(turn["intent"]),
                      _text(turn["code"]), turn.get("code_context") or "", t.get("input", ""),
                      meta.get("context_text"), meta.get("specs") or {}, meta.get("output_var"),
                      inputs, context))
  return out


def build_episodes(records: Iterable[Mapping[str, Any]], contexts: Mapping[str, Any],
                   path: str) -> list[dict]:
  """Writes ARCADE episodes from GIFT records of a held-out split (contexts unseen in training).

  Args:
    records: GIFT records (`data/records.py` fields); one turn per (context, intent), the first
      kept sample as the reference.
    contexts: context id -> `synth.contexts.Context` (its executable `code` and `inputs`).
    path: the JSON file to write (atomically).
  """
  by_ctx: dict[str, list] = {}
  seen = set()
  for r in records:
    r = {k: v.decode() if isinstance(v, bytes) else v for k, v in r.items()}
    intent_key = r["id"].rsplit("/", 1)[0]
    if intent_key in seen:
      continue
    seen.add(intent_key)
    by_ctx.setdefault(r["context_id"], []).append(r)
  episodes = []
  for cid, recs in by_ctx.items():
    if cid not in contexts:
      raise KeyError(f"build_episodes: record {recs[0]['id']} names context {cid!r}, which is "
                     "not among the given contexts")
    ctx = contexts[cid]
    inputs = json.loads(codec.encode(ctx.inputs)) if ctx.inputs else None
    turns = []
    for r in recs:
      meta = json.loads(r.get("meta") or "{}")
      specs = {k: r.get(f, "") for k, f in prompts_lib.SPEC_FIELDS.items()}
      turns.append({
          "input": prompts_lib.render(r, "none").prompt,
          "turn": {"intent": {"value": r["intent"]}, "code": {"value": r["code"]},
                   "code_context": ctx.code},
          "metadata": {"gift_id": r["id"], "context_text": r["context"], "specs": specs,
                       "output_var": meta.get("output_var"), "inputs": inputs}})
    episodes.append({"notebook_name": cid, "work_dir": "", "turns": turns})
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(episodes, f, indent=1)
  os.replace(tmp, path)
  return episodes


@dataclasses.dataclass(frozen=True)
class Output:
  """A task's executed output value."""
  value: Any


def _job(task: Task, code: str, artifacts: str) -> Job:
  ctx = task.code_context
  if artifacts:  # real ARCADE notebooks read their files relative to the dataset dir
    ctx = f"import os\nos.chdir({os.path.abspath(artifacts)!r})\n" + ctx
  capture = (task.output_var,) if task.output_var else ()
  return Job(ctx, code, output_var=None, inputs=task.inputs, capture=capture,
             data_dirs=(os.path.abspath(artifacts),) if artifacts else ())


def _output(task: Task, v: Any) -> Output | str:
  if task.output_var and task.output_var in v.captured and v.ok:
    return Output(v.captured[task.output_var])
  if v.ok and v.has_result:
    return Output(v.result)
  return f"{v.status}: {v.error_type or 'no output'}: {(v.error_message or '')[:200]}"


def _run(sandbox: Sandbox, jobs: list[Job], desc: str, progress: bool) -> list:
  from gift.eval.ds1000 import _run as run_chunked

  return run_chunked(sandbox, jobs, desc, progress)


def reference_outputs(sandbox: Sandbox, tasks_: Sequence[Task], artifacts: str = "",
                      progress: bool = False) -> dict[str, Output | str]:
  """Executes each reference; task id -> Output, or an error string (the oracle's failures)."""
  verdicts = _run(sandbox, [_job(t, t.reference, artifacts) for t in tasks_], "arcade refs",
                  progress)
  return {t.task_id: _output(t, v) for t, v in zip(tasks_, verdicts)}


def score(sandbox: Sandbox, tasks_: Sequence[Task], candidates: Mapping[str, list[str]],
          refs: Mapping[str, Output | str], artifacts: str = "", progress: bool = False,
          rules: compare.FuzzyRules | None = None) -> dict[str, list[bool]]:
  """task id -> pass flag per candidate (lenient match against the reference output)."""
  rules = rules or compare.FuzzyRules()
  flat = [(t, c) for t in tasks_ for c in candidates.get(t.task_id, [])]
  verdicts = _run(sandbox, [_job(t, c, artifacts) for t, c in flat], "arcade candidates",
                  progress)
  passed: dict[str, list[bool]] = {t.task_id: [] for t in tasks_}
  for (t, _), v in zip(flat, verdicts):
    ref, out = refs[t.task_id], _output(t, v)
    ok = isinstance(ref, Output) and isinstance(out, Output) and compare.fuzzy_match(
        out.value, ref.value, rules)
    passed[t.task_id].append(bool(ok))
  return {tid: flags or [False] for tid, flags in passed.items()}  # no candidate: a failure


def load_answers(path: str, tasks_: Sequence[Task]) -> dict[str, list[str]]:
  """Answer lines `{"task_id": "<notebook>/<turn>", "code": str}`; repeated ids are samples."""
  known = {t.task_id for t in tasks_}
  answers: dict[str, list[str]] = {}
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      if line.strip():
        try:
          r = json.loads(line)
          task_id, code = r.get("task_id"), r["code"]
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
          raise InputError(f"{path}:{line_no}: expected {{'task_id', 'code'}} "
                           f"({type(e).__name__}: {e})") from e
        if task_id not in known:
          raise InputError(f"{path}:{line_no}: unknown task_id {task_id!r}")
        answers.setdefault(task_id, []).append(code)
  return answers
