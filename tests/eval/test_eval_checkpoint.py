"""`gift eval ds1000 --checkpoint`: sampling with specs, scoring and the report, end to end on a
tiny random model (its completions fail; the path, prompts and report are what is checked)."""
import json

import jax

from gift import checkpoint
from gift.eval import cli
from gift.model import presets, transformer


def test_checkpoint_eval_samples_every_spec_kind_and_writes_the_report(tmp_path, shared_dir):
  cfg = presets.get_preset("test_tiny", vocab_size=259)
  params = transformer.init_params(cfg, jax.random.key(0))
  ckpt = str(tmp_path / "ckpt")
  checkpoint.save_model(ckpt, cfg, params)
  work = tmp_path / "work"
  data = str(shared_dir / "datasets" / "ds1000" / "ds1000_pandas.jsonl")
  assert cli.main(["ds1000", "--dataset", data, "--checkpoint", ckpt, "--n", "2",
                   "--temperature", "0.8", "--max_new_tokens", "4", "--limit", "2",
                   "--spec_kind", "none,typedesc", "--ks", "1,2", "--workdir", str(work),
                   "--no_progress", "--num_workers", "1"]) == 0
  results = json.loads((work / "results.json").read_text())
  assert list(results["runs"]) == ["none", "typedesc"]
  assert results["runs"]["typedesc"]["per_problem"]["0"][0] == 2
  assert results["settings"]["n"] == 2 and results["oracle"]["total"] == 2
  assert (work / "spec_kinds.png").exists()
  assert "| typedesc |" in (work / "report.md").read_text()
