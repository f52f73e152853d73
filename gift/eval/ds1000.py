"""DS-1000 (pandas): prompts, upstream post-processing, and checking that a candidate cannot fool.

Upstream runs one program per candidate: the problem's `code_context` (which defines
`generate_test_case`, `exec_test`, `exec_context` and maybe `test_string`), then
`test_execution(code)`: for each test case i, `exec(exec_context.replace("[insert]", code),
{"test_input": input_i})` and `assert exec_test(env["result"], expected_i)`; then
`test_string(code)` if defined. That puts the expected answer and the checker in the candidate's
process, where it can read or patch them. Here the same steps run as three kinds of sandbox jobs
under the pinned runtime (`gift runtime create --preset ds1000`):

  1. generation (once per problem): the problem's own code returns [(input_i, expected_i)];
  2. candidate (per candidate and test case): `exec_context` with the candidate inserted, the
     test input injected as data (`inputs={"test_input": ...}`); its `result` comes back as data;
  3. checker (per candidate): the problem's `code_context` again, given (results, expecteds,
     candidate code) as data, runs `exec_test` on each pair and `test_string`.

The candidate's process never holds the expected answer nor the checker; it can only choose its
`result` value, which crosses as data (`execution/codec.py`: exact types, no pickle).

Prompts are DS-1000's completion format. With a spec kind other than "none", the spec block
(`data.prompts.spec_block`, the same comment lines as gift's notebook prompts) is put at the
start of the solution slot: after the final `BEGIN SOLUTION\n<code>\n`, or after the final
`### BEGIN SOLUTION` of function-completion prompts (indented as the function body), so the
completion starts right after the spec, as in training.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import textwrap
from typing import Any, Callable, Iterable, Sequence

from gift import InputError
from gift.data import prompts as prompts_lib
from gift.execution.sandbox import Job, Sandbox, Verdict

DEFAULT_PATH = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared",
                                             "datasets", "ds1000", "ds1000_pandas.jsonl"))
PERTURBATIONS = ("Origin", "Surface", "Semantic", "Difficult-Rewrite")
# Where sampling stops: the end of the completion slot in DS-1000's prompt formats.
STOP = ("</code>", "# SOLUTION END", "\nEND SOLUTION", "### END SOLUTION")
_FUNC_SLOT = "### BEGIN SOLUTION"
_CODE_SLOT = "BEGIN SOLUTION\n<code>\n"


@dataclasses.dataclass(frozen=True)
class Problem:
  """One DS-1000 problem. `num_tests` is what `test_execution` loops over (for problem 268 it
  differs from `metadata.test_case_cnt`); `input_names` are the variables `exec_context` unpacks
  from `test_input`, in order (one name: the whole input)."""
  problem_id: int
  prompt: str
  reference_code: str
  code_context: str
  exec_context: str
  num_tests: int
  has_test_string: bool
  input_names: tuple[str, ...]
  perturbation_type: str
  metadata: dict


def _parse_harness(pid: int, code_context: str, reference: str) -> tuple[str, int, bool, tuple]:
  """exec_context, the test loop's count, whether test_string exists, and the input names."""
  tree = ast.parse(code_context)
  exec_context, num_tests, names = None, None, set()
  for node in tree.body:
    if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
        "exec_context"] and isinstance(node.value, ast.Constant):
      exec_context = node.value.value
    if isinstance(node, ast.FunctionDef):
      names.add(node.name)
      if node.name == "test_execution":
        for sub in ast.walk(node):
          if (isinstance(sub, ast.For) and isinstance(sub.iter, ast.Call)
              and getattr(sub.iter.func, "id", "") == "range"):
            num_tests = ast.literal_eval(sub.iter.args[0])
  if exec_context is None or "[insert]" not in exec_context or num_tests is None:
    raise ValueError(f"DS-1000 problem {pid}: code_context lacks the upstream harness "
                     "(exec_context with [insert], test_execution looping over range(N))")
  inputs: list[str] = []
  for node in ast.parse(exec_context.replace("[insert]", reference)).body:
    if isinstance(node, ast.Assign) and getattr(node.value, "id", None) == "test_input":
      target = node.targets[0]
      elts = target.elts if isinstance(target, ast.Tuple) else [target]
      inputs += [e.id for e in elts if isinstance(e, ast.Name)]
  return exec_context, int(num_tests), "test_string" in names, tuple(inputs)


def load(path: str = DEFAULT_PATH, ids: Iterable[int] | None = None) -> list[Problem]:
  """Reads `ds1000_pandas.jsonl` (one upstream record a line), optionally only `ids`."""
  keep = None if ids is None else set(ids)
  problems = []
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      try:
        r = json.loads(line)
        meta = r["metadata"]
        pid = int(meta["problem_id"])
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{path}:{line_no}: not a DS-1000 record ({e})") from e
      if keep is not None and pid not in keep:
        continue
      ctx, n, has_ts, names = _parse_harness(pid, r["code_context"], r["reference_code"])
      problems.append(Problem(pid, r["prompt"], r["reference_code"], r["code_context"], ctx, n,
                              has_ts, names, meta["perturbation_type"], meta))
  if keep is not None and len(problems) != len(keep):
    missing = sorted(keep - {p.problem_id for p in problems})
    raise KeyError(f"{path}: no problem(s) {missing[:10]}")
  return problems


