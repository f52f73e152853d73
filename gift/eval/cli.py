"""`gift eval ds1000 | arcade`: score ready answers or sample a checkpoint, then write a report.

  gift eval ds1000 --answers codex002-pandas.jsonl --runtime /tmp/ds1000-runtime --workdir W
  gift eval ds1000 --checkpoint CKPT --n 20 --temperature 0.8 --spec_kind none,typedesc
  gift eval arcade --dataset episodes.json --checkpoint CKPT --context full

Every run executes candidates in the sandbox under `--runtime` (a `gift runtime create` dir;
default: this interpreter) and writes results.json, report.md and PNG plots to `--workdir`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

import gift
from gift.data import prompts as prompts_lib
from gift.eval import arcade, ds1000, report
from gift.execution import runtime as runtime_lib


def _parser() -> argparse.ArgumentParser:
  p = gift.ArgumentParser(prog="gift eval", description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="benchmark", required=True)
  for name in ("ds1000", "arcade"):
    s = sub.add_parser(name)
    src = s.add_mutually_exclusive_group(required=name == "ds1000")
    src.add_argument("--answers", help="JSONL of ready answers to score (no sampling)")
    src.add_argument("--checkpoint", help="gift checkpoint directory to sample from")
    s.add_argument("--dataset", default=ds1000.DEFAULT_PATH if name == "ds1000" else None,
                   required=name == "arcade", help="benchmark file")
    s.add_argument("--runtime", default="", help="pinned runtime dir (gift runtime create)")
    s.add_argument("--workdir", default=f"eval_{name}", help="where the report goes")
    s.add_argument("--n", type=int, default=1, help="samples per problem")
    s.add_argument("--temperature", type=float, default=0.0)
    s.add_argument("--top_p", type=float, default=1.0)
    s.add_argument("--max_new_tokens", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--spec_kind", default="none",
                   help=f"comma-separated subset of {','.join(prompts_lib.SPEC_KINDS)} or 'all'")
    s.add_argument("--ks", default="1,5,20", help="k values of pass@k (those <= n are kept)")
    s.add_argument("--limit", type=int, default=0, help="only the first N problems")
    s.add_argument("--num_workers", type=int, default=0, help="sandbox zygotes (0: per core)")
    s.add_argument("--timeout_s", type=float, default=60.0, help="per sandbox job")
    s.add_argument("--memory_mb", type=int, default=4096)
    s.add_argument("--no_progress", action="store_true")
    s.add_argument("--lora", default="merge", choices=("merge", "unmerged"),
                   help="a LoRA run: merge the adapters into the base, or run them unmerged")
    s.add_argument("--chat_template", action="store_true",
                   help="send prompts as user turns of the checkpoint tokenizer's chat template "
                        "(instruct checkpoints)")
    s.add_argument("--runner", default="local", choices=("local", "beam"),
                   help="local: this machine's sandbox pool; beam: an Apache Beam pipeline, "
                   "grouped by problem (pip install 'gift[beam]')")
    s.add_argument("--beam_pipeline_options", default="",
                   help="Beam flags (default: the multi-process DirectRunner, 2 workers)")
    s.add_argument("--require_isolation", action="store_true",
                   help="stop when a worker's sandbox lacks an isolation layer")
    if name == "arcade":
      s.add_argument("--context", default="full", choices=("full", "none"),
                     help="prompt variant: the notebook context, or the intent alone")
      s.add_argument("--artifacts", default="", help="dir the notebooks read their files from")
  return p


def _spec_kinds(text: str) -> list[str]:
  kinds = list(prompts_lib.SPEC_KINDS) if text == "all" else text.split(",")
  bad = [k for k in kinds if k not in prompts_lib.SPEC_KINDS]
  if bad:
    raise gift.UserError(f"--spec_kind {bad}; expected some of {prompts_lib.SPEC_KINDS} or 'all'")
  return kinds


def _generator(args) -> tuple[Callable[[list[str], tuple[str, ...]], list[list[str]]], list]:
  """A `generate(prompts, stop)` bound to the sampling flags, and a list that accumulates the
  seconds spent sampling."""
  from gift.sample import Sampler

  sampler = Sampler.from_checkpoint(args.checkpoint, merge_lora=args.lora == "merge")
  spent: list[float] = []

  def generate(prompts: list[str], stop: tuple[str, ...]) -> list[list[str]]:
    from tqdm.auto import tqdm
    t0, out = time.perf_counter(), []
    chunk = 8
    for i in tqdm(range(0, len(prompts), chunk), desc="sampling", unit="batch",
                  disable=args.no_progress):
      out += sampler.generate(prompts[i:i + chunk], n=args.n, temperature=args.temperature,
                              top_p=args.top_p, max_new_tokens=args.max_new_tokens, stop=stop,
                              seed=args.seed + i, chat_template=args.chat_template)
    spent.append(time.perf_counter() - t0)
    return out

  return generate, spent


def _sandbox_kw(args, rt: runtime_lib.RuntimeInfo) -> dict:
  return dict(num_workers=args.num_workers, python=rt.python, timeout_s=args.timeout_s,
              memory_mb=args.memory_mb)


def _sandbox(args, rt: runtime_lib.RuntimeInfo):
  from gift import beam as beam_lib
  from gift.execution.sandbox import Sandbox

  sandbox = Sandbox(**_sandbox_kw(args, rt))
  try:
    beam_lib.check_isolation(sandbox, args.require_isolation)
  except BaseException:
    sandbox.close()
    raise
  return sandbox


def _on_beam(args, bench, groups: list, rt: runtime_lib.RuntimeInfo, kinds: list[str],
             answers: dict | None) -> tuple[dict, list]:
  """The Beam runner's results (`beam_eval.run`) and the seconds spent (all of it counts as
  execution: sampling runs inside the pipeline)."""
  from gift.eval import beam_eval  # Beam is imported only here

  sampling = dict(n=args.n, temperature=args.temperature, top_p=args.top_p,
                  max_new_tokens=args.max_new_tokens, seed=args.seed,
                  chat_template=args.chat_template, lora=args.lora)
  os.makedirs(args.workdir, exist_ok=True)
  out = beam_eval.run(bench, groups, kinds, _sandbox_kw(args, rt), args.beam_pipeline_options,
                      args.require_isolation, answers, args.checkpoint or "", sampling,
                      args.workdir)
  return out, []


def eval_ds1000(args) -> dict[str, Any]:
  """Scores answers or checkpoint samples on DS-1000 pandas; returns the results dict."""
  t0 = time.perf_counter()
  answers = ds1000.load_answers(args.answers) if args.answers else None  # bad input: fail first
  problems = ds1000.load(args.dataset)
  problems = problems[:args.limit] if args.limit else problems
  rt = runtime_lib.resolve(args.runtime)
  groups = {p.problem_id: p.perturbation_type for p in problems}
  ks = tuple(int(k) for k in args.ks.split(","))
  progress = not args.no_progress
  runs, notes, sampling = {}, [], []
  if answers is not None:
    missing = [p.problem_id for p in problems if p.problem_id not in answers]
    answers = {p.problem_id: [ds1000.postprocess(c) for c in answers.get(p.problem_id, [""])]
               for p in problems}
    kinds = ["answers"]
  else:
    kinds = _spec_kinds(args.spec_kind)
  if args.runner == "beam":
    from gift.eval import beam_eval

    bench = beam_eval.DS1000(args.timeout_s)
    out, sampling = _on_beam(args, bench, [(p.problem_id, [p]) for p in problems], rt, kinds,
                             answers)
    passed_refs, spec_errors = out["oracle"], out["spec_errors"]
    flags_by_kind = out["flags"]
  else:
    flags_by_kind = {}
    with _sandbox(args, rt) as sandbox:
      cases = ds1000.generate_cases(sandbox, problems, progress, args.timeout_s)
      oracle, specs = ds1000.oracle(sandbox, problems, cases, progress, args.timeout_s)
      passed_refs = {pid: o.passed for pid, o in oracle.items()}
      spec_errors = sum(k.startswith("error:") for t in specs.values() for k in t)
      if not args.answers:
        generate, sampling = _generator(args)
      for kind in kinds:
        cands = answers if kind == "answers" else ds1000.sample_candidates(
            lambda ps: generate(ps, ds1000.STOP), problems, kind, specs)
        outs = ds1000.score(sandbox, problems, cands, cases, progress=progress,
                            timeout_s=args.timeout_s)
        flags_by_kind[kind] = {pid: [o.passed for o in os_] for pid, os_ in outs.items()}
  failed = sorted(pid for pid, ok in passed_refs.items() if not ok)
  if failed:
    notes.append(f"references failing in this runtime: {failed}")
  if spec_errors:
    notes.append(f"{spec_errors} spec renderings failed (those prompts carry no spec)")
  if args.answers and missing:
    notes.append(f"{len(missing)} problems have no answer (scored as failed)")
  for kind in kinds:
    runs[kind] = report.run_entry(flags_by_kind[kind], groups, ks)
  wall = time.perf_counter() - t0
  settings = {"dataset": args.dataset, "source": args.answers or args.checkpoint}
  if args.checkpoint:
    settings.update(n=args.n, temperature=args.temperature, top_p=args.top_p,
                    max_new_tokens=args.max_new_tokens, seed=args.seed)
  return {
      "benchmark": "ds1000-pandas", "runtime": rt.to_dict(),
      "oracle": {"passed": len(problems) - len(failed), "total": len(problems),
                 "rate": (len(problems) - len(failed)) / max(1, len(problems))},
      "settings": settings, "runs": runs, "notes": notes,
      "timing": {"wall_s": wall, "sampling_s": sum(sampling),
                 "execution_s": wall - sum(sampling), "problems": len(problems) * len(runs),
                 "problems_per_s": len(problems) * len(runs) / max(1e-9, wall - sum(sampling))}}


def eval_arcade(args) -> dict[str, Any]:
  """Scores answers or checkpoint samples on an ARCADE-format episode file."""
  t0 = time.perf_counter()
  tasks = arcade.tasks(arcade.load(args.dataset), context=args.context)
  tasks = tasks[:args.limit] if args.limit else tasks
  rt = runtime_lib.resolve(args.runtime)
  ks = tuple(int(k) for k in args.ks.split(","))
  progress = not args.no_progress
  groups = {t.task_id: t.notebook_name for t in tasks}
  runs, sampling = {}, []
  answers = arcade.load_answers(args.answers, tasks) if args.answers else None
  kinds = ["answers"] if args.answers else _spec_kinds(args.spec_kind)
  if args.runner == "beam":
    from gift.eval import beam_eval

    by_notebook: dict[str, list] = {}
    for t in tasks:
      by_notebook.setdefault(t.notebook_name, []).append(t)
    out, sampling = _on_beam(args, beam_eval.Arcade(args.artifacts), list(by_notebook.items()),
                             rt, kinds, answers and {t.task_id: answers.get(t.task_id, [])
                                                     for t in tasks})
    ok = sum(out["oracle"].values())
    flags_by_kind = out["flags"]
  else:
    flags_by_kind = {}
    with _sandbox(args, rt) as sandbox:
      refs = arcade.reference_outputs(sandbox, tasks, args.artifacts, progress)
      ok = sum(isinstance(r, arcade.Output) for r in refs.values())
      if not args.answers:
        generate, sampling = _generator(args)
      for kind in kinds:
        if kind == "answers":
          cands = answers
        else:
          samples = generate([t.prompt(kind) for t in tasks], prompts_lib.STOP)
          cands = {t.task_id: [prompts_lib.cut_at_stop(c) for c in s]
                   for t, s in zip(tasks, samples)}
        flags_by_kind[kind] = arcade.score(sandbox, tasks, cands, refs, args.artifacts,
                                           progress)
  for kind in kinds:
    runs[kind] = report.run_entry(flags_by_kind[kind], groups, ks)
  wall = time.perf_counter() - t0
  settings = {"dataset": args.dataset, "context": args.context,
              "source": args.answers or args.checkpoint}
  return {
      "benchmark": f"arcade ({args.context} context)", "runtime": rt.to_dict(),
      "oracle": {"passed": ok, "total": len(tasks), "rate": ok / max(1, len(tasks))},
      "settings": settings, "runs": runs, "notes": [],
      "timing": {"wall_s": wall, "sampling_s": sum(sampling),
                 "execution_s": wall - sum(sampling), "problems": len(tasks) * len(runs),
                 "problems_per_s": len(tasks) * len(runs) / max(1e-9, wall - sum(sampling))}}


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  results = (eval_ds1000 if args.benchmark == "ds1000" else eval_arcade)(args)
  paths = report.write(results, args.workdir)
  for kind, r in results["runs"].items():
    print(f"{kind}: " + ", ".join(f"pass@{k} {100 * v:.1f}%"
                                  for k, v in r["pass_at_k"]["all"].items()))
  o = results["oracle"]
  print(f"oracle {o['passed']}/{o['total']}; report: {paths['report']}", file=sys.stderr)
  return 0
