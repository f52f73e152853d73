"""`gift build-data --runner beam`: the data build as one Apache Beam pipeline, through TFDS's
own Beam support (the records are written by TFDS's Beam writer as ArrayRecord).

  gift build-data --config configs/synth_default.py --workdir W --runner beam \
      [--beam_pipeline_options "--runner=DataflowRunner ..."] [--require_isolation]

The pipeline, stage by stage (each worker runs the local builder's per-context code unchanged):

  units        the files contexts come from (`build.context_units`, on the launcher; bundled
               CSVs are generated there into WORKDIR/contexts)
  load         each unit's contexts (`build.load_unit`), or a skip reason
  select       one per id, sorted, the first `synth.max_contexts` (a global id list, side input)
  process      per context: probe (notebooks), then the shard cache (`WORKDIR/shards/`: a
               finished context is read back, not re-run), else `build.process_context` and
               `build.write_shard`; one sandbox per worker process (created in `setup`, closed in
               `teardown`), the backend's model loaded once per worker process; an element
               that fails is retried (`gift.beam.with_retries`)
  split        train/validation by context (`build.split_of` over the surviving ids)
  records      TFDS writes each split (examples keyed and ordered by id hash, as locally)
  card         a CombineFn over per-context summaries: exactly `build.make_card`

The same config gives the same records in the same order and the same card as the local runner.
The workdir must be a file system all workers see (the shards are the resume state).
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

from gift import beam as beam_lib
from gift.data import records as records_lib
from gift.synth import backends as backends_lib
from gift.synth import build as build_lib


def _config(cfg_dict: dict) -> Any:
  import ml_collections

  return ml_collections.ConfigDict(cfg_dict)


def _write_json(obj: Any, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, sort_keys=True)
  os.replace(tmp, path)


def _make_backend(cfg: Any) -> backends_lib.Backend:
  """The backend; a gift checkpoint's sampler is loaded once per worker process."""
  synth = cfg.synth
  if synth.backend != "gift":
    return backends_lib.make(synth, cfg.seed)
  from gift.sample import Sampler

  sampler = beam_lib.acquire(f"sampler:{synth.gift.checkpoint}",
                             lambda: Sampler.from_checkpoint(synth.gift.checkpoint))
  return backends_lib.GiftBackend(synth.gift.checkpoint, synth.temperature,
                                  synth.max_new_tokens, cfg.seed, sampler=sampler,
                                  summaries=synth.llm_summaries,
                                  summary_max_chars=synth.spec_max_chars.io_summary)


