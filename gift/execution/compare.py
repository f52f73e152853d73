"""Output comparison, always outside the job: exact (DS-1000 style) and lenient (ARCADE style).

`exact_match(hyp, ref)` requires the same type and value (pandas' own testing helpers for frames,
series and indexes; NaN equals NaN). `fuzzy_match(hyp, ref, rules)` applies ARCADE's lenient
rules, each a flag of `FuzzyRules` so evaluations can state (and ablate) what they accept:

- series_as_frame: a Series and a one-column DataFrame are the same table.
- canonicalize_sequences: list/tuple/ndarray/Index/Series values compare as plain sequences.
- columns_by_value: a hypothesis table is right if every reference column appears in it by
  value, ignoring column names, the index and extra columns.
- float_tolerance: numbers compare with `math.isclose(rel_tol, abs_tol)`.

A problem's own checker (DS-1000's `exec_context` tests) is a callable the caller runs here, on
decoded values, never inside the job: `check(hyp, ref, checker)`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
import pandas as pd


@dataclasses.dataclass(frozen=True)
class FuzzyRules:
  series_as_frame: bool = True
  canonicalize_sequences: bool = True
  columns_by_value: bool = True
  float_tolerance: bool = True
  rel_tol: float = 1e-5
  abs_tol: float = 1e-8


EXACT = FuzzyRules(False, False, False, False)


def exact_match(hyp: Any, ref: Any) -> bool:
  """Same type and same value (dtype-exact for numpy/pandas objects, NaN == NaN)."""
  if type(hyp) is not type(ref):
    return False
  try:
    if isinstance(ref, pd.DataFrame):
      pd.testing.assert_frame_equal(hyp, ref, check_exact=True)
    elif isinstance(ref, pd.Series):
      pd.testing.assert_series_equal(hyp, ref, check_exact=True)
    elif isinstance(ref, pd.Index):
      pd.testing.assert_index_equal(hyp, ref, exact=True, check_exact=True)
    elif isinstance(ref, np.ndarray):
      return hyp.dtype == ref.dtype and hyp.shape == ref.shape and bool(
          np.array_equal(hyp, ref, equal_nan=ref.dtype.kind in "fc"))
    elif isinstance(ref, (list, tuple)):
      return len(hyp) == len(ref) and all(exact_match(h, r) for h, r in zip(hyp, ref))
    elif isinstance(ref, dict):
      return hyp.keys() == ref.keys() and all(exact_match(hyp[k], ref[k]) for k in ref)
    else:
      return _scalar_equal(hyp, ref, None)
  except (AssertionError, TypeError, ValueError):
    return False
  return True


def check(hyp: Any, ref: Any, checker: Callable[[Any, Any], Any]) -> bool:
  """A problem's own checker on (hyp, ref): passes unless it raises or returns False."""
  try:
    return checker(hyp, ref) is not False
  except Exception:  # the checker's assertion failing is a wrong answer, not our error
    return False


def fuzzy_match(hyp: Any, ref: Any, rules: FuzzyRules = FuzzyRules()) -> bool:
  """ARCADE-style lenient match of a hypothesis output against the reference output."""
  tol = (rules.rel_tol, rules.abs_tol) if rules.float_tolerance else None
  if rules.series_as_frame:
    hyp, ref = _as_frame(hyp), _as_frame(ref)
  if isinstance(ref, pd.DataFrame):
    if not isinstance(hyp, pd.DataFrame):
      return False
    if rules.columns_by_value:
      return _columns_by_value(hyp, ref, tol)
    return (list(hyp.columns) == list(ref.columns) and hyp.index.equals(ref.index)
            and all(_seq_equal(hyp.iloc[:, i], ref.iloc[:, i], tol)
                    for i in range(ref.shape[1])))
  if rules.canonicalize_sequences and _is_sequence(ref):
    return _is_sequence(hyp) and _seq_equal(hyp, ref, tol)
  if isinstance(ref, pd.Series):
    return (isinstance(hyp, pd.Series) and hyp.index.equals(ref.index)
            and _seq_equal(hyp, ref, tol))
  if _is_sequence(ref) or isinstance(ref, dict):
    return exact_match(hyp, ref) if tol is None else _nested_equal(hyp, ref, tol)
  return _scalar_equal(hyp, ref, tol)


def _as_frame(x: Any) -> Any:
  """A Series as a one-column DataFrame; a one-column DataFrame stays as is."""
  return x.to_frame() if isinstance(x, pd.Series) else x


def _is_sequence(x: Any) -> bool:
  return isinstance(x, (list, tuple, np.ndarray, pd.Index, pd.Series))


def _values(x: Any) -> list:
  if isinstance(x, (pd.Index, pd.Series)):
    return x.tolist()
  if isinstance(x, np.ndarray):
    return x.reshape(-1).tolist() if x.ndim else [x.item()]
  return list(x)


def _seq_equal(a: Any, b: Any, tol) -> bool:
  va, vb = _values(a), _values(b)
  return len(va) == len(vb) and all(_scalar_equal(x, y, tol) for x, y in zip(va, vb))


def _nested_equal(a: Any, b: Any, tol) -> bool:
  if isinstance(b, dict):
    return (isinstance(a, dict) and a.keys() == b.keys()
            and all(_nested_equal(a[k], b[k], tol) for k in b))
  if isinstance(b, (list, tuple)):
    return (type(a) is type(b) and len(a) == len(b)
            and all(_nested_equal(x, y, tol) for x, y in zip(a, b)))
  return _scalar_equal(a, b, tol)


def _columns_by_value(hyp: pd.DataFrame, ref: pd.DataFrame, tol) -> bool:
  """Every reference column equals (by values, in row order) some hypothesis column."""
  if len(hyp) != len(ref):
    return False
  hyp_cols = [hyp.iloc[:, i] for i in range(hyp.shape[1])]
  return all(any(_seq_equal(h, ref.iloc[:, j], tol) for h in hyp_cols)
             for j in range(ref.shape[1]))


def _is_missing(x: Any) -> bool:
  try:
    return x is None or x is pd.NA or x is pd.NaT or bool(pd.isna(x))
  except (TypeError, ValueError):
    return False


def _scalar_equal(a: Any, b: Any, tol) -> bool:
  if _is_missing(a) or _is_missing(b):
    return _is_missing(a) and _is_missing(b)
  numbers = (int, float, np.integer, np.floating)
  if tol is not None and isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(
      a, (bool, np.bool_)) and not isinstance(b, (bool, np.bool_)):
    return math.isclose(float(a), float(b), rel_tol=tol[0], abs_tol=tol[1])
  try:
    return bool(a == b)
  except (TypeError, ValueError):
    return False
