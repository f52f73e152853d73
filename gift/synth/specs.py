"""I/O specifications derived from an executed sample (the paper's TypeDesc, I/O examples, I/O
summary), plus the AST analysis that says which variables a piece of code reads.

All renderers take plain executed values (the sandbox returns them as data) and return plain
text without `#` prefixes (`data/prompts.py` turns them into comment lines). Each is bounded by
`max_chars`; a cut text ends with "...". The data builder and the evaluation use the same
functions, so test-time specs look exactly like training specs.

  inputs   dict name -> value of the pre-existing variables the code reads (values *before*
           the code ran), in reading order.
  output   the code's result: the final expression's value or the assigned result variable.
"""
from __future__ import annotations

import ast
import builtins
import hashlib
import re
from typing import Any, Iterable

import numpy as np
import pandas as pd

MAX_CHARS = dict(typedesc=600, io_examples=1200, io_summary=600)
_BUILTINS = frozenset(dir(builtins))


# ---------------------------------------------------------------------------------------------
# AST: which pre-existing variables the code reads, and where its result is.
# ---------------------------------------------------------------------------------------------
def _stores(node: ast.AST) -> set[str]:
  out = set()
  for n in ast.walk(node):
    if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
      out.add(n.id)
    elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      out.add(n.name)
    elif isinstance(n, (ast.Import, ast.ImportFrom)):
      out.update((a.asname or a.name).split(".")[0] for a in n.names)
  return out


def _loads_in_order(node: ast.AST) -> list[str]:
  """Names read by a statement in source order, without the names its comprehensions, lambdas
  and nested functions bind locally (an approximation of scoping that suffices for cells)."""
  local = set()
  for n in ast.walk(node):
    if isinstance(n, ast.comprehension):
      local |= {t.id for t in ast.walk(n.target) if isinstance(t, ast.Name)}
    elif isinstance(n, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef)):
      local |= {a.arg for a in n.args.args + n.args.kwonlyargs + n.args.posonlyargs}
  loads = [n for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
           and n.id not in local]
  return [n.id for n in sorted(loads, key=lambda n: (n.lineno, n.col_offset))]


def input_names(code: str, available: Iterable[str]) -> list[str]:
  """The pre-existing variables (from `available`) that `code` reads, in first-read order.

  A name counts only if it is read before the code itself assigns it: in `df = df.dropna()` the
  right side reads the context's `df`; after that statement `df` is the code's own. Statements
  are taken top-level in order, each reading before it writes (as Python evaluates an
  assignment). Raises SyntaxError for code that does not parse.
  """
  available = set(available)
  assigned: set[str] = set()
  names: list[str] = []
  for stmt in ast.parse(code).body:
    for name in _loads_in_order(stmt):
      if name in available and name not in assigned and name not in names:
        names.append(name)
    assigned |= _stores(stmt)
  return names


def result_variable(code: str) -> str | None:
  """Where the code's result is: None when its last statement is an expression (notebook
  `Out[]` semantics, the sandbox's `output_var=None`), else the single name the last statement
  assigns (`result = ...`, `df['x'] = ...` -> "df"). Raises ValueError when there is neither."""
  body = ast.parse(code).body
  if not body:
    raise ValueError("empty code has no result")
  last = body[-1]
  if isinstance(last, ast.Expr):
    return None
  targets = (last.targets if isinstance(last, ast.Assign) else
             [last.target] if isinstance(last, (ast.AugAssign, ast.AnnAssign)) else [])
  if len(targets) == 1:
    t = targets[0]
    while isinstance(t, (ast.Subscript, ast.Attribute)):
      t = t.value
    if isinstance(t, ast.Name):
      return t.id
  raise ValueError(f"the last statement ({type(last).__name__}, line {last.lineno}) is neither an "
                   "expression nor an assignment to one variable")


