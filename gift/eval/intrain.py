"""Execution-based evaluation inside training: pass@1 per spec kind next to the loss.

Every `train.exec_eval_every` steps and at the end, the trainer greedy-samples the current
parameters (on the training mesh, no copy to the host) for a fixed set of held-out tasks, once
per spec kind in the prompt, and hands the completions to a background thread that runs them in
the sandbox and compares their outputs with the references'. Training goes on meanwhile; the
result is logged at the step it was sampled at (`pass@1/<spec kind>` in metrics.jsonl and
TensorBoard, plus `exec_eval/step_<s>.json` with the passed task ids) when it arrives.

Tasks (`train.exec_eval.tasks`): "" = one task per intent of the validation split of the
training data (a GIFT dataset, `data.source=tfds`), with each record's context rebuilt from the
CSV files its `load_code` names (read with pandas in this process, never executed: only
`NAME = pd.read_csv(<literals>)` lines are accepted); or a path to an ARCADE-format episode file
(`gift.eval.arcade`; gift-built episodes carry their contexts and specs). `num_tasks` of them are
kept, evenly spread (0 = all). Spec kinds: `spec_kinds`, () = those the training data uses.

Multi-host: every process runs the same sampling program over the global mesh (rows sharded over
the data axes); the completions are gathered to every host and process 0 alone executes and logs.
`checkpoint.keep_best = "pass@1/<kind>"` keeps, in `WORKDIR/best`, a gift checkpoint of the
parameters that scored best on that metric (see `BestKeeper`).
"""
from __future__ import annotations

import ast
import concurrent.futures
import json
import os
import shutil
import time
import traceback
from typing import Any, Callable, Sequence

from gift.data import prompts as prompts_lib

RESULTS_DIR = "exec_eval"
TASKS_FILE = "tasks.json"  # the run's task set, as an ARCADE episode file
BEST_DIR = "best"


class ExecEvalError(ValueError):
  """The exec_eval settings or task source are wrong; the message says which."""