def postprocess(completion: str | list) -> str:
  """Upstream's cleanup of a model's completion into the code to insert.

  A list (as in the gpt-3.5 answer files) means its first element. Cuts at `</code>` and at the
  original release's `# SOLUTION END`, deletes "```python", cuts at the next "```", cuts at
  "\\nEND SOLUTION", deletes `<code>`.
  """
  code = completion[0] if isinstance(completion, list) else completion
  code = code.split("</code>")[0].split("# SOLUTION END")[0]
  code = code.replace("```python", "").split("```")[0]
  return code.split("\nEND SOLUTION")[0].replace("<code>", "")


def build_prompt(problem: Problem, spec_kind: str = "none", spec_text: str = "") -> str:
  """DS-1000's completion prompt, with the spec block at the start of the solution slot."""
  block = prompts_lib.spec_block(spec_kind, spec_text)
  if not block:
    return problem.prompt
  p = problem.prompt
  if p.rstrip(" ").endswith(_FUNC_SLOT):
    line = p[p.rfind("\n") + 1:]
    indent = line[:len(line) - len(line.lstrip())]
    return p + "\n" + "".join(indent + ln + "\n" for ln in block.splitlines())
  if p.endswith(_CODE_SLOT):
    return p + block
  raise ValueError(f"DS-1000 problem {problem.problem_id}: prompt ends in neither "
                   f"{_CODE_SLOT!r} nor {_FUNC_SLOT!r}; cannot place the spec")


def load_answers(path: str) -> dict[int, list[str]]:
  """Answer lines `{"code": str | [str, ...], "metadata": {"problem_id": int}}`; several lines
  for one problem are several samples. Returns problem id -> raw completions."""
  answers: dict[int, list[str]] = {}
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        r = json.loads(line)
        pid = int(r["metadata"]["problem_id"])
        code = r["code"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{path}:{line_no}: expected {{'code', 'metadata': {{'problem_id'}}}} "
                         f"({type(e).__name__}: {e})") from e
      answers.setdefault(pid, []).append(code)
  return answers


# ---------------------------------------------------------------------------------------------
# Execution.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
  """A candidate's verdict: `stage` is "passed", "candidate" (its job failed: `status` says
  how), "checker" (exec_test said no or test_string failed) or "generation" (the problem's own
  test generation failed). `result` is the first test case's result when kept."""
  passed: bool
  stage: str
  status: str = "ok"
  error: str = ""
  result: Any = None


def _run(sandbox: Sandbox, jobs: list[Job], desc: str, progress: bool) -> list[Verdict]:
  """`run_many` in chunks so that a progress bar can move."""
  if not jobs:
    return []
  chunk = 32
  from tqdm.auto import tqdm
  out: list[Verdict] = []
  with tqdm(total=len(jobs), desc=desc, disable=not progress, unit="job") as bar:
    for i in range(0, len(jobs), chunk):
      out += sandbox.run_many(jobs[i:i + chunk])
      bar.update(len(jobs[i:i + chunk]))
  return out


def _short(v: Verdict) -> str:
  return f"{v.status}: {v.error_type or ''}: {(v.error_message or '')[:200]}"


def generate_cases(sandbox: Sandbox, problems: Sequence[Problem], progress: bool = False,
                   timeout_s: float | None = None) -> dict[int, list | str]:
  """Runs each problem's `generate_test_case(1..N)`; problem id -> [(input, expected)] or an
  error string."""
  jobs = [Job(p.code_context, f"cases = [generate_test_case(i + 1) for i in range({p.num_tests})]",
              output_var="cases", timeout_s=timeout_s) for p in problems]
  out = {}
  for p, v in zip(problems, _run(sandbox, jobs, "ds1000 test cases", progress)):
    out[p.problem_id] = [tuple(c) for c in v.result] if v.ok and v.has_result else _short(v)
  return out


_CHECK = """
passed = all(bool(exec_test(r, e)) for r, e in zip(gift_results, gift_expected))
if passed and gift_test_string:
  test_string(gift_solution)
"""


