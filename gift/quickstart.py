"""`gift quickstart`: the whole GIFT loop, in miniature, on a laptop CPU.

  gift quickstart [--workdir gift_quickstart] [--ablation]

Stages (each resumes: a finished stage is skipped, an interrupted one continues):
  1. data       build GIFT records from the bundled contexts with the `templates` backend: intents,
                code samples executed in the sandbox, specs from the executions (TFDS records).
  2. tokenizer  train a code SentencePiece vocabulary on the training split.
  3. train      train the `quickstart` preset from scratch on a mixture of spec kinds.
  4. eval       on held-out contexts (never seen in training): sample code with each spec kind in
                the prompt, execute it, and compare the output with the reference's
                (pass@1 greedy, pass@k sampled).
  5. report     report.md with tables and PNG plots.
With `--ablation`, also train the ungrounded baseline (no specs in training) and evaluate it.

Everything is configured by `get_config()` below (embedded defaults: CPU, no network), and any key
can be overridden like other commands: `gift quickstart --config.train.num_steps=50`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from gift import config as config_lib

SPEC_KINDS = ("none", "typedesc", "io_examples", "io_summary")


def get_config(arg: str | None = None) -> config_lib.ConfigDict:
  """Embedded defaults; `arg="tiny"` is a seconds-long version for tests."""
  c = config_lib.base_config()
  config_lib.with_preset(c, "quickstart")
  c.synth.contexts = ("bundled",)
  c.synth.num_bundled = 24
  c.synth.intents_per_context = 96
  c.synth.samples_per_intent = 3
  c.synth.validation_fraction = 0.15
  c.data.spec_kind = "mixture"
  c.data.seq_len = 768
  c.train.batch_size = 8
  c.train.num_steps = 600
  c.train.lr = 2e-3
  c.train.warmup_steps = 30
  c.train.end_lr_ratio = 0.05
  c.train.weight_decay = 0.01
  c.train.log_every = 20
  c.train.eval_every = 200
  c.checkpoint.every = 100
  c.sample.n = 5
  c.sample.temperature = 0.8
  c.sample.top_p = 0.95
  c.sample.max_new_tokens = 96
  c.sample.batch_size = 32
  with c.unlocked():
    c.quickstart = config_lib.ConfigDict(dict(
        vocab_size=4096,
        eval_problems=96,  # held-out problems (one per held-out intent) evaluated
        pass_k=(1, 5),
    ))
  if arg == "tiny":
    config_lib.with_preset(c, "test_tiny")
    c.synth.num_bundled = 3
    c.synth.bundled_real = False
    c.synth.intents_per_context = 16
    c.synth.samples_per_intent = 2
    c.synth.validation_fraction = 0.34
    c.data.seq_len = 512
    c.train.num_steps = 6
    c.train.eval_every = 0
    c.train.log_every = 2
    c.checkpoint.every = 3
    c.sample.n = 2
    c.sample.max_new_tokens = 24
    c.quickstart.vocab_size = 400
    c.quickstart.eval_problems = 4
    c.quickstart.pass_k = (1, 2)
  return c


def _done(path: str) -> bool:
  return os.path.exists(path)


def _mark(path: str, payload: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=1, sort_keys=True, default=str)
  os.replace(tmp, path)


def _banner(i: int, text: str) -> None:
  print(f"\n=== [{i}/5] {text} ===", flush=True)


# ---------------------------------------------------------------------------------------------
# Stages.
# ---------------------------------------------------------------------------------------------
def stage_data(cfg: Any, workdir: str) -> dict:
  from gift.synth import build
  data_dir = os.path.join(workdir, "data")
  marker = os.path.join(data_dir, "card.json")
  if _done(marker):
    with open(marker, encoding="utf-8") as f:
      card = json.load(f)
    print(f"data: done ({card['kept']} examples) -> {card['dataset_dir']}")
    return card
  os.makedirs(data_dir, exist_ok=True)
  card = build.build(cfg, data_dir, progress=True)  # writes data/card.json last
  print(build.summary_table(card))
  return card


def stage_tokenizer(cfg: Any, workdir: str, dataset_dir: str) -> str:
  from gift import tokenizer as tokenizer_lib
  from gift.data import prompts, records
  path = os.path.join(workdir, "tokenizer.model")
  if _done(path):
    print(f"tokenizer: done -> {path}")
    return path
  train = records.load_split(dataset_dir, "train")
  texts = []
  for i in range(len(train)):
    rec = train[i]
    for kind in SPEC_KINDS:  # every spec kind's wording, so none is split into bytes
      r = prompts.render(rec, kind)
      texts.append(r.prompt + r.target)
  out = tokenizer_lib.train(texts, os.path.join(workdir, "tokenizer"), cfg.quickstart.vocab_size)
  print(f"tokenizer: {cfg.quickstart.vocab_size} pieces from {len(train)} examples -> {out}")
  return out


def train_config(cfg: Any, dataset_dir: str, tokenizer_path: str, spec_kind: str) -> Any:
  """The trainer's config: the quickstart config with data and tokenizer filled in."""
  tcfg = config_lib.base_config()
  for section in ("model", "train", "checkpoint", "mesh", "sample", "execution"):
    with tcfg.unlocked():
      tcfg[section] = cfg[section]
  tcfg.seed = cfg.seed
  tcfg.tokenizer = tokenizer_path
  with tcfg.data.unlocked():
    tcfg.data.update(cfg.data.to_dict())
  tcfg.data.source, tcfg.data.path, tcfg.data.spec_kind = "tfds", dataset_dir, spec_kind
  return config_lib.finalize(tcfg)


