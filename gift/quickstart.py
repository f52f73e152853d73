"""`gift quickstart`: the whole GIFT loop, in miniature, on a laptop CPU.

  gift quickstart [--workdir gift_quickstart] [--ablation]

Stages (each resumes: a finished stage is skipped, an interrupted one continues):
  1. data       build GIFT records from the bundled contexts with the `templates` backend: intents,
                code samples executed in the sandbox, specs from the executions (TFDS records).
  2. tokenizer  train a code SentencePiece vocabulary on the training split.
  3. train      train the `quickstart` preset (2 of its layers) from scratch on a mixture of spec
                kinds, with held-out pass@1 per spec kind every 150 steps (the GIFT curve).
  4. eval       on held-out contexts (never seen in training): sample code with each spec kind in
                the prompt, execute it, and compare the output with the reference's
                (pass@1 greedy, pass@k sampled).
  5. report     report.md with tables and PNG plots.
With `--ablation`, also train and evaluate two ungrounded baselines (no specs in training): one for
the same steps as the gift model (more code tokens: its prompts are shorter), one stopped at the
gift model's count of code tokens (the same examples for the same number of epochs).

Everything is configured by `get_config()` below (embedded defaults: CPU, no network), and any key
can be overridden like other commands: `gift quickstart --config.train.num_steps=50`.
"""
from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import sys
import time
from typing import Any

import gift
from gift import config as config_lib

SPEC_KINDS = ("none", "typedesc", "io_examples", "io_summary")


def get_config(arg: str | None = None) -> config_lib.ConfigDict:
  """Embedded defaults; `arg="tiny"` is a seconds-long version for tests."""
  c = config_lib.base_config()
  # The unembedding is sized to the tokenizer (2k pieces; the preset's 4k ids would leave half of
  # the logits, softmax and their gradients computing ids that never occur). Two layers, not the
  # preset's four: on this data the 2-layer model reaches the 4-layer one's held-out pass@1 in
  # 450-500 steps at lr 1e-3 instead of 700 at 2e-3, at half the FLOPs per token (BENCHMARKS.md).
  config_lib.with_preset(c, "quickstart", vocab_size=2048, num_layers=2)
  c.synth.contexts = ("bundled",)
  # Many contexts with few intents each: schemas repeat with re-worded column names, so the
  # model must take names from the prompt (held-out contexts use names it has not memorized).
  c.synth.num_bundled = 72
  c.synth.intents_per_context = 28
  c.synth.samples_per_intent = 3
  c.synth.validation_fraction = 0.15
  c.data.spec_kind = "mixture"
  # Prompts without the notebook prefix: intent + spec -> code. The prefix (mostly a rendered
  # df.head()) would be ~90% of every row's tokens and is not affordable on a CPU budget.
  c.data.context = "none"
  c.data.seq_len = 512
  c.train.batch_size = 8
  # ~3.5 min on 2 cores. A short run wants a low peak lr: lr 3e-3 (500 steps) scored ~10 points
  # lower, 2e-3 and 7e-4 (450 steps) 0-5 points lower (BENCHMARKS.md).
  c.train.num_steps = 450
  c.train.lr = 1e-3
  c.train.warmup_steps = 30
  c.train.end_lr_ratio = 0.05
  c.train.weight_decay = 0.01
  c.train.log_every = 20
  c.train.eval_every = 450  # the held-out loss, once at the end
  # The GIFT curve: greedy pass@1 per spec kind on every held-out task (one per held-out intent),
  # executed in the background while training goes on (gift/eval/intrain.py).
  c.train.exec_eval_every = 150
  c.train.exec_eval.num_tasks = 0
  # The curve's earlier points on an even spread of 100 of them (a third of the sampling and
  # executing); the last point, which the report's comparisons use, on all of them.
  c.train.exec_eval.interim_tasks = 100
  c.train.exec_eval.spec_kinds = SPEC_KINDS
  c.train.exec_eval.max_new_tokens = 64  # the longest target is 46 tokens + EOS
  c.train.exec_eval.batch_size = 32
  c.checkpoint.every = 150
  c.sample.n = 5
  c.sample.temperature = 0.8
  c.sample.top_p = 0.95
  c.sample.max_new_tokens = 64  # as in the in-training evaluation (targets: <= 46 tokens)
  c.sample.batch_size = 32
  with c.unlocked():
    c.quickstart = config_lib.ConfigDict(dict(
        # Held-out tasks given n samples each for pass@k (every one gets greedy pass@1).
        eval_problems=96,
        pass_k=(1, 5),
    ))
  if arg == "tiny":
    config_lib.with_preset(c, "test_tiny", vocab_size=400)
    c.synth.num_bundled = 3
    c.synth.bundled_real = False
    c.synth.intents_per_context = 16
    c.synth.samples_per_intent = 2
    c.synth.validation_fraction = 0.34
    c.data.seq_len = 512
    c.train.num_steps = 6
    c.train.eval_every = 0
    c.train.exec_eval_every = 3
    c.train.exec_eval.num_tasks = 8
    c.train.exec_eval.max_new_tokens = 16
    c.train.log_every = 2
    c.checkpoint.every = 3
    c.sample.n = 2
    c.sample.max_new_tokens = 24
    c.quickstart.eval_problems = 4
    c.quickstart.pass_k = (1, 2)
  return c


