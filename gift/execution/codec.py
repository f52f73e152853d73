"""Data-only serialization of execution results: values in, JSON bytes out, values back.

Self-contained (stdlib + numpy + pandas, Python >= 3.9, pandas 1.5 .. 3.x, numpy 1.26 .. 2.x): the
sandbox zygote loads this file by path under whatever interpreter runs the jobs.

Security model. `encode` runs inside the untrusted job, so its type checks are about faithful,
bounded output, not about safety (the job controls its own process anyway). Safety lives in
`decode`, which runs in the caller: it parses JSON (no pickle, no eval, no imports, no attribute
lookups chosen by the data), accepts only the fixed set of tags below, checks every dtype against a
whitelist and every buffer length against its shape, and enforces a byte, node and depth budget.

Supported: None, bool, int, float (NaN/inf), complex, str, bytes, list, tuple, dict, set,
frozenset, datetime/date/time/timedelta, numpy scalars and ndarrays (bool/int/uint/float/complex/
datetime64/timedelta64/str/bytes/object), pandas DataFrame, Series, Index, RangeIndex, MultiIndex,
DatetimeIndex (also tz-aware) and TimedeltaIndex (with their freq), CategoricalIndex, IntervalIndex,
PeriodIndex, Timestamp, Timedelta, Interval, Period, NaT, NA, the nullable/string extension dtypes,
interval, period and sparse dtypes. Exact types only: subclasses and other objects raise
`CodecError`. Self-referential containers raise `CodecError` (cycle), as do values over budget.

Time zones cross as data (`_tz_tree`): a named zone (pytz, zoneinfo, dateutil) by its IANA name,
a fixed offset (pytz.FixedOffset, datetime.timezone, dateutil tzoffset) as seconds east of UTC.
The decoder rebuilds them the way its own pandas does (pytz before pandas 2, zoneinfo /
datetime.timezone after), so values decoded in one interpreter compare equal under
`pd.testing.assert_*` there, whichever interpreter encoded them. Date offsets (freq of an index,
a Period) cross by class name, n and plain keywords, which are stable across pandas versions
(their string aliases are not: "M" became "ME").

Wire format: one JSON document. JSON-native values stand for themselves (str, bool, None, int,
finite float, list); everything else is a dict tagged by "t".
"""
from __future__ import annotations

import base64
import datetime
import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd

MAX_BYTES = 16 << 20  # default budget of the encoded document
MAX_NODES = 1_000_000  # default number of encoded values (array buffers count as one)
MAX_DEPTH = 100

_RAW_KINDS = frozenset("biufcmMUS")  # numpy kinds stored as raw little/big-endian buffers
_EXT_DTYPES = frozenset([
    "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float32",
    "Float64", "boolean", "string", "str", "string[python]", "string[pyarrow]"])
_INDEX_TYPE_NAMES = frozenset([
    "Index", "DatetimeIndex", "TimedeltaIndex", "CategoricalIndex", "Int64Index", "UInt64Index",
    "Float64Index", "NumericIndex", "IntervalIndex", "PeriodIndex"])
_CLOSED = frozenset(["right", "left", "both", "neither"])
_TZ_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*")
# Date offsets that may be rebuilt from (class name, n, normalize, plain keywords).
_OFFSETS = frozenset([
    "Day", "Hour", "Minute", "Second", "Milli", "Micro", "Nano", "BusinessDay", "Week",
    "WeekOfMonth", "LastWeekOfMonth", "MonthEnd", "MonthBegin", "BusinessMonthEnd",
    "BusinessMonthBegin", "SemiMonthEnd", "SemiMonthBegin", "QuarterEnd", "QuarterBegin",
    "BQuarterEnd", "BQuarterBegin", "YearEnd", "YearBegin", "BYearEnd", "BYearBegin", "Easter",
    "FY5253", "FY5253Quarter", "DateOffset"])
_DATETIME_TYPES = (datetime.datetime, datetime.date, datetime.time)


class CodecError(ValueError):
  """A value that cannot (or may not) be serialized, or a malformed/over-budget document."""


def _is_pandas_index(x: Any) -> bool:
  t = type(x)
  return (t.__name__ in _INDEX_TYPE_NAMES and t.__module__.split(".")[0] == "pandas"
          and isinstance(x, pd.Index))


