"""`gift build-data`: contexts -> intents -> code samples -> sandboxed execution -> specs -> TFDS.

  gift build-data --config configs/synth_default.py --workdir /tmp/gift_data [--verify]

Stages (each with a progress bar), per context:
  1. contexts  load/generate them (bad inputs skipped with a counted reason); notebook contexts
               are probed in the sandbox to learn their dataframes.
  2. generate  the backend's generalist writes intents, its coder n code samples per intent.
  3. execute   every candidate runs in its context in the sandbox pool (`run_many`: the context
               runs once per zygote, each job in a fresh fork).
  4. filter    keep candidates that ran, returned a non-trivial value (not None, not empty, not
               an unchanged input) within limits; one per distinct output per intent, preferring
               the variant whose pandas APIs are least used so far in the context (diversity).
               Every dropped candidate has a reason, counted in the dataset card.
  5. specs     TypeDesc, I/O examples, I/O summary from the executed values (`specs.py`).
Each finished context is written to `<workdir>/shards/<context>.json` (atomically): a re-run
after a crash skips finished contexts and yields the same dataset, since every stage is
deterministic in (config, context). Finally the shards become TFDS records (`data/records.py`),
split into train/validation by context, plus `<workdir>/records.jsonl` and a summary table.

Records carry no wall-clock fields, so a resumed build is identical to an uninterrupted one;
timings are in the card's `timing` entry.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
import time
from typing import Any

import pandas as pd

import gift
from gift import beam as beam_lib
from gift import config as config_lib
from gift.data import records as records_lib
from gift.synth import backends as backends_lib
from gift.synth import contexts as contexts_lib
from gift.synth import specs

log = logging.getLogger(__name__)
SHARD_VERSION = 2  # bump when shard contents change meaning


def _bar(total: int | None, desc: str, enabled: bool, unit: str = "it"):
  from tqdm import tqdm

  return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=True,
              dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# Stage 1: contexts.
# ---------------------------------------------------------------------------------------------
def context_units(synth: Any, workdir: str, seed: int) -> tuple[list[tuple], list]:
  """The files contexts are loaded from, as units of work (`load_unit`), and the named inputs
  that do not exist. The bundled contexts' CSVs are generated here (once, into WORKDIR/contexts),
  so that a distributed runner's workers only read files."""
  units, skipped = [], []
  for source in synth.contexts:
    if source == "bundled":
      out_dir = os.path.join(workdir, "contexts")
      units += [("bundled", os.path.join(out_dir, name), name) for name in
                contexts_lib.generate_bundled(out_dir, synth.num_bundled, seed)]
      if synth.bundled_real:
        units += [("bundled_csv", path, cid) for path, cid in contexts_lib.real_csvs()]
    elif os.path.isdir(source):
      names = sorted(os.listdir(source))
      units += [("csv", os.path.join(source, n)) for n in names if n.lower().endswith(".csv")]
      units += [("notebook", os.path.join(source, n)) for n in names if n.endswith(".ipynb")]
    elif os.path.isfile(source):
      units.append(("notebook" if source.endswith(".ipynb") else "csv", source))
    else:
      contexts_lib.skip(skipped, source, "missing: no such file or folder")
  return units, skipped


def load_unit(unit: tuple, max_mb: float) -> tuple[list[contexts_lib.Context], list]:
  """The contexts of one unit from `context_units`, and the skipped input (path, reason)."""
  kind, path = unit[0], unit[1]
  try:
    if kind == "bundled":
      return [contexts_lib.from_bundled_folder(path, unit[2])], []
    if kind == "bundled_csv":
      return [contexts_lib.from_csv(path, unit[2], max_mb, "bundled")], []
    if kind == "notebook":
      return contexts_lib.from_notebook(path, max_mb), []
    return [contexts_lib.from_csv(path, max_mb=max_mb)], []
  except ValueError as e:
    skipped = []
    contexts_lib.skip(skipped, path, str(e))
    return [], skipped


