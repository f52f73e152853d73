"""Contexts: notebook prefixes that import, load and show dataframes.

A `Context` is what a data scientist has on screen before asking for the next cell: markdown
and code cells with their rendered outputs (`text()`, rendered by `data/prompts.py`) plus the
executable code of those cells (`code`, with absolute file paths, run once by the sandbox and
forked per candidate) and the dataframes it defines (`frames`: name -> value).

Sources, each returning `(contexts, skipped)` where `skipped` lists `(path, reason)`: bad inputs
(unreadable CSV, broken notebook, encoding errors, empty frames, files over the size limit) are
skipped with a counted, logged reason and never stop a build.
  from_csv_folder   one context per CSV file: a generated loading cell and a shown `df.head()`.
  from_notebooks    `.ipynb` files (nbformat): one context per code cell that reads a dataframe,
                    cut after that cell. Frames are unknown until the prefix runs (`frames=None`;
                    the builder probes them in the sandbox).
  bundled           the offline default: procedurally generated frames with realistic schemas
                    (numeric, categorical, datetime, free-text and missing values; some contexts
                    hold two related frames for merges), deterministic under a seed, written as
                    CSVs; plus the real CSVs matplotlib ships as sample data, when installed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from typing import Any, Iterable

import numpy as np
import pandas as pd

from gift.data import prompts
from gift.synth import specs

log = logging.getLogger(__name__)

PRELUDE = "import numpy as np\nimport pandas as pd"  # context code of CSV contexts
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$")
_READS_FRAME = re.compile(r"\b(pd|pandas)\.(read_\w+|DataFrame)\s*\(")


@dataclasses.dataclass
class Context:
  """A notebook prefix.

  id: stable name ("bundled/sales", "csv/trips-1a2b3c4d", "nb/analysis-.../cell7").
  cells: (kind, source, output) with kind "code" | "markdown"; output is rendered text or None.
  code: the executable prefix the sandbox runs once per context (after `inputs`).
  frames: name -> DataFrame defined by the prefix; None until probed (notebooks).
  source: "bundled" | "csv" | "notebook".
  links: (left frame, right frame, key column) pairs that can be merged.
  inputs: values injected as data before `code` runs. CSV contexts are loaded here (the same
    `pd.read_csv` call the shown cell makes) and injected, because sandboxed jobs see neither
    the caller's /tmp nor its cwd.
  load_code: code that rebuilds `frames` from the files by absolute path (kept in records).
  data_dirs: folders the sandbox shows this context's jobs, read-only at their own paths (the
    notebook's or CSV's own folder, plus `synth.data_dirs`); nothing else of a private home.
  """
  id: str
  cells: list[tuple[str, str, str | None]]
  code: str
  frames: dict[str, pd.DataFrame] | None
  source: str
  links: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
  inputs: dict[str, pd.DataFrame] | None = None
  load_code: str = ""
  frame_names: tuple[str, ...] = ()  # notebooks: the variables to probe for `frames`
  data_dirs: tuple[str, ...] = ()

  def text(self) -> str:
    """The prefix as notebook script text (what the model sees)."""
    return "".join(prompts.code_cell(src, out) if kind == "code" else prompts.markdown_cell(src)
                   for kind, src, out in self.cells)


def show(frame: pd.DataFrame, rows: int = 5) -> str:
  """A frame's `head()` as a notebook shows it, bounded."""
  return specs.render(frame, rows=rows, cols=12, cell_chars=30, max_chars=3000)


# ---------------------------------------------------------------------------------------------
# CSV files.
# ---------------------------------------------------------------------------------------------
def _read_options(path: str, encoding: str) -> dict[str, Any]:
  """Options that make `pd.read_csv` load a file as intended: leading `#` comment lines are
  skipped and ISO-looking text columns parsed as dates."""
  with open(path, encoding=encoding) as f:
    head = [f.readline() for _ in range(64)]
  skip = 0
  while skip < len(head) and head[skip].startswith("#"):
    skip += 1
  options: dict[str, Any] = {"skiprows": skip} if skip else {}
  sample = pd.read_csv(path, nrows=50, encoding=encoding, **options)
  dates = [str(c) for c in sample.columns if sample[c].dtype == object or
           pd.api.types.is_string_dtype(sample[c])]
  dates = [c for c in dates if sample[c].dropna().size and
           sample[c].dropna().astype(str).str.match(_ISO_DATE).all()]
  if dates:
    options["parse_dates"] = dates
  return options


