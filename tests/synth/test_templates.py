"""Template intents: deterministic, and every code variant computes what its phrasing says.

Each variant is executed (our own template code, so in-process) on bundled contexts and its
output is compared with an answer computed independently from the intent's parameters."""
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from gift.synth import contexts, templates


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
  ctxs, skipped = contexts.bundled(str(tmp_path_factory.mktemp("bundled")), num=24, seed=0,
                                   include_real=False)
  assert not skipped
  return {c.id: c for c in ctxs}


def run(code, frames):
  ns = {"pd": pd, **{k: v.copy() for k, v in frames.items()}}
  *head, last = code.split("\n")
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a variant relying on deprecated behaviour is a bug
    exec("\n".join(head), ns)
    return eval(last, ns)


def close(a, b):
  a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
  return a.shape == b.shape and np.allclose(a, b, equal_nan=True)


def check(t, p, df, frames, out):
  """Asserts that `out` is the answer to the intent with params `p` on frame `df`."""
  c = p.get("column")
  if t == "select":
    assert list(out.columns) == p["columns"] and len(out) == len(df)
  elif t == "filter_numeric":
    want = df[df[c] > p["value"]] if p["op"] == ">" else df[df[c] < p["value"]]
    assert out.index.equals(want.index)
  elif t in ("filter_category", "filter_both"):
    want = df[df[c] == p["value"]]
    if t == "filter_both":
      want = want[want[p["column2"]] > p["value2"]]
    assert out.index.equals(want.index)
  elif t == "sort":
    assert sorted(out.index) == sorted(df.index)
    vals = out[c].dropna()
    assert (vals.is_monotonic_increasing if p["ascending"] else vals.is_monotonic_decreasing)
  elif t == "top_k":
    want = df[c].nlargest(p["k"]) if p["largest"] else df[c].nsmallest(p["k"])
    assert close(out[c], want)
  elif t == "groupby_agg":
    want = df.groupby(p["by"])[c].agg(p["agg"])
    assert close(out.sort_index(), want.sort_index())
    if p["ranked"]:
      assert out.is_monotonic_decreasing
  elif t == "multi_agg":
    for col, agg in zip(p["columns"], p["aggs"]):
      assert close(out[col].sort_index(), df.groupby(p["by"])[col].agg(agg).sort_index())
  elif t == "counts":
    assert close(out.sort_index(), df[c].value_counts().sort_index())
    assert out.is_monotonic_decreasing
  elif t == "distinct":
    assert out == df[c].nunique()
  elif t == "pivot":
    want = df.groupby([p["index"], p["columns"]])[c].agg(p["agg"]).unstack()
    assert close(out.reindex(index=want.index, columns=want.columns), want)
  elif t == "merge":
    want = df.merge(frames[p["right"]], on=p["key"])
    assert len(out) == len(want) and set(want.columns) <= set(out.columns)
  elif t == "merge_agg":
    want = df.merge(frames[p["right"]], on=p["key"]).groupby(p["by"])[c].agg(p["agg"])
    assert close(out.sort_index(), want.sort_index())
  elif t == "string_contains":
    assert out.index.equals(df[df[c].str.contains(p["contains"], regex=False)].index)
  elif t == "string_prefix":
    assert out.index.equals(df[df[c].str.startswith(p["startswith"])].index)
  elif t == "string_transform":
    want = {"upper": df[c].str.upper(), "lower": df[c].str.lower(), "len": df[c].str.len(),
            "first": df[c].str.split().str[0]}[p["transform"]]
    assert list(out) == list(want)
  elif t == "per_year":
    years = df[p["date"]].dt.year
    want = df.groupby(years)[c].agg(p["agg"]) if c else years.value_counts()
    assert close(out.sort_index(), want.sort_index())
  elif t == "per_month":
    month = df[p["date"]].dt.strftime("%Y-%m")
    assert close(out.sort_index(), df.groupby(month)[c].sum().sort_index())
  elif t == "in_year":
    assert out.index.equals(df[df[p["date"]].dt.year == p["year"]].index)
  elif t == "weekday":
    assert close(out.sort_index(), df[p["date"]].dt.day_name().value_counts().sort_index())
  elif t == "latest":
    assert out == (df[p["date"]].max() if p["latest"] else df[p["date"]].min())
  elif t == "missing_counts":
    assert close(out, df.isna().sum())
  elif t == "missing_drop":
    assert out.index.equals(df[df[c].notna()].index)
  elif t == "missing_fill":
    assert not out.isna().any() and close(out[df[c].notna()], df[c].dropna())
    assert np.isclose(out[df[c].isna()], getattr(df[c], p["stat"])()).all()
  elif t == "missing_share":
    assert math.isclose(out, df[c].isna().mean())
  elif t == "derived":
    a, b = df[p["left"]], df[p["right"]]
    want = {"ratio": a / b, "product": a * b, "difference": a - b}[p["kind"]]
    assert close(out[c], want) and len(out.columns) == len(df.columns) + 1
  elif t == "stats":
    assert close(out[["mean", "min", "max"]], [df[c].mean(), df[c].min(), df[c].max()])
  elif t == "correlation":
    assert math.isclose(out, df[p["columns"][0]].corr(df[p["columns"][1]]))
  elif t == "filter_group_pick":
    assert out == df[df[c] == p["value"]].groupby(p["by"])[p["target"]].mean().idxmax()
  elif t == "group_top_k":
    for g, rows in out.groupby(p["by"]):
      want = df[df[p["by"]] == g][c].nlargest(p["k"])
      assert close(sorted(rows[c], reverse=True), list(want))
  elif t == "share_of_total":
    want = df.groupby(p["by"])[c].sum() / df[c].sum() * 100
    assert close(out.sort_index(), want.sort_index())
  else:
    raise AssertionError(f"no check for template {t}")


def test_every_operation_variant_computes_its_intent(bundled):
  seen = set()
  for ctx in bundled.values():
    for intent in templates.generate(ctx, 48, seed=0):
      t = intent.params["template"]
      assert len(intent.codes) >= 2, intent
      for code in intent.codes:
        out = run(code, ctx.frames)
        try:
          check(t, intent.params, ctx.frames["df"], ctx.frames, out)
        except AssertionError as e:
          raise AssertionError(f"{ctx.id} {t}: {intent.text!r}\n{code}\n-> {out!r}") from e
      seen.add(t)
  assert seen == set(templates.OPERATIONS), set(templates.OPERATIONS) - seen


def test_intents_are_deterministic_and_varied(bundled):
  ctx = bundled["bundled/sales"]
  a, b = templates.generate(ctx, 60, seed=3), templates.generate(ctx, 60, seed=3)
  assert a == b and len(a) == 60
  assert a != templates.generate(ctx, 60, seed=4)
  assert len({i.codes for i in a}) == 60  # distinct tasks
  phrasings = {i.text.split()[0] for i in a if i.params["template"] == "groupby_agg"}
  assert len(phrasings) >= 2 or sum(i.params["template"] == "groupby_agg" for i in a) < 3


def test_frames_without_columns_of_a_kind_skip_its_operations():
  frame = pd.DataFrame({"name": [f"w{i} v{i}" for i in range(40)], "x": np.arange(40) * 1.5})
  ctx = contexts.Context("t/tiny", [], "", {"df": frame}, "csv")
  ops = {i.params["template"] for i in templates.generate(ctx, 50)}
  assert not ops & {"merge", "per_year", "pivot", "missing_drop", "groupby_agg"}
  assert {"string_transform", "sort"} <= ops
