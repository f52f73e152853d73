"""The built-in, offline generalist + coder: intents and code written from a context's schema.

Each operation below is a function `op(pick, frames) -> Intent | None` that looks at the frames'
columns (numeric, categorical, free text, datetime, with missing values), picks columns and
constants with the seeded `pick`, and returns one intent: a natural-language phrasing (one of
several per operation) and several code variants that each do what the phrasing says, with
different pandas APIs (the coder role's n samples). None means the operation does not apply to
these frames. Every variant ends in an expression whose value is the answer (notebook `Out[]`).

Operations: select, filter (numeric, categorical, both), sort, top-k, groupby-aggregate,
multi-aggregate, counts, distinct, pivot, merge (+ aggregate), string ops (contains, prefix,
case, length, first word), datetime ops (per year, per month, one year, weekday, latest),
missing values (counts, drop, fill, share), derived columns, statistics, correlation and
multi-step tasks (filter -> group -> pick, per-group top-k, shares of a total).
"""
from __future__ import annotations

import dataclasses
import random
import re
from typing import Any, Callable

import pandas as pd

from gift.synth.contexts import Context


@dataclasses.dataclass(frozen=True)
class Intent:
  """A task for the coder. `codes` are the templates' reference variants (empty for intents
  written by an LLM); `params` name what the intent is about (columns, constants) so tests and
  the dataset card can check and count it."""
  context_id: str
  index: int
  op: str
  text: str
  codes: tuple[str, ...] = ()
  params: dict[str, Any] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Schema of a frame.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Schema:
  frame: pd.DataFrame
  numeric: list[str]
  categorical: list[str]
  text: list[str]
  dates: list[str]
  missing: list[str]

  @classmethod
  def of(cls, frame: pd.DataFrame) -> "Schema":
    numeric, categorical, text, dates = [], [], [], []
    for c in frame.columns:
      col = frame[c]
      if not isinstance(c, str):
        continue
      if pd.api.types.is_datetime64_any_dtype(col):
        dates.append(c)
      elif pd.api.types.is_bool_dtype(col):
        categorical.append(c)
      elif pd.api.types.is_numeric_dtype(col):
        nunique = col.nunique()
        if nunique <= 6:
          categorical.append(c)
        if nunique > 6 and not c.lower().endswith("id"):
          numeric.append(c)
      elif col.dtype == object or pd.api.types.is_string_dtype(col):
        nunique = col.nunique()
        if 2 <= nunique <= 30 or nunique <= len(col) // 10:
          categorical.append(c)
        elif col.dropna().map(lambda v: isinstance(v, str)).all():
          text.append(c)
    missing = [str(c) for c in frame.columns if frame[c].isna().any()]
    return cls(frame, numeric, categorical, text, dates, missing)


def h(column: str) -> str:
  """A column name as words: `unit_price` -> "unit price"."""
  return column.replace("_", " ").strip()


def nice(value: float, integer: bool = False) -> float | int:
  """A round constant near `value` (what a person would type)."""
  if integer:
    return int(round(value))
  rounded = float(f"{value:.2g}")
  return int(rounded) if rounded == int(rounded) and abs(rounded) >= 10 else rounded


def _ident(name: str) -> bool:
  return name.isidentifier()


class Pick:
  """Seeded choices (a thin wrapper so every op draws from one stream)."""

  def __init__(self, rng: random.Random):
    self.rng = rng

  def one(self, items):
    return self.rng.choice(list(items))

  def some(self, items, k: int):
    return self.rng.sample(list(items), k)

  def phrase(self, options: list[str], **kw) -> str:
    return self.one(options).format(**kw)

  def threshold(self, frame: pd.DataFrame, col: str) -> float | int:
    q = self.one([0.25, 0.5, 0.75, 0.9])
    return nice(frame[col].quantile(q), pd.api.types.is_integer_dtype(frame[col]))

  def value(self, frame: pd.DataFrame, col: str):
    top = frame[col].value_counts().index[:5]
    v = self.one(top)
    return v.item() if hasattr(v, "item") else v