def _dofns():
  """The DoFn and CombineFn classes (defined on first use: Beam is imported only here)."""
  import apache_beam as beam
  from apache_beam.metrics import Metrics

  class LoadUnit(beam.DoFn):
    """A unit -> its contexts; skip reasons to the "skipped" output."""

    def __init__(self, max_mb: float):
      self.max_mb = max_mb

    def process(self, unit):
      ctxs, skipped = build_lib.load_unit(tuple(unit), self.max_mb)
      for s in skipped:
        yield beam.pvalue.TaggedOutput("skipped", s)
      for ctx in ctxs:
        yield ctx.id, ctx

  class ProcessContext(beam.DoFn):
    """Probe, shard cache, generate + execute + filter + specs: (context id, the shard's card
    summary), or a probe failure to "skipped". The shard itself is written to WORKDIR/shards."""

    def __init__(self, cfg_dict: dict, workdir: str, require_isolation: bool):
      self.cfg_dict, self.workdir, self.require_isolation = cfg_dict, workdir, require_isolation
      self.executed = Metrics.counter("gift", "contexts_executed")
      self.resumed = Metrics.counter("gift", "contexts_resumed")

    def setup(self):
      self.cfg = _config(self.cfg_dict)
      self.key = build_lib.config_key(self.cfg.synth, self.cfg.seed)
      self.sandbox_key = "sandbox:" + json.dumps(self.cfg_dict["execution"], sort_keys=True)
      self.sandbox = beam_lib.acquire(self.sandbox_key, lambda: build_lib._sandbox(self.cfg))
      beam_lib.check_isolation(self.sandbox, self.require_isolation)
      self.backend = _make_backend(self.cfg)

    def _work(self, element):
      ctx = copy.deepcopy(element)  # the probe completes a context in place
      failed = build_lib.probe([ctx], self.sandbox) if ctx.frames is None else []
      if failed:
        return None, failed[0]
      path = build_lib.shard_path(self.workdir, ctx.id)
      shard = build_lib.read_shard(path, self.key)
      if shard is not None:
        self.resumed.inc()
        return shard, None
      shard = dict(build_lib.process_context(ctx, self.backend, self.sandbox, self.cfg.synth,
                                             self.cfg.seed), config_key=self.key,
                   context_id=ctx.id)
      build_lib.write_shard(path, shard)
      self.executed.inc()
      return shard, None

    def process(self, element):
      cid, ctx = element
      shard, failed = beam_lib.with_retries(cid, lambda: self._work(ctx))
      if failed:
        yield beam.pvalue.TaggedOutput("skipped", failed)
        return
      yield cid, build_lib.card_summary(shard)

    def teardown(self):
      beam_lib.release(self.sandbox_key, lambda sb: sb.close())
      if self.cfg.synth.backend == "gift":
        beam_lib.release(f"sampler:{self.cfg.synth.gift.checkpoint}")

  class CardFn(beam.CombineFn):
    """The dataset card from per-context summaries and skips: `build.make_card` exactly."""

    def __init__(self, cfg_dict: dict):
      self.cfg_dict = cfg_dict

    def create_accumulator(self):
      return {}, []

    def add_input(self, acc, item):
      kind, value = item
      if kind == "context":
        acc[0][value[0]] = value[1]
      else:
        acc[1].append(tuple(value))
      return acc

    def merge_accumulators(self, accs):
      summaries, skipped = {}, []
      for s, k in accs:
        summaries.update(s)
        skipped += k
      return summaries, skipped

    def extract_output(self, acc):
      cfg = _config(self.cfg_dict)
      summaries, skipped = acc
      splits = build_lib.split_of(sorted(summaries), cfg.synth.validation_fraction)
      return {"card": build_lib.make_card(summaries, sorted(skipped), splits, cfg),
              "splits": splits}

  return LoadUnit, ProcessContext, CardFn


def _contexts_pipeline(pipeline, units: list, skipped: list, cfg_dict: dict, workdir: str,
                       require_isolation: bool, card_path: str) -> None:
  """Contexts -> shards (WORKDIR/shards) -> the card and the split of each context, written as
  JSON to `card_path` by the last stage."""
  import apache_beam as beam

  LoadUnit, ProcessContext, CardFn = _dofns()
  synth = _config(cfg_dict).synth
  loaded = (pipeline | "Units" >> beam.Create(units) | "SpreadUnits" >> beam.Reshuffle()
            | "Load" >> beam.ParDo(LoadUnit(synth.max_file_mb)).with_outputs(
                "skipped", main="contexts"))
  limit = synth.max_contexts or None
  chosen_ids = (loaded.contexts | "Ids" >> beam.Keys() | "IdList" >> beam.combiners.ToList()
                | "ChosenIds" >> beam.Map(lambda ids: set(sorted(set(ids))[:limit])))
  data_dirs = tuple(os.path.abspath(os.path.expanduser(d)) for d in synth.data_dirs)

  def select(kv, chosen):
    cid, ctxs = kv
    if cid in chosen:
      ctx = next(iter(ctxs))
      ctx.data_dirs = tuple(dict.fromkeys(ctx.data_dirs + data_dirs))
      yield cid, ctx

  processed = (loaded.contexts | "OnePerId" >> beam.GroupByKey()
               | "Select" >> beam.FlatMap(select, chosen=beam.pvalue.AsSingleton(chosen_ids))
               | "SpreadContexts" >> beam.Reshuffle()
               | "Process" >> beam.ParDo(ProcessContext(cfg_dict, workdir, require_isolation))
               .with_outputs("skipped", main="shards"))
  skips = ((pipeline | "LauncherSkips" >> beam.Create(skipped), loaded.skipped, processed.skipped)
           | "AllSkips" >> beam.Flatten() | "TagSkip" >> beam.Map(lambda s: ("skipped", s)))
  summaries = processed.shards | "TagContext" >> beam.Map(lambda s: ("context", s))
  _ = ((summaries, skips) | "CardInputs" >> beam.Flatten()
       | "Card" >> beam.CombineGlobally(CardFn(cfg_dict))
       | "WriteCard" >> beam.Map(_write_json, card_path))