def api_calls(code: str) -> list[str]:
  """Sorted attribute/function names the code calls or reads (`groupby`, `nlargest`, ...):
  the data builder's measure of API diversity."""
  try:
    tree = ast.parse(code)
  except SyntaxError:
    return []
  names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
  names |= {n.func.id for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
  return sorted(names)


# ---------------------------------------------------------------------------------------------
# Values: kinds, bounded renderings, fingerprints.
# ---------------------------------------------------------------------------------------------
def _cut(text: str, max_chars: int) -> str:
  return text if len(text) <= max_chars else text[:max(0, max_chars - 3)].rstrip() + "..."


def _dtype(dtype: Any) -> str:
  s = str(dtype)
  return "str" if s in ("object", "string", "str") else s


def kind(value: Any) -> str:
  """A short type name: DataFrame, Series, ndarray, list, dict, int, float, str, ..."""
  if isinstance(value, pd.DataFrame):
    return "DataFrame"
  if isinstance(value, pd.Series):
    return "Series"
  if isinstance(value, pd.Index):
    return "Index"
  if isinstance(value, np.ndarray):
    return "ndarray"
  if isinstance(value, np.generic):
    return {"b": "bool", "i": "int", "u": "int", "f": "float", "M": "Timestamp"}.get(
        value.dtype.kind, type(value).__name__)
  return type(value).__name__


def describe(value: Any) -> dict[str, Any]:
  """A JSON-able description of a value's type: kind, shape, columns and dtypes (records'
  `variables` field)."""
  d: dict[str, Any] = {"type": kind(value)}
  if isinstance(value, pd.DataFrame):
    d["shape"] = list(value.shape)
    d["columns"] = {str(c): _dtype(t) for c, t in value.dtypes.items()}
    if not isinstance(value.index, pd.RangeIndex):
      d["index"] = [str(n) for n in value.index.names]
  elif isinstance(value, (pd.Series, pd.Index)):
    d["shape"] = list(value.shape)
    d["dtype"] = _dtype(value.dtype)
    if value.name is not None:
      d["name"] = str(value.name)
    if isinstance(value, pd.Series) and not isinstance(value.index, pd.RangeIndex):
      d["index"] = [str(n) for n in value.index.names]
  elif isinstance(value, np.ndarray):
    d["shape"], d["dtype"] = list(value.shape), str(value.dtype)
  elif isinstance(value, (list, tuple, dict, set)):
    d["len"] = len(value)
  return d


def _shape_text(value: Any) -> str:
  if isinstance(value, pd.DataFrame):
    return f"{value.shape[0]} rows x {value.shape[1]} columns"
  if isinstance(value, (pd.Series, pd.Index)):
    return f"{len(value)} values of dtype {_dtype(value.dtype)}"
  if isinstance(value, np.ndarray):
    return f"shape {value.shape}, dtype {value.dtype}"
  if isinstance(value, (list, tuple, dict, set)):
    return f"{len(value)} items"
  return ""


def _cell(v: Any, cell_chars: int) -> str:
  return _cut(str(v), cell_chars)


def render(value: Any, rows: int = 5, cols: int = 8, cell_chars: int = 24,
           max_chars: int = 2000) -> str:
  """A bounded, notebook-like rendering of a value: the head `rows` rows, at most `cols`
  columns (the rest elided), each cell's text cut at `cell_chars`; the whole cut at
  `max_chars`."""
  if isinstance(value, pd.DataFrame):
    text = value.head(rows).to_string(max_cols=cols, max_colwidth=cell_chars)
    if len(value) > rows:
      text += f"\n[{len(value)} rows x {value.shape[1]} columns]"
  elif isinstance(value, (pd.Series, pd.Index)):
    series = value if isinstance(value, pd.Series) else pd.Series(value, name=value.name)
    head = series.iloc[:rows]
    if head.dtype == object or pd.api.types.is_string_dtype(head):
      # Missing scalars keep pandas' NaN/None spelling; cells may also hold arrays or lists,
      # whose `v != v` is element-wise, so test missingness only for scalars.
      head = head.map(lambda v: v if pd.api.types.is_scalar(v) and pd.isna(v)
                      else _cell(v, cell_chars))
    text = head.to_string()
    if series.name is not None:
      text += f"\nName: {series.name}"
    if len(series) > rows:
      text += f"\n[{len(series)} values total]"
  elif isinstance(value, np.ndarray):
    text = np.array2string(value.ravel()[:rows * cols] if value.ndim > 2 else value,
                           threshold=rows * cols, edgeitems=rows)
  elif isinstance(value, (list, tuple)):
    shown = ", ".join(_cell(repr(v), cell_chars) for v in value[:rows * 2])
    more = f", ... ({len(value)} items)" if len(value) > rows * 2 else ""
    text = ("[" + shown + more + "]") if isinstance(value, list) else ("(" + shown + more + ")")
  elif isinstance(value, dict):
    items = list(value.items())[:rows * 2]
    text = "{" + ", ".join(f"{_cell(repr(k), cell_chars)}: {_cell(repr(v), cell_chars)}"
                           for k, v in items)
    text += (", ..." if len(value) > len(items) else "") + "}"
  else:
    text = _cell(repr(value) if isinstance(value, str) else str(value), cell_chars * 4)
  return _cut(text, max_chars)


def fingerprint(value: Any) -> str:
  """A stable hash of a value's content (type, shape, labels, cells as text). Two values with
  the same fingerprint show the same result; dtype spellings that survive a data round trip
  differently (object vs str) do not change it, and floats count to 12 significant digits (the
  last bits of a reduction may differ between runs with different memory alignment)."""
  h = hashlib.sha1(kind(value).encode())
  csv = dict(float_format="%.12g")
  if isinstance(value, pd.DataFrame):
    h.update(repr(value.shape).encode())
    h.update(value.to_csv(**csv).encode())
  elif isinstance(value, pd.Series):
    h.update(repr((value.shape, str(value.name))).encode())
    h.update(value.to_csv(**csv).encode())
  elif isinstance(value, (pd.Index, np.ndarray)):
    h.update(repr(np.asarray(value).shape).encode())
    h.update(pd.Series(np.asarray(value).ravel()).to_csv(**csv).encode())
  else:
    if isinstance(value, np.generic):  # np.int64(5) and 5 are the same answer
      value = value.item()
    h.update((f"{value:.12g}" if isinstance(value, float) else repr(value)).encode())
  return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The three specifications.
# ---------------------------------------------------------------------------------------------
def _type_line(name: str, value: Any, cols: int = 12) -> str:
  line = f"{name}: {kind(value)}"
  shape = _shape_text(value)
  if shape:
    line += f" ({shape})"
  if isinstance(value, pd.DataFrame):
    shown = [f"{c} ({_dtype(t)})" for c, t in list(value.dtypes.items())[:cols]]
    more = f", ... {value.shape[1] - cols} more" if value.shape[1] > cols else ""
    line += "; columns: " + ", ".join(shown) + more
    if not isinstance(value.index, pd.RangeIndex):
      line += "; index: " + ", ".join(str(n) for n in value.index.names)
  elif isinstance(value, pd.Series):
    if value.name is not None:
      line += f"; name: {value.name}"
    if not isinstance(value.index, pd.RangeIndex):
      line += "; index: " + ", ".join(str(n) for n in value.index.names)
  return line


def typedesc(inputs: dict[str, Any], output: Any, output_name: str = "result",
             max_chars: int = MAX_CHARS["typedesc"]) -> str:
  """Types of the inputs and the output (frames: shape, column names and dtypes).

  Example:
    Inputs:
    df: DataFrame (200 rows x 3 columns); columns: region (str), units (int64), date (...)
    Output:
    result: Series (4 values of dtype float64); name: units; index: region
  """
  lines = ["Inputs:"] + [_type_line(n, v) for n, v in inputs.items()] if inputs else []
  lines += ["Output:", _type_line(output_name, output)]
  return _cut("\n".join(lines), max_chars)


def io_examples(inputs: dict[str, Any], output: Any, output_name: str = "result",
                max_chars: int = MAX_CHARS["io_examples"], rows: int = 3, cols: int = 8,
                cell_chars: int = 20) -> str:
  """Bounded renderings of the input and output values (head rows, first columns, cut cells)."""
  budget = max(80, max_chars // (len(inputs) + 1))
  parts = [f"Input {n}:\n" + render(v, rows, cols, cell_chars, budget) for n, v in inputs.items()]
  parts.append(f"Output {output_name}:\n" + render(output, rows, cols, cell_chars, budget))
  return _cut("\n".join(parts), max_chars)


def _column_literals(code: str) -> list[str]:
  try:
    tree = ast.parse(code)
  except SyntaxError:
    return []
  consts = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Constant)
                   and isinstance(n.value, str)), key=lambda n: (n.lineno, n.col_offset))
  seen: list[str] = []
  for n in consts:
    if n.value not in seen:
      seen.append(n.value)
  seen += [w for w in re.findall(r"[A-Za-z_]\w*", code) if w not in seen]
  return seen