# ---------------------------------------------------------------------------------------------
# Tasks.
# ---------------------------------------------------------------------------------------------
def _csv_frames(load_code: str) -> dict[str, Any]:
  """The frames a CSV context's `load_code` defines, read here with the same pandas call. Only
  `import pandas as pd` and `NAME = pd.read_csv(<literal args>)` are accepted (the code comes
  from a dataset file: it is parsed, never executed)."""
  import pandas as pd

  frames = {}
  for node in ast.parse(load_code).body:
    if isinstance(node, ast.Import) and [a.name for a in node.names] == ["pandas"]:
      continue
    call = node.value if isinstance(node, ast.Assign) else None
    if not (isinstance(call, ast.Call) and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name) and ast.unparse(call.func) == "pd.read_csv"):
      raise ExecEvalError(f"unsupported context load_code line {ast.unparse(node)!r} (expected "
                          "NAME = pd.read_csv(...))")
    args = [ast.literal_eval(a) for a in call.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    frames[node.targets[0].id] = pd.read_csv(*args, **kwargs)
  return frames


class _Ctx:
  """What `arcade.build_episodes` needs of a context: its code and injected inputs."""

  def __init__(self, code: str, inputs: dict[str, Any]):
    self.code, self.inputs = code, inputs


def episodes_from_dataset(data_dir: str, split: str, path: str) -> list[dict]:
  """ARCADE episodes (one turn per intent) from a GIFT dataset's split, written to `path`.
  Records whose context cannot be rebuilt from CSV files (e.g. notebooks) are left out."""
  from gift.data import records
  from gift.eval import arcade
  from gift.synth import contexts as contexts_lib

  rows = records.load_split(data_dir, split)
  rows = [rows[i] for i in range(len(rows))]
  ctxs: dict[str, Any] = {}
  kept = []
  for r in rows:
    r = {k: v.decode() if isinstance(v, bytes) else v for k, v in r.items()}
    cid = r["context_id"]
    if cid not in ctxs:
      load_code = json.loads(r.get("meta") or "{}").get("load_code", "")
      try:
        ctxs[cid] = _Ctx(contexts_lib.PRELUDE, _csv_frames(load_code)) if load_code else None
      except (ExecEvalError, OSError, ValueError, SyntaxError):
        ctxs[cid] = None
    if ctxs[cid] is not None:
      kept.append(r)
  if not kept:
    raise ExecEvalError(f"{data_dir}: no {split} record has a context rebuildable from CSV "
                        "files; give train.exec_eval.tasks=EPISODES.json")
  return arcade.build_episodes(kept, {k: v for k, v in ctxs.items() if v is not None}, path)


def spread(items: Sequence[Any], num: int) -> list[Any]:
  """`num` items evenly spread over the sequence (every k-th), all when num is 0 or larger."""
  if not num or num >= len(items):
    return list(items)
  stride = len(items) / num
  return [items[int(i * stride)] for i in range(num)]


def default_spec_kinds(data_cfg: Any) -> tuple[str, ...]:
  """The spec kinds the training data uses: the mixture's positive weights, or the one kind."""
  if data_cfg.spec_kind == "mixture":
    return tuple(k for k in prompts_lib.SPEC_KINDS if data_cfg.spec_mixture.get(k, 0) > 0)
  return (data_cfg.spec_kind,)


def load_tasks(cfg: Any, out_dir: str) -> list[Any]:
  """The fixed held-out task set of a run (see the module docstring)."""
  from gift.eval import arcade

  ev = cfg.train.exec_eval
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, TASKS_FILE)
  if ev.tasks:
    if not os.path.isfile(ev.tasks):
      raise ExecEvalError(f"train.exec_eval.tasks={ev.tasks!r}: no such episode file")
    episodes = arcade.load(ev.tasks)
  else:
    if cfg.data.source != "tfds":
      raise ExecEvalError("train.exec_eval_every > 0 needs train.exec_eval.tasks (an episode "
                          "file) unless data.source=tfds (a GIFT dataset's validation split)")
    episodes = episodes_from_dataset(cfg.data.path, cfg.data.eval_split,
                                     os.path.join(out_dir, "all_tasks.json"))
  kept = {t.task_id for t in spread(arcade.tasks(episodes), ev.num_tasks)}
  episodes = [dict(ep, turns=[t for j, t in enumerate(ep["turns"])
                              if f"{ep['notebook_name']}/{j}" in kept]) for ep in episodes]
  episodes = [ep for ep in episodes if ep["turns"]]
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(episodes, f)
  os.replace(tmp, path)
  return arcade.tasks(episodes, context=cfg.data.context)


# ---------------------------------------------------------------------------------------------
# Keeping the best parameters.
# ---------------------------------------------------------------------------------------------
class BestKeeper:
  """`WORKDIR/best` holds a gift checkpoint of the parameters that scored best on `metric`.

  The metric arrives after training has moved on, so at each evaluation the parameters are
  saved as a candidate (`WORKDIR/best_candidates/<step>`, a gift checkpoint; every process takes
  part in the save) and, when the score comes back, either become `best/` (replacing the old one:
  rename, then delete) or are deleted. `best/best.json` says which step and score. The training
  checkpoints are untouched, so exact resume is unaffected.
  """

  def __init__(self, workdir: str, metric: str, model_cfg: Any, tokenizer_path: str | None,
               is_main: bool):
    self.metric, self.model_cfg, self.tok_path = metric, model_cfg, tokenizer_path
    self.best_dir = os.path.join(workdir, BEST_DIR)
    self.cand_dir = os.path.join(workdir, "best_candidates")
    info = os.path.join(self.best_dir, "best.json")
    self.best = json.load(open(info)) if os.path.isfile(info) else None
    if is_main and os.path.isdir(self.cand_dir):  # leftovers of a killed run: re-evaluated
      shutil.rmtree(self.cand_dir, ignore_errors=True)

  def stage(self, step: int, params: Any) -> None:
    from gift import checkpoint
    checkpoint.save_model(os.path.join(self.cand_dir, str(step)), self.model_cfg, params,
                          self.tok_path, step=step)

  def resolve(self, step: int, metrics: dict[str, float] | None) -> bool:
    """Keeps step's candidate if its metric beats the best so far; True if it did."""
    cand = os.path.join(self.cand_dir, str(step))
    value = (metrics or {}).get(self.metric)
    better = value is not None and (self.best is None or value > self.best["value"])
    if better:
      with open(os.path.join(cand, "best.json"), "w") as f:
        json.dump({"step": step, "metric": self.metric, "value": value}, f)
      old = self.best_dir + f".old{os.getpid()}"
      if os.path.isdir(self.best_dir):
        os.replace(self.best_dir, old)
      os.replace(cand, self.best_dir)
      shutil.rmtree(old, ignore_errors=True)
      self.best = {"step": step, "metric": self.metric, "value": value}
    else:
      shutil.rmtree(cand, ignore_errors=True)
    return better