def _finished(path: str) -> dict | None:
  """A stage's saved summary if the stage finished in an earlier run (so this one resumes)."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _mark(path: str, payload: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=1, sort_keys=True, default=str)
  os.replace(tmp, path)


def _banner(i: int, text: str) -> None:
  print(f"\n=== [{i}/5] {text} ===", flush=True)


def _cpu_seconds() -> tuple[float, float]:
  """(user + sys CPU seconds of this process, of its reaped children: sandbox workers, ...)."""
  import resource
  me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


class StageTimer:
  """Wall and CPU time of each stage (CPU time, user + sys, is what a shared machine does not
  inflate). `with timer("train"): ...` prints the stage's times when it ends."""

  def __init__(self):
    self.stages: dict[str, dict[str, float]] = {}

  def __call__(self, name: str):
    import contextlib

    @contextlib.contextmanager
    def scope():
      wall0, (cpu0, kids0) = time.perf_counter(), _cpu_seconds()
      yield
      wall, (cpu, kids) = time.perf_counter() - wall0, _cpu_seconds()
      t = {"wall_s": round(wall, 1), "cpu_s": round(cpu - cpu0 + kids - kids0, 1),
           "cpu_children_s": round(kids - kids0, 1)}
      self.stages[name] = t
      print(f"[time] {name}: {t['wall_s']:.1f} s wall, {t['cpu_s']:.1f} s CPU "
            f"({t['cpu_children_s']:.1f} s of it in child processes)", flush=True)
    return scope()


# ---------------------------------------------------------------------------------------------
# Stages.
# ---------------------------------------------------------------------------------------------
def stage_data(cfg: Any, workdir: str) -> dict:
  from gift.synth import build
  data_dir = os.path.join(workdir, "data")
  marker = os.path.join(data_dir, "card.json")
  card = _finished(marker)
  if card:
    print(f"data: done ({card['kept']} examples) -> {card['dataset_dir']}")
    return card
  os.makedirs(data_dir, exist_ok=True)
  card = build.build(cfg, data_dir, progress=True)  # writes data/card.json last
  print(build.summary_table(card))
  return card


def stage_tokenizer(cfg: Any, workdir: str, dataset_dir: str) -> str:
  from gift import tokenizer as tokenizer_lib
  from gift.data import prompts, records
  path = os.path.join(workdir, "tokenizer.model")
  if os.path.exists(path):
    print(f"tokenizer: done -> {path}")
    return path
  train = records.load_split(dataset_dir, "train")
  texts = []
  for i in range(len(train)):
    rec = train[i]
    for kind in SPEC_KINDS:  # every spec kind's wording, so none is split into bytes
      r = prompts.render(rec, kind, cfg.data.context)
      texts.append(r.prompt + r.target)
  out = tokenizer_lib.train(texts, os.path.join(workdir, "tokenizer"), cfg.model.vocab_size)
  print(f"tokenizer: {cfg.model.vocab_size} pieces from {len(train)} examples -> {out}")
  return out


def train_config(cfg: Any, dataset_dir: str, tokenizer_path: str, spec_kind: str) -> Any:
  """The trainer's config: the quickstart config with data and tokenizer filled in."""
  tcfg = config_lib.base_config()
  for section in ("model", "train", "checkpoint", "mesh", "sample", "execution"):
    with tcfg.unlocked():
      tcfg[section] = cfg[section]
  tcfg.seed = cfg.seed
  tcfg.tokenizer = tokenizer_path
  with tcfg.data.unlocked():
    tcfg.data.update(cfg.data.to_dict())
  tcfg.data.source, tcfg.data.path, tcfg.data.spec_kind = "tfds", dataset_dir, spec_kind
  return config_lib.finalize(tcfg)