def score(sandbox: Sandbox, problems: Sequence[Problem], candidates: dict[int, list[str]],
          cases: dict[int, list | str], keep_result: bool = False, progress: bool = False,
          timeout_s: float | None = None) -> dict[int, list[Outcome]]:
  """Scores post-processed candidate code (problem id -> samples) with the three-job protocol.

  Returns problem id -> one Outcome per sample. A problem whose test generation failed scores
  every sample as failed (stage "generation"): the oracle rate exposes it.
  """
  by_id = {p.problem_id: p for p in problems}
  outcomes: dict[int, list[Outcome | None]] = {}
  runs = []  # (pid, sample, Job), test cases in order
  for pid, codes in candidates.items():
    outcomes[pid] = [None] * len(codes)
    p, pcases = by_id[pid], cases[pid]
    for s, code in enumerate(codes):
      if isinstance(pcases, str):
        outcomes[pid][s] = Outcome(False, "generation", "error", pcases)
        continue
      for test_input, _ in pcases:
        runs.append((pid, s, Job("", p.exec_context.replace("[insert]", code),
                                    inputs={"test_input": test_input}, timeout_s=timeout_s)))
  verdicts = _run(sandbox, [r[2] for r in runs], "ds1000 candidates", progress)
  results: dict[tuple[int, int], list] = {}
  for (pid, s, _), v in zip(runs, verdicts):
    if outcomes[pid][s] is not None:
      continue
    if not (v.ok and v.has_result):
      outcomes[pid][s] = Outcome(False, "candidate", v.status, _short(v))
      continue
    results.setdefault((pid, s), []).append(v.result)
  checks = []
  for (pid, s), res in results.items():
    if outcomes[pid][s] is None:
      p = by_id[pid]
      inputs = {"gift_results": res, "gift_expected": [e for _, e in cases[pid]],
                "gift_solution": candidates[pid][s], "gift_test_string": p.has_test_string}
      checks.append((pid, s, Job(p.code_context, _CHECK, output_var="passed", inputs=inputs,
                                 timeout_s=timeout_s)))
  for (pid, s, _), v in zip(checks, _run(sandbox, [c[2] for c in checks], "ds1000 checks",
                                         progress)):
    ok = v.ok and v.has_result and v.result is True
    outcomes[pid][s] = Outcome(ok, "passed" if ok else "checker", v.status,
                               "" if ok else _short(v),
                               results[(pid, s)][0] if keep_result else None)
  return outcomes


def spec_texts(problem: Problem, test_input: Any, reference_result: Any) -> dict[str, str]:
  """Test-time specs of a problem from its reference's result on the first test input.

  A renderer that fails on an unusual value gives "" for its kind (the problem is then asked
  without that spec) and the error under key `"error:<kind>"`, which reports count.
  """
  from gift.synth import specs

  values = test_input if len(problem.input_names) > 1 else (test_input,)
  inputs = dict(zip(problem.input_names, values))
  code = textwrap.dedent(problem.reference_code)
  used = specs.input_names(code, set(inputs)) or list(inputs)
  inputs = {n: inputs[n] for n in used if n in inputs}
  renderers = {"typedesc": lambda: specs.typedesc(inputs, reference_result),
               "io_examples": lambda: specs.io_examples(inputs, reference_result),
               "io_summary": lambda: specs.io_summary(inputs, reference_result, code=code)}
  texts = {"none": ""}
  for kind, fn in renderers.items():
    try:
      texts[kind] = fn()
    except Exception as e:  # a renderer bug must not stop the evaluation; it is reported
      texts[kind] = ""
      texts["error:" + kind] = f"{type(e).__name__}: {e}"[:300]
  return texts


def oracle(sandbox: Sandbox, problems: Sequence[Problem], cases: dict[int, list | str],
           progress: bool = False, timeout_s: float | None = None
           ) -> tuple[dict[int, Outcome], dict[int, dict[str, str]]]:
  """Scores the reference solutions (the oracle rate) and derives each problem's specs from the
  reference's first result. Problems whose reference fails get empty specs."""
  refs = {p.problem_id: [p.reference_code] for p in problems}
  outs = score(sandbox, problems, refs, cases, keep_result=True, progress=progress,
               timeout_s=timeout_s)
  texts = {}
  for p in problems:
    o = outs[p.problem_id][0]
    texts[p.problem_id] = (spec_texts(p, cases[p.problem_id][0][0], o.result) if o.passed
                           else dict.fromkeys(prompts_lib.SPEC_KINDS, ""))
  return {pid: o[0] for pid, o in outs.items()}, texts


def sample_candidates(generate: Callable[[list[str]], list[list[str]]],
                      problems: Sequence[Problem], spec_kind: str,
                      specs_by_id: dict[int, dict[str, str]]) -> dict[int, list[str]]:
  """Prompts every problem with `spec_kind` and returns post-processed samples per problem.

  `generate(prompts) -> per prompt, n completions` (e.g. a bound `Sampler.generate`).
  """
  prompts = [build_prompt(p, spec_kind, specs_by_id[p.problem_id][spec_kind]) for p in problems]
  samples = generate(prompts)
  return {p.problem_id: [postprocess(c) for c in s] for p, s in zip(problems, samples)}

