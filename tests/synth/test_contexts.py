"""Context sources: CSV folders, notebooks, the bundled default; bad inputs are skipped with a
reason and never stop loading."""
import json

import nbformat
import pandas as pd

from gift.synth import contexts


def test_csv_folder_loads_good_files_and_skips_bad_ones(tmp_path):
  (tmp_path / "good.csv").write_text("when,city,temp\n2023-01-02,Oslo,1.5\n2023-01-03,Rome,9\n")
  (tmp_path / "latin1.csv").write_bytes("name,x\nJos\xe9,1\n".encode("latin-1"))
  (tmp_path / "empty.csv").write_text("")
  (tmp_path / "header_only.csv").write_text("a,b\n")
  (tmp_path / "ragged.csv").write_text('a,b\n1,"unterminated\n')
  (tmp_path / "huge.csv").write_text("a\n" + "1\n" * 400_000)
  (tmp_path / "notes.txt").write_text("ignored")
  ctxs, skipped = contexts.from_csv_folder(str(tmp_path), max_mb=0.5)
  assert [c.id.split("-")[0] for c in ctxs] == ["csv/good"]
  reasons = {p.rsplit("/", 1)[1]: r.split(":")[0] for p, r in skipped}
  assert reasons == {"latin1.csv": "encoding", "empty.csv": "empty", "header_only.csv": "empty",
                     "ragged.csv": "unreadable", "huge.csv": "too_large"}
  ctx = ctxs[0]
  assert pd.api.types.is_datetime64_any_dtype(ctx.frames["df"]["when"])
  assert "df = pd.read_csv('good.csv', parse_dates=['when'])" in ctx.text()
  assert "# Out[ ]:" in ctx.text() and "Oslo" in ctx.text()
  assert str(tmp_path) in ctx.load_code and ctx.inputs["df"] is ctx.frames["df"]


def _notebook(path, cells):
  nb = nbformat.v4.new_notebook()
  nb.cells = cells
  nbformat.write(nb, str(path))


def test_notebook_cut_at_each_cell_that_reads_a_frame(tmp_path):
  out = nbformat.v4.new_output("execute_result", data={"text/plain": "   a\n0  1"})
  _notebook(tmp_path / "nb.ipynb", [
      nbformat.v4.new_markdown_cell("# Sales analysis"),
      nbformat.v4.new_code_cell("%matplotlib inline\nimport pandas as pd"),
      nbformat.v4.new_code_cell("df = pd.DataFrame({'a': [1, 2]})\ndf.head()", outputs=[out]),
      nbformat.v4.new_code_cell("other = pd.read_csv('o.csv')"),
  ])
  (tmp_path / "broken.ipynb").write_text("{ not json")
  (tmp_path / "plain.ipynb").write_text(json.dumps(nbformat.v4.new_notebook()))
  ctxs, skipped = contexts.from_notebooks(str(tmp_path))
  assert len(ctxs) == 2 and all(c.frames is None for c in ctxs)
  first, second = ctxs
  assert first.frame_names == ("df",) and second.frame_names == ("df", "other")
  assert "# Sales analysis" in first.text() and "#    a\n# 0  1" in first.text()
  assert "%matplotlib" in first.text() and "%matplotlib" not in first.code  # magics not run
  assert "read_csv('o.csv')" not in first.text() and "read_csv('o.csv')" in second.code
  assert sorted(r.split(":")[0] for _, r in skipped) == ["broken_notebook", "no_frames"]


def test_bundled_is_deterministic_and_covers_column_kinds(tmp_path):
  a, _ = contexts.bundled(str(tmp_path / "a"), num=26, seed=1, include_real=False)
  b, _ = contexts.bundled(str(tmp_path / "b"), num=26, seed=1, include_real=False)
  assert len(a) == 26 and [c.text() for c in a] == [c.text() for c in b]
  assert len({c.id for c in a}) == 26  # schemas repeat under new names past 24
  kinds = set()
  for c in a:
    for f in c.frames.values():
      kinds |= {t.kind for t in f.dtypes if hasattr(t, "kind")}
      kinds.add("missing") if f.isna().any().any() else None
  assert {"i", "f", "M", "b", "missing"} <= kinds
  assert sum(bool(c.links) for c in a) >= 3


def test_repeated_schemas_are_reworded_and_keep_their_merge_key(tmp_path):
  ctxs, _ = contexts.bundled(str(tmp_path), 2 * len(contexts.SCHEMAS), seed=0,
                             include_real=False)
  by_id = {c.id: c for c in ctxs}
  changed = 0
  for schema in contexts.SCHEMAS:
    base, variant = by_id[f"bundled/{schema}"], by_id[f"bundled/{schema}_2"]
    assert len(variant.frames["df"].columns) == len(base.frames["df"].columns)
    assert variant.frames["df"].columns.is_unique
    changed += list(variant.frames["df"].columns) != list(base.frames["df"].columns)
    if base.links:
      ((left, right, key),) = variant.links
      assert key in variant.frames[left].columns and key in variant.frames[right].columns
  assert changed >= len(contexts.SCHEMAS) - 2  # almost every variant reads differently
