"""GIFT records on disk: a TFDS dataset of ArrayRecord shards, readable without TensorFlow.

One example per executed, kept sample; every field is text (JSON text for `variables`, `meta`):

  id                "<context id>/<intent index>/<sample index>", unique
  context_id        the notebook prefix it came from (train and validation share none)
  context           the prefix as notebook script text (`data/prompts.py` format)
  intent            the natural-language task
  code              the kept code sample (its final expression / assigned variable is the output)
  spec_typedesc     types of inputs and output          (`synth/specs.py`)
  spec_io_examples  bounded renderings of inputs/output
  spec_io_summary   natural-language I/O summary
  output_repr       bounded rendering of the recorded output
  variables         JSON: {"inputs": {name: type description}, "output": {...}}
  meta              JSON: backend, op, sample index, seed, output fingerprint, context code, ...

The dataset card (counts per stage, drop reasons, spec lengths, operations covered) is stored in
the dataset info's metadata (`card(path)`), the version in its version directory
(`<out>/gift_synth/<version>/`).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator, Mapping

FIELDS = ("id", "context_id", "context", "intent", "code", "spec_typedesc", "spec_io_examples",
          "spec_io_summary", "output_repr", "variables", "meta")
NAME = "gift_synth"
VERSION = "1.0.0"
RELEASE_NOTES = {"1.0.0": "GIFT records: context, intent, code, three I/O specs, output."}


def _tfds():
  import tensorflow_datasets as tfds  # imported lazily: it is slow and only needed here

  return tfds


@functools.cache
def _builder_class():
  """Defined on first use (TFDS registers builder classes by name, once per process)."""
  tfds = _tfds()

  class GiftSynth(tfds.core.GeneratorBasedBuilder):
    """Writes given GIFT records (one list per split) with a dataset card as metadata."""
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = RELEASE_NOTES

    def __init__(self, *, splits: Mapping[str, list[dict]], card: dict, **kwargs):
      self._splits, self._card = splits, card
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description="GIFT4Code-style grounded instruction-tuning records built by "
                      "`gift build-data`: notebook context, intent, executed code, I/O specs.",
          features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in FIELDS}),
          metadata=tfds.core.MetadataDict(card=self._card))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(rows) for split, rows in self._splits.items()}

    def _generate_examples(self, rows):
      for row in rows:
        yield row["id"], {k: row[k] for k in FIELDS}

  assert GiftSynth.name == NAME, GiftSynth.name
  return GiftSynth


@functools.cache
def _beam_builder_class():
  """The same dataset written by a Beam pipeline (TFDS's own Beam support): the split
  generators return PCollections of (id, record) that `build(pipeline)` adds to TFDS's
  pipeline, and the card is read from `card()` once the pipeline has run."""

  class GiftSynth(_builder_class(), skip_registration=True):  # the name stays gift_synth
    def __init__(self, *, build, split_names, card, **kwargs):
      self._build, self._split_names, self._card_fn = build, tuple(split_names), card
      super().__init__(splits={}, card={}, **kwargs)

    def _split_generators(self, dl_manager, pipeline):
      by_split = self._build(pipeline)
      return {name: by_split[name] for name in self._split_names}

    def _process_pipeline_result(self, pipeline_result):
      self.info.metadata["card"] = self._card_fn(pipeline_result)

    def _generate_splits(self, dl_manager, download_config):
      # as the local writer, which is given only non-empty splits: drop empty ones
      infos = super()._generate_splits(dl_manager, download_config)
      return [info for info in infos if info.num_examples]

  assert GiftSynth.name == NAME, GiftSynth.name
  return GiftSynth


def _check(splits: Mapping[str, list[dict]]) -> None:
  for rows in splits.values():
    for row in rows:
      example(row)


def example(row: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
  """(key, example) as the TFDS writer takes them; keys order the examples on disk."""
  missing = [k for k in FIELDS if not isinstance(row.get(k), str)]
  if missing:
    raise ValueError(f"record {row.get('id', '?')} lacks text field(s) {missing}")
  return row["id"], {k: row[k] for k in FIELDS}


def write(splits: Mapping[str, list[dict]], out_dir: str, card: dict) -> str:
  """Writes the records as `<out_dir>/gift_synth/<VERSION>/` and returns that directory.

  `splits` maps split name -> records (dicts with every field of FIELDS, all str). Written into
  a temporary directory beside the target, then renamed into place (an existing version is
  replaced only once the new one is complete)."""
  _check(splits)
  return _write(out_dir, lambda tmp: _builder_class()(
      splits=splits, card=card, data_dir=tmp, file_format="array_record"), None)


def write_beam(build: Any, split_names: Iterable[str], card: Any, out_dir: str, runner: Any,
               options: Any) -> str:
  """Writes the dataset with a Beam pipeline; like `write`, atomically.

  build(pipeline) -> {split: PCollection of (key, example)} (`example(row)`) for each of
  `split_names` (empty ones are dropped, as `write` never sees them); card(pipeline_result) ->
  the dataset card, called once the pipeline has run (e.g. reading what a combiner wrote)."""
  tfds = _tfds()
  config = tfds.download.DownloadConfig(beam_runner=runner, beam_options=options)
  return _write(out_dir, lambda tmp: _beam_builder_class()(
      build=build, split_names=split_names, card=card, data_dir=tmp,
      file_format="array_record"), config)


def _write(out_dir: str, make_builder: Any, download_config: Any) -> str:
  tfds = _tfds()
  os.makedirs(out_dir, exist_ok=True)
  final = os.path.join(out_dir, NAME, VERSION)
  tmp = tempfile.mkdtemp(prefix=".records-", dir=out_dir)
  try:
    builder = make_builder(tmp)
    tfds.disable_progress_bar()  # the data builder shows its own progress
    builder.download_and_prepare(download_config=download_config)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    old = None
    if os.path.exists(final):
      old = tempfile.mkdtemp(prefix=".old-", dir=out_dir)
      os.replace(final, os.path.join(old, VERSION))
    os.replace(os.path.join(tmp, NAME, VERSION), final)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return final


def resolve(path: str) -> str:
  """The version directory of a dataset: `path` itself if it holds `dataset_info.json`, else
  the newest `<path>/[gift_synth/]<version>/`."""
  if os.path.isfile(os.path.join(path, "dataset_info.json")):
    return path
  for base in (os.path.join(path, NAME), path):
    if os.path.isdir(base):
      versions = sorted((v for v in os.listdir(base)
                         if os.path.isfile(os.path.join(base, v, "dataset_info.json"))),
                        key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()))
      if versions:
        return os.path.join(base, versions[-1])
  raise FileNotFoundError(f"no GIFT dataset under {path!r}: expected dataset_info.json in it, "
                          f"in {NAME}/<version>/ or <version>/ below it")


class Split:
  """Random access to one split's records as dicts of str (a grain-compatible source)."""

  def __init__(self, source: Any, split: str, path: str):
    self._source, self.split, self.path = source, split, path

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, str]:
    row = self._source[index]
    return {k: v.decode("utf-8") if isinstance(v, bytes) else str(v) for k, v in row.items()}

  def __iter__(self) -> Iterator[dict[str, str]]:
    return (self[i] for i in range(len(self)))

  def __repr__(self) -> str:
    return f"Split({self.path!r}, {self.split!r}, {len(self)} records)"


