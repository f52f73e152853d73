"""pass@k: the unbiased estimator of Chen et al. (2021), per problem and averaged.

With n samples of which c pass, the probability that at least one of k samples drawn without
replacement passes is

  pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i),

computed as the product (never as binomials, which overflow for n in the hundreds). Greedy
decoding is its own mode: one sample at temperature 0, pass@1 = the fraction of problems solved.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k of one problem with `c` of `n` samples correct; needs 1 <= k <= n."""
  if not 0 <= c <= n:
    raise ValueError(f"pass_at_k: c={c} must be in [0, n={n}]")
  if not 1 <= k <= n:
    raise ValueError(f"pass_at_k: k={k} must be in [1, n={n}]")
  if n - c < k:  # every draw of k contains a correct sample
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], ks: Sequence[int]) -> dict[int, float]:
  """Average pass@k over problems given `(n, c)` per problem, for each k <= min(n).

  Ks larger than some problem's n are left out (the estimator is undefined there).
  """
  counts = list(counts)
  if not counts:
    return {}
  n_min = min(n for n, _ in counts)
  return {k: float(np.mean([pass_at_k(n, c, k) for n, c in counts])) for k in ks if k <= n_min}


def by_group(passed: Mapping[str, Sequence[bool]], groups: Mapping[str, str],
             ks: Sequence[int]) -> dict[str, dict[int, float]]:
  """pass@k per group (e.g. perturbation type) and over all problems (`"all"`).

  Args:
    passed: problem id -> one bool per sample.
    groups: problem id -> group name.
  """
  members: dict[str, list[tuple[int, int]]] = {"all": []}
  for pid, flags in passed.items():
    nc = (len(flags), int(sum(flags)))
    members["all"].append(nc)
    members.setdefault(groups[pid], []).append(nc)
  return {g: mean_pass_at_k(nc, ks) for g, nc in members.items()}