def select_contexts(ctxs: list[contexts_lib.Context], synth: Any) -> list[contexts_lib.Context]:
  """One context per id, sorted by id, the first `synth.max_contexts` (0: all), each showing
  `synth.data_dirs` to its jobs besides its own folder."""
  seen, unique = set(), []
  for ctx in sorted(ctxs, key=lambda c: c.id):
    if ctx.id not in seen:
      seen.add(ctx.id)
      unique.append(ctx)
  if synth.max_contexts:
    unique = unique[:synth.max_contexts]
  extra = tuple(os.path.abspath(os.path.expanduser(d)) for d in synth.data_dirs)
  for ctx in unique:
    ctx.data_dirs = tuple(dict.fromkeys(ctx.data_dirs + extra))
  return unique


def load_contexts(synth: Any, workdir: str, seed: int
                  ) -> tuple[list[contexts_lib.Context], list[tuple[str, str]]]:
  """All contexts named by `synth.contexts`, sorted by id, plus the skipped inputs."""
  units, skipped = context_units(synth, workdir, seed)
  found = []
  for unit in units:
    c, s = load_unit(unit, synth.max_file_mb)
    found, skipped = found + c, skipped + s
  return select_contexts(found, synth), skipped


def probe(ctxs: list[contexts_lib.Context], sandbox: Any) -> list[tuple[str, str]]:
  """Runs each context without known frames (notebooks) in the sandbox and captures its
  dataframes; returns (context id, reason) for those that failed (their frames stay None)."""
  from gift.execution.sandbox import Job

  todo = [c for c in ctxs if c.frames is None]
  verdicts = sandbox.run_many([Job(c.code, "None", None, c.inputs, c.frame_names,
                                   data_dirs=c.data_dirs) for c in todo])
  failed = []
  for ctx, v in zip(todo, verdicts):
    frames = {k: f for k, f in v.captured.items() if isinstance(f, pd.DataFrame) and not f.empty}
    if v.status != "ok" or "df" not in frames and not frames:
      why = v.status if v.status != "ok" else "no dataframe captured"
      message = (v.error_message or "").removeprefix("context: ")  # names a missing file
      failed.append((ctx.id, f"probe_failed: {why}: {v.error_type or ''}: {message[:400]}"))
      log.warning("skipping %s: %s", ctx.id, failed[-1][1])
      continue
    if "df" not in frames:  # templates address the main frame as `df`: the first one read
      main = next(n for n in ctx.frame_names if n in frames)
      frames = {"df" if n == main else n: f for n, f in frames.items()}
      ctx.code += f"\ndf = {main}"
    ctx.frames = frames
  return failed


def split_of(context_ids: list[str], validation_fraction: float) -> dict[str, str]:
  """train/validation by context: the contexts with the smallest sha1(id) go to validation
  (at least one when there are two or more contexts and the fraction is positive)."""
  ranked = sorted(context_ids, key=lambda i: hashlib.sha1(i.encode()).hexdigest())
  num_val = round(validation_fraction * len(ranked))
  if validation_fraction > 0 and len(ranked) >= 2:
    num_val = min(max(1, num_val), len(ranked) - 1)
  return {cid: "validation" if k < num_val else "train" for k, cid in enumerate(ranked)}


# ---------------------------------------------------------------------------------------------
# Stages 2-5 for one context.
# ---------------------------------------------------------------------------------------------
def _precheck(code: str) -> tuple[str | None, str | None]:
  """(result variable, drop reason) before execution."""
  if not code.strip():
    return None, "empty_code"
  try:
    return specs.result_variable(code), None
  except SyntaxError:
    return None, "syntax_error"
  except ValueError:
    return None, "no_result"


def _trivial(value: Any, input_prints: set[str]) -> str | None:
  if value is None:
    return "no_result"
  if isinstance(value, (pd.DataFrame, pd.Series)) and value.empty:
    return "empty_output"
  if specs.fingerprint(value) in input_prints:
    return "unchanged_input"
  return None