class Interrupted(Exception):
  """Training stopped early (SIGTERM): nothing is marked done; re-running resumes."""


def stage_train(cfg: Any, run_dir: str, dataset_dir: str, tokenizer_path: str,
                spec_kind: str) -> dict:
  from gift import metrics, train
  from gift.model import transformer
  marker = os.path.join(run_dir, "train_done.json")
  summary = _finished(marker)
  if summary:
    print(f"train ({spec_kind}): done ({summary.get('step')} steps) -> {run_dir}")
    return summary
  summary = train.train(train_config(cfg, dataset_dir, tokenizer_path, spec_kind), run_dir)
  if summary["step"] < cfg.train.num_steps and not cfg.data.num_epochs:
    raise Interrupted(f"training in {run_dir} stopped at step {summary['step']} of "
                      f"{cfg.train.num_steps}; re-run the same command to resume")
  summary = dict(summary, spec_kind=spec_kind,
                 params=transformer.param_count(config_lib.model_config(cfg)),
                 metrics=metrics.read_jsonl(os.path.join(run_dir, "metrics.jsonl")))
  _mark(marker, summary)
  return summary


def _exec_evals(run_dir: str) -> dict[int, dict]:
  """The run's in-training evaluations: step -> {"metrics", "passed", "completions"}."""
  from gift.eval import intrain
  folder = os.path.join(run_dir, intrain.RESULTS_DIR)
  out = {}
  for name in os.listdir(folder) if os.path.isdir(folder) else ():
    if name.startswith("step_") and name.endswith(".json"):
      with open(os.path.join(folder, name), encoding="utf-8") as f:
        r = json.load(f)
      out[r["step"]] = r
  return dict(sorted(out.items()))


