"""codec: lossless round trips of plain data, refusal of everything else, strict decoding."""
import datetime
import json
import math

import numpy as np
import pandas as pd
import pytest

from gift.execution import codec

VALUES = [
    None, True, 3, 2**80, -1.5, "text", b"\x00\xff", 1 + 2j, [1, [2, "a"]], (1, "a"), {1, 2},
    frozenset([3]), {"a": 1, (1, 2): [3]}, datetime.datetime(2020, 1, 2, 3, 4, 5, 6),
    datetime.date(2020, 1, 2), datetime.timedelta(1, 2, 3), np.float32(1.5), np.int64(7),
    np.bool_(True), np.datetime64("2020-01-01T00:00:00.123", "ms"),
    pd.Timestamp("2020-01-01 01:02:03.123456789", tz="US/Eastern"), pd.Timestamp("2021-01-01"),
    pd.Timedelta("1D 2ns"),
]
FRAMES = [
    pd.DataFrame({
        "int": [1, 2, 3], "float": [1.5, np.nan, np.inf], "str": ["x", None, "z"],
        "obj": [1, "a", None], "bool": [True, False, True],
        "dt": pd.to_datetime(["2020", "2021", None]),
        "dttz": pd.date_range("2020", periods=3, tz="Europe/Paris"),
        "td": pd.to_timedelta([1, 2, 3], unit="s"), "cat": pd.Categorical(["u", "v", "u"]),
        "nullable": pd.array([1, None, 3], dtype="Int64")}),
    pd.DataFrame({"v": [1, 2, 3, 4]},
                 index=pd.MultiIndex.from_product([["a", "b"], [1, 2]], names=["k", "n"])),
    pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")])),
    pd.DataFrame([[1, 2]], columns=["dup", "dup"]),
    pd.DataFrame(),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_scalars_and_containers_roundtrip_with_exact_types(value):
  back = codec.decode(codec.encode(value))
  assert type(back) is type(value) and back == value


def test_nan_inf_and_missing_markers_roundtrip():
  back = codec.decode(codec.encode([math.nan, math.inf, -math.inf, pd.NaT, pd.NA]))
  assert math.isnan(back[0]) and back[1:3] == [math.inf, -math.inf]
  assert back[3] is pd.NaT and back[4] is pd.NA


@pytest.mark.parametrize("frame", FRAMES, ids=range(len(FRAMES)))
def test_dataframes_roundtrip_with_dtypes_and_indexes(frame):
  pd.testing.assert_frame_equal(codec.decode(codec.encode(frame)), frame)


@pytest.mark.parametrize("value", [
    pd.Series([1, 2], index=["a", "b"], name="s"), pd.Series([], dtype=float),
    pd.Series(pd.Categorical(["a", None], ordered=True)),
])
def test_series_roundtrip(value):
  pd.testing.assert_series_equal(codec.decode(codec.encode(value)), value)


@pytest.mark.parametrize("value", [
    pd.Index([1, 2, 3]), pd.Index(["a", None], dtype=object), pd.RangeIndex(0, 10, 2, name="r"),
    pd.DatetimeIndex(["2020-01-01"]), pd.TimedeltaIndex(["1s"]), pd.CategoricalIndex(["a", "b"]),
    pd.MultiIndex.from_tuples([(1, "a"), (2, "b")], names=["x", "y"]),
])
def test_indexes_roundtrip(value):
  pd.testing.assert_index_equal(codec.decode(codec.encode(value)), value, exact=True)


@pytest.mark.parametrize("value", [
    np.arange(6).reshape(2, 3), np.array(["ab", "c"]), np.array([1, "a", None], dtype=object),
    np.array([1.5, np.nan], dtype=">f4"), np.zeros((0, 3)), np.arange(10)[::3],
])
def test_ndarrays_roundtrip(value):
  back = codec.decode(codec.encode(value))
  assert back.dtype == value.dtype and back.shape == value.shape
  assert np.array_equal(back, value, equal_nan=value.dtype.kind == "f")


class Sub(dict):
  pass


@pytest.mark.parametrize("value", [
    Sub(), object(), lambda: 1, pd.Series([1]).groupby([1]), np.zeros(2, dtype=[("a", "i4")]),
    pd.period_range("2020", periods=2), type("DF", (pd.DataFrame,), {})(),
], ids=["dict_subclass", "object", "function", "groupby", "structured", "period", "df_subclass"])
def test_custom_objects_and_subclasses_are_refused(value):
  with pytest.raises(codec.CodecError):
    codec.encode(value)


def test_cycles_depth_and_budgets_are_refused():
  cyclic = []
  cyclic.append(cyclic)
  with pytest.raises(codec.CodecError, match="self-referential"):
    codec.encode(cyclic)
  nested = []
  for _ in range(200):
    nested = [nested]
  with pytest.raises(codec.CodecError, match="deeper"):
    codec.encode(nested)
  with pytest.raises(codec.CodecError, match="byte budget"):
    codec.encode(np.zeros(1000), max_bytes=1000)
  with pytest.raises(codec.CodecError, match="node budget"):
    codec.encode(list(range(100)), max_nodes=50)
  with pytest.raises(codec.CodecError, match="node budget"):
    codec.decode(codec.encode(list(range(100))), max_nodes=50)


@pytest.mark.parametrize("doc", [
    {"t": "nd", "a": {"dtype": "|O", "shape": [1], "b64": "AAAAAAAAAAA="}},  # pointers
    {"t": "nd", "a": {"dtype": "<i8", "shape": [2], "b64": "AAAAAAAAAAA="}},  # short buffer
    {"t": "nd", "a": {"dtype": [["a", "<i4"]], "shape": [1], "b64": "AAAAAA=="}},
    {"t": "pickle", "v": "gASVAAAAAAAAAAA="}, {"t": "float", "v": "__import__('os')"},
    {"t": "series", "col": {"kind": "ext", "dtype": "period[D]", "v": []},
     "index": {"t": "range", "start": 0, "stop": 0, "step": 1, "name": None}, "name": None},
], ids=["object_buffer", "short_buffer", "structured", "unknown_tag", "float_text", "bad_dtype"])
def test_malformed_documents_are_refused(doc):
  with pytest.raises(codec.CodecError):
    codec.decode(json.dumps(doc).encode())
