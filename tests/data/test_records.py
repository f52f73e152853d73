"""GIFT records: TFDS ArrayRecord round trip without TensorFlow, card, JSONL export."""
import json
import subprocess
import sys

import pytest

from gift.data import records


def rec(i, ctx="ctx/a"):
  r = {k: f"{k} {i} ✓" for k in records.FIELDS}
  r.update(id=f"{ctx}/{i}/0", context_id=ctx, variables="{}", meta=json.dumps({"i": i}))
  return r


def test_write_then_load_round_trips_text(tmp_path):
  train = [rec(i) for i in range(5)]
  val = [rec(i, "ctx/b") for i in range(2)]
  path = records.write({"train": train, "validation": val}, str(tmp_path), {"kept": 7})
  assert path.endswith("gift_synth/1.0.0")
  src = records.load_split(str(tmp_path), "train")
  assert len(src) == 5
  assert sorted(src, key=lambda r: r["id"]) == train  # all str, unicode intact
  assert records.load_split(path, "validation")[0]["context_id"] == "ctx/b"
  assert records.card(str(tmp_path)) == {"kept": 7}
  with pytest.raises(KeyError, match="split 'test'"):
    records.load_split(str(tmp_path), "test")


def test_rewrite_replaces_version_atomically(tmp_path):
  records.write({"train": [rec(0)]}, str(tmp_path), {"n": 1})
  records.write({"train": [rec(0), rec(1)]}, str(tmp_path), {"n": 2})
  assert len(records.load_split(str(tmp_path), "train")) == 2
  assert records.card(str(tmp_path)) == {"n": 2}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["gift_synth"]  # no temp dirs left


def test_missing_field_is_an_error_naming_it(tmp_path):
  bad = rec(0)
  del bad["spec_typedesc"]
  with pytest.raises(ValueError, match="spec_typedesc"):
    records.write({"train": [bad]}, str(tmp_path), {})


def test_missing_dataset_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    records.load_split(str(tmp_path), "train")


def test_export_jsonl_is_sorted_and_complete(tmp_path):
  records.write({"train": [rec(i) for i in range(3)], "validation": [rec(9, "ctx/b")]},
                str(tmp_path / "ds"), {})
  n = records.export_jsonl(str(tmp_path / "ds"), str(tmp_path / "out.jsonl"))
  rows = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
  assert n == 4 and [r["id"] for r in rows] == sorted(r["id"] for r in rows)
  assert {r["split"] for r in rows} == {"train", "validation"}


def test_reading_does_not_import_tensorflow(tmp_path):
  records.write({"train": [rec(0)]}, str(tmp_path), {})
  code = ("import sys; from gift.data import records; "
          f"s = records.load_split({str(tmp_path)!r}, 'train'); assert len(s) == 1; "
          "print('tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"