def _ordering(values: pd.Series) -> str:
  if len(values) < 2 or not (pd.api.types.is_numeric_dtype(values) or
                             pd.api.types.is_datetime64_any_dtype(values)):
    return ""
  v = values.dropna()
  if len(v) < 2 or v.nunique() < 2:
    return ""
  if v.is_monotonic_decreasing:
    return "descending"
  if v.is_monotonic_increasing:
    return "ascending"
  return ""


def _output_sentence(output: Any, output_name: str) -> str:
  k = kind(output)
  if isinstance(output, pd.DataFrame):
    s = (f"The output `{output_name}` is a DataFrame with {output.shape[0]} rows and columns "
         + ", ".join(str(c) for c in output.columns[:10])
         + (" and more" if output.shape[1] > 10 else "") + ".")
    if not isinstance(output.index, pd.RangeIndex) and any(output.index.names):
      s += " Its rows are indexed by " + ", ".join(str(n) for n in output.index.names) + "."
    for c in output.columns[:10]:
      col = output[c]
      order = _ordering(col) if isinstance(col, pd.Series) else ""
      if order:
        s += f" Rows are sorted by {c} in {order} order."
        break
    return s
  if isinstance(output, pd.Series):
    s = f"The output `{output_name}` is a Series of {len(output)} {_dtype(output.dtype)} values"
    s += f" named {output.name}" if output.name is not None else ""
    if not isinstance(output.index, pd.RangeIndex):
      names = [str(n) for n in output.index.names if n is not None]
      s += f", indexed by {', '.join(names)}" if names else ", with a labelled index"
    order = _ordering(output)
    s += f", sorted in {order} order" if order else ""
    return s + "."
  if isinstance(output, (list, tuple, set, dict, pd.Index, np.ndarray)):
    return f"The output `{output_name}` is a {k} of {len(output)} items."
  return f"The output `{output_name}` is a single {k} value."


def io_summary(inputs: dict[str, Any], output: Any, output_name: str = "result", code: str = "",
               max_chars: int = MAX_CHARS["io_summary"]) -> str:
  """A deterministic natural-language summary of the salient input columns and the output (type,
  columns, ordering, grouping): the templates backend's generalist. Salient columns are the
  input columns the code names (string literals or attributes), in the order it names them."""
  words = _column_literals(code)
  parts = []
  for name, value in inputs.items():
    if isinstance(value, pd.DataFrame):
      cols = [str(c) for c in value.columns]
      used = [w for w in words if w in cols]
      if used:
        parts.append(f"The input `{name}` has {value.shape[1]} columns; the relevant ones are "
                     + ", ".join(f"{c} ({_dtype(value[c].dtype)})" for c in used[:8]) + ".")
      else:
        parts.append(f"The input `{name}` has columns " + ", ".join(cols[:10])
                     + (" and more" if len(cols) > 10 else "") + ".")
    else:
      parts.append(f"The input `{name}` is a {kind(value)}.")
  parts.append(_output_sentence(output, output_name))
  return _cut(" ".join(parts), max_chars)