def _tz_tree(tz: Any) -> dict | None:
  """A time zone as data: {"name": IANA name} or {"offset_s": seconds east of UTC}."""
  if tz is None:
    return None
  if tz is datetime.timezone.utc:
    return {"name": "UTC"}
  name = getattr(tz, "zone", None) or getattr(tz, "key", None)  # pytz, zoneinfo
  if name is None and type(tz).__module__.startswith("dateutil"):
    if type(tz).__name__ == "tzutc":
      name = "UTC"
    elif getattr(tz, "_filename", None):  # tz.gettz("Europe/Paris"): a tzfile
      name = str(tz._filename).split("zoneinfo/")[-1]
  if isinstance(name, str) and _TZ_NAME.fullmatch(name):
    return {"name": name}
  offset = tz.utcoffset(None) if name is None else None  # None for zones with rules
  if isinstance(offset, datetime.timedelta):
    return {"offset_s": int(offset.total_seconds())}
  raise CodecError(f"cannot serialize time zone {tz!r}")


def _offset_tree(off: Any) -> dict:
  """A pandas date offset (an index freq, a Period's freq) as data."""
  name = type(off).__name__
  kw = dict(off.kwds)
  if (name not in _OFFSETS or type(off).__module__.split(".")[0] != "pandas"
      or not all(type(v) in (int, bool, str) for v in kw.values())):
    raise CodecError(f"cannot serialize date offset {off!r}")
  return {"name": name, "n": int(off.n), "normalize": bool(off.normalize), "kw": kw}


