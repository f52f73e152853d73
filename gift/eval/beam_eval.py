"""`gift eval ds1000|arcade --runner beam`: candidate execution as an Apache Beam pipeline.

  gift eval ds1000 --answers codex002-pandas.jsonl --runtime R --runner beam \
      [--beam_pipeline_options "--runner=FlinkRunner ..."] [--require_isolation]

Work is grouped so that each context runs once per worker: one element per DS-1000 problem (its
`code_context`), one per ARCADE notebook (its turns share the notebook's code). Per group, on a
worker with one sandbox per process (under the `--runtime` interpreter):

  prepare   DS-1000: the problem's test cases, the reference's outcome (the oracle) and the
            specs derived from it; ARCADE: the references' outputs
  generate  (with --checkpoint) prompts in the local runner's chunks of 8 (same seeds, so the
            same completions) through Beam's RunInference with a gift sampler model handler,
            the model loaded once per worker process
  score     every candidate of the group (`ds1000.score` / `arcade.score`, unchanged)

The pass flags come back to the launcher, which computes pass@k exactly as the local path
(`report.run_entry`). Completions come from a JSONL answers file (e.g. written by `gift sample`
on a TPU host) or are generated in the pipeline.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

from gift import beam as beam_lib
from gift.data import prompts as prompts_lib
from gift.eval import arcade, ds1000

CHUNK = 8  # prompts per sampler call, as in the local path (`eval.cli._generator`)


# ---------------------------------------------------------------------------------------------
# What differs between the benchmarks: a group's items, preparing and scoring them.
# ---------------------------------------------------------------------------------------------
class DS1000:
  """Groups: one problem each."""
  stop = ds1000.STOP

  def __init__(self, timeout_s: float):
    self.timeout_s = timeout_s

  @staticmethod
  def item_id(p: ds1000.Problem) -> int:
    return p.problem_id

  def prepare(self, sandbox, items: Sequence[ds1000.Problem]) -> dict:
    cases = ds1000.generate_cases(sandbox, items, timeout_s=self.timeout_s)
    outcomes, specs = ds1000.oracle(sandbox, items, cases, timeout_s=self.timeout_s)
    return {"cases": cases, "specs": specs,
            "oracle": {pid: o.passed for pid, o in outcomes.items()},
            "spec_errors": sum(k.startswith("error:") for t in specs.values() for k in t)}

  def prompt(self, state: dict, p: ds1000.Problem, kind: str) -> str:
    return ds1000.build_prompt(p, kind, state["specs"][p.problem_id][kind])

  @staticmethod
  def candidate(completion: str) -> str:
    return ds1000.postprocess(completion)

  def score(self, sandbox, items, cands: dict, state: dict) -> dict:
    outs = ds1000.score(sandbox, items, cands, state["cases"], timeout_s=self.timeout_s)
    return {pid: [o.passed for o in os_] for pid, os_ in outs.items()}


class Arcade:
  """Groups: one notebook each (its turns share the notebook's code)."""
  stop = prompts_lib.STOP

  def __init__(self, artifacts: str):
    self.artifacts = artifacts

  @staticmethod
  def item_id(t: arcade.Task) -> str:
    return t.task_id

  def prepare(self, sandbox, items: Sequence[arcade.Task]) -> dict:
    refs = arcade.reference_outputs(sandbox, items, self.artifacts)
    return {"refs": refs, "oracle": {t: isinstance(r, arcade.Output) for t, r in refs.items()},
            "spec_errors": 0}

  def prompt(self, state: dict, t: arcade.Task, kind: str) -> str:
    return t.prompt(kind)

  @staticmethod
  def candidate(completion: str) -> str:
    return prompts_lib.cut_at_stop(completion)

  def score(self, sandbox, items, cands: dict, state: dict) -> dict:
    return arcade.score(sandbox, items, cands, state["refs"], self.artifacts)


# ---------------------------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------------------------
def _transforms(bench: Any, sandbox_kw: dict, require_isolation: bool):
  import apache_beam as beam

  key = "sandbox:" + json.dumps(sandbox_kw, sort_keys=True)

  class OnSandbox(beam.DoFn):
    """A DoFn with this worker process's sandbox (created in setup, closed in teardown)."""

    def setup(self):
      from gift.execution.sandbox import Sandbox

      self.sandbox = beam_lib.acquire(key, lambda: Sandbox(**sandbox_kw))
      beam_lib.check_isolation(self.sandbox, require_isolation)

    def teardown(self):
      beam_lib.release(key, lambda sb: sb.close())

  class Prepare(OnSandbox):
    def process(self, group):
      name, items = group
      yield name, beam_lib.with_retries(str(name), lambda: bench.prepare(self.sandbox, items))

  class Score(OnSandbox):
    """(group, items, state, {kind: {item id: [candidate code]}}) -> the group's results."""

    def process(self, element):
      name, items, state, cands_by_kind = element
      flags = beam_lib.with_retries(str(name), lambda: {
          kind: bench.score(self.sandbox, items, cands, state)
          for kind, cands in cands_by_kind.items()})
      yield {"oracle": state["oracle"], "spec_errors": state["spec_errors"], "flags": flags}

  return Prepare, Score


def _sampler_handler(checkpoint: str, sampling: dict, stop: tuple):
  """RunInference's model handler: a gift checkpoint's `Sampler`, loaded once per worker
  process; an example is one chunk (its start index, its prompts), as the local path samples."""
  from apache_beam.ml.inference.base import ModelHandler

  class SamplerHandler(ModelHandler):
    def load_model(self):
      from gift.sample import Sampler

      return Sampler.from_checkpoint(checkpoint,
                                     merge_lora=sampling.get("lora", "merge") == "merge")

    def run_inference(self, batch, model, inference_args=None):
      from apache_beam.ml.inference.base import PredictionResult

      return [PredictionResult(ex, model.generate(
          list(ex[1]), n=sampling["n"], temperature=sampling["temperature"],
          top_p=sampling["top_p"], max_new_tokens=sampling["max_new_tokens"], stop=stop,
          seed=sampling["seed"] + ex[0], chat_template=sampling.get("chat_template", False)))
          for ex in batch]

    def batch_elements_kwargs(self):
      return {"min_batch_size": 1, "max_batch_size": 1}  # a chunk is already a batch

  return SamplerHandler()


def run(bench: Any, groups: list[tuple[Any, list]], kinds: list[str], sandbox_kw: dict,
        pipeline_options: str = "", require_isolation: bool = False,
        answers: dict | None = None, checkpoint: str = "", sampling: dict | None = None,
        workdir: str = ".") -> dict:
  """Evaluates `groups` [(name, items)] on Beam. With `answers` ({item id: [code]}, kind
  "answers") no sampling happens; else each kind of `kinds` is sampled from `checkpoint` with
  `sampling` (n, temperature, top_p, max_new_tokens, seed, chat_template, lora: merge |
  unmerged). Returns {"oracle": {id: passed}, "spec_errors": n, "flags": {kind: {id: [passed
  per candidate]}}}."""
  import apache_beam as beam

  Prepare, Score = _transforms(bench, sandbox_kw, require_isolation)
  out_path = os.path.join(workdir, f".beam-eval-{os.getpid()}-{int(time.time() * 1e3)}.json")
  order = [(name, i, item) for name, items in groups for i, item in enumerate(items)]
  runner, options = beam_lib.pipeline_options(pipeline_options)
  with beam.Pipeline(runner=runner, options=options) as p:
    by_name = dict(groups)
    prepared = (p | "Groups" >> beam.Create(groups) | "SpreadGroups" >> beam.Reshuffle()
                | "Prepare" >> beam.ParDo(Prepare()))
    if answers is not None:
      cands = p | "Answers" >> beam.Create([
          (name, {"answers": {bench.item_id(t): answers[bench.item_id(t)] for t in its}})
          for name, its in groups])
    else:
      cands = _generated(bench, prepared, by_name, order, kinds, checkpoint, sampling)
    results = (({"state": prepared, "cands": cands}) | "Join" >> beam.CoGroupByKey()
               | "ToScore" >> beam.Map(lambda kv: (kv[0], by_name[kv[0]], kv[1]["state"][0],
                                                   kv[1]["cands"][0]))
               | "Score" >> beam.ParDo(Score()))

    def merge(parts):
      out = {"oracle": [], "spec_errors": 0, "flags": {}}
      for part in parts:
        out["oracle"] += list(part["oracle"].items())
        out["spec_errors"] += part["spec_errors"]
        for kind, flags in part["flags"].items():
          out["flags"].setdefault(kind, []).extend(flags.items())
      return out

    def write(parts, path):
      with open(path + ".tmp", "w") as f:
        json.dump(merge(parts), f)
      os.replace(path + ".tmp", path)

    _ = (results | "Collect" >> beam.combiners.ToList()
         | "Write" >> beam.Map(write, out_path))
  with open(out_path) as f:
    doc = json.load(f)
  os.remove(out_path)
  ids = {str(bench.item_id(t)): bench.item_id(t) for _, _, t in order}
  return {"oracle": {ids[str(k)]: v for k, v in doc["oracle"]}, "spec_errors": doc["spec_errors"],
          "flags": {kind: {ids[str(k)]: v for k, v in pairs}
                    for kind, pairs in doc["flags"].items()}}


def _generated(bench, prepared, by_name, order, kinds, checkpoint, sampling):
  """{group name: {kind: {item id: [candidate]}}} sampled in the pipeline: prompts in the
  local path's chunks of CHUNK (by position over all items, per kind), RunInference, then back
  to the groups."""
  import apache_beam as beam
  from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

  position = {(name, i): k for k, (name, i, _) in enumerate(order)}

  def prompts(kv):
    name, state = kv
    for i, item in enumerate(by_name[name]):
      for kind in kinds:
        k = position[(name, i)]
        yield (kind, k - k % CHUNK), (k, bench.prompt(state, item, kind))

  def chunk(kv):
    (kind, start), members = kv
    members = sorted(members)
    return (kind, start, tuple(k for k, _ in members)), (start, tuple(t for _, t in members))

  def spread(result):
    (kind, _, positions), prediction = result
    for k, samples in zip(positions, prediction.inference):
      name, _, item = order[k]
      yield name, (kind, bench.item_id(item), [bench.candidate(c) for c in samples])

  def regroup(kv):
    name, rows = kv
    out: dict = {kind: {} for kind in kinds}
    for kind, item_id, cands in rows:
      out[kind][item_id] = cands
    return name, out

  handler = KeyedModelHandler(_sampler_handler(checkpoint, sampling, tuple(bench.stop)))
  return (prepared | "Prompts" >> beam.FlatMap(prompts) | "Chunks" >> beam.GroupByKey()
          | "ToChunk" >> beam.Map(chunk) | "Sample" >> RunInference(handler)
          | "Spread" >> beam.FlatMap(spread) | "ByGroup" >> beam.GroupByKey()
          | "Regroup" >> beam.Map(regroup))