def _call(path_expr: str, options: dict[str, Any]) -> str:
  args = [path_expr] + [f"{k}={v!r}" for k, v in options.items()]
  return f"pd.read_csv({', '.join(args)})"


def load_csv(path: str, name: str = "df", max_mb: float = 20.0, encoding: str = "utf-8"
             ) -> tuple[pd.DataFrame, str, str]:
  """Loads one CSV as a context would: returns (frame, shown loading code with the bare file
  name, executable loading code with the absolute path). Raises ValueError with the reason
  ("too_large", "encoding", "unreadable", "empty") for bad files."""
  size_mb = os.path.getsize(path) / 2**20
  if size_mb > max_mb:
    raise ValueError(f"too_large: {size_mb:.1f} MB > {max_mb} MB")
  try:
    options = _read_options(path, encoding)
    frame = pd.read_csv(path, encoding=encoding, **options)
  except UnicodeDecodeError as e:
    raise ValueError(f"encoding: not {encoding}: {e}") from e
  except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as e:
    reason = "empty" if isinstance(e, pd.errors.EmptyDataError) else "unreadable"
    raise ValueError(f"{reason}: {type(e).__name__}: {str(e)[:200]}") from e
  if frame.empty or frame.shape[1] == 0:
    raise ValueError(f"empty: {frame.shape[0]} rows x {frame.shape[1]} columns")
  shown = f"{name} = {_call(repr(os.path.basename(path)), options)}"
  run = f"{name} = {_call(repr(os.path.abspath(path)), options)}"
  return frame, shown, run


def from_csv(path: str, context_id: str | None = None, max_mb: float = 20.0,
             source: str = "csv") -> Context:
  """One context from one CSV file (raises ValueError with a reason for bad files)."""
  frame, shown, run = load_csv(path, "df", max_mb)
  stem = os.path.splitext(os.path.basename(path))[0]
  if context_id is None:
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
    context_id = f"{source}/{stem}-{digest}"
  cells = [("code", "import pandas as pd\n" + shown, None), ("code", "df.head()", show(frame))]
  return Context(context_id, cells, PRELUDE, {"df": frame}, source, inputs={"df": frame},
                 load_code="import pandas as pd\n" + run,
                 data_dirs=(os.path.dirname(os.path.abspath(path)),))


def skip(skipped: list, path: str, reason: str) -> None:
  log.warning("skipping %s: %s", path, reason)
  skipped.append((path, reason))


def from_csv_folder(folder: str, max_mb: float = 20.0) -> tuple[list[Context], list]:
  """One context per `*.csv` file in `folder` (sorted, not recursive)."""
  contexts, skipped = [], []
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if not name.lower().endswith(".csv"):
      continue
    try:
      contexts.append(from_csv(path, max_mb=max_mb))
    except ValueError as e:
      skip(skipped, path, str(e))
  return contexts, skipped


# ---------------------------------------------------------------------------------------------
# Jupyter notebooks.
# ---------------------------------------------------------------------------------------------
def _output_text(outputs: list[Any]) -> str | None:
  texts = []
  for out in outputs:
    kind = out.get("output_type")
    if kind == "stream":
      texts.append("".join(out.get("text", "")))
    elif kind in ("execute_result", "display_data"):
      plain = out.get("data", {}).get("text/plain")
      if plain:
        texts.append("".join(plain) if isinstance(plain, list) else plain)
  text = "\n".join(t.rstrip("\n") for t in texts)
  return text[:3000] if text.strip() else None


def _executable(source: str) -> str:
  """Cell source without IPython magics and shell escapes (which are not Python)."""
  return "\n".join(line for line in source.split("\n") if not line.lstrip().startswith(("%", "!")))


def _frame_targets(source: str) -> list[str]:
  """Variables a cell assigns from a pandas reader (`df = pd.read_csv(...)`)."""
  names = []
  for line in source.split("\n"):
    m = re.match(r"^\s*([A-Za-z_]\w*)\s*=\s*(.*)$", line)
    if m and _READS_FRAME.search(m.group(2)):
      names.append(m.group(1))
  return names


