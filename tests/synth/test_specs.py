"""Specs from executed values: TypeDesc, I/O examples, I/O summary, AST input detection."""
import numpy as np
import pandas as pd
import pytest

from gift.synth import specs


@pytest.fixture
def df():
  return pd.DataFrame({"region": ["north", "south", "north", "east"], "units": [3, 5, 7, 1],
                       "note": ["a" * 100, "b", "c", "d"]})


def test_input_names_reads_before_writes():
  code = "df = df.dropna()\nresult = df.merge(other, on='k')\nresult['x'] = y"
  assert specs.input_names(code, {"df", "other", "y", "unused"}) == ["df", "other", "y"]
  assert specs.input_names("df = 1\ndf + 1", {"df"}) == []
  assert specs.input_names("[x for x in df.a if x > t]", {"df", "t", "x"}) == ["df", "t"]


def test_input_names_raises_on_bad_code():
  with pytest.raises(SyntaxError):
    specs.input_names("df[", {"df"})


def test_result_variable():
  assert specs.result_variable("df.head()") is None
  assert specs.result_variable("a = 1\nresult = df.x.sum()") == "result"
  assert specs.result_variable("df['y'] = df.x * 2") == "df"
  with pytest.raises(ValueError):
    specs.result_variable("for i in range(3):\n  pass")


def test_typedesc_frame_output(df):
  out = df.groupby("region")["units"].sum()
  text = specs.typedesc({"df": df}, out)
  assert "df: DataFrame (4 rows x 3 columns); columns: region (str), units (int64)" in text
  assert "result: Series (3 values of dtype int64); name: units; index: region" in text


@pytest.mark.parametrize("output,expected", [
    (pd.DataFrame({"a": [1]}), "DataFrame (1 rows x 1 columns)"),
    (pd.Series([1.0, 2.0]), "Series (2 values of dtype float64)"),
    (np.int64(3), "result: int"),
    (2.5, "result: float"),
    (["a", "b"], "result: list (2 items)"),
])
def test_typedesc_kinds(df, output, expected):
  assert expected in specs.typedesc({"df": df}, output)


def test_io_examples_are_bounded(df):
  text = specs.io_examples({"df": df}, df.head(2), rows=2, cell_chars=10)
  assert "Input df:" in text and "Output result:" in text
  assert "a" * 11 not in text and "[4 rows x 3 columns]" in text
  assert len(specs.io_examples({"df": df}, df, max_chars=120)) <= 120


def test_io_summary_names_salient_columns_and_ordering(df):
  code = "df.groupby('region')['units'].sum().sort_values(ascending=False)"
  out = df.groupby("region")["units"].sum().sort_values(ascending=False)
  text = specs.io_summary({"df": df}, out, code=code)
  assert "relevant ones are region (str), units (int64)" in text
  assert "indexed by region" in text and "descending" in text
  assert "single int value" in specs.io_summary({"df": df}, 3, code="len(df)")
  assert "list of 2 items" in specs.io_summary({}, [1, 2])


def test_fingerprint_distinguishes_content_not_dtype_spelling(df):
  assert specs.fingerprint(df) == specs.fingerprint(df.copy())
  assert specs.fingerprint(df) != specs.fingerprint(df.head(3))
  assert specs.fingerprint(df) == specs.fingerprint(df.astype({"region": object}))
  assert specs.fingerprint(pd.Series([1, 2])) != specs.fingerprint([1, 2])
  assert specs.fingerprint(np.int64(5)) == specs.fingerprint(5)


def test_describe_is_json_able(df):
  import json
  d = specs.describe(df.set_index("region"))
  assert d["shape"] == [4, 2] and d["index"] == ["region"]
  json.dumps([d, specs.describe(np.zeros((2, 3))), specs.describe([1, 2])])


def test_render_series_of_arrays_and_missing_cells():
  """Object cells may hold arrays/lists (element-wise `!=`, DS-1000 problem 4's spec); only
  scalar missing values keep their NaN/None spelling."""
  s = pd.Series([np.array([1.0, np.nan]), [1, 2], None, np.nan, pd.NaT, "x" * 40], name="v")
  text = specs.render(s, rows=10, cell_chars=10)
  lines = text.splitlines()
  assert lines[0].split(None, 1)[1] == "[ 1. nan]" and lines[1].endswith("[1, 2]")
  assert [ln.split()[1] for ln in lines[2:5]] == ["None", "NaN", "NaT"]
  assert lines[5].endswith("xxxxxxx...") and text.endswith("Name: v")
  assert specs.render(pd.Index([np.array([1, 2]), "a"], dtype=object)).splitlines()[0].endswith(
      "[1 2]")