class _Encoder:

  def __init__(self, max_bytes: int, max_nodes: int):
    self.bytes_left, self.nodes_left = max_bytes, max_nodes
    self.path: set[int] = set()  # ids of the containers being encoded (cycle detection)

  def _charge(self, nbytes: int) -> None:
    self.nodes_left -= 1
    self.bytes_left -= nbytes
    if self.nodes_left < 0:
      raise CodecError("result too large: more values than the node budget")
    if self.bytes_left < 0:
      raise CodecError("result too large: over the byte budget")

  def value(self, x: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
      raise CodecError(f"result nested deeper than {MAX_DEPTH} levels")
    t = type(x)
    if x is None or t is bool:
      self._charge(5)
      return x
    if t is int:
      self._charge(24)
      if abs(x) < 1 << 62:
        return x
      try:
        digits = str(x)
      except ValueError as e:  # Python's int->str digit limit
        raise CodecError(f"integer too large: {e}") from None
      self._charge(len(digits))
      return {"t": "int", "v": digits}
    if t is float:
      self._charge(24)
      return x if math.isfinite(x) else {"t": "float", "v": repr(x)}
    if t is str:
      self._charge(len(x) + 2)
      return x
    if t is bytes:
      self._charge(len(x) * 4 // 3 + 8)
      return {"t": "bytes", "v": base64.b64encode(x).decode("ascii")}
    if t is complex:
      self._charge(48)
      return {"t": "complex", "v": [repr(x.real), repr(x.imag)]}
    if t in (list, tuple, set, frozenset, dict):
      return self._container(x, t, depth)
    if t in (datetime.datetime, datetime.date, datetime.time):
      self._charge(40)
      return {"t": t.__name__, "v": x.isoformat()}
    if t is datetime.timedelta:
      self._charge(40)
      return {"t": "timedelta", "v": [x.days, x.seconds, x.microseconds]}
    if t is np.ndarray:
      self._charge(16)
      return {"t": "nd", "a": self.array(x, depth)}
    if isinstance(x, np.generic) and t.__module__ == "numpy":
      self._charge(16)
      return {"t": "np", "a": self.array(np.asarray(x), depth)}
    return self._pandas(x, t, depth)

  def _container(self, x: Any, t: type, depth: int) -> Any:
    if id(x) in self.path:
      raise CodecError("result is self-referential (a container holds itself)")
    self._charge(8)
    self.path.add(id(x))
    try:
      if t is dict:
        keys = [self.value(k, depth + 1) for k in x]
        return {"t": "dict", "k": keys, "v": [self.value(v, depth + 1) for v in x.values()]}
      items = [self.value(v, depth + 1) for v in x]
      return items if t is list else {"t": t.__name__, "v": items}
    finally:
      self.path.discard(id(x))

  def _pandas(self, x: Any, t: type, depth: int) -> Any:
    if x is pd.NaT:
      self._charge(8)
      return {"t": "nat"}
    if x is pd.NA:
      self._charge(8)
      return {"t": "na"}
    if t is pd.Timestamp:
      self._charge(48)
      naive = x if x.tz is None else x.tz_convert("UTC").tz_localize(None)
      return {"t": "ts", "v": naive.isoformat(), "tz": _tz_tree(x.tz)}
    if t is pd.Timedelta:
      self._charge(24)
      return {"t": "td", "v": int(x.value)}
    if t is pd.Interval:
      self._charge(24)
      return {"t": "interval", "l": self.value(x.left, depth + 1),
              "r": self.value(x.right, depth + 1), "closed": x.closed}
    if t is pd.Period:
      self._charge(48)
      return {"t": "period", "ordinal": int(x.ordinal), "freq": _offset_tree(x.freq)}
    if t is pd.DataFrame:
      self._charge(16)
      cols = [self.column(x.iloc[:, i], depth + 1) for i in range(x.shape[1])]
      return {"t": "df", "columns": self.index(x.columns, depth + 1), "cols": cols,
              "index": self.index(x.index, depth + 1)}
    if t is pd.Series:
      self._charge(16)
      return {"t": "series", "col": self.column(x, depth + 1),
              "index": self.index(x.index, depth + 1), "name": self.value(x.name, depth + 1)}
    if t is pd.RangeIndex or t is pd.MultiIndex or _is_pandas_index(x):
      return self.index(x, depth)
    raise CodecError(f"cannot serialize a value of type {t.__module__}.{t.__qualname__} "
                     "(only plain data: scalars, containers, numpy and pandas objects)")

  def index(self, idx: Any, depth: int) -> dict:
    self._charge(16)
    t = type(idx)
    if t is pd.RangeIndex:
      return {"t": "range", "start": int(idx.start), "stop": int(idx.stop), "step": int(idx.step),
              "name": self.value(idx.name, depth + 1)}
    if t is pd.MultiIndex:
      return {"t": "mi", "levels": [self.column(lev, depth + 1) for lev in idx.levels],
              "codes": [self.array(np.asarray(c), depth + 1) for c in idx.codes],
              "names": [self.value(n, depth + 1) for n in idx.names]}
    if not _is_pandas_index(idx):
      raise CodecError(f"cannot serialize an index of type {t.__module__}.{t.__qualname__}")
    tree = {"t": "index", "col": self.column(idx, depth + 1),
            "name": self.value(idx.name, depth + 1)}
    if t.__name__ in ("DatetimeIndex", "TimedeltaIndex") and idx.freq is not None:
      tree["freq"] = _offset_tree(idx.freq)  # pd.testing.assert_* compares it
    return tree

  def column(self, obj: Any, depth: int) -> dict:
    """The values of a Series or Index, with their dtype."""
    self._charge(16)
    dtype = obj.dtype
    if isinstance(dtype, np.dtype):
      return self.array(np.asarray(obj), depth)
    if isinstance(dtype, pd.CategoricalDtype):
      cat = obj.array
      return {"kind": "cat", "categories": self.column(cat.categories, depth + 1),
              "codes": self.array(np.asarray(cat.codes), depth), "ordered": bool(dtype.ordered)}
    if isinstance(dtype, pd.DatetimeTZDtype):
      utc = pd.Series(obj.array).dt.tz_convert("UTC").dt.tz_localize(None)
      return {"kind": "dttz", "a": self.array(np.asarray(utc), depth), "tz": _tz_tree(dtype.tz)}
    if isinstance(dtype, pd.IntervalDtype):
      arr = obj.array
      return {"kind": "interval", "left": self.column(arr.left, depth + 1),
              "right": self.column(arr.right, depth + 1), "closed": arr.closed}
    if isinstance(dtype, pd.PeriodDtype):
      return {"kind": "period", "a": self.array(np.asarray(obj.array.asi8), depth),
              "freq": _offset_tree(dtype.freq)}
    if isinstance(dtype, pd.SparseDtype):
      dense = pd.Series(obj.array.to_dense())
      return {"kind": "sparse", "dense": self.column(dense, depth + 1),
              "fill": self.value(obj.array.fill_value, depth + 1)}
    name = str(dtype)
    if name not in _EXT_DTYPES:
      raise CodecError(f"cannot serialize pandas dtype {name!r}")
    return {"kind": "ext", "dtype": name, "v": [self.value(v, depth + 1) for v in obj.tolist()]}

  def array(self, arr: np.ndarray, depth: int) -> dict:
    self._charge(16)
    shape = [int(n) for n in arr.shape]
    if arr.dtype.kind in _RAW_KINDS:
      self._charge(arr.nbytes * 4 // 3 + 64)
      raw = np.ascontiguousarray(arr).tobytes()
      return {"dtype": arr.dtype.str, "shape": shape, "b64": base64.b64encode(raw).decode("ascii")}
    if arr.dtype.kind == "O":
      return {"dtype": "object", "shape": shape,
              "v": [self.value(v, depth + 1) for v in arr.reshape(-1).tolist()]}
    raise CodecError(f"cannot serialize numpy dtype {arr.dtype} (structured/void arrays)")


def encode(value: Any, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES) -> bytes:
  """`value` as data-only JSON bytes; raises CodecError (unsupported type, cycle, over budget)."""
  tree = _Encoder(max_bytes, max_nodes).value(value, 0)
  data = json.dumps(tree, separators=(",", ":"), allow_nan=False).encode("utf-8")
  if len(data) > max_bytes:
    raise CodecError(f"result too large: {len(data)} bytes > budget {max_bytes}")
  return data


class Budget:
  """The node budget of one or more `from_tree` calls (a result and its captured values)."""

  def __init__(self, max_nodes: int = MAX_NODES):
    self.nodes_left = max_nodes


class _Decoder:

  def __init__(self, budget: Budget):
    self.budget = budget

  def _node(self) -> None:
    self.budget.nodes_left -= 1
    if self.budget.nodes_left < 0:
      raise CodecError("document has more values than the node budget")

  def value(self, n: Any, depth: int) -> Any:
    self._node()
    if depth > MAX_DEPTH + 8:
      raise CodecError("document nested too deeply")
    if n is None or type(n) in (bool, int, float, str):
      return n
    if type(n) is list:
      return [self.value(v, depth + 1) for v in n]
    if type(n) is not dict:
      raise CodecError(f"malformed document: unexpected {type(n).__name__}")
    tag = n.get("t")
    if tag == "int":
      return int(_str(n["v"]))
    if tag == "float":
      v = _str(n["v"])
      if v not in ("nan", "inf", "-inf"):
        raise CodecError(f"malformed float {v!r}")
      return float(v)
    if tag == "complex":
      re, im = n["v"]
      return complex(float(_str(re)), float(_str(im)))
    if tag == "bytes":
      return base64.b64decode(_str(n["v"]), validate=True)
    if tag in ("tuple", "set", "frozenset"):
      items = [self.value(v, depth + 1) for v in _list(n["v"])]
      return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    if tag == "dict":
      keys, vals = _list(n["k"]), _list(n["v"])
      if len(keys) != len(vals):
        raise CodecError("malformed dict: keys and values differ in length")
      return {self.value(k, depth + 1): self.value(v, depth + 1) for k, v in zip(keys, vals)}
    if tag in ("datetime", "date", "time"):
      cls = {"datetime": datetime.datetime, "date": datetime.date, "time": datetime.time}[tag]
      return cls.fromisoformat(_str(n["v"]))
    if tag == "timedelta":
      d, s, us = (int(v) for v in _list(n["v"]))
      return datetime.timedelta(days=d, seconds=s, microseconds=us)
    if tag == "nd":
      return self.array(n["a"])
    if tag == "np":
      arr = self.array(n["a"])
      if arr.shape != ():
        raise CodecError("malformed numpy scalar: shape is not ()")
      return arr[()]
    if tag == "nat":
      return pd.NaT
    if tag == "na":
      return pd.NA
    if tag == "ts":
      ts = pd.Timestamp(_str(n["v"]))
      return ts if n["tz"] is None else ts.tz_localize("UTC").tz_convert(_tz(n["tz"]))
    if tag == "td":
      return pd.Timedelta(int(n["v"]), unit="ns")
    if tag == "interval":
      return pd.Interval(self.value(n["l"], depth + 1), self.value(n["r"], depth + 1),
                         closed=_closed(n["closed"]))
    if tag == "period":
      return pd.Period(ordinal=int(n["ordinal"]), freq=_offset(n["freq"]))
    if tag == "series":
      values, dtype = self.column(n["col"], depth + 1)
      index = self.index(n["index"], depth + 1)
      return pd.Series(values, index=index, dtype=dtype, name=self.value(n["name"], depth + 1),
                       copy=False)
    if tag == "df":
      columns = self.index(n["columns"], depth + 1)
      index = self.index(n["index"], depth + 1)
      cols = [self.column(c, depth + 1) for c in _list(n["cols"])]
      if len(cols) != len(columns):
        raise CodecError("malformed DataFrame: column count differs from its columns index")
      series = {i: pd.Series(v, index=index, dtype=dt, copy=False) for i, (v, dt) in
                enumerate(cols)}
      frame = pd.DataFrame(series, index=index) if cols else pd.DataFrame(index=index)
      frame.columns = columns
      return frame
    if tag in ("range", "mi", "index"):
      return self.index(n, depth)
    raise CodecError(f"malformed document: unknown tag {tag!r}")

  def index(self, n: Any, depth: int) -> pd.Index:
    self._node()
    tag = n.get("t") if type(n) is dict else None
    if tag == "range":
      return pd.RangeIndex(int(n["start"]), int(n["stop"]), int(n["step"]),
                           name=self.value(n["name"], depth + 1))
    if tag == "mi":
      levels = [pd.Index(v, dtype=dt, tupleize_cols=False)
                for v, dt in (self.column(c, depth + 1) for c in _list(n["levels"]))]
      codes = [self.array(c) for c in _list(n["codes"])]
      names = [self.value(v, depth + 1) for v in _list(n["names"])]
      return pd.MultiIndex(levels=levels, codes=codes, names=names, verify_integrity=True)
    if tag == "index":
      values, dtype = self.column(n["col"], depth + 1)
      idx = pd.Index(values, dtype=dtype, name=self.value(n["name"], depth + 1),
                     tupleize_cols=False)
      if n.get("freq") is not None:
        cls = {"M": pd.DatetimeIndex, "m": pd.TimedeltaIndex}.get(idx.dtype.kind)
        if cls is None:
          raise CodecError(f"malformed index: a freq on a {idx.dtype} index")
        idx = cls(idx, freq=_offset(n["freq"]))
      return idx
    raise CodecError(f"malformed document: expected an index, got tag {tag!r}")

  def column(self, n: Any, depth: int) -> tuple[Any, Any]:
    """(values, dtype) to build a Series/Index from."""
    self._node()
    if type(n) is not dict:
      raise CodecError("malformed column")
    kind = n.get("kind")
    if kind is None:
      arr = self.array(n, depth)
      return arr, arr.dtype
    if kind == "cat":
      cats, cat_dtype = self.column(n["categories"], depth + 1)
      codes = self.array(n["codes"])
      if codes.dtype.kind not in "iu" or codes.ndim != 1:
        raise CodecError("malformed categorical codes")
      categories = pd.Index(cats, dtype=cat_dtype, tupleize_cols=False)
      values = pd.Categorical.from_codes(codes, categories=categories,
                                         ordered=bool(n["ordered"]))
      return values, values.dtype
    if kind == "dttz":
      arr = self.array(n["a"])
      if arr.dtype.kind != "M" or arr.ndim != 1:
        raise CodecError("malformed tz-aware datetime column")
      values = pd.Series(arr).dt.tz_localize("UTC").dt.tz_convert(_tz(n["tz"])).array
      return values, values.dtype
    if kind == "interval":
      left, left_dtype = self.column(n["left"], depth + 1)
      right, right_dtype = self.column(n["right"], depth + 1)
      values = pd.arrays.IntervalArray.from_arrays(
          pd.Index(left, dtype=left_dtype, tupleize_cols=False),
          pd.Index(right, dtype=right_dtype, tupleize_cols=False), closed=_closed(n["closed"]))
      return values, values.dtype
    if kind == "period":
      arr = self.array(n["a"])
      if arr.dtype != np.int64 or arr.ndim != 1:
        raise CodecError("malformed period column: ordinals must be a 1-d int64 array")
      values = pd.arrays.PeriodArray(arr, dtype=pd.PeriodDtype(_offset(n["freq"])))
      return values, values.dtype
    if kind == "sparse":
      dense, _ = self.column(n["dense"], depth + 1)
      values = pd.arrays.SparseArray(dense, fill_value=self.value(n["fill"], depth + 1))
      return values, values.dtype
    if kind == "ext":
      name = _str(n["dtype"])
      if name not in _EXT_DTYPES:
        raise CodecError(f"dtype {name!r} is not allowed")
      items = [self.value(v, depth + 1) for v in _list(n["v"])]
      try:
        values = pd.array(items, dtype=name)
      except TypeError:  # e.g. pandas 1.5 has no "str" dtype: keep the values as objects
        values = _object_array(items)
      return values, values.dtype
    raise CodecError(f"malformed column kind {kind!r}")

  def array(self, n: Any, depth: int = 0) -> np.ndarray:
    self._node()
    if type(n) is not dict:
      raise CodecError("malformed array")
    shape = tuple(int(s) for s in _list(n["shape"]))
    if any(s < 0 for s in shape) or len(shape) > 32:
      raise CodecError(f"malformed array shape {shape}")
    size = math.prod(shape)
    if n["dtype"] == "object":
      items = [self.value(v, depth + 1) for v in _list(n["v"])]
      if len(items) != size:
        raise CodecError(f"object array: {len(items)} items for shape {shape}")
      return _object_array(items).reshape(shape)
    dtype = np.dtype(_str(n["dtype"]))
    if dtype.kind not in _RAW_KINDS or dtype.hasobject or dtype.fields is not None:
      raise CodecError(f"dtype {n['dtype']!r} is not allowed")
    raw = base64.b64decode(_str(n["b64"]), validate=True)
    if len(raw) != size * dtype.itemsize:
      raise CodecError(f"array buffer of {len(raw)} bytes does not match {shape} x {dtype}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _tz(n: Any) -> Any:
  """The time zone of a `_tz_tree`, as this pandas makes it from text (pytz before pandas 2,
  zoneinfo / datetime.timezone after), so it compares equal to the zones it creates itself."""
  if type(n) is not dict:
    raise CodecError("malformed time zone")
  if "offset_s" in n:
    s = int(n["offset_s"])
    if abs(s) >= 86400:
      raise CodecError(f"malformed time zone offset {s} s")
    if s % 60:
      return datetime.timezone(datetime.timedelta(seconds=s))
    m = abs(s) // 60
    return pd.Timestamp(f"2000-01-01T00:00:00{'-' if s < 0 else '+'}{m // 60:02d}:{m % 60:02d}").tz
  name = _str(n["name"])
  if not _TZ_NAME.fullmatch(name):
    raise CodecError(f"malformed time zone name {name!r}")
  return pd.Timestamp(0, tz="UTC").tz_convert(name).tz


def _offset(n: Any) -> Any:
  """The pandas date offset of an `_offset_tree` (only the classes in _OFFSETS)."""
  if type(n) is not dict or n.get("name") not in _OFFSETS or type(n.get("kw")) is not dict:
    raise CodecError(f"malformed date offset {n!r:.200}")
  kw = n["kw"]
  if not all(type(k) is str and k.isidentifier() and type(v) in (int, bool, str)
             for k, v in kw.items()):
    raise CodecError(f"malformed date offset keywords {kw!r:.200}")
  return getattr(pd.offsets, n["name"])(int(n["n"]), normalize=bool(n["normalize"]), **kw)


def _closed(v: Any) -> str:
  if v not in _CLOSED:
    raise CodecError(f"malformed interval side {v!r}")
  return v


def _str(v: Any) -> str:
  if type(v) is not str:
    raise CodecError(f"malformed document: expected a string, got {type(v).__name__}")
  return v


def _list(v: Any) -> list:
  if type(v) is not list:
    raise CodecError(f"malformed document: expected a list, got {type(v).__name__}")
  return v


def _object_array(items: list) -> np.ndarray:
  arr = np.empty(len(items), dtype=object)
  for i, v in enumerate(items):  # element-wise: np.array(items) would nest sequences
    arr[i] = v
  return arr


def decode(data: bytes, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES) -> Any:
  """The value encoded in `data`; raises CodecError on anything malformed or over budget."""
  if len(data) > max_bytes:
    raise CodecError(f"document of {len(data)} bytes is over the budget of {max_bytes}")
  try:
    return from_tree(json.loads(data), Budget(max_nodes))
  except CodecError:
    raise
  except (ValueError, RecursionError) as e:
    raise CodecError(f"malformed document: {type(e).__name__}: {e}") from None


def from_tree(tree: Any, budget: Budget) -> Any:
  """The value of an already-parsed JSON document (e.g. spliced into a larger message)."""
  try:
    return _Decoder(budget).value(tree, 0)
  except CodecError:
    raise
  except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError) as e:
    raise CodecError(f"malformed document: {type(e).__name__}: {e}") from None