def from_notebook(path: str, max_mb: float = 20.0) -> list[Context]:
  """Contexts from one notebook: one per code cell that reads a dataframe, the prefix cut after
  that cell. Raises ValueError with a reason for unreadable notebooks."""
  import nbformat

  if os.path.getsize(path) / 2**20 > max_mb:
    raise ValueError(f"too_large: {os.path.getsize(path) / 2**20:.1f} MB > {max_mb} MB")
  try:
    with open(path, encoding="utf-8") as f:
      nb = nbformat.read(f, as_version=4)
  except UnicodeDecodeError as e:
    raise ValueError(f"encoding: not utf-8: {e}") from e
  except Exception as e:  # nbformat raises several types (JSON, validation, missing keys)
    raise ValueError(f"broken_notebook: {type(e).__name__}: {str(e)[:200]}") from e
  folder = os.path.dirname(os.path.abspath(path))
  stem = os.path.splitext(os.path.basename(path))[0]
  digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
  cells, code, frames, contexts = [], [f"import os\nos.chdir({folder!r})"], [], []
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "markdown" and cell.source.strip():
      cells.append(("markdown", cell.source, None))
    elif cell.cell_type == "code" and cell.source.strip():
      cells.append(("code", cell.source, _output_text(cell.get("outputs", []))))
      code.append(_executable(cell.source))
      new = _frame_targets(cell.source)
      frames += [n for n in new if n not in frames]
      if new:
        contexts.append(Context(f"nb/{stem}-{digest}/cell{i}", list(cells), "\n".join(code),
                                None, "notebook", frame_names=tuple(frames),
                                data_dirs=(folder,)))
  if not contexts:
    raise ValueError("no_frames: no code cell reads a dataframe with pd.read_*/pd.DataFrame")
  return contexts


def from_notebooks(folder: str, max_mb: float = 20.0) -> tuple[list[Context], list]:
  """Contexts from every `*.ipynb` in `folder` (sorted, not recursive)."""
  contexts, skipped = [], []
  for name in sorted(os.listdir(folder)):
    if name.endswith(".ipynb"):
      path = os.path.join(folder, name)
      try:
        contexts += from_notebook(path, max_mb)
      except ValueError as e:
        skip(skipped, path, str(e))
  return contexts, skipped


def from_paths(paths: Iterable[str], max_mb: float = 20.0) -> tuple[list[Context], list]:
  """Contexts from folders (CSV files and notebooks in each) and single files."""
  contexts, skipped = [], []
  for path in paths:
    if os.path.isdir(path):
      for fn in (from_csv_folder, from_notebooks):
        c, s = fn(path, max_mb)
        contexts, skipped = contexts + c, skipped + s
    elif os.path.isfile(path):
      try:
        contexts += (from_notebook(path, max_mb) if path.endswith(".ipynb")
                     else [from_csv(path, max_mb=max_mb)])
      except ValueError as e:
        skip(skipped, path, str(e))
    else:
      skip(skipped, path, "missing: no such file or folder")
  return contexts, skipped


# ---------------------------------------------------------------------------------------------
# The bundled default: generated frames with realistic schemas.
# ---------------------------------------------------------------------------------------------
FIRST = ["Ana", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jon", "Kara",
         "Luis", "Mei", "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Victor"]
LAST = ["Smith", "Garcia", "Chen", "Okafor", "Müller", "Rossi", "Kim", "Novak", "Silva", "Khan",
        "Dubois", "Ivanova", "Tanaka", "Brown", "Lopez", "Singh"]
WORDS = ["red", "quiet", "river", "north", "golden", "lost", "city", "night", "storm", "garden",
         "silent", "blue", "iron", "winter", "last", "paper", "glass", "hidden", "wild", "echo"]
CITIES = ["Lisbon", "Osaka", "Toronto", "Nairobi", "Denver", "Lyon", "Pune", "Austin", "Bergen",
          "Leeds", "Perth", "Quito"]


@dataclasses.dataclass(frozen=True)
class Col:
  """A generated column: kind in id | ref | cat | int | float | date | person | title | bool."""
  name: str
  kind: str
  args: tuple = ()
  missing: float = 0.0


