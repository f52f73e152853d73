"""The data build end to end on a few contexts: filters and drop reasons, split by context,
records that re-execute to their output, resume after a crash giving the identical dataset."""
import json

import pandas as pd
import pytest

from gift import config as gc
from gift.data import records
from gift.execution.sandbox import Sandbox
from gift.synth import backends, build, contexts
from gift.synth.templates import Intent


@pytest.fixture(scope="module")
def sandbox():
  with Sandbox(num_workers=2, timeout_s=3.0) as sb:
    yield sb


def small_cfg(**synth):
  c = gc.base_config()
  c.synth.num_bundled, c.synth.bundled_real, c.synth.intents_per_context = 3, False, 10
  for k, v in synth.items():
    c.synth[k] = v
  return gc.finalize(c)


def test_build_writes_records_that_reexecute(tmp_path, sandbox):
  cfg = small_cfg()
  card = build.build(cfg, str(tmp_path), sandbox=sandbox, progress=False)
  s = card["stages"]
  assert card["contexts"]["used"] == 3 and s["intents"] == 30 and s["executed"] == 90
  assert card["kept"] == sum(card["splits"].values()) >= 30
  assert s["ran_ok"] - card["kept"] == sum(
      v for k, v in card["drop_reasons"].items() if k in ("duplicate_output", "unchanged_input",
                                                         "empty_output", "no_result"))
  train = list(records.load_split(card["dataset_dir"], "train"))
  val = list(records.load_split(card["dataset_dir"], "validation"))
  assert {r["context_id"] for r in train}.isdisjoint({r["context_id"] for r in val})
  assert records.card(card["dataset_dir"])["kept"] == card["kept"]
  r = train[0]
  assert r["spec_typedesc"].startswith("Inputs:\ndf: DataFrame")
  assert "Output" in r["spec_io_examples"]
  assert json.loads(r["variables"])["inputs"]["df"]["type"] == "DataFrame"
  ctxs, _ = build.load_contexts(cfg.synth, str(tmp_path), cfg.seed)
  result = build.verify(card["dataset_dir"], ctxs, sandbox)
  assert (result["checked"], result["mismatched"]) == (card["kept"], [])
  assert "kept" in build.summary_table(card)


def test_resume_after_interruption_is_identical(tmp_path, sandbox, monkeypatch):
  cfg = small_cfg()
  build.build(cfg, str(tmp_path / "a"), sandbox=sandbox, progress=False)
  real, calls = build.write_shard, []

  def crash_on_second(path, shard):
    calls.append(path)
    if len(calls) == 2:
      raise KeyboardInterrupt("simulated crash")
    real(path, shard)

  monkeypatch.setattr(build, "write_shard", crash_on_second)
  with pytest.raises(KeyboardInterrupt):
    build.build(cfg, str(tmp_path / "b"), sandbox=sandbox, progress=False)
  monkeypatch.setattr(build, "write_shard", real)
  card = build.build(cfg, str(tmp_path / "b"), sandbox=sandbox, progress=False)
  # The first shard was written; with two contexts in flight a later one may have been too.
  assert 1 <= card["timing"]["resumed_contexts"] < card["contexts"]["used"]
  # identical up to the workdir, which `load_code` names
  a = (tmp_path / "a" / "records.jsonl").read_text().replace(str(tmp_path / "a"), "W")
  b = (tmp_path / "b" / "records.jsonl").read_text().replace(str(tmp_path / "b"), "W")
  assert a == b and len(a) > 1000
  assert records.card(str(tmp_path / "a" / "tfds")) == records.card(str(tmp_path / "b" / "tfds"))


class FixedBackend(backends.Backend):
  """One intent whose samples exercise every filter."""
  name = "fixed"
  CODES = [
      "df[df['x'] > 1",  # syntax_error
      "for i in range(2):\n  pass",  # no result expression/variable
      "df['nope']",  # error (KeyError)
      "while True:\n  pass\nresult = 1",  # timeout
      "None",  # no_result
      "df",  # unchanged_input
      "df[df['x'] > 100]",  # empty_output
      "df['x'].sum()",  # kept
      "int(df['x'].sum())",  # duplicate_output of the previous one
      "result = df['x'].max()",  # kept (assigned result variable)
  ]

  def intents(self, context, num, seed):
    return [Intent(context.id, 0, "test", "Sum x.", (), {})]

  def codes(self, context, intents, n, seed):
    return [list(self.CODES)]