def stage_train(cfg: Any, run_dir: str, dataset_dir: str, tokenizer_path: str,
                spec_kind: str) -> dict:
  from gift import metrics, train
  marker = os.path.join(run_dir, "train_done.json")
  if _done(marker):
    with open(marker, encoding="utf-8") as f:
      summary = json.load(f)
    print(f"train ({spec_kind}): done ({summary.get('step')} steps) -> {run_dir}")
    return summary
  summary = train.train(train_config(cfg, dataset_dir, tokenizer_path, spec_kind), run_dir)
  summary = dict(summary, spec_kind=spec_kind,
                 metrics=metrics.read_jsonl(os.path.join(run_dir, "metrics.jsonl")))
  _mark(marker, summary)
  return summary


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="gift quickstart", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="gift_quickstart")
  parser.add_argument("--ablation", action="store_true",
                      help="also train and evaluate the ungrounded baseline (no specs)")
  parser.add_argument("--tiny", action="store_true", help="a seconds-long run (tests)")
  known = [a for a in argv if not a.startswith("--config")]
  args = parser.parse_args(known)
  overrides = [a for a in argv if a.startswith("--config.")]
  cfg = get_config("tiny" if args.tiny else None)
  config_lib.apply_overrides(cfg, [(k[len("--config."):], config_lib._parse_value(v))
                                   for k, _, v in (a.partition("=") for a in overrides)])
  cfg = config_lib.finalize(cfg)
  workdir = os.path.abspath(args.workdir)
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  _banner(1, "data: contexts -> intents -> executed samples -> specs -> TFDS records")
  card = stage_data(cfg, workdir)
  _banner(2, "tokenizer: SentencePiece vocabulary for code")
  tok = stage_tokenizer(cfg, workdir, card["dataset_dir"])
  _banner(3, "train: the quickstart model on a mixture of spec kinds")
  runs = {"gift": stage_train(cfg, os.path.join(workdir, "train"), card["dataset_dir"], tok,
                              "mixture")}
  if args.ablation:
    runs["no_spec"] = stage_train(cfg, os.path.join(workdir, "train_nospec"),
                                  card["dataset_dir"], tok, "none")
  print(f"\nquickstart: {time.time() - t0:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
