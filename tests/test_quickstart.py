"""`gift quickstart` end to end at a tiny size: every stage runs, the report compares spec kinds,
and a second run resumes instead of redoing."""
import json
import os

from gift import quickstart


def test_quickstart_tiny_end_to_end_then_resumes(tmp_path, capsys):
  workdir = str(tmp_path / "qs")
  assert quickstart.main(["--tiny", "--workdir", workdir]) == 0
  first = json.load(open(os.path.join(workdir, "eval", "results.json")))
  assert set(first["models"]) == {"gift"}
  capsys.readouterr()
  # --ablation later: the finished stages are kept, only the baseline is trained and evaluated.
  assert quickstart.main(["--tiny", "--ablation", "--workdir", workdir]) == 0
  out = capsys.readouterr().out
  assert "data: done" in out and "train (mixture): done" in out
  report = open(os.path.join(workdir, "report.md"), encoding="utf-8").read()
  assert "miniature of the GIFT method" in report
  for kind in quickstart.SPEC_KINDS:
    assert f"| gift (mixture) | {kind} |" in report
    assert f"| no_spec (none) | {kind} |" in report
    assert f"| no_spec_matched (none) | {kind} |" in report
  assert "with `io_summary` specs vs without specs" in report
  assert "ungrounded baseline (trained without specs)" in report
  assert "ungrounded baseline trained on as many code tokens as the gift model" in report
  for png in ("loss.png", "passk.png"):
    assert os.path.getsize(os.path.join(workdir, png)) > 1000
  results = json.load(open(os.path.join(workdir, "eval", "results.json")))
  assert results["tasks"] > 0 and set(results["models"]) == {"gift", "no_spec", "no_spec_matched"}
  assert results["models"]["gift"] == first["models"]["gift"]
  for per_kind in results["models"].values():
    for r in per_kind.values():
      assert 0.0 <= r["greedy_pass@1"] <= 1.0 and 0.0 <= r["pass@2"] <= 1.0
  capsys.readouterr()

  mtime = os.path.getmtime(os.path.join(workdir, "eval", "results.json"))
  assert quickstart.main(["--tiny", "--ablation", "--workdir", workdir]) == 0
  out = capsys.readouterr().out
  assert "data: done" in out and "tokenizer: done" in out and "eval: done" in out
  assert "train (mixture): done" in out and "train (none): done" in out
  assert os.path.getmtime(os.path.join(workdir, "eval", "results.json")) == mtime