def test_filters_record_drop_reasons(sandbox):
  frame = pd.DataFrame({"x": [1, 2, 3]})
  ctx = contexts.Context("t/x", [("code", "df.head()", "")], contexts.PRELUDE, {"df": frame},
                         "csv", inputs={"df": frame})
  shard = build.process_context(ctx, FixedBackend(), sandbox, small_cfg().synth, 0)
  assert shard["drops"] == {"syntax_error": 1, "no_result": 2, "error": 1, "timeout": 1,
                            "unchanged_input": 1, "empty_output": 1, "duplicate_output": 1}
  kept = {r["code"]: r for r in shard["records"]}
  assert set(kept) == {"df['x'].sum()", "result = df['x'].max()"}
  assert "result: int" in kept["result = df['x'].max()"]["spec_typedesc"]
  assert shard["counts"] == {"intents": 1, "candidates": 10, "executed": 8, "ran_ok": 6,
                             "kept": 2}


def test_split_by_context_is_deterministic_and_nonempty():
  ids = [f"c{i}" for i in range(20)]
  s = build.split_of(ids, 0.1)
  assert s == build.split_of(list(reversed(ids)), 0.1)
  assert sum(v == "validation" for v in s.values()) == 2
  assert list(build.split_of(["a", "b"], 0.1).values()).count("validation") == 1
  assert set(build.split_of(["a"], 0.1).values()) == {"train"}


def test_notebook_and_csv_in_a_private_folder_build(tmp_path, sandbox):
  """A user's notebook that reads a CSV beside it, in a mode-0700 root-owned folder (the
  sandbox's jobs run as an unprivileged uid): every context builds; `synth.data_dirs` adds a
  folder the notebook reads by absolute path; a notebook whose file is missing is skipped with
  a reason naming that file."""
  import os

  import nbformat

  proj, extra = tmp_path / "home" / "proj", tmp_path / "shared_data"
  proj.mkdir(parents=True)
  extra.mkdir()
  rows = "\n".join(f"{r},{p},{u}" for r, p, u in zip("NSEWNSEW" * 3, "abcabcab" * 3, range(24)))
  (proj / "sales.csv").write_text("region,product,units\n" + rows + "\n")
  (extra / "prices.csv").write_text("product,price\na,1.5\nb,2.0\nc,3.25\n")
  cells = [nbformat.v4.new_code_cell("import pandas as pd\nsales = pd.read_csv('sales.csv')\n"
                                     f"prices = pd.read_csv({str(extra / 'prices.csv')!r})")]
  for name, cell in (("nb", cells), ("broken", [nbformat.v4.new_code_cell(
      "import pandas as pd\ndf = pd.read_csv('missing.csv')")])):
    nb = nbformat.v4.new_notebook()
    nb.cells = cell
    nbformat.write(nb, str(proj / f"{name}.ipynb"))
  for d in (proj, proj.parent, extra):
    os.chmod(d, 0o700)
  assert os.stat(proj).st_uid == os.getuid()
  cfg = small_cfg(contexts=(str(proj),), data_dirs=(str(extra),), intents_per_context=6,
                  validation_fraction=0.0)
  card = build.build(cfg, str(tmp_path / "w"), sandbox=sandbox, progress=False)
  rows = list(records.load_split(card["dataset_dir"], "train"))
  assert {r["context_id"].split("/")[0] for r in rows} == {"csv", "nb"}, card
  assert card["contexts"]["used"] == 2 and card["contexts"]["skipped_reasons"] == {
      "probe_failed": 1}
  nb_rows = [r for r in rows if r["context_id"].startswith("nb/")]
  assert nb_rows and "pd.read_csv('sales.csv')" in nb_rows[0]["context"]
  ctxs, skipped = build.load_contexts(cfg.synth, str(tmp_path / "w"), cfg.seed)
  reasons = build.probe(ctxs, sandbox)
  (cid, reason), = reasons
  assert cid.startswith("nb/broken") and f"{proj}/missing.csv" in reason, reason
  assert sorted(os.listdir(proj)) == ["broken.ipynb", "nb.ipynb", "sales.csv"]