def stage_eval(cfg: Any, workdir: str, runs: dict[str, dict]) -> dict:
  """Per spec kind, for each model: greedy pass@1 on every held-out task (the in-training
  evaluation of its last step: not sampled twice) and pass@k from n samples on an even spread
  of `quickstart.eval_problems` of them."""
  from gift.data import prompts
  from gift.eval import arcade, intrain, passk
  from gift.execution.sandbox import Sandbox
  from gift.sample import Sampler

  path = os.path.join(workdir, "eval", "results.json")
  done = (_finished(path) or {}).get("models", {})
  todo = [name for name in runs if name not in done]  # e.g. the baseline of a later --ablation
  if not todo:
    print(f"eval: done -> {path}")
    return _finished(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # The trainer's fixed task set (the validation split, one task per intent).
  tasks = arcade.tasks(arcade.load(os.path.join(runs["gift"]["workdir"], intrain.RESULTS_DIR,
                                                intrain.TASKS_FILE)), context=cfg.data.context)
  s, n, ks = cfg.sample, cfg.sample.n, tuple(cfg.quickstart.pass_k)
  results = {"tasks": len(tasks), "contexts": len({t.notebook_name for t in tasks}),
             "n": n, "temperature": s.temperature, "top_p": s.top_p, "models": dict(done)}
  e = cfg.execution
  with Sandbox(num_workers=e.num_workers, timeout_s=e.timeout_s, memory_mb=e.memory_mb) as box:
    refs = arcade.reference_outputs(box, tasks)
    greedy_tasks = [t for t in tasks if isinstance(refs[t.task_id], arcade.Output)]
    sampled_tasks = intrain.spread(greedy_tasks, cfg.quickstart.eval_problems)
    results["tasks"], results["sampled_tasks"] = len(greedy_tasks), len(sampled_tasks)
    for model_name in todo:
      evals = _exec_evals(runs[model_name]["workdir"])
      last = evals[max(evals)]
      sampler = Sampler.from_checkpoint(runs[model_name]["workdir"], batch_size=s.batch_size)

      def score(kind, sampled, t0, last=last, model_name=model_name):
        s_pass = arcade.score(box, sampled_tasks, {
            t.task_id: [prompts.cut_at_stop(c) for c in o] for t, o in zip(sampled_tasks, sampled)},
            refs)
        counts = [(len(f), int(sum(f))) for f in s_pass.values()]
        passed = set(last["passed"][kind]) & {t.task_id for t in greedy_tasks}
        r = {
            "greedy_pass@1": len(passed) / max(1, len(greedy_tasks)),
            "greedy_passed": sorted(passed), "greedy_step": last["step"],
            **{f"pass@{k}": v for k, v in passk.mean_pass_at_k(counts, ks).items()},
            "seconds": round(time.time() - t0, 1),
            "example": {"task": tasks[0].task_id, "greedy": last["completions"][kind][0]},
        }
        print(f"eval {model_name:8s} {kind:12s} greedy pass@1 "
              f"{100 * r['greedy_pass@1']:5.1f}%  "
              + "  ".join(f"pass@{k} {100 * r[f'pass@{k}']:5.1f}%" for k in ks
                          if f"pass@{k}" in r), flush=True)
        return r

      # Each kind's samples execute in the sandbox's worker processes while the next kind is
      # sampled (the sampler waits on XLA, the scorer on its workers).
      with concurrent.futures.ThreadPoolExecutor(1) as scorer:
        futures = {}
        for kind in SPEC_KINDS:
          t0 = time.time()
          sampled = sampler.generate([t.prompt(kind) for t in sampled_tasks], n=n,
                                     temperature=s.temperature, top_p=s.top_p,
                                     max_new_tokens=s.max_new_tokens, stop=prompts.STOP,
                                     seed=cfg.seed)
          futures[kind] = scorer.submit(score, kind, sampled, t0)
        per_kind = {kind: f.result() for kind, f in futures.items()}
      results["models"][model_name] = per_kind
  _mark(path, results)
  return results


def _paired(passed_a: list, passed_b: list, n_tasks: int) -> tuple[float, int, int, float]:
  """(pass rate of a - pass rate of b, tasks only a passes, tasks only b passes, one standard
  error of the paired difference) over the same n_tasks: d_i in {-1, 0, 1}, SE = sd(d)/sqrt(N)."""
  n = max(1, n_tasks)
  a, b = set(passed_a), set(passed_b)
  wins, losses = len(a - b), len(b - a)
  mean_d = (wins - losses) / n
  var_d = (wins + losses) / n - mean_d ** 2
  se = (max(var_d, 0.0) * n / max(1, n - 1)) ** 0.5 / n ** 0.5
  return mean_d, wins, losses, se


def _code_tokens(run: dict) -> float:
  """Code (loss) tokens a run trained on, estimated from its logged steps: mean tokens per
  logged step x steps."""
  logged = [m["num_tokens"] for m in run["metrics"] if "loss" in m and "num_tokens" in m]
  return sum(logged) / max(1, len(logged)) * run["step"]


def stage_report(cfg: Any, workdir: str, card: dict, runs: dict, results: dict,
                 timing: dict) -> str:
  """report.md with the spec comparison, the loss curve and pass@k plots."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from gift.eval import report as report_lib

  ks = [f"pass@{k}" for k in cfg.quickstart.pass_k]
  fig, (ax, ax_pass) = plt.subplots(1, 2, figsize=(12, 3.8))
  styles = ("-", "--", ":")
  for (name, run), style in zip(runs.items(), styles):
    evals = _exec_evals(run["workdir"])
    for j, kind in enumerate(SPEC_KINDS):
      pts = [(st, e["metrics"][f"pass@1/{kind}"]) for st, e in evals.items()
             if f"pass@1/{kind}" in e["metrics"]]
      if pts:
        ax_pass.plot([p[0] for p in pts], [100 * p[1] for p in pts], style, marker="o",
                     color=f"C{j}", label=f"{name}: {kind}")
  ax_pass.set_xlabel("step"), ax_pass.set_ylabel("greedy pass@1, % of held-out tasks")
  ax_pass.set_title("executed held-out pass@1 by spec kind at inference")
  ax_pass.legend(fontsize=6, ncol=2)
  for name, run in runs.items():
    rows = [m for m in run["metrics"] if "loss" in m and "step" in m]
    ax.plot([m["step"] for m in rows], [m["loss"] for m in rows], label=f"{name} train")
    ev = [m for m in run["metrics"] if "eval_loss" in m]
    if ev:
      ax.plot([m["step"] for m in ev], [m["eval_loss"] for m in ev], "o--",
              label=f"{name} held-out")
  ax.set_xlabel("step"), ax.set_ylabel("loss (code tokens)"), ax.legend()
  ax.set_title("training loss")
  fig.tight_layout()
  report_lib.save_png(fig, os.path.join(workdir, "loss.png"))
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(7, 3.5))
  cols = [(m, k) for m in results["models"] for k in SPEC_KINDS]
  metrics_ = ["greedy_pass@1"] + ks
  width = 0.8 / len(metrics_)
  for j, metric in enumerate(metrics_):
    ax.bar([i + j * width for i in range(len(cols))],
           [100 * results["models"][m][k].get(metric, 0) for m, k in cols], width, label=metric)
  ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cols))])
  ax.set_xticklabels([f"{m}\n{k}" for m, k in cols], fontsize=7)
  ax.set_ylabel("% of held-out tasks"), ax.legend(fontsize=7)
  ax.set_title("pass@k by spec kind at inference (held-out contexts)")
  report_lib.save_png(fig, os.path.join(workdir, "passk.png"))
  plt.close(fig)

  pct = lambda v: "-" if v is None else f"{100 * v:.1f}"
  g = results["models"]["gift"]
  lines = [
      "# gift quickstart report", "",
      "**This is a miniature of the GIFT method**, run on a CPU in minutes: a "
      f"{runs['gift']['params'] / 1e6:.1f}M-parameter model trained from scratch on synthetic "
      "data built from bundled dataframes with the offline `templates` backend (not a "
      "pretrained code LLM with LLM-written intents, as in the paper). It shows the pipeline "
      "working end to end and measures, on contexts never seen in training, whether putting an "
      "I/O specification in the prompt helps the model write code whose *executed output* "
      "matches the reference. Numbers from a model this small are noisy; read them as a smoke "
      "test of the method, not as a reproduction of the paper's results.", "",
      "## Data", "",
      f"- {card['kept']} kept examples from {card['contexts']['used']} contexts, split by "
      f"context: {card['splits']} (validation contexts are the held-out ones below); every "
      "example's code was executed in the sandbox and its specs derived from that execution.",
      f"- stages: {card['stages']}; dropped: {card['drop_reasons']}", "",
      "## Training", "",
  ]
  code_tokens = {name: _code_tokens(run) for name, run in runs.items()}
  for name, run in runs.items():
    rows = [m for m in run["metrics"] if "loss" in m]
    ev = [m for m in run["metrics"] if "eval_loss" in m]
    lines.append(f"- `{name}` (spec kinds in training: {run['spec_kind']}): {run['step']} steps,"
                 f" loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}"
                 + (f", held-out loss {ev[-1]['eval_loss']:.3f}" if ev else "")
                 + f"; ~{code_tokens[name] / 1e3:.0f}k code tokens trained on"
                 + f"; checkpoint `{run['workdir']}`")
  interim = cfg.train.exec_eval.interim_tasks
  lines += ["", "Left: the training loss. Right: the GIFT curve, greedy pass@1 on the held-out "
            "tasks with each spec kind in the prompt, sampled and executed during training every "
            f"{cfg.train.exec_eval_every} steps and at the end (`train.exec_eval_every`)"
            + (f"; the earlier points on an even spread of {interim} of the tasks "
               "(`train.exec_eval.interim_tasks`), the last on all of them." if interim else "."),
            "",
            "![loss and pass@1 by step](loss.png)", "",
            f"## Held-out evaluation ({results['tasks']} tasks from {results['contexts']} "
            "unseen contexts)", "",
            "Held-out contexts are dataframes no training example came from; the bundled "
            "generator draws them from the same 24 schemas, with column names re-worded per "
            "context, so a model must read the names from the prompt.", "",
            f"Greedy pass@1 on all {results['tasks']} tasks (the last in-training evaluation), "
            f"and pass@k from n={results['n']} samples at temperature "
            f"{results['temperature']} (top-p {results['top_p']}, unbiased estimator) on "
            f"{results.get('sampled_tasks', results['tasks'])} of them, evenly spread. A task "
            "passes when the generated code runs in its notebook context (sandboxed) and its "
            "output matches the reference output (ARCADE-style lenient matching).", "",
            "| model (training specs) | spec at inference | greedy pass@1 | "
            + " | ".join(ks) + " |", "|---|---|---|" + "---|" * len(ks)]
  for name, per_kind in results["models"].items():
    for kind in SPEC_KINDS:
      r = per_kind[kind]
      lines.append(f"| {name} ({runs[name]['spec_kind']}) | {kind} | {pct(r['greedy_pass@1'])} | "
                   + " | ".join(pct(r.get(k)) for k in ks) + " |")
  n_tasks = results["tasks"]
  delta, wins, losses, se = _paired(g["io_summary"]["greedy_passed"], g["none"]["greedy_passed"],
                                    n_tasks)
  verdict = ("within two standard errors, so not distinguishable from noise"
             if abs(delta) <= 2 * se
             else "more than two standard errors: a "
             + ("gain" if delta > 0 else "loss") + " from the spec")
  lines += ["", "![pass@k](passk.png)", "", "## The GIFT effect in miniature", "",
            f"- gift model, greedy pass@1 with `io_summary` specs vs without specs: "
            f"{pct(g['io_summary']['greedy_pass@1'])}% vs {pct(g['none']['greedy_pass@1'])}% "
            f"({'+' if delta >= 0 else ''}{100 * delta:.1f} points: the spec turned {wins} failed "
            f"tasks into passes and {losses} passes into failures; one standard error of the "
            f"paired difference over {results['tasks']} tasks is {100 * se:.1f} points: "
            f"{verdict})."]
  if "no_spec" in results["models"]:
    b = results["models"]["no_spec"]["none"]["greedy_pass@1"]
    ratio = code_tokens["no_spec"] / max(1.0, code_tokens["gift"])
    lines.append(f"- ungrounded baseline (trained without specs), no spec at inference: "
                 f"{pct(b)}%; the gift model with `io_summary`: "
                 f"{pct(g['io_summary']['greedy_pass@1'])}%. Both trained for the same steps of "
                 f"the same rows of tokens, but the baseline's prompts carry no spec, so its rows "
                 f"pack more examples: it trained on ~{ratio:.1f}x as many code tokens.")
  if "no_spec_matched" in results["models"]:
    m = results["models"]["no_spec_matched"]["none"]
    d, w, l, se_m = _paired(g["io_summary"]["greedy_passed"], m["greedy_passed"], n_tasks)
    lines.append(f"- ungrounded baseline trained on as many code tokens as the gift model "
                 f"({runs['no_spec_matched']['step']} steps: the same examples for the same "
                 f"number of epochs, without specs), no spec at inference: "
                 f"{pct(m['greedy_pass@1'])}%; the gift model with `io_summary`: "
                 f"{pct(g['io_summary']['greedy_pass@1'])}% ({'+' if d >= 0 else ''}"
                 f"{100 * d:.1f} points, {w} tasks only gift solves, {l} only the baseline, one "
                 f"paired standard error {100 * se_m:.1f} points), without specs: "
                 f"{pct(g['none']['greedy_pass@1'])}%. This is the paper's comparison "
                 "(fine-tuning on the same synthetic data with vs without specs), in miniature.")
  else:
    lines.append("- the ungrounded baseline (a model trained without specs) is trained and "
                 "evaluated with `gift quickstart --ablation`.")
  seconds = timing["seconds"]
  lines += ["", "## Time", "",
            f"Measured f32 matmul peak of this host (2048^3, XLA): "
            f"{timing['peak_gflops']:.0f} GFLOP/s. Wall time: {seconds / 60:.1f} min over every "
            "run of this command on this workdir (a run that resumes adds only its own time). "
            "CPU time is user + sys of gift and its child processes (sandbox workers); on a "
            "shared machine wall time grows, CPU time much less.", "",
            "| stage | wall (s) | CPU (s) | of which child processes (s) |", "|---|---|---|---|"]
  for name, t in timing["stages"].items():
    lines.append(f"| {name} | {t['wall_s']:.1f} | {t['cpu_s']:.1f} | {t['cpu_children_s']:.1f} |")
  lines += ["", "Files: `data/` (TFDS records, records.jsonl, card.json), `tokenizer.model`, "
            "`train*/` (checkpoints, metrics.jsonl, TensorBoard, `exec_eval/` with each "
            "in-training evaluation's passed tasks and completions), `eval/results.json`.", ""]
  out = os.path.join(workdir, "report.md")
  tmp = out + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  os.replace(tmp, out)
  return out

def main(argv: list[str]) -> int:
  parser = gift.ArgumentParser(prog="gift quickstart", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="gift_quickstart")
  parser.add_argument("--ablation", action="store_true",
                      help="also train and evaluate the ungrounded baselines (no specs)")
  parser.add_argument("--tiny", action="store_true", help="a seconds-long run (tests)")
  known = [a for a in argv if not a.startswith("--config")]
  args = parser.parse_args(known)
  overrides = [a for a in argv if a.startswith("--config.")]
  cfg = get_config("tiny" if args.tiny else None)
  config_lib.apply_overrides(cfg, [(k[len("--config."):], config_lib._parse_value(v))
                                   for k, _, v in (a.partition("=") for a in overrides)])
  cfg = config_lib.finalize(cfg)
  workdir = os.path.abspath(args.workdir)
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  from gift import flops
  peak = flops.measure_matmul_peak() / 1e9
  print(f"host: measured f32 matmul peak {peak:.0f} GFLOP/s (2048^3, XLA), "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
  timer = StageTimer()
  done_stages = {name for name, marker in (
      ("data", os.path.join(workdir, "data", "card.json")),
      ("tokenizer", os.path.join(workdir, "tokenizer.model")),
      ("train gift", os.path.join(workdir, "train", "train_done.json")),
      ("train no_spec", os.path.join(workdir, "train_nospec", "train_done.json")),
      ("train no_spec_matched", os.path.join(workdir, "train_nospec_matched", "train_done.json")),
  ) if os.path.exists(marker)}
  try:
    with timer("data"):
      _banner(1, "data: contexts -> intents -> executed samples -> specs -> TFDS records")
      card = stage_data(cfg, workdir)
    with timer("tokenizer"):
      _banner(2, "tokenizer: SentencePiece vocabulary for code")
      tok = stage_tokenizer(cfg, workdir, card["dataset_dir"])
    _banner(3, "train: the quickstart model on a mixture of spec kinds, with held-out pass@1")
    with timer("train gift"):
      runs = {"gift": stage_train(cfg, os.path.join(workdir, "train"), card["dataset_dir"], tok,
                                  "mixture")}
    if args.ablation:
      with timer("train no_spec"):
        runs["no_spec"] = stage_train(cfg, os.path.join(workdir, "train_nospec"),
                                      card["dataset_dir"], tok, "none")
      # The same again, stopped once it has trained on as many code tokens as the gift model
      # (its prompts carry no spec, so each row packs more examples): equal epochs of the data.
      matched = copy.deepcopy(cfg)
      matched.train.num_steps = max(1, round(cfg.train.num_steps * _code_tokens(runs["gift"])
                                             / max(1.0, _code_tokens(runs["no_spec"]))))
      with timer("train no_spec_matched"):
        runs["no_spec_matched"] = stage_train(
            matched, os.path.join(workdir, "train_nospec_matched"), card["dataset_dir"], tok,
            "none")
  except Interrupted as e:
    print(f"gift quickstart: {e}", file=sys.stderr)
    return 1
  with timer("eval"):
    _banner(4, "eval: held-out contexts, each spec kind at inference")
    results = stage_eval(cfg, workdir, runs)
  _banner(5, "report")
  # Wall time accumulates over the runs of this workdir (a resumed run adds only its own).
  timing_path = os.path.join(workdir, "timing.json")
  before = _finished(timing_path) or {}
  # A stage this run only found done keeps the time of the run that did it.
  timing = {"seconds": before.get("seconds", 0.0) + time.time() - t0, "peak_gflops": peak,
            "stages": {**timer.stages, **before.get("stages", {}),
                       **{k: v for k, v in timer.stages.items() if k not in done_stages}}}
  if "eval" in before.get("stages", {}):  # a later --ablation evaluates only the new models
    timing["stages"]["eval"] = {k: round(v + before["stages"]["eval"][k], 1)
                                for k, v in timer.stages["eval"].items()}
  with timer("report"):
    report = stage_report(cfg, workdir, card, runs, results, timing)
  timing["stages"]["report"] = timer.stages["report"]
  timing["seconds"] = before.get("seconds", 0.0) + time.time() - t0
  _mark(timing_path, timing)
  minutes = (time.time() - t0) / 60
  print(f"\nquickstart finished in {minutes:.1f} min (host-scaled target 10 x 170 / {peak:.0f} = "
        f"{10 * 170 / peak:.1f} min). Report: {report}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
