"""Reports: results.json, report.md tables and PNG plots land in the workdir."""
import json

from gift.eval import report


def _results():
  groups = {0: "Origin", 1: "Origin", 2: "Surface"}
  return {
      "benchmark": "ds1000-pandas",
      "runtime": {"python": "/x/bin/python", "python_version": "3.11.7",
                  "packages": {"pandas": "1.5.3", "numpy": "1.26.4"}, "preset": "ds1000"},
      "oracle": {"passed": 3, "total": 3, "rate": 1.0},
      "settings": {"source": "ckpt", "n": 5},
      "runs": {"none": report.run_entry({0: [True] * 5, 1: [False] * 5, 2: [True, False] * 2
                                         + [False]}, groups, (1, 5, 20)),
               "typedesc": report.run_entry({0: [True] * 5, 1: [True] + [False] * 4,
                                             2: [True] * 5}, groups, (1, 5, 20))},
      "notes": [], "timing": {"wall_s": 2.0, "problems": 6, "problems_per_s": 3.0}}


def test_report_writes_json_markdown_tables_and_plots(tmp_path):
  paths = report.write(_results(), str(tmp_path))
  data = json.loads((tmp_path / "results.json").read_text())
  assert data["runs"]["none"]["pass_at_k"]["all"]["1"] == (1 + 0 + 0.4) / 3
  assert "20" not in data["runs"]["none"]["pass_at_k"]["all"]  # k > n is left out
  md = (tmp_path / "report.md").read_text()
  assert "pandas 1.5.3" in md and "oracle (reference solutions): 3/3" in md
  assert "| typedesc | 73.3 | 100.0 |" in md
  assert "| Origin | 2 |" in md
  for name in ("pass_at_k", "spec_kinds"):
    assert open(paths[name], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert not list(tmp_path.glob("*.tmp*"))
