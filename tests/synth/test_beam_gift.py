"""`gift build-data --runner beam` with the `gift` backend (a tiny random checkpoint sampled as
generalist and coder, loaded once per worker process): each context's shard is the local
runner's, and both runners end the same way. (The config has one backend for both roles, so
the random model writes the intents too; the first line of its text parses as one.)"""
import json
import os

import jax
import pytest

from gift import checkpoint
from gift import config as gc
from gift.data import records
from gift.model import presets, transformer
from gift.synth import build

beam_build = pytest.importorskip("gift.synth.beam_build", reason="apache-beam is not installed")
pytest.importorskip("apache_beam", reason="apache-beam is not installed: pip install 'gift[beam]'")


def dataset(card, workdir):
  """Per split, the records in stored order (the workdir, which `load_code` names, as W)."""
  out = {}
  for split in records.splits(card["dataset_dir"]):
    rows = [dict(r) for r in records.load_split(card["dataset_dir"], split)]
    out[split] = json.loads(json.dumps(rows).replace(str(workdir), "W"))
  return out


def shards(workdir):
  """{file: shard} of WORKDIR/shards."""
  d = os.path.join(workdir, "shards")
  return {p: json.load(open(os.path.join(d, p), encoding="utf-8")) for p in sorted(os.listdir(d))}


def ending(run):
  """("card", the card) or ("error", the error's type and message)."""
  try:
    return "card", run()
  except Exception as e:  # noqa: BLE001 - the error itself is what is compared
    return "error", f"{type(e).__name__}: {e}"


def same(card):
  return {k: v for k, v in card.items() if k not in ("dataset_dir", "jsonl", "timing")}


@pytest.mark.slow  # a JAX sampler compiled in this process and in each Beam worker
def test_gift_backend_beam_shards_equal_local(tmp_path):
  cfg = presets.get_preset("test_tiny", vocab_size=259)
  ckpt = str(tmp_path / "ckpt")
  checkpoint.save_model(ckpt, cfg, transformer.init_params(cfg, jax.random.key(0)))
  c = gc.base_config()
  c.synth.backend, c.synth.gift.checkpoint = "gift", ckpt
  c.synth.num_bundled, c.synth.bundled_real = 3, False
  c.synth.intents_per_context, c.synth.samples_per_intent, c.synth.max_new_tokens = 2, 2, 12
  c.execution.num_workers = 1
  c = gc.finalize(c)
  local = ending(lambda: build.build(c, str(tmp_path / "local"), progress=False))
  beam = ending(lambda: beam_build.build(c, str(tmp_path / "beam")))
  got, want = shards(tmp_path / "beam"), shards(tmp_path / "local")
  assert len(want) == 3 and got == want, (got, want)
  for s in want.values():  # the model wrote intents and codes, and each candidate is accounted
    assert s["counts"]["intents"] > 0 and s["counts"]["candidates"] > 0, s
    assert sum(s["drops"].values()) + s["counts"]["kept"] == s["counts"]["candidates"], s
  assert beam[0] == local[0], (beam, local)
  if local[0] == "error":
    assert beam[1] == local[1] and "kept" in local[1], (beam, local)
    return
  assert same(beam[1]) == same(local[1])
  assert records.card(beam[1]["dataset_dir"]) == records.card(local[1]["dataset_dir"])
  assert dataset(beam[1], tmp_path / "beam") == dataset(local[1], tmp_path / "local")
  t = beam[1]["timing"]  # 3 contexts on 2 worker processes: one sampler per process
  assert t["executed_contexts"] == 3 and 1 <= t["models_loaded"] <= 2, t