# ---------------------------------------------------------------------------------------------
# The evaluator.
# ---------------------------------------------------------------------------------------------
class ExecEval:
  """Greedy pass@1 per spec kind on a fixed held-out task set, executed in the background.

  `run(step, params)` samples (every process) and queues the execution (process 0);
  `poll(wait=False)` returns the finished evaluations as (step, metrics row) in step order and
  writes their per-task files; `close()` waits for the rest and stops the sandbox.
  """

  def __init__(self, cfg: Any, model_cfg: Any, tokenizer: Any, mesh: Any, workdir: str,
               is_main: bool, say: Callable[..., None] = print):
    from gift.eval import arcade

    self.cfg, self.ev, self.model_cfg, self.tok, self.mesh = (
        cfg, cfg.train.exec_eval, model_cfg, tokenizer, mesh)
    self.is_main, self.say = is_main, say
    self.out_dir = os.path.join(workdir, RESULTS_DIR)
    self.kinds = tuple(self.ev.spec_kinds) or default_spec_kinds(cfg.data)
    bad = sorted(set(self.kinds) - set(prompts_lib.SPEC_KINDS))
    if bad:
      raise ExecEvalError(f"train.exec_eval.spec_kinds has unknown kinds {bad}; expected some "
                          f"of {prompts_lib.SPEC_KINDS}")
    self.tasks = load_tasks(cfg, self.out_dir)
    self.prompts = {k: [t.prompt(k) for t in self.tasks] for k in self.kinds}
    self._box, self._refs = None, None
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="exec_eval")
    self._pending: list[tuple[int, concurrent.futures.Future]] = []
    self.keeper = None
    if cfg.checkpoint.keep_best:
      metric = cfg.checkpoint.keep_best
      if metric not in {f"pass@1/{k}" for k in self.kinds}:
        raise ExecEvalError(f"checkpoint.keep_best={metric!r}; expected one of "
                            + ", ".join(f"pass@1/{k}" for k in self.kinds))
      self.keeper = BestKeeper(workdir, metric, model_cfg, tokenizer.path, is_main)
    if is_main:  # the references run first, in the background, while training starts
      self._pool.submit(self._references, arcade)
    say(f"exec eval: {len(self.tasks)} held-out tasks x spec kinds {', '.join(self.kinds)}, "
        f"every {cfg.train.exec_eval_every} steps", flush=True)

  # -- background (process 0) -------------------------------------------------------------
  def _sandbox(self):
    if self._box is None:
      from gift.execution.sandbox import Sandbox
      e = self.cfg.execution
      self._box = Sandbox(num_workers=e.num_workers, timeout_s=e.timeout_s,
                          memory_mb=e.memory_mb, python=e.python or None)
    return self._box

  def _references(self, arcade) -> None:
    try:
      self._refs = arcade.reference_outputs(self._sandbox(), self.tasks)
    except Exception:  # noqa: BLE001 - reported with each evaluation that needs them
      self._refs = traceback.format_exc(limit=3)

  def _execute(self, step: int, completions: dict[str, list[str]], sample_s: float,
               which: list[int]) -> dict:
    from gift.eval import arcade

    t0 = time.perf_counter()
    if not isinstance(self._refs, dict):
      self._references(arcade)  # a failed first attempt is retried
      if not isinstance(self._refs, dict):
        raise RuntimeError(f"reference outputs failed: {self._refs}")
    box = self._sandbox()
    # A task whose reference fails to run cannot be passed: it is left out of the rate.
    # completions[kind][j] is the completion of task which[j].
    ok = [j for j, i in enumerate(which)
          if isinstance(self._refs[self.tasks[i].task_id], arcade.Output)]
    tasks = [self.tasks[which[j]] for j in ok]
    row, passed = {}, {}
    for kind, outs in completions.items():
      cands = {t.task_id: [prompts_lib.cut_at_stop(outs[j])] for t, j in zip(tasks, ok)}
      flags = arcade.score(box, tasks, cands, self._refs)
      passed[kind] = sorted(tid for tid, f in flags.items() if f[0])
      row[f"pass@1/{kind}"] = len(passed[kind]) / max(1, len(tasks))
    row["exec_eval/tasks"] = len(tasks)
    row["exec_eval/sample_s"] = round(sample_s, 3)
    row["exec_eval/execute_s"] = round(time.perf_counter() - t0, 3)
    os.makedirs(self.out_dir, exist_ok=True)
    path = os.path.join(self.out_dir, f"step_{step}.json")
    with open(path + ".tmp", "w") as f:
      json.dump({"step": step, "metrics": row, "passed": passed, "completions": completions,
                 "task_ids": [self.tasks[i].task_id for i in which]}, f)
    os.replace(path + ".tmp", path)
    return row

  # -- the trainer's calls -----------------------------------------------------------------
  def run(self, step: int, params: Any, final: bool = True) -> None:
    """Samples every task (or, before the `final` evaluation, the `interim_tasks` spread of
    them) with every spec kind (all processes), then queues the execution."""
    from gift.sample import Sampler

    t0 = time.perf_counter()
    which = list(range(len(self.tasks)))
    if not final and self.ev.get("interim_tasks"):
      which = spread(which, self.ev.interim_tasks)
    sampler = Sampler(self.model_cfg, params, self.tok, mesh=self.mesh,
                      batch_size=self.ev.batch_size, buckets=self.cfg.sample.prompt_buckets)
    completions = {}
    for kind in self.kinds:
      outs = sampler.generate([self.prompts[kind][i] for i in which], n=1, temperature=0.0,
                              max_new_tokens=self.ev.max_new_tokens, stop=prompts_lib.STOP)
      completions[kind] = [o[0] for o in outs]
    del sampler  # its arrays alias the trainer's, which the next step donates
    if self.keeper is not None:
      self.keeper.stage(step, params)
    if self.is_main:
      self._pending.append((step, self._pool.submit(
          self._execute, step, completions, time.perf_counter() - t0, which)))

  def poll(self, wait: bool = False) -> list[tuple[int, dict]]:
    """Finished evaluations, oldest first: (step, row). A failed one (sandbox error) gives a row
    with `exec_eval/error` and training goes on."""
    out = []
    while self._pending and (wait or self._pending[0][1].done()):
      step, fut = self._pending.pop(0)
      try:
        row = fut.result()
      except Exception as e:  # noqa: BLE001 - the evaluation failed, training does not
        msg = f"{type(e).__name__}: {str(e)[:300]}"
        self.say(f"\nWARNING: exec eval at step {step} failed ({msg}); training continues",
                 flush=True)
        row = {"exec_eval/error": msg}
      if self.keeper is not None:
        self.keeper.resolve(step, row)
      out.append((step, row))
    return out

  def close(self) -> list[tuple[int, dict]]:
    rows = self.poll(wait=True)
    self._pool.shutdown(wait=True)
    if self._box is not None:
      self._box.close()
      self._box = None
    return rows


def logged_steps(workdir: str) -> set[int]:
  """Steps whose exec eval is already in metrics.jsonl (a resumed run does not redo them)."""
  from gift import metrics
  path = os.path.join(workdir, metrics.JSONL)
  if not os.path.isfile(path):
    return set()
  return {r["step"] for r in metrics.read_jsonl(path)
          if any(k.startswith("pass@1/") or k == "exec_eval/error" for k in r)}