def _column(col: Col, rows: int, rng: np.random.Generator) -> pd.Series:
  a = col.args
  if col.kind == "id":  # args: (prefix, digits)
    values = pd.Series([f"{a[0]}{i:0{a[1] if len(a) > 1 else 5}d}" for i in range(1, rows + 1)])
  elif col.kind == "ref":  # a foreign key into an "id" column: (prefix, count, digits)
    values = pd.Series([f"{a[0]}{i:0{a[2]}d}" for i in rng.integers(1, a[1] + 1, size=rows)])
  elif col.kind == "cat":
    p = np.asarray(a[1], float) if len(a) > 1 else rng.dirichlet(np.ones(len(a[0])) * 2)
    values = pd.Series(rng.choice(a[0], size=rows, p=p / p.sum()))
  elif col.kind == "int":
    values = pd.Series(rng.integers(a[0], a[1] + 1, size=rows))
  elif col.kind == "float":
    lo, hi, decimals = a
    values = pd.Series(np.round(lo + (hi - lo) * rng.beta(2, 3, size=rows), decimals))
  elif col.kind == "date":
    start, days = pd.Timestamp(a[0]), a[1]
    offsets = rng.integers(0, days, size=rows)
    hours = rng.integers(0, 24, size=rows) if len(a) > 2 and a[2] == "hours" else 0
    values = pd.Series(start + pd.to_timedelta(offsets, "D") + pd.to_timedelta(hours, "h"))
  elif col.kind == "person":
    values = pd.Series([f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(rows)])
  elif col.kind == "title":
    values = pd.Series([" ".join(rng.choice(WORDS, size=rng.integers(2, 4))).title()
                        for _ in range(rows)])
  elif col.kind == "bool":
    values = pd.Series(rng.random(rows) < a[0])
  else:
    raise ValueError(f"column {col.name!r}: unknown kind {col.kind!r}")
  if col.missing:
    values = values.astype(object if values.dtype == bool else values.dtype)
    values[rng.random(rows) < col.missing] = None
  return values.rename(col.name)