def load_split(data_dir: str, split: str) -> Split:
  """The records of `split` ("train", "validation") of the dataset at `data_dir` (see
  `resolve`), read through `tfds.data_source` machinery; no TensorFlow."""
  path = resolve(data_dir)
  builder = _tfds().builder_from_directory(path)
  if split not in builder.info.splits:
    raise KeyError(f"split {split!r} not in {path}; it has {sorted(builder.info.splits)}")
  return Split(builder.as_data_source(split=split), split, path)


def card(data_dir: str) -> dict:
  """The dataset card stored in the dataset info's metadata."""
  path = resolve(data_dir)
  with open(os.path.join(path, "metadata.json"), encoding="utf-8") as f:
    return json.load(f).get("card", {})


def splits(data_dir: str) -> list[str]:
  return sorted(_tfds().builder_from_directory(resolve(data_dir)).info.splits)


def export_jsonl(data_dir: str, out_path: str, split_names: Iterable[str] | None = None) -> int:
  """Writes every record (with its split) as one JSON line, for inspection; returns the count.
  Records come out sorted by id so the file is stable."""
  rows = []
  for split in split_names or splits(data_dir):
    rows += [dict(r, split=split) for r in load_split(data_dir, split)]
  rows.sort(key=lambda r: r["id"])
  tmp = out_path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(tmp, out_path)
  return len(rows)