def _records_pipeline(pipeline, workdir: str, key: str, split_of: dict) -> dict:
  """{split: PCollection of (key, example)} from the finished shards, for TFDS's writer."""
  import apache_beam as beam

  def examples(cid):
    shard = build_lib.read_shard(build_lib.shard_path(workdir, cid), key)
    if shard is None:
      raise RuntimeError(f"shard of {cid} missing or from another config: "
                         f"{build_lib.shard_path(workdir, cid)}")
    return [records_lib.example(r) for r in shard["records"]]

  return {split: (pipeline | f"Contexts_{split}" >> beam.Create(
      sorted(c for c, s in split_of.items() if s == split))
      | f"Spread_{split}" >> beam.Reshuffle() | f"Read_{split}" >> beam.FlatMap(examples))
      for split in sorted(set(split_of.values()))}


def build(cfg: Any, workdir: str, out_dir: str | None = None, pipeline_options: str = "",
          require_isolation: bool = False) -> dict:
  """Builds the dataset on Beam; returns the card, as `build.build` does (plus, in `timing`,
  the pipeline's counters: contexts executed / resumed, retries).

  Two pipelines: the first turns contexts into shards and computes the card; the second, TFDS's
  own, writes the records of the non-empty splits (TFDS needs the split names up front, and
  which splits are empty is known only once every context ran)."""
  import apache_beam as beam
  from apache_beam.metrics.metric import MetricsFilter

  t0 = time.time()
  out_dir = out_dir or os.path.join(workdir, "tfds")
  units, skipped = build_lib.context_units(cfg.synth, workdir, cfg.seed)
  cfg_dict = cfg.to_dict()
  card_path = os.path.join(workdir, "beam", f"card-{os.getpid()}-{int(t0 * 1e3)}.json")
  runner, options = beam_lib.pipeline_options(pipeline_options)
  pipeline = beam.Pipeline(runner=runner, options=options)
  _contexts_pipeline(pipeline, units, skipped, cfg_dict, workdir, require_isolation, card_path)
  result = pipeline.run()
  result.wait_until_finish()
  counters = {c.key.metric.name: c.committed for c in result.metrics().query(
      MetricsFilter().with_namespace("gift"))["counters"]}
  with open(card_path, encoding="utf-8") as f:
    card, split_of = (lambda d: (d["card"], d["splits"]))(json.load(f))
  os.remove(card_path)
  t_exec = time.time()

  split_of = {c: s for c, s in split_of.items() if s in card["splits"]}
  key = build_lib.config_key(cfg.synth, cfg.seed)
  runner, options = beam_lib.pipeline_options(pipeline_options, light=True)
  path = records_lib.write_beam(lambda p: _records_pipeline(p, workdir, key, split_of),
                                sorted(set(split_of.values())), lambda _: card, out_dir, runner,
                                options)
  jsonl = os.path.join(workdir, "records.jsonl")
  records_lib.export_jsonl(path, jsonl)
  out = dict(card)
  t_end = time.time()
  out["timing"] = {"execute_s": round(t_exec - t0, 2), "records_s": round(t_end - t_exec, 2),
                   "total_s": round(t_end - t0, 2),
                   "examples_per_s": round(out["kept"] / max(t_end - t0, 1e-9), 2),
                   "resumed_contexts": counters.get("contexts_resumed", 0),
                   "executed_contexts": counters.get("contexts_executed", 0),
                   "retries": counters.get("retries", 0), "runner": "beam"}
  out["dataset_dir"], out["jsonl"] = path, jsonl
  with open(os.path.join(workdir, "card.json"), "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1, sort_keys=True)
  return out