C = Col
REGIONS = ["North", "South", "East", "West"]
SCHEMAS: dict[str, dict[str, Any]] = {
    "sales": dict(rows=400, cols=[
        C("order_date", "date", ("2022-01-01", 730)), C("region", "cat", (REGIONS,)),
        C("product", "cat", (["Laptop", "Phone", "Tablet", "Monitor", "Headset"],)),
        C("channel", "cat", (["online", "retail", "partner"],)), C("units", "int", (1, 40)),
        C("unit_price", "float", (20, 1500, 2)), C("discount", "float", (0, 0.3, 2), 0.15)]),
    "employees": dict(rows=300, cols=[
        C("employee_id", "id", ("E",)), C("name", "person"),
        C("department", "cat", (["Engineering", "Sales", "Finance", "HR", "Support"],)),
        C("title", "cat", (["Junior", "Senior", "Lead", "Manager"],)),
        C("hire_date", "date", ("2010-01-01", 5000)), C("salary", "int", (38000, 190000)),
        C("age", "int", (21, 64)), C("city", "cat", (CITIES[:6],)),
        C("bonus", "float", (0, 20000, 0), 0.3)]),
    "flights": dict(rows=500, cols=[
        C("flight_date", "date", ("2023-01-01", 365)),
        C("airline", "cat", (["Delta", "United", "American", "Alaska", "JetBlue"],)),
        C("origin", "cat", (["JFK", "LAX", "ORD", "ATL", "SEA", "DEN"],)),
        C("dest", "cat", (["BOS", "SFO", "MIA", "DFW", "PHX", "LAS"],)),
        C("dep_delay", "int", (-10, 180)), C("arr_delay", "float", (-20, 200, 0), 0.05),
        C("distance", "int", (300, 2800)), C("cancelled", "bool", (0.04,))]),
    "weather": dict(rows=365, cols=[
        C("date", "date", ("2021-01-01", 1095)), C("city", "cat", (CITIES[:5],)),
        C("temp_max", "float", (-5, 38, 1)), C("temp_min", "float", (-15, 25, 1)),
        C("precipitation_mm", "float", (0, 60, 1), 0.08), C("wind_kmh", "float", (0, 70, 1)),
        C("condition", "cat", (["sunny", "cloudy", "rain", "snow", "fog"],))]),
    "movies": dict(rows=300, cols=[
        C("title", "title"), C("genre", "cat", (["Drama", "Comedy", "Action", "Horror",
                                                  "Documentary", "Animation"],)),
        C("year", "int", (1980, 2023)), C("runtime_min", "int", (75, 190)),
        C("rating", "float", (1, 10, 1)), C("votes", "int", (50, 900000)),
        C("budget_musd", "float", (0.5, 250, 1), 0.2), C("director", "person")]),
    "inventory": dict(rows=250, cols=[
        C("sku", "id", ("SKU",)), C("product_name", "title"),
        C("category", "cat", (["Garden", "Kitchen", "Toys", "Tools", "Office"],)),
        C("warehouse", "cat", (["WH-A", "WH-B", "WH-C"],)), C("quantity", "int", (0, 900)),
        C("reorder_level", "int", (10, 200)), C("unit_cost", "float", (0.5, 300, 2)),
        C("last_restock", "date", ("2023-06-01", 300), 0.1)]),
    "students": dict(rows=320, cols=[
        C("student_id", "id", ("S",)), C("name", "person"),
        C("grade_level", "int", (9, 12)), C("gender", "cat", (["F", "M", "X"], [48, 48, 4])),
        C("school", "cat", (["Hillside", "Riverside", "Lakeview"],)),
        C("math", "int", (35, 100)), C("reading", "int", (30, 100)),
        C("writing", "float", (30, 100, 0), 0.05), C("absences", "int", (0, 30))]),
    "hospital": dict(rows=350, cols=[
        C("patient_id", "id", ("P",)), C("admission_date", "date", ("2022-01-01", 540)),
        C("department", "cat", (["Cardiology", "Oncology", "Pediatrics", "Orthopedics",
                                 "Neurology"],)),
        C("age", "int", (0, 95)), C("length_of_stay", "int", (1, 30)),
        C("diagnosis", "cat", (["flu", "fracture", "arrhythmia", "migraine", "pneumonia"],)),
        C("cost", "float", (800, 60000, 2)), C("readmitted", "bool", (0.12,))]),
    "real_estate": dict(rows=300, cols=[
        C("listing_id", "id", ("L",)), C("city", "cat", (CITIES[6:],)),
        C("bedrooms", "int", (1, 6)), C("bathrooms", "int", (1, 4)),
        C("sqft", "int", (450, 4800)), C("price", "int", (90000, 2400000)),
        C("year_built", "int", (1900, 2022)), C("listed_date", "date", ("2023-01-01", 400)),
        C("hoa_fee", "float", (0, 900, 0), 0.35)]),
    "restaurants": dict(rows=220, cols=[
        C("name", "title"), C("cuisine", "cat", (["Thai", "Italian", "Mexican", "Indian",
                                                  "Japanese", "Ethiopian"],)),
        C("city", "cat", (CITIES[:4],)), C("rating", "float", (1, 5, 1)),
        C("price_level", "int", (1, 4)), C("reviews", "int", (3, 4000)),
        C("opened", "date", ("2005-01-01", 6500)), C("delivery", "bool", (0.6,))]),
    "energy": dict(rows=480, cols=[
        C("timestamp", "date", ("2023-01-01", 120, "hours")),
        C("building", "cat", (["Library", "Gym", "Lab", "Dorm A", "Dorm B"],)),
        C("meter", "cat", (["electric", "gas", "water"],)), C("kwh", "float", (0.5, 400, 2)),
        C("outdoor_temp", "float", (-10, 35, 1), 0.04)]),
    "cars": dict(rows=260, cols=[
        C("make", "cat", (["Toyota", "Ford", "Honda", "BMW", "Kia", "Tesla"],)),
        C("model", "title"), C("year", "int", (2005, 2024)), C("mpg", "float", (12, 60, 1), 0.1),
        C("horsepower", "int", (70, 520)), C("weight_lbs", "int", (2000, 6000)),
        C("cylinders", "cat", ([4, 6, 8],)), C("origin", "cat", (["USA", "Japan", "Germany",
                                                                   "Korea"],)),
        C("price", "int", (14000, 95000))]),
    "books": dict(rows=280, cols=[
        C("title", "title"), C("author", "person"),
        C("genre", "cat", (["Fantasy", "Mystery", "Science", "History", "Romance"],)),
        C("pages", "int", (90, 1100)), C("published", "date", ("1960-01-01", 23000)),
        C("avg_rating", "float", (1, 5, 2)), C("ratings_count", "int", (5, 250000)),
        C("price", "float", (3, 60, 2), 0.1)]),
    "web_traffic": dict(rows=400, cols=[
        C("date", "date", ("2023-03-01", 180)),
        C("page", "cat", (["/home", "/pricing", "/blog", "/signup", "/docs"],)),
        C("source", "cat", (["organic", "ads", "social", "email", "direct"],)),
        C("visits", "int", (10, 5000)), C("bounce_rate", "float", (0.1, 0.9, 3)),
        C("avg_session_s", "float", (5, 600, 1)), C("conversions", "int", (0, 120))]),
    "support_tickets": dict(rows=350, cols=[
        C("ticket_id", "id", ("T",)), C("created", "date", ("2023-01-01", 365, "hours")),
        C("priority", "cat", (["low", "medium", "high", "urgent"], [40, 35, 18, 7])),
        C("channel", "cat", (["email", "chat", "phone"],)), C("agent", "person"),
        C("resolution_hours", "float", (0.2, 120, 1), 0.1),
        C("satisfaction", "int", (1, 5)), C("subject", "title")]),
    "stock_prices": dict(rows=450, cols=[
        C("date", "date", ("2020-01-01", 1200)),
        C("ticker", "cat", (["ACME", "GLOBX", "INITECH", "UMBR", "STARK"],)),
        C("open", "float", (10, 400, 2)), C("close", "float", (10, 400, 2)),
        C("volume", "int", (10000, 9000000)),
        C("sector", "cat", (["Tech", "Energy", "Health", "Finance"],))]),
    "songs": dict(rows=300, cols=[
        C("track", "title"), C("artist", "person"),
        C("genre", "cat", (["pop", "rock", "jazz", "hip hop", "classical", "electronic"],)),
        C("release_date", "date", ("1995-01-01", 10000)), C("duration_s", "int", (95, 480)),
        C("streams", "int", (1000, 90000000)), C("danceability", "float", (0, 1, 3)),
        C("explicit", "bool", (0.25,))]),
    "transactions": dict(rows=500, cols=[
        C("txn_id", "id", ("X",)), C("timestamp", "date", ("2023-05-01", 90, "hours")),
        C("account", "cat", ([f"AC{i:03d}" for i in range(1, 30)],)),
        C("merchant", "cat", (["GroceryMart", "FuelCo", "BookNook", "TechHub", "CafeUno",
                               "AirFly"],)),
        C("category", "cat", (["food", "transport", "shopping", "travel", "bills"],)),
        C("amount", "float", (1, 2500, 2)), C("is_fraud", "bool", (0.03,))]),
    "athletes": dict(rows=300, cols=[
        C("name", "person"), C("country", "cat", (["KEN", "USA", "JPN", "BRA", "NOR", "FRA"],)),
        C("sport", "cat", (["Athletics", "Swimming", "Rowing", "Cycling"],)),
        C("age", "int", (17, 40)), C("height_cm", "int", (150, 210)),
        C("weight_kg", "float", (45, 120, 1), 0.05), C("year", "cat", ([2012, 2016, 2021, 2024],)),
        C("medal", "cat", (["Gold", "Silver", "Bronze"],), 0.6)]),
    "air_quality": dict(rows=420, cols=[
        C("date", "date", ("2022-01-01", 700)), C("station", "cat", (["Central", "Harbor",
                                                                       "Airport", "Park"],)),
        C("pm25", "float", (2, 160, 1), 0.07), C("pm10", "float", (5, 220, 1), 0.07),
        C("no2", "float", (3, 120, 1)), C("o3", "float", (5, 180, 1), 0.12)]),
    "shipments": dict(rows=350, cols=[
        C("shipment_id", "id", ("SH",)), C("ship_date", "date", ("2023-01-01", 360)),
        C("carrier", "cat", (["UPS", "FedEx", "DHL", "USPS"],)),
        C("origin_city", "cat", (CITIES[:6],)), C("dest_city", "cat", (CITIES[6:],)),
        C("weight_kg", "float", (0.2, 900, 1)), C("cost", "float", (5, 4000, 2)),
        C("status", "cat", (["delivered", "in transit", "delayed", "lost"], [70, 20, 9, 1]))]),
    "orders_customers": dict(rows=400, cols=[
        C("order_id", "id", ("O",)), C("customer_id", "ref", ("C", 60, 4)),
        C("order_date", "date", ("2022-06-01", 540)), C("amount", "float", (5, 900, 2)),
        C("status", "cat", (["shipped", "pending", "returned"], [80, 15, 5]))],
        second=("customers", 60, [
            C("customer_id", "id", ("C", 4)), C("customer_name", "person"),
            C("country", "cat", (["US", "DE", "IN", "BR", "JP"],)),
            C("segment", "cat", (["consumer", "corporate", "small business"],)),
            C("signup_date", "date", ("2019-01-01", 1200))]), key="customer_id"),
    "products_reviews": dict(rows=450, cols=[
        C("review_id", "id", ("R",)), C("product_id", "ref", ("PR", 40, 4)),
        C("stars", "int", (1, 5)), C("review_date", "date", ("2022-01-01", 600)),
        C("helpful_votes", "int", (0, 300)), C("verified", "bool", (0.8,))],
        second=("products", 40, [
            C("product_id", "id", ("PR", 4)), C("product_name", "title"),
            C("brand", "cat", (["Acme", "Zenith", "Orbit", "Nova"],)),
            C("price", "float", (5, 500, 2)),
            C("category", "cat", (["audio", "kitchen", "outdoor", "fitness"],))]),
        key="product_id"),
    "courses_enrollments": dict(rows=420, cols=[
        C("enrollment_id", "id", ("EN",)), C("course_id", "ref", ("CS", 24, 3)),
        C("student", "person"), C("enrolled_on", "date", ("2023-08-01", 150)),
        C("grade", "float", (40, 100, 1), 0.1), C("completed", "bool", (0.85,))],
        second=("courses", 24, [
            C("course_id", "id", ("CS", 3)), C("course_title", "title"),
            C("department", "cat", (["Math", "Physics", "CS", "Biology"],)),
            C("credits", "int", (1, 5)), C("instructor", "person")]), key="course_id"),
}