def process_context(ctx: contexts_lib.Context, backend: backends_lib.Backend, sandbox: Any,
                    synth: Any, seed: int, backend_lock: Any = None) -> dict:
  """Generates, executes, filters and specifies one context's samples; returns its shard:
  {"records": [...], "counts": {...}, "drops": {reason: n}, "ops": {op: kept}}.
  `backend_lock` (optional) is held around the backend's calls (see `build`)."""
  from gift.execution.sandbox import Job

  backend_lock = backend_lock or contextlib.nullcontext()
  with backend_lock:
    intents = backend.intents(ctx, synth.intents_per_context, seed)
    samples = backend.codes(ctx, intents, synth.samples_per_intent, seed)
  drops: collections.Counter = collections.Counter()
  cands, jobs = [], []
  for intent, codes in zip(intents, samples):
    for k, code in enumerate(codes):
      var, why = _precheck(code)
      if why:
        drops[why] += 1
        continue
      cands.append((intent, k, code, var))
      jobs.append(Job(ctx.code, code, var, ctx.inputs, data_dirs=ctx.data_dirs))
  verdicts = sandbox.run_many(jobs) if jobs else []
  input_prints = {specs.fingerprint(f) for f in (ctx.frames or {}).values()}

  by_intent: dict[int, list] = collections.defaultdict(list)
  for (intent, k, code, var), v in zip(cands, verdicts):
    if v.status != "ok":
      drops[v.status] += 1
      continue
    if not v.has_result:
      drops["no_result"] += 1
      continue
    why = _trivial(v.result, input_prints)
    if why:
      drops[why] += 1
      continue
    by_intent[intent.index].append((intent, k, code, var, v.result))

  api_use: collections.Counter = collections.Counter()
  kept = []
  for index in sorted(by_intent):
    groups: dict[str, list] = {}
    for cand in by_intent[index]:
      groups.setdefault(specs.fingerprint(cand[4]), []).append(cand)
    for fp, group in groups.items():
      drops["duplicate_output"] += len(group) - 1
      best = min(group, key=lambda c: (sum(api_use[a] for a in specs.api_calls(c[2])), c[1]))
      api_use.update(specs.api_calls(best[2]))
      kept.append((fp, best))

  frames = ctx.frames or {}
  items, built = [], []
  mx = synth.spec_max_chars
  for fp, (intent, k, code, var, output) in kept:
    inputs = {n: frames[n] for n in specs.input_names(code, set(frames))}
    name = var or "result"
    td = specs.typedesc(inputs, output, name, mx.typedesc)
    ex = specs.io_examples(inputs, output, name, mx.io_examples, synth.example_rows,
                           synth.example_cols, synth.example_cell_chars)
    items.append(backends_lib.SummaryItem(code, td, ex))
    built.append((fp, intent, k, code, var, output, inputs, td, ex))
  with backend_lock:
    written = backend.summaries(items, seed) if items else []

  context_text = ctx.text()
  out = []
  for (fp, intent, k, code, var, output, inputs, td, ex), summary in zip(built, written):
    name = var or "result"
    summary = summary or specs.io_summary(inputs, output, name, code, mx.io_summary)
    meta = {"backend": backend.name, "op": intent.op, "template": intent.params.get("template"),
            "intent_index": intent.index, "sample_index": k, "seed": seed,
            "output_var": var, "output_fingerprint": fp, "apis": specs.api_calls(code),
            "context_source": ctx.source, "load_code": ctx.load_code}
    variables = {"inputs": {n: specs.describe(v) for n, v in inputs.items()},
                 "output": dict(specs.describe(output), name=name)}
    out.append({
        "id": f"{ctx.id}/{intent.index}/{k}", "context_id": ctx.id, "context": context_text,
        "intent": intent.text, "code": code, "spec_typedesc": td, "spec_io_examples": ex,
        "spec_io_summary": summary,
        "output_repr": specs.render(output, 5, 10, 30, synth.output_repr_chars),
        "variables": json.dumps(variables, sort_keys=True),
        "meta": json.dumps(meta, sort_keys=True, default=str)})
  ops = collections.Counter(json.loads(r["meta"])["template"] or json.loads(r["meta"])["op"]
                            for r in out)
  counts = {"intents": len(intents), "candidates": sum(len(c) for c in samples),
            "executed": len(jobs), "ran_ok": sum(v.status == "ok" for v in verdicts),
            "kept": len(out)}
  return {"records": out, "counts": counts, "drops": dict(drops), "ops": dict(ops)}


