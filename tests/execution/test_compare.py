"""compare: exact matching and each ARCADE-style lenient rule on its own flag."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from gift.execution import compare

REF = pd.DataFrame({"name": ["a", "b"], "score": [1.0, 2.0]})
ALL = compare.FuzzyRules()


def only(**flags) -> compare.FuzzyRules:
  """All rules off except the given ones."""
  return dataclasses.replace(compare.EXACT, **flags)


def test_exact_match_requires_type_dtype_and_value():
  assert compare.exact_match(REF.copy(), REF)
  assert not compare.exact_match(REF.astype({"score": "float32"}), REF)
  assert not compare.exact_match(REF.score, REF)
  assert compare.exact_match(np.array([1.0, np.nan]), np.array([1.0, np.nan]))
  assert not compare.exact_match(np.array([1, 2]), np.array([1.0, 2.0]))
  assert compare.exact_match([1, (2, "x")], [1, (2, "x")])
  assert not compare.exact_match((1, 2), [1, 2])
  assert compare.exact_match(float("nan"), float("nan"))


def test_problem_checker_runs_outside_and_failures_are_wrong_answers():
  def checker(hyp, ref):
    pd.testing.assert_frame_equal(hyp, ref)
  assert compare.check(REF.copy(), REF, checker)
  assert not compare.check(REF.iloc[:1], REF, checker)
  assert not compare.check(REF, REF, lambda h, r: False)


def test_series_vs_one_column_frame():
  ref = REF[["score"]]
  assert compare.fuzzy_match(REF.score, ref, only(series_as_frame=True))
  assert compare.fuzzy_match(ref, REF.score, only(series_as_frame=True))
  assert not compare.fuzzy_match(REF.score, ref, compare.EXACT)


def test_sequences_are_canonicalized():
  rules = only(canonicalize_sequences=True)
  for hyp in ([1, 2], (1, 2), np.array([1, 2]), pd.Index([1, 2]), pd.Series([1, 2])):
    assert compare.fuzzy_match(hyp, [1, 2], rules), type(hyp)
  assert not compare.fuzzy_match([2, 1], [1, 2], rules)
  assert not compare.fuzzy_match((1, 2), [1, 2], compare.EXACT)


def test_reference_columns_found_by_value_ignoring_names_index_and_extras():
  hyp = pd.DataFrame({"x": ["a", "b"], "extra": [0, 0], "s": [1.0, 2.0]}, index=[10, 11])
  assert compare.fuzzy_match(hyp, REF, only(columns_by_value=True))
  assert not compare.fuzzy_match(hyp, REF, compare.EXACT)
  assert not compare.fuzzy_match(hyp.iloc[:, :2], REF, only(columns_by_value=True))
  assert not compare.fuzzy_match(hyp.iloc[::-1], REF, only(columns_by_value=True))


def test_float_tolerance():
  assert compare.fuzzy_match(0.1 + 0.2, 0.3, only(float_tolerance=True))
  assert not compare.fuzzy_match(0.1 + 0.2, 0.3, compare.EXACT)
  assert not compare.fuzzy_match(0.31, 0.3, only(float_tolerance=True))
  hyp = REF.assign(score=REF.score + 1e-9)
  assert compare.fuzzy_match(hyp, REF, ALL)
  assert not compare.fuzzy_match(hyp, REF, only(columns_by_value=True))


@pytest.mark.parametrize("hyp,ref,expected", [
    (None, None, True), (float("nan"), np.nan, True), ({"a": [1.0]}, {"a": [1.0 + 1e-12]}, True),
    ("x", "y", False), (True, 1, True), (pd.Series([1, 2]), pd.Series([1, 3]), False),
])
def test_lenient_scalars_and_containers(hyp, ref, expected):
  assert compare.fuzzy_match(hyp, ref, ALL) is expected