def _frame(cols: list[Col], rows: int, rng: np.random.Generator) -> pd.DataFrame:
  return pd.concat([_column(c, rows, rng) for c in cols], axis=1)


# Word-level synonyms for schema variants. Beyond the first round of schemas, column names are
# re-worded, so repeated schemas differ in vocabulary and not only in values: a model has to read
# the names from the prompt rather than memorize one spelling per schema.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "date": ("day", "dt"), "order": ("purchase", "sale"), "price": ("cost", "rate"),
    "amount": ("total", "value"), "name": ("label", "full_name"), "city": ("town", "location"),
    "id": ("code", "no"), "region": ("area", "zone"), "product": ("item", "article"),
    "units": ("qty", "quantity"), "status": ("state", "stage"), "category": ("kind", "group"),
    "country": ("nation", "market"), "title": ("role", "headline"), "department": ("dept", "team"),
    "salary": ("pay", "wage"), "rating": ("score", "stars_avg"), "genre": ("style", "type"),
    "year": ("yr", "season"), "channel": ("source", "medium"), "customer": ("client", "buyer"),
    "agent": ("rep", "handler"), "created": ("opened", "logged"), "priority": ("urgency", "level"),
    "volume": ("shares", "turnover"), "open": ("opening",), "close": ("closing",),
    "track": ("song", "tune"), "artist": ("performer", "musician"), "account": ("acct", "wallet"),
    "merchant": ("vendor", "shop"), "weight": ("mass", "load"), "height": ("stature",),
    "station": ("site", "sensor"), "carrier": ("courier", "shipper"), "cost": ("charge", "fee"),
    "student": ("learner", "pupil"), "grade": ("mark", "score"), "course": ("class", "module"),
    "review": ("feedback", "opinion"), "brand": ("maker", "label"), "credits": ("points", "units"),
    "instructor": ("teacher", "lecturer"), "distance": ("miles", "length"), "delay": ("lag",),
    "duration": ("length", "time"), "streams": ("plays", "listens"), "votes": ("ballots", "likes"),
    "visits": ("sessions", "views"), "temp": ("temperature", "t"), "wind": ("gust", "breeze"),
    "condition": ("sky", "outlook"), "subject": ("topic", "summary"), "segment": ("tier", "class"),
    "signup": ("joined", "registered"), "helpful": ("useful",), "medal": ("award", "prize"),
    "sport": ("discipline", "event"), "completed": ("finished", "done"), "bonus": ("incentive",),
    "hire": ("start", "join"), "dest": ("destination", "to"), "origin": ("from", "source"),
}