# ---------------------------------------------------------------------------------------------
# Shards (resumability).
# ---------------------------------------------------------------------------------------------
def config_key(synth: Any, seed: int) -> str:
  """What a shard depends on: the synth section and the seed."""
  blob = json.dumps([SHARD_VERSION, synth.to_dict(), seed], sort_keys=True, default=str)
  return hashlib.sha1(blob.encode()).hexdigest()[:16]


def shard_path(workdir: str, context_id: str) -> str:
  safe = context_id.replace("/", "__")
  return os.path.join(workdir, "shards", f"{safe}.json")


def write_shard(path: str, shard: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(shard, f, ensure_ascii=False, sort_keys=True)
  os.replace(tmp, path)


def read_shard(path: str, key: str) -> dict | None:
  try:
    with open(path, encoding="utf-8") as f:
      shard = json.load(f)
  except (OSError, ValueError):
    return None
  return shard if shard.get("config_key") == key else None


# ---------------------------------------------------------------------------------------------
# The whole build.
# ---------------------------------------------------------------------------------------------
def _sandbox(cfg: Any):
  from gift.execution.sandbox import Sandbox

  e = cfg.execution
  return Sandbox(num_workers=e.num_workers, python=e.python or None, timeout_s=e.timeout_s,
                 memory_mb=e.memory_mb, output_limit_bytes=e.output_limit_bytes)


def build(cfg: Any, workdir: str, out_dir: str | None = None, sandbox: Any = None,
          backend: backends_lib.Backend | None = None, progress: bool = True) -> dict:
  """Builds the dataset; returns the dataset card (also stored in the dataset info)."""
  t0 = time.time()
  synth, seed = cfg.synth, cfg.seed
  out_dir = out_dir or os.path.join(workdir, "tfds")
  key = config_key(synth, seed)
  own_sandbox = sandbox is None
  sandbox = sandbox or _sandbox(cfg)
  try:
    backend = backend or backends_lib.make(synth, seed)
    with _bar(None, "contexts", progress, "ctx") as bar:
      ctxs, skipped = load_contexts(synth, workdir, seed)
      skipped += probe(ctxs, sandbox)
      ctxs = [c for c in ctxs if c.frames]
      bar.update(len(ctxs))
    splits = split_of([c.id for c in ctxs], synth.validation_fraction)
    t_ctx = time.time()
    shards, resumed = {}, 0
    backend_lock = threading.Lock()

    def shard_of(ctx) -> tuple[dict, bool]:
      path = shard_path(workdir, ctx.id)
      shard = read_shard(path, key)
      if shard is not None:
        return shard, True
      shard = dict(process_context(ctx, backend, sandbox, synth, seed, backend_lock),
                   config_key=key, context_id=ctx.id)
      write_shard(path, shard)
      return shard, False

    # Two contexts in flight: one's jobs run in the sandbox's worker processes while the other's
    # outputs are filtered and specified here (the sandbox runs one `run_many` at a time and the
    # backend one call at a time, so this only overlaps the two; each shard is the same).
    with _bar(len(ctxs), "generate+execute", progress, "ctx") as bar, \
        _bar(None, "executed", progress, "job") as jobs_bar, \
        _bar(None, "kept", progress, "ex") as kept_bar, \
        concurrent.futures.ThreadPoolExecutor(2) as pool:
      futures = [pool.submit(shard_of, ctx) for ctx in ctxs]
      try:
        for ctx, future in zip(ctxs, futures):
          shard, was_read = future.result()
          resumed += was_read
          shards[ctx.id] = shard
          bar.update(1)
          jobs_bar.update(shard["counts"]["executed"])
          kept_bar.update(shard["counts"]["kept"])
      except BaseException:
        for f in futures:
          f.cancel()
        raise
    t_exec = time.time()

    by_split: dict[str, list] = {"train": [], "validation": []}
    for cid in sorted(shards):
      by_split[splits[cid]] += shards[cid]["records"]
    by_split = {k: v for k, v in by_split.items() if v}
    card = make_card(shards, skipped, splits, cfg)
    path = records_lib.write(by_split, out_dir, card)
    jsonl = os.path.join(workdir, "records.jsonl")
    records_lib.export_jsonl(path, jsonl)
    t_end = time.time()
    card["timing"] = {"contexts_s": round(t_ctx - t0, 2), "execute_s": round(t_exec - t_ctx, 2),
                      "records_s": round(t_end - t_exec, 2), "total_s": round(t_end - t0, 2),
                      "examples_per_s": round(card["kept"] / max(t_end - t0, 1e-9), 2),
                      "resumed_contexts": resumed}
    card["dataset_dir"], card["jsonl"] = path, jsonl
    with open(os.path.join(workdir, "card.json"), "w", encoding="utf-8") as f:
      json.dump(card, f, indent=1, sort_keys=True)
    return card
  finally:
    if own_sandbox:
      sandbox.close()


def card_summary(shard: dict) -> dict:
  """What the dataset card needs of one context's shard (small: no record text)."""
  fields = ("spec_typedesc", "spec_io_examples", "spec_io_summary", "code", "context")
  return {"counts": shard["counts"], "drops": shard["drops"], "ops": shard["ops"],
          "lengths": {f: [len(r[f]) for r in shard["records"]] for f in fields}}


def make_card(shards: dict, skipped: list, splits: dict, cfg: Any) -> dict:
  """The dataset card: counts per stage, drop reasons, spec lengths, operations covered.
  `shards` maps context id -> shard or its `card_summary`. Deterministic (no timings) so the
  dataset info is identical after a resume and on every runner."""
  summaries = {cid: s if "lengths" in s else card_summary(s) for cid, s in shards.items()}
  counts, drops, ops = collections.Counter(), collections.Counter(), collections.Counter()
  for summary in summaries.values():
    counts.update(summary["counts"])
    drops.update(summary["drops"])
    ops.update(summary["ops"])
  lengths = {}
  for field in ("spec_typedesc", "spec_io_examples", "spec_io_summary", "code", "context"):
    n = sorted(k for s in summaries.values() for k in s["lengths"][field]) or [0]
    lengths[field] = {"mean": round(sum(n) / len(n), 1), "max": n[-1], "median": n[len(n) // 2]}
  split_sizes = {k: sum(s["counts"]["kept"] for c, s in summaries.items() if splits[c] == k)
                 for k in ("train", "validation")}
  skip_reasons = collections.Counter(reason.split(":")[0] for _, reason in skipped)
  return {
      "version": records_lib.VERSION, "backend": cfg.synth.backend, "seed": cfg.seed,
      "contexts": {"used": len(summaries), "skipped": len(skipped),
                   "skipped_reasons": dict(sorted(skip_reasons.items())),
                   "train": sum(s == "train" for c, s in splits.items() if c in summaries),
                   "validation": sum(s == "validation" for c, s in splits.items()
                                     if c in summaries)},
      "stages": dict(sorted(counts.items())), "kept": counts["kept"],
      "drop_reasons": dict(sorted(drops.items())),
      "splits": {k: v for k, v in split_sizes.items() if v},
      "operations": dict(sorted(ops.items())), "spec_lengths": lengths, "filters": [
          "ran without error within limits", "non-trivial result (not None, not empty, not an "
          "unchanged input)", "one sample per distinct output per intent (API diversity)"],
      "config": json.loads(json.dumps(cfg.synth.to_dict(), default=str))}


def summary_table(card: dict) -> str:
  """The end-of-build table, as plain text."""
  s, t = card["stages"], card.get("timing", {})
  lines = [f"{'stage':<24}{'count':>10}",
           f"{'contexts used':<24}{card['contexts']['used']:>10}",
           f"{'contexts skipped':<24}{card['contexts']['skipped']:>10}",
           f"{'intents':<24}{s.get('intents', 0):>10}",
           f"{'candidates':<24}{s.get('candidates', 0):>10}",
           f"{'executed':<24}{s.get('executed', 0):>10}",
           f"{'ran ok':<24}{s.get('ran_ok', 0):>10}",
           f"{'kept':<24}{card['kept']:>10}"]
  lines += [f"  dropped: {k:<13}{v:>10}" for k, v in sorted(card["drop_reasons"].items())]
  lines += [f"  skipped: {k:<13}{v:>10}" for k, v in
            sorted(card["contexts"]["skipped_reasons"].items())]
  lines += [f"{'split ' + k:<24}{v:>10}" for k, v in card["splits"].items()]
  if t:
    lines.append(f"{'seconds':<24}{t['total_s']:>10.1f}")
    lines.append(f"{'examples/s':<24}{t['examples_per_s']:>10.1f}")
  return "\n".join(lines)


def verify(data_dir: str, ctxs: list[contexts_lib.Context], sandbox: Any) -> dict:
  """Re-executes every record's code in its context; returns {"checked", "mismatched": [ids],
  "reasons": {id: why}} where a mismatch is a different output fingerprint or a failed run."""
  from gift.execution.sandbox import Job

  by_id = {c.id: c for c in ctxs}
  rows = [r for split in records_lib.splits(data_dir)
          for r in records_lib.load_split(data_dir, split)]
  jobs, metas = [], []
  for r in rows:
    ctx, meta = by_id[r["context_id"]], json.loads(r["meta"])
    jobs.append(Job(ctx.code, r["code"], meta["output_var"], ctx.inputs, data_dirs=ctx.data_dirs))
    metas.append(meta)
  verdicts = sandbox.run_many(jobs)
  reasons = {}
  for r, m, v in zip(rows, metas, verdicts):
    if not v.has_result:
      reasons[r["id"]] = f"{v.status}: {v.error_type} {(v.error_message or '')[:100]}"
    elif specs.fingerprint(v.result) != m["output_fingerprint"]:
      reasons[r["id"]] = "different output: " + specs.render(v.result, 3, 6, 20, 200)
  return {"checked": len(rows), "mismatched": sorted(reasons), "reasons": reasons}


def main(argv: list[str]) -> int:
  cfg, rest = config_lib.parse_args(argv)
  parser = gift.ArgumentParser(prog="gift build-data", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="contexts, shards, records.jsonl, tfds/")
  parser.add_argument("--out", default="", help="TFDS output dir (default: WORKDIR/tfds)")
  parser.add_argument("--verify", action="store_true",
                      help="re-execute every record and check it reproduces its output")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  parser.add_argument("--runner", default="local", choices=("local", "beam"),
                      help="local: this machine's process pool; beam: an Apache Beam pipeline "
                      "(pip install 'gift[beam]')")
  parser.add_argument("--beam_pipeline_options", default="",
                      help="Beam flags, e.g. \"--runner=DataflowRunner --project=P ...\" "
                      "(default: the multi-process DirectRunner, 2 workers, on this machine)")
  parser.add_argument("--require_isolation", action="store_true",
                      help="stop when a worker's sandbox lacks an isolation layer")
  args = parser.parse_args(rest)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  os.makedirs(args.workdir, exist_ok=True)
  if args.runner == "beam":
    from gift.synth import beam_build  # Beam is imported only here

    card = beam_build.build(cfg, args.workdir, args.out or None, args.beam_pipeline_options,
                            args.require_isolation)
    print(summary_table(card))
    print(f"dataset: {card['dataset_dir']}\njsonl:   {card['jsonl']}")
    if not args.verify:
      return 0
  with _sandbox(cfg) as sandbox:
    beam_lib.check_isolation(sandbox, args.require_isolation)
    if args.runner == "local":
      card = build(cfg, args.workdir, args.out or None, sandbox, progress=not args.quiet)
      print(summary_table(card))
      print(f"dataset: {card['dataset_dir']}\njsonl:   {card['jsonl']}")
    if args.verify:
      ctxs, _ = load_contexts(cfg.synth, args.workdir, cfg.seed)
      probe(ctxs, sandbox)
      result = verify(card["dataset_dir"], ctxs, sandbox)
      print(f"verify: {result['checked']} records re-executed, "
            f"{len(result['mismatched'])} mismatched")
      for rid in result["mismatched"][:10]:
        print(f"  {rid}: {result['reasons'][rid]}")
      if result["mismatched"]:
        return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