AGGS = {"mean": ["average", "mean"], "sum": ["total", "sum of"], "max": ["maximum", "largest"],
        "min": ["minimum", "smallest"], "median": ["median"]}
OpFn = Callable[[Pick, dict[str, Schema]], "Intent | None"]


def _mk(op: str, text: str, codes: list[str], /, **params) -> Intent:
  return Intent("", 0, op, text, tuple(dict.fromkeys(codes)), params)


# ---------------------------------------------------------------------------------------------
# Operations.
# ---------------------------------------------------------------------------------------------
def select(p: Pick, s: dict[str, Schema]) -> Intent | None:
  cols = [str(c) for c in s["df"].frame.columns if isinstance(c, str)]
  if len(cols) < 3:
    return None
  chosen = p.some(cols, p.one([2, 3]))
  words = ", ".join(h(c) for c in chosen[:-1]) + f" and {h(chosen[-1])}"
  text = p.phrase(["Show only the {w} columns.", "Select the {w} columns.",
                   "Keep just {w} from the table.", "Give me a table with {w}."], w=words)
  return _mk("select", text, [f"df[{chosen!r}]", f"df.loc[:, {chosen!r}]",
                              f"df.filter(items={chosen!r})"], columns=chosen)


def filter_numeric(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.numeric:
    return None
  c = p.one(sc.numeric)
  t = p.threshold(sc.frame, c)
  above = p.one([True, False])
  op, meth, word = (">", "gt", "above") if above else ("<", "lt", "below")
  text = p.phrase(["Which rows have {c} {word} {t}?", "Filter the data to rows where {c} is "
                   "{cmp} {t}.", "Show all records with {c} {word} {t}."],
                  c=h(c), word=word, t=t, cmp="greater than" if above else "less than")
  codes = [f"df[df[{c!r}] {op} {t!r}]", f"df.loc[df[{c!r}].{meth}({t!r})]"]
  if _ident(c):
    codes.append(f"df.query('{c} {op} {t!r}')")
  return _mk("filter", text, codes, column=c, op=op, value=t)


def filter_category(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  cats = [c for c in sc.categorical if sc.frame[c].dtype != bool]
  if not cats:
    return None
  c = p.one(cats)
  v = p.value(sc.frame, c)
  text = p.phrase(["Show the rows where {c} is {v}.", "Filter to {c} equal to {v}.",
                   "Which records have {v} as their {c}?"], c=h(c), v=v)
  codes = [f"df[df[{c!r}] == {v!r}]", f"df[df[{c!r}].isin([{v!r}])]",
           f"df.loc[df[{c!r}].eq({v!r})]"]
  if _ident(c) and "'" not in str(v):
    codes.append(f"df.query({f'{c} == {v!r}'!r})")
  return _mk("filter", text, codes, column=c, op="==", value=v)


def filter_both(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  cats = [c for c in sc.categorical if sc.frame[c].dtype != bool]
  if not cats or not sc.numeric:
    return None
  c, n = p.one(cats), p.one(sc.numeric)
  v, t = p.value(sc.frame, c), p.threshold(sc.frame, n)
  text = p.phrase(["Find the rows with {c} {v} and {n} above {t}.",
                   "Which {v} records have {n} greater than {t}?",
                   "Filter for {c} == {v} where {n} exceeds {t}."], c=h(c), v=v, n=h(n), t=t)
  codes = [f"df[(df[{c!r}] == {v!r}) & (df[{n!r}] > {t!r})]",
           f"df.loc[df[{c!r}].eq({v!r}) & df[{n!r}].gt({t!r})]",
           f"subset = df[df[{c!r}] == {v!r}]\nsubset[subset[{n!r}] > {t!r}]"]
  return _mk("filter", text, codes, column=c, value=v, column2=n, op2=">", value2=t)


def sort(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  cols = sc.numeric + sc.dates
  if not cols:
    return None
  c = p.one(cols)
  desc = p.one([True, False])
  order = p.one(["from highest to lowest", "in descending order"]) if desc else \
      p.one(["from lowest to highest", "in ascending order"])
  text = p.phrase(["Sort the table by {c} {o}.", "Order the rows by {c}, {o}.",
                   "Show the data sorted by {c} {o}."], c=h(c), o=order)
  a = not desc
  codes = [f"df.sort_values({c!r}, ascending={a})", f"df.sort_values(by=[{c!r}], ascending={a})",
           f"df.sort_values({c!r}, ascending={a}, kind='stable')"]
  return _mk("sort", text, codes, column=c, ascending=a)


def top_k(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.numeric:
    return None
  c, k, largest = p.one(sc.numeric), p.one([3, 5, 10]), p.one([True, True, False])
  word = "highest" if largest else "lowest"
  text = p.phrase(["What are the {k} rows with the {w} {c}?", "Show the top {k} records by "
                   "{c}." if largest else "Show the bottom {k} records by {c}.",
                   "List the {k} entries with the {w} {c}."], k=k, w=word, c=h(c))
  fn = "nlargest" if largest else "nsmallest"
  codes = [f"df.{fn}({k}, {c!r})",
           f"df.sort_values({c!r}, ascending={not largest}).head({k})",
           f"df.sort_values(by={c!r}, ascending={not largest}).iloc[:{k}]"]
  return _mk("top_k", text, codes, column=c, k=k, largest=largest)


def groupby_agg(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.categorical or not sc.numeric:
    return None
  g, n, agg = p.one(sc.categorical), p.one(sc.numeric), p.one(list(AGGS))
  word = p.one(AGGS[agg])
  ranked = p.one([False, False, True])
  tail = ", from highest to lowest" if ranked else ""
  text = p.phrase(["What is the {a} {n} for each {g}{t}?", "Compute the {a} {n} per {g}{t}.",
                   "Group by {g} and show the {a} {n}{t}."], a=word, n=h(n), g=h(g), t=tail)
  sort_ = ".sort_values(ascending=False)" if ranked else ""
  codes = [f"df.groupby({g!r})[{n!r}].{agg}(){sort_}",
           f"df.groupby({g!r})[{n!r}].agg({agg!r}){sort_}",
           f"df.groupby({g!r}).agg({{{n!r}: {agg!r}}})[{n!r}]{sort_}"]
  if _ident(n):
    codes.append(f"df.groupby({g!r}).{n}.{agg}(){sort_}")
  return _mk("groupby", text, codes, by=g, column=n, agg=agg, ranked=ranked)


def multi_agg(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.categorical or len(sc.numeric) < 2:
    return None
  g = p.one(sc.categorical)
  (n1, n2), (a1, a2) = p.some(sc.numeric, 2), p.some(list(AGGS), 2)
  text = p.phrase(["For each {g}, give the {w1} {n1} and the {w2} {n2}.",
                   "Summarize by {g}: {w1} {n1} and {w2} {n2}."],
                  g=h(g), w1=AGGS[a1][0], n1=h(n1), w2=AGGS[a2][0], n2=h(n2))
  codes = [f"df.groupby({g!r}).agg({{{n1!r}: {a1!r}, {n2!r}: {a2!r}}})",
           f"df.groupby({g!r})[[{n1!r}, {n2!r}]].agg({{{n1!r}: {a1!r}, {n2!r}: {a2!r}}})",
           f"pd.DataFrame({{{n1!r}: df.groupby({g!r})[{n1!r}].{a1}(), "
           f"{n2!r}: df.groupby({g!r})[{n2!r}].{a2}()}})"]
  return _mk("groupby", text, codes, by=g, columns=[n1, n2], aggs=[a1, a2])


def counts(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.categorical:
    return None
  c = p.one(sc.categorical)
  text = p.phrase(["How many rows are there for each {c}?", "Count the records per {c}, most "
                   "common first.", "What is the frequency of each {c}?"], c=h(c))
  codes = [f"df[{c!r}].value_counts()", f"df.groupby({c!r}).size().sort_values(ascending=False)",
           f"df[{c!r}].value_counts(sort=True, ascending=False)"]
  return _mk("counts", text, codes, column=c)


def distinct(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  cols = sc.categorical + sc.text
  if not cols:
    return None
  c = p.one(cols)
  text = p.phrase(["How many distinct {c} values are there?", "Count the unique {c} entries.",
                   "What is the number of different {c}s?"], c=h(c))
  codes = [f"df[{c!r}].nunique()", f"df[{c!r}].dropna().unique().size",
           f"len(set(df[{c!r}].dropna()))"]
  return _mk("distinct", text, codes, column=c)


def pivot(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  cats = [c for c in sc.categorical if sc.frame[c].nunique() <= 12]
  if len(cats) < 2 or not sc.numeric:
    return None
  (g1, g2), n = p.some(cats, 2), p.one(sc.numeric)
  agg = p.one(["sum", "mean"])
  word = AGGS[agg][0]
  text = p.phrase(["Make a table of {a} {n} with {g1} as rows and {g2} as columns.",
                   "Pivot the data: {g1} down the side, {g2} across the top, {a} {n} in the "
                   "cells.", "Cross-tabulate {g1} against {g2} using the {a} {n}."],
                  a=word, n=h(n), g1=h(g1), g2=h(g2))
  codes = [f"df.pivot_table(index={g1!r}, columns={g2!r}, values={n!r}, aggfunc={agg!r})",
           f"df.groupby([{g1!r}, {g2!r}])[{n!r}].{agg}().unstack()",
           f"pd.crosstab(df[{g1!r}], df[{g2!r}], values=df[{n!r}], aggfunc={agg!r})"]
  return _mk("pivot", text, codes, index=g1, columns=g2, column=n, agg=agg)


def merge(p: Pick, s: dict[str, Schema]) -> Intent | None:
  links = [name for name in s if name != "df"]
  if not links:
    return None
  other = p.one(links)
  key = next((c for c in s[other].frame.columns if c in s["df"].frame.columns), None)
  if key is None:
    return None
  text = p.phrase(["Combine df with {o} on {k}.", "Join the {o} table onto df using {k}.",
                   "Attach the matching {o} information to each row of df by {k}."],
                  o=other, k=h(key))
  codes = [f"df.merge({other}, on={key!r})", f"pd.merge(df, {other}, on={key!r}, how='inner')",
           f"df.merge({other}, left_on={key!r}, right_on={key!r})"]
  return _mk("merge", text, codes, right=other, key=key)


def merge_agg(p: Pick, s: dict[str, Schema]) -> Intent | None:
  links = [name for name in s if name != "df"]
  if not links or not s["df"].numeric:
    return None
  other = p.one(links)
  key = next((c for c in s[other].frame.columns if c in s["df"].frame.columns), None)
  cats = [c for c in s[other].categorical if c not in s["df"].frame.columns]
  if key is None or not cats:
    return None
  g, n, agg = p.one(cats), p.one(s["df"].numeric), p.one(["sum", "mean", "max"])
  text = p.phrase(["Using {o}, what is the {a} {n} for each {g}?",
                   "Look up each row's {g} in {o} and compute the {a} {n} per {g}."],
                  o=other, a=AGGS[agg][0], n=h(n), g=h(g))
  codes = [f"df.merge({other}, on={key!r}).groupby({g!r})[{n!r}].{agg}()",
           f"merged = pd.merge(df, {other}, on={key!r})\nmerged.groupby({g!r})[{n!r}].agg({agg!r})",
           f"df.join({other}.set_index({key!r}), on={key!r}, how='inner')"
           f".groupby({g!r})[{n!r}].{agg}()"]
  return _mk("merge", text, codes, right=other, key=key, by=g, column=n, agg=agg)


def _text_cols(sc: Schema) -> list[str]:
  cols = [c for c in sc.text + sc.categorical
          if sc.frame[c].dtype != bool and not sc.frame[c].isna().any()
          and sc.frame[c].map(lambda v: isinstance(v, str)).all()]
  return cols


def string_contains(p: Pick, s: dict[str, Schema]) -> Intent | None:
  cols = _text_cols(s["df"])
  if not cols:
    return None
  c = p.one(cols)
  words = sorted({w for v in s["df"].frame[c].head(50) for w in str(v).split() if len(w) >= 3})
  if not words:
    return None
  w = p.one(words)[:4]
  text = p.phrase(["Find the rows whose {c} contains '{w}'.", "Which entries have '{w}' in "
                   "their {c}?", "Show records where {c} includes the text '{w}'."], c=h(c), w=w)
  codes = [f"df[df[{c!r}].str.contains({w!r}, regex=False)]",
           f"df[df[{c!r}].str.find({w!r}) >= 0]",
           f"df[df[{c!r}].apply(lambda s: {w!r} in s)]"]
  return _mk("string", text, codes, column=c, contains=w)


def string_prefix(p: Pick, s: dict[str, Schema]) -> Intent | None:
  cols = _text_cols(s["df"])
  if not cols:
    return None
  c = p.one(cols)
  letter = p.one(sorted({str(v)[0] for v in s["df"].frame[c].head(50) if str(v)}))
  text = p.phrase(["Which rows have a {c} starting with '{l}'?", "Show entries whose {c} begins "
                   "with the letter {l}."], c=h(c), l=letter)
  codes = [f"df[df[{c!r}].str.startswith({letter!r})]",
           f"df[df[{c!r}].str[0] == {letter!r}]",
           f"df[df[{c!r}].map(lambda s: s.startswith({letter!r}))]"]
  return _mk("string", text, codes, column=c, startswith=letter)


def string_transform(p: Pick, s: dict[str, Schema]) -> Intent | None:
  cols = _text_cols(s["df"])
  if not cols:
    return None
  c = p.one(cols)
  kind = p.one(["upper", "lower", "len"] + (["first"] if any(
      " " in str(v) for v in s["df"].frame[c].head(20)) else []))
  if kind == "upper":
    text = p.phrase(["Convert {c} to upper case.", "Give me the {c} values in capitals."], c=h(c))
    codes = [f"df[{c!r}].str.upper()", f"df[{c!r}].map(str.upper)",
             f"df[{c!r}].apply(lambda s: s.upper())"]
  elif kind == "lower":
    text = p.phrase(["Lower-case the {c} column.", "Show {c} in lower case."], c=h(c))
    codes = [f"df[{c!r}].str.lower()", f"df[{c!r}].map(str.lower)",
             f"df[{c!r}].apply(lambda s: s.lower())"]
  elif kind == "len":
    text = p.phrase(["How many characters does each {c} have?", "Compute the length of every "
                     "{c}."], c=h(c))
    codes = [f"df[{c!r}].str.len()", f"df[{c!r}].map(len)", f"df[{c!r}].apply(len)"]
  else:
    text = p.phrase(["Extract the first word of each {c}.", "What is the first word of every "
                     "{c}?"], c=h(c))
    codes = [f"df[{c!r}].str.split().str[0]", f"df[{c!r}].str.split(' ').str.get(0)",
             f"df[{c!r}].map(lambda s: s.split()[0])"]
  return _mk("string", text, codes, column=c, transform=kind)


def per_year(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.dates:
    return None
  d = p.one(sc.dates)
  if sc.numeric and p.one([True, False]):
    n, agg = p.one(sc.numeric), p.one(["sum", "mean"])
    text = p.phrase(["What is the {a} {n} per year of {d}?", "Compute the yearly {a} {n} "
                     "(by {d})."], a=AGGS[agg][0], n=h(n), d=h(d))
    codes = [f"df.groupby(df[{d!r}].dt.year)[{n!r}].{agg}()",
             f"df.groupby(df[{d!r}].dt.year)[{n!r}].agg({agg!r})",
             f"df.assign(year=df[{d!r}].dt.year).groupby('year')[{n!r}].{agg}()"]
    return _mk("datetime", text, codes, date=d, by="year", column=n, agg=agg)
  text = p.phrase(["How many records are there per year of {d}?", "Count the rows by the year "
                   "of {d}."], d=h(d))
  codes = [f"df.groupby(df[{d!r}].dt.year).size()",
           f"df[{d!r}].dt.year.value_counts().sort_index()",
           f"df[{d!r}].dt.year.value_counts().sort_index().rename(None)"]
  return _mk("datetime", text, codes, date=d, by="year")


def per_month(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.dates or not sc.numeric:
    return None
  d, n = p.one(sc.dates), p.one(sc.numeric)
  text = p.phrase(["What is the total {n} for each month (year-month) of {d}?",
                   "Sum {n} by calendar month of {d}, as YYYY-MM."], n=h(n), d=h(d))
  codes = [f"df.groupby(df[{d!r}].dt.strftime('%Y-%m'))[{n!r}].sum()",
           f"df.groupby(df[{d!r}].dt.strftime('%Y-%m')).agg({{{n!r}: 'sum'}})[{n!r}]",
           f"df.assign(month=df[{d!r}].dt.strftime('%Y-%m')).groupby('month')[{n!r}].sum()"]
  return _mk("datetime", text, codes, date=d, by="month", column=n)


def in_year(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.dates:
    return None
  d = p.one(sc.dates)
  years = sorted(sc.frame[d].dropna().dt.year.unique().tolist())
  if not years:
    return None
  y = int(p.one(years))
  text = p.phrase(["Show the rows whose {d} falls in {y}.", "Filter the data to {y} (by {d}).",
                   "Which records have a {d} in the year {y}?"], d=h(d), y=y)
  codes = [f"df[df[{d!r}].dt.year == {y}]",
           f"df[(df[{d!r}] >= '{y}-01-01') & (df[{d!r}] < '{y + 1}-01-01')]",
           f"df[df[{d!r}].dt.year.eq({y})]"]
  return _mk("datetime", text, codes, date=d, year=y)


def weekday(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.dates:
    return None
  d = p.one(sc.dates)
  text = p.phrase(["How many rows fall on each day of the week (by {d})?",
                   "Count the records per weekday name of {d}."], d=h(d))
  codes = [f"df[{d!r}].dt.day_name().value_counts()",
           f"df.groupby(df[{d!r}].dt.day_name()).size().sort_values(ascending=False)",
           f"df[{d!r}].dt.day_name().value_counts(sort=True)"]
  return _mk("datetime", text, codes, date=d, by="weekday")


def latest(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.dates:
    return None
  d, last = p.one(sc.dates), p.one([True, False])
  word = "most recent" if last else "earliest"
  text = p.phrase(["What is the {w} {d}?", "Find the {w} {d} in the data."], w=word, d=h(d))
  fn = "max" if last else "min"
  codes = [f"df[{d!r}].{fn}()", f"df[{d!r}].dropna().sort_values().iloc[{-1 if last else 0}]",
           f"df[{d!r}].agg({fn!r})"]
  return _mk("datetime", text, codes, date=d, latest=last)


def missing_counts(p: Pick, s: dict[str, Schema]) -> Intent | None:
  if not s["df"].missing:
    return None
  text = p.phrase(["How many missing values does each column have?", "Count the NaNs per "
                   "column.", "Check each column for missing data and count it."])
  codes = ["df.isna().sum()", "df.isnull().sum()", "df.isna().sum(axis=0)"]
  return _mk("missing", text, codes, kind="counts")


def missing_drop(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.missing:
    return None
  m = p.one(sc.missing)
  text = p.phrase(["Drop the rows where {m} is missing.", "Remove records without a {m}.",
                   "Keep only rows that have a value for {m}."], m=h(m))
  codes = [f"df.dropna(subset=[{m!r}])", f"df[df[{m!r}].notna()]", f"df[~df[{m!r}].isna()]"]
  return _mk("missing", text, codes, kind="drop", column=m)


def missing_fill(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  cols = [c for c in sc.missing if c in sc.numeric]
  if not cols:
    return None
  m, stat = p.one(cols), p.one(["mean", "median"])
  text = p.phrase(["Fill the missing {m} values with the {s}.", "Replace NaNs in {m} by the "
                   "column {s}."], m=h(m), s=stat)
  codes = [f"df[{m!r}].fillna(df[{m!r}].{stat}())",
           f"df[{m!r}].where(df[{m!r}].notna(), df[{m!r}].{stat}())",
           f"fill = df[{m!r}].{stat}()\ndf[{m!r}].fillna(fill)"]
  return _mk("missing", text, codes, kind="fill", column=m, stat=stat)


def missing_share(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.missing:
    return None
  m = p.one(sc.missing)
  text = p.phrase(["What fraction of {m} values is missing?", "What share of rows lack a "
                   "{m}?"], m=h(m))
  codes = [f"df[{m!r}].isna().mean()", f"df[{m!r}].isna().sum() / len(df)",
           f"1 - df[{m!r}].count() / len(df)"]
  return _mk("missing", text, codes, kind="share", column=m)


def derived(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if len(sc.numeric) < 2:
    return None
  a, b = p.some(sc.numeric, 2)
  kind = p.one(["ratio", "product", "difference"])
  sym, name = {"ratio": ("/", f"{a}_per_{b}"), "product": ("*", f"{a}_times_{b}"),
               "difference": ("-", f"{a}_minus_{b}")}[kind]
  name = re.sub(r"\W+", "_", name).strip("_").lower()
  if not name.isidentifier():
    name = "new_" + name
  what = {"ratio": f"{h(a)} divided by {h(b)}", "product": f"{h(a)} times {h(b)}",
          "difference": f"{h(a)} minus {h(b)}"}[kind]
  text = p.phrase(["Add a column {n} equal to {w}.", "Create a new column {n} with {w}."],
                  n=name, w=what)
  codes = [f"df.assign({name}=df[{a!r}] {sym} df[{b!r}])",
           f"df[{name!r}] = df[{a!r}] {sym} df[{b!r}]\ndf",
           f"out = df.copy()\nout[{name!r}] = out[{a!r}] {sym} out[{b!r}]\nout"]
  return _mk("derived", text, codes, column=name, left=a, right=b, kind=kind)


def stats(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.numeric:
    return None
  n = p.one(sc.numeric)
  text = p.phrase(["What are the mean, minimum and maximum of {n}?", "Give the mean, min and "
                   "max {n}."], n=h(n))
  codes = [f"df[{n!r}].agg(['mean', 'min', 'max'])",
           f"df[{n!r}].describe()[['mean', 'min', 'max']]",
           f"pd.Series({{'mean': df[{n!r}].mean(), 'min': df[{n!r}].min(), "
           f"'max': df[{n!r}].max()}})"]
  return _mk("stats", text, codes, column=n)


def correlation(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if len(sc.numeric) < 2:
    return None
  a, b = p.some(sc.numeric, 2)
  text = p.phrase(["What is the correlation between {a} and {b}?", "How strongly are {a} and "
                   "{b} correlated (Pearson)?"], a=h(a), b=h(b))
  codes = [f"df[{a!r}].corr(df[{b!r}])", f"df[[{a!r}, {b!r}]].corr().loc[{a!r}, {b!r}]",
           f"df[{a!r}].corr(df[{b!r}], method='pearson')"]
  return _mk("stats", text, codes, columns=[a, b])


def filter_group_pick(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  cats = [c for c in sc.categorical if sc.frame[c].dtype != bool]
  if len(cats) < 2 or not sc.numeric:
    return None
  (c, g), n = p.some(cats, 2), p.one(sc.numeric)
  v = p.value(sc.frame, c)
  text = p.phrase(["Among rows with {c} {v}, which {g} has the highest average {n}?",
                   "For {c} = {v} only, find the {g} with the largest mean {n}."],
                  c=h(c), v=v, g=h(g), n=h(n))
  codes = [f"subset = df[df[{c!r}] == {v!r}]\nsubset.groupby({g!r})[{n!r}].mean().idxmax()",
           f"df[df[{c!r}] == {v!r}].groupby({g!r})[{n!r}].mean().sort_values("
           f"ascending=False).index[0]",
           f"means = df.loc[df[{c!r}].eq({v!r})].groupby({g!r})[{n!r}].mean()\n"
           f"means.index[means.argmax()]"]
  return _mk("multi_step", text, codes, column=c, value=v, by=g, target=n)


def group_top_k(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.categorical or not sc.numeric:
    return None
  g, n, k = p.one(sc.categorical), p.one(sc.numeric), p.one([1, 2, 3])
  text = p.phrase(["For each {g}, show the {k} rows with the highest {n}.",
                   "Within every {g}, keep the top {k} records by {n}."], g=h(g), k=k, n=h(n))
  codes = [f"df.sort_values({n!r}, ascending=False).groupby({g!r}).head({k})",
           f"df.sort_values([{g!r}, {n!r}], ascending=[True, False]).groupby({g!r}).head({k})",
           f"ranked = df.sort_values({n!r}, ascending=False)\nranked.groupby({g!r}).head({k})"]
  return _mk("multi_step", text, codes, by=g, column=n, k=k)


def share_of_total(p: Pick, s: dict[str, Schema]) -> Intent | None:
  sc = s["df"]
  if not sc.categorical or not sc.numeric:
    return None
  g, n = p.one(sc.categorical), p.one(sc.numeric)
  text = p.phrase(["What percentage of the total {n} does each {g} account for?",
                   "Compute each {g}'s share of total {n}, in percent."], g=h(g), n=h(n))
  codes = [f"df.groupby({g!r})[{n!r}].sum() / df[{n!r}].sum() * 100",
           f"(df.groupby({g!r})[{n!r}].sum() / df[{n!r}].sum()).mul(100)",
           f"totals = df.groupby({g!r})[{n!r}].sum()\n100 * totals / df[{n!r}].sum()"]
  return _mk("multi_step", text, codes, by=g, column=n)


OPERATIONS: dict[str, OpFn] = {f.__name__: f for f in [
    select, filter_numeric, filter_category, filter_both, sort, top_k, groupby_agg, multi_agg,
    counts, distinct, pivot, merge, merge_agg, string_contains, string_prefix, string_transform,
    per_year, per_month, in_year, weekday, latest, missing_counts, missing_drop, missing_fill,
    missing_share, derived, stats, correlation, filter_group_pick, group_top_k, share_of_total]}


def schemas(context: Context) -> dict[str, Schema]:
  """Column roles of each frame; the context's main frame is `df`."""
  if not context.frames:
    return {}
  return {name: Schema.of(frame) for name, frame in context.frames.items()}


def generate(context: Context, num: int, seed: int = 0,
             operations: tuple[str, ...] = ()) -> list[Intent]:
  """Up to `num` distinct intents for `context` (fewer when its schema supports fewer).

  Operations are visited round-robin in a seeded order so every applicable one is represented;
  intents are distinct by their code. Deterministic in (context id, seed)."""
  frames = schemas(context)
  if "df" not in frames:
    return []
  rng = random.Random(f"{seed}/{context.id}")
  p = Pick(rng)
  names = list(operations or OPERATIONS)
  rng.shuffle(names)
  intents, seen, misses = [], set(), 0
  while len(intents) < num and misses < 20:
    made = False
    for name in names:
      if len(intents) >= num:
        break
      intent = OPERATIONS[name](p, frames)
      if intent is None or intent.codes in seen:
        continue
      seen.add(intent.codes)
      intents.append(dataclasses.replace(intent, context_id=context.id, index=len(intents),
                                         params={"template": name, **intent.params}))
      made = True
    misses = misses + 1 if not made else 0
  return intents