def variant_names(names: list[str], rng: np.random.Generator) -> dict[str, str]:
  """A re-wording of column names: each underscore-separated word that has synonyms is replaced
  with probability 0.7. Names stay unique (a clash keeps the original name)."""
  out: dict[str, str] = {}
  for name in names:
    words = [rng.choice(SYNONYMS[w]) if w in SYNONYMS and rng.random() < 0.7 else w
             for w in name.split("_")]
    new = "_".join(words)
    out[name] = name if new in out.values() or (new in names and new != name) else new
  return out


def generate_bundled(out_dir: str, num: int = 24, seed: int = 0) -> list[str]:
  """Writes `num` generated datasets as CSV files (one folder per context) under `out_dir`;
  returns the context names. Deterministic under `seed`. Beyond the 24 schemas, schemas repeat
  with a new seed, a numbered name and re-worded column names (`variant_names`); the merge key's
  name is kept in the folder's `schema.json`."""
  names, schema_names = [], list(SCHEMAS)
  for i in range(num):
    schema = schema_names[i % len(schema_names)]
    name = schema if i < len(schema_names) else f"{schema}_{i // len(schema_names) + 1}"
    spec = SCHEMAS[schema]
    rng = np.random.default_rng([seed, i])
    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    parts = [("df", spec["cols"], spec["rows"])]
    if "second" in spec:
      second, rows, cols = spec["second"]
      parts.append((second, cols, rows))
    rename: dict[str, str] = {}
    if i >= len(schema_names):
      rename = variant_names(sorted({c.name for _, cols, _ in parts for c in cols}), rng)
    frames = {fname: _frame(cols, rows, rng).rename(columns=rename) for fname, cols, rows in parts}
    for fname, frame in frames.items():
      file = os.path.join(folder, f"{schema if fname == 'df' else fname}.csv")
      tmp = file + ".tmp"
      frame.to_csv(tmp, index=False)
      os.replace(tmp, file)
    key = spec.get("key")
    with open(os.path.join(folder, "schema.json.tmp"), "w", encoding="utf-8") as f:
      json.dump({"schema": schema, "key": rename.get(key, key) if key else None}, f)
    os.replace(os.path.join(folder, "schema.json.tmp"), os.path.join(folder, "schema.json"))
    names.append(name)
  return names


