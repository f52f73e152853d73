"""codec: lossless round trips of plain data, refusal of everything else, strict decoding."""
import datetime
import json
import math
import os
import subprocess
import textwrap
import zoneinfo

import dateutil.tz
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
    pd.Timedelta("1D 2ns"), pd.Interval(1, 2), pd.Interval(0.5, 1.5, closed="both"),
    pd.Period("2020-03", freq="M"), pd.Period("2020Q2", freq="Q-NOV"),
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
    pd.Series(pd.cut([3, 23, 44], [1, 10, 25, 50])),  # categorical of intervals (DS-1000 229)
    pd.Series(pd.arrays.IntervalArray.from_breaks([0.5, 1.5, 2.5], closed="left"), name="iv"),
    pd.Series(pd.period_range("2020-01", periods=3, freq="M")),
    pd.Series(pd.arrays.SparseArray([0, 0, 3], fill_value=0)),
    pd.Series(pd.arrays.SparseArray([np.nan, 1.0, np.nan])),
    pd.Series([1, 2], index=pd.date_range("2020-01-31", periods=2, freq="2W")),
], ids=["interval_categories", "interval", "period", "sparse", "sparse_nan", "freq"])
def test_interval_period_sparse_and_freq_roundtrip(value):
  back = codec.decode(codec.encode(value))
  pd.testing.assert_series_equal(back, value)  # compares the index freq too
  assert getattr(back.index, "freq", None) == getattr(value.index, "freq", None)


@pytest.mark.parametrize("value", [
    pd.interval_range(0, 3, closed="left", name="bins"),
    pd.period_range("2020Q1", periods=2, freq="Q"),
    pd.date_range("2020-01-01", periods=3, freq="D", tz="US/Central"),
    pd.date_range("2020-01-31", periods=3, freq="ME"),
    pd.timedelta_range("1D", periods=2, freq="12h"),
    pd.CategoricalIndex(pd.interval_range(0, 2)),
])
def test_extension_indexes_roundtrip_with_freq(value):
  back = codec.decode(codec.encode(value))
  pd.testing.assert_index_equal(back, value, exact=True)
  assert getattr(back, "freq", None) == getattr(value, "freq", None)


CHICAGO = "2015-12-01 00:00:00-06:00"


@pytest.mark.parametrize("tz,tree", [
    (datetime.timezone(datetime.timedelta(hours=-6)), {"offset_s": -21600}),
    (dateutil.tz.tzoffset(None, -21600), {"offset_s": -21600}),
    (datetime.timezone.utc, {"name": "UTC"}), (dateutil.tz.tzutc(), {"name": "UTC"}),
    (zoneinfo.ZoneInfo("America/Chicago"), {"name": "America/Chicago"}),
    (dateutil.tz.gettz("America/Chicago"), {"name": "America/Chicago"}),
], ids=["timezone", "dateutil_offset", "utc", "dateutil_utc", "zoneinfo", "dateutil_file"])
def test_time_zones_cross_as_names_or_offsets(tz, tree):
  """Zones travel as data and come back as this pandas makes them from text, the same instants
  (DS-1000 11-14 carry pytz.FixedOffset(-360) from pandas 1.5)."""
  ts = pd.Timestamp(CHICAGO).tz_convert(tz)
  frame = pd.DataFrame({"t": pd.Series([ts, ts + pd.Timedelta("1h")])})
  doc = json.loads(codec.encode(frame))
  assert doc["cols"][0]["tz"] == tree
  back, back_ts = codec.decode(codec.encode(frame)), codec.decode(codec.encode(ts))
  assert back_ts == ts and back["t"].tolist() == frame["t"].tolist()
  want = pd.Timestamp(CHICAGO).tz if "offset_s" in tree else pd.Timestamp(0, tz="UTC").tz_convert(
      tree["name"]).tz
  assert back["t"].dt.tz == want and back_ts.tz == want
  pd.testing.assert_frame_equal(back, codec.decode(codec.encode(back)))  # a fixed point


@pytest.mark.slow
def test_values_of_the_pinned_runtime_survive_a_trip_through_this_pandas(tmp_path):
  """pandas 1.5 (pytz, "M" aliases) -> this pandas -> pandas 1.5 compares equal there; needs
  GIFT_DS1000_RUNTIME (a `gift runtime create --preset ds1000` dir)."""
  rt = os.environ.get("GIFT_DS1000_RUNTIME")
  if not rt or not os.path.isfile(os.path.join(rt, "gift_runtime.json")):
    pytest.skip("GIFT_DS1000_RUNTIME does not name a built runtime (tests/eval/test_runtime.py "
                "builds one there)")
  make = textwrap.dedent(f"""\
      import importlib.util, json, sys
      import pandas as pd
      spec = importlib.util.spec_from_file_location("codec", {codec.__file__!r})
      codec = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(codec)
      values = [pd.DataFrame({{"t": pd.to_datetime(["2015-12-01 00:00:00-06:00"])}}),
                pd.Series([1, 2], index=pd.date_range("2000-01-31", periods=2, freq="M")),
                pd.Series(pd.cut(pd.Series([3, 23]), [1, 10, 25])),
                pd.Series(pd.date_range("2020-03-07", periods=2, freq="H", tz="US/Central"))]
      if sys.argv[1] == "encode":
        print(json.dumps([codec.encode(v).decode() for v in values]))
      else:
        for v, d in zip(values, json.load(sys.stdin)):
          frame = isinstance(v, pd.DataFrame)
          check = pd.testing.assert_frame_equal if frame else pd.testing.assert_series_equal
          check(codec.decode(d.encode()), v)  # index freq and tz dtype included
        print("same")
      """)
  script = tmp_path / "make.py"
  script.write_text(make)
  python = os.path.join(rt, "bin", "python")
  docs = json.loads(subprocess.run([python, str(script), "encode"], capture_output=True,
                                   text=True, check=True).stdout)
  here = [codec.decode(d.encode()) for d in docs]
  assert str(here[0]["t"].dt.tz) == "UTC-06:00" and here[1].index.freq == pd.offsets.MonthEnd()
  back = subprocess.run([python, str(script), "check"], input=json.dumps(
      [codec.encode(v).decode() for v in here]), capture_output=True, text=True)
  assert back.returncode == 0 and back.stdout.strip() == "same", back.stderr[-2000:]


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
    pd.Series([1, 2]).rolling(2), type("DF", (pd.DataFrame,), {})(),
    pd.Timestamp("2020", tz=datetime.timezone(datetime.timedelta(hours=1), "odd name")).tz,
], ids=["dict_subclass", "object", "function", "groupby", "structured", "rolling", "df_subclass",
        "tzinfo_object"])
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
    {"t": "ts", "v": "2020-01-01", "tz": {"name": "../../etc/passwd"}},
    {"t": "ts", "v": "2020-01-01", "tz": {"offset_s": 90000}},
    {"t": "period", "ordinal": 1, "freq": {"name": "__class__", "n": 1, "normalize": False,
                                           "kw": {}}},
    {"t": "period", "ordinal": 1, "freq": {"name": "Day", "n": 1, "normalize": False,
                                           "kw": {"__init__": 1}}},
    {"t": "interval", "l": 1, "r": 2, "closed": "sideways"},
], ids=["object_buffer", "short_buffer", "structured", "unknown_tag", "float_text", "bad_dtype",
        "tz_path", "tz_offset", "offset_class", "offset_kw", "interval_side"])
def test_malformed_documents_are_refused(doc):
  with pytest.raises(codec.CodecError):
    codec.decode(json.dumps(doc).encode())
