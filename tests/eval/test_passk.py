"""pass@k against hand-computed values and exact binomials."""
import math

import pytest

from gift.eval import passk


@pytest.mark.parametrize("n,c,k,want", [
    (5, 1, 1, 0.2),                 # c / n
    (5, 2, 2, 1 - 3 / 10),          # 1 - C(3,2)/C(5,2)
    (10, 3, 5, 1 - 21 / 252),       # 1 - C(7,5)/C(10,5)
    (10, 0, 5, 0.0),
    (4, 3, 2, 1.0),                 # n - c < k: every pair holds a correct sample
    (20, 20, 20, 1.0),
])
def test_pass_at_k_matches_hand_computed_values(n, c, k, want):
  assert passk.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_is_stable_where_binomials_are_huge():
  n, c, k = 1000, 37, 100
  exact = 1 - math.comb(n - c, k) / math.comb(n, k)
  assert passk.pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


def test_pass_at_k_rejects_k_above_n_and_bad_counts():
  with pytest.raises(ValueError, match="k=6"):
    passk.pass_at_k(5, 1, 6)
  with pytest.raises(ValueError, match="c=7"):
    passk.pass_at_k(5, 7, 1)


def test_mean_and_groups_average_per_problem_values_and_drop_ks_above_n():
  assert passk.mean_pass_at_k([(5, 1), (5, 0)], (1, 5, 20)) == pytest.approx({1: 0.1, 5: 0.5})
  table = passk.by_group({"a": [True, False], "b": [False, False], "c": [True, True]},
                         {"a": "Origin", "b": "Origin", "c": "Surface"}, (1, 2))
  assert table["all"] == pytest.approx({1: 0.5, 2: 2 / 3})
  assert table["Origin"] == pytest.approx({1: 0.25, 2: 0.5})
  assert table["Surface"] == pytest.approx({1: 1.0, 2: 1.0})