def from_bundled_folder(folder: str, name: str, key: str | None = None) -> Context:
  """A bundled context: the main CSV as `df`, a second CSV (if any) under its own name."""
  files = sorted(f for f in os.listdir(folder) if f.endswith(".csv"))
  schema = name.rsplit("_", 1)[0] if name not in SCHEMAS else name
  main = f"{schema}.csv" if f"{schema}.csv" in files else files[0]
  ordered = [main] + [f for f in files if f != main]
  frames, shown, run, links = {}, ["import pandas as pd"], ["import pandas as pd"], []
  for f in ordered:
    var = "df" if f == main else os.path.splitext(f)[0]
    frames[var], s, r = load_csv(os.path.join(folder, f), var)
    shown.append(s)
    run.append(r)
  cells = [("code", "\n".join(shown), None)]
  cells += [("code", f"{var}.head()", show(frame)) for var, frame in frames.items()]
  meta_path = os.path.join(folder, "schema.json")
  if key is None and os.path.isfile(meta_path):
    with open(meta_path, encoding="utf-8") as f:
      key = json.load(f).get("key")
  key = key or SCHEMAS.get(schema, {}).get("key")
  if key and len(frames) > 1:
    links = [("df", var, key) for var in list(frames)[1:] if key in frames[var].columns]
  return Context(f"bundled/{name}", cells, PRELUDE, frames, "bundled", links, inputs=dict(frames),
                 load_code="\n".join(run), data_dirs=(os.path.abspath(folder),))


MATPLOTLIB_CSVS = ("Stocks.csv", "msft.csv")


def real_csvs() -> list[tuple[str, str]]:
  """(path, context id) of the real CSVs matplotlib ships as sample data, where installed."""
  try:
    import matplotlib
    sample = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
  except ImportError:
    return []
  return [(os.path.join(sample, f), f"bundled/matplotlib_{os.path.splitext(f)[0].lower()}")
          for f in MATPLOTLIB_CSVS if os.path.isfile(os.path.join(sample, f))]


def bundled(out_dir: str, num: int = 24, seed: int = 0, include_real: bool = True,
            max_mb: float = 20.0) -> tuple[list[Context], list]:
  """The offline default: `num` generated contexts plus (if `include_real`) the real CSVs that
  matplotlib ships as sample data."""
  contexts, skipped = [], []
  for name in generate_bundled(out_dir, num, seed):
    contexts.append(from_bundled_folder(os.path.join(out_dir, name), name))
  for path, context_id in real_csvs() if include_real else []:
    try:
      contexts.append(from_csv(path, context_id, max_mb, "bundled"))
    except ValueError as e:
      skip(skipped, path, str(e))
  return contexts, skipped
