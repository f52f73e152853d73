"""Configs: ml_collections `.py` files, command-line overrides, validation, freezing.

A config file defines `get_config(arg: str | None = None) -> ConfigDict`, usually starting from
`base_config()` so every key exists with its type. On the command line:

  gift train --config=configs/test_tiny.py[:arg] --config.train.lr=3e-4 --config.model.dtype=float32

Overrides are parsed as Python literals and must match the existing key's type (an int is
accepted for a float). An unknown key or a wrong type fails with one line naming the key and the
closest valid keys. The result is locked: no key can be added afterwards.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import os
from typing import Any, Iterable

import ml_collections

from gift import UserError
from gift.model import presets

ConfigDict = ml_collections.ConfigDict


class ConfigError(UserError, ValueError):
  """A config file, key or value is wrong; the message says which and what was expected."""


def base_config() -> ConfigDict:
  """Every key gift reads, with its default and type."""
  c = ConfigDict()
  c.model = ConfigDict(dict(preset="test_tiny", **presets.get_preset("test_tiny").to_dict()))
  # A SentencePiece .model, or a folder with tokenizer.json (Hugging Face) or tokenizer.model;
  # "" = init_from's tokenizer, else a byte-level vocabulary.
  c.tokenizer = ""
  c.init_from = ""  # gift checkpoint dir (e.g. from `gift import-hf`) to fine-tune from
  c.seed = 0

  c.mesh = ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.distributed = ConfigDict(dict(
      initialize="auto",  # "auto" (TPU pods / SLURM / env vars), "yes" or "no"
      coordinator_address="", num_processes=0, process_id=-1,
      local_device_ids="",  # e.g. "0,1,2,3" for one process per GPU group
      cpu_collectives="gloo"))

  c.data = ConfigDict(dict(
      source="tfds",  # "tfds" (GIFT records dir) or "jsonl" ({"prompt", "completion"} lines)
      path="",  # TFDS dataset dir, or a .jsonl file (glob allowed)
      eval_path="",  # jsonl source only: held-out .jsonl file(s); "" = no eval
      train_split="train", eval_split="validation",
      spec_kind="mixture",  # none | typedesc | io_examples | io_summary | mixture
      spec_mixture=ConfigDict(dict(none=0.25, typedesc=0.25, io_examples=0.25, io_summary=0.25)),
      context="full",  # "full" notebook context or "none"
      seq_len=512,
      pack=True,
      num_epochs=0,  # 0: repeat forever (steps set the length)
      prefetch=2,  # batches built ahead in a background thread
      chat_template=False,  # prompts as a user turn of the tokenizer's chat template (instruct)
  ))

  c.train = ConfigDict(dict(
      batch_size=8,  # global, in packed rows
      grad_accum=1,  # microbatches per step (lax.scan); batch_size % grad_accum == 0
      num_steps=100,
      lr=3e-4, end_lr_ratio=0.1, warmup_steps=10, schedule="cosine",  # cosine | constant | linear
      weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0,
      log_every=10, eval_every=0, eval_steps=4,
      progress=True,
      peft="none",  # none | lora | qlora: train adapters on a frozen (quantized) base; see c.lora
      # Execution-based evaluation during training (gift/eval/intrain.py): every N steps and at
      # the end, greedy pass@1 per spec kind on held-out tasks, executed in the sandbox.
      exec_eval_every=0,  # 0 = off
      exec_eval=ConfigDict(dict(
          tasks="",  # "" = validation split of data.path (GIFT TFDS); or an episodes .json
          num_tasks=96,  # evenly spread over the task set; 0 = all
          # Evaluations before the last step on an even spread of this many of those tasks
          # (0 = all of them): a cheaper curve, the final numbers on every task.
          interim_tasks=0,
          spec_kinds=(),  # () = the kinds the training data uses
          max_new_tokens=128, batch_size=32)),
  ))
  c.lora = ConfigDict(dict(  # train.peft = lora | qlora (gift/lora.py)
      rank=8, alpha=16.0, dropout=0.0,
      targets=r"^layers/(attn/(q|k|v|o)|mlp/(gate|up|down))$",  # regex over parameter paths
      quant="nf4",  # qlora base: nf4 (4-bit, per-block absmax scales) | int8 (per channel)
      block_size=64,  # nf4 scale block along the weight's last axis (bitsandbytes: 64)
  ))
  c.checkpoint = ConfigDict(dict(every=50, keep=3, async_save=True, save_on_preemption=True,
                                 keep_best=""))  # e.g. "pass@1/io_summary": WORKDIR/best

  c.sample = ConfigDict(dict(
      n=1, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=256,
      stop=("# In[ ]:",), batch_size=8,
      prompt_buckets=(32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024, 1536,
                      2048)))

  c.synth = ConfigDict(dict(  # `gift build-data` (gift/synth/build.py)
      contexts=("bundled",),  # "bundled" and/or paths: CSV folders/files, .ipynb folders/files
      num_bundled=24, bundled_real=True,  # generated contexts; + matplotlib's sample CSVs
      max_file_mb=20.0,
      data_dirs=(),  # more folders the notebooks read (besides their own), shown read-only
      backend="templates",  # templates | gift | openai
      operations=(),  # templates: subset of templates.OPERATIONS; () = all
      intents_per_context=96, samples_per_intent=3,
      temperature=0.8, max_new_tokens=256, llm_summaries=True,
      validation_fraction=0.1, max_contexts=0,  # 0 = all
      spec_max_chars=ConfigDict(dict(typedesc=600, io_examples=1200, io_summary=600)),
      example_rows=3, example_cols=8, example_cell_chars=20, output_repr_chars=1500,
      gift=ConfigDict(dict(checkpoint="", chat_template=False)),
      openai=ConfigDict(dict(base_url="", model="", api_key_env="OPENAI_API_KEY",
                             endpoint="chat", timeout_s=60.0, max_retries=4, backoff_s=1.0,
                             concurrency=8)),
  ))

  c.execution = ConfigDict(dict(
      python="",  # interpreter for the sandbox zygotes; "" = this one
      num_workers=0,  # 0 = one per core
      timeout_s=10.0, memory_mb=2048, output_limit_bytes=1 << 20))
  return c


def _load_file(spec: str) -> ConfigDict:
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} not found")
  module_spec = importlib.util.spec_from_file_location(
      "gift_config_" + os.path.basename(path).removesuffix(".py"), path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # a broken config file: say which
    raise ConfigError(f"config file {path!r} failed to load: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} defines no get_config(arg=None)")
  cfg = module.get_config(arg or None) if arg else module.get_config()
  if not isinstance(cfg, ConfigDict):
    raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}, expected ConfigDict")
  return cfg


def _all_keys(cfg: ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in cfg.items():
    keys.append(prefix + k)
    if isinstance(v, ConfigDict):
      keys += _all_keys(v, prefix + k + ".")
  return keys


def _unknown_key(cfg: ConfigDict, dotted: str) -> ConfigError:
  close = difflib.get_close_matches(dotted, _all_keys(cfg), n=3, cutoff=0.5)
  return ConfigError(f"unknown config key {dotted!r}; closest valid keys: "
                     f"{', '.join(close) if close else '(none)'}")


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare word is a string


def set_value(cfg: ConfigDict, dotted: str, value: Any) -> None:
  """Sets `cfg.<dotted> = value`, checking that the key exists and the type matches."""
  *parents, leaf = dotted.split(".")
  node = cfg
  for i, p in enumerate(parents):
    if p not in node or not isinstance(node[p], ConfigDict):
      raise _unknown_key(cfg, ".".join(parents[:i + 1]))
    node = node[p]
  if leaf not in node:
    raise _unknown_key(cfg, dotted)
  old = node[leaf]
  if isinstance(old, ConfigDict):
    raise ConfigError(f"config key {dotted!r} is a section; set one of its fields, e.g. "
                      f"{dotted}.{next(iter(old.keys()), '...')}")
  if isinstance(old, bool):
    if isinstance(value, str) and value.lower() in ("true", "false"):
      value = value.lower() == "true"
    ok = isinstance(value, bool)
  elif isinstance(old, float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    value = float(value) if ok else value
  elif isinstance(old, int):
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif isinstance(old, tuple):
    value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    ok = True
  elif isinstance(old, str):
    ok = isinstance(value, str)
    if not ok and isinstance(value, (int, float)):  # e.g. --config.tokenizer=123 means "123"
      value, ok = str(value), True
  else:
    ok = old is None or isinstance(value, type(old))
  if not ok:
    raise ConfigError(f"config key {dotted!r} expects {type(old).__name__} (now {old!r}), "
                      f"got {type(value).__name__} {value!r}")
  with node.unlocked():
    node[leaf] = value


def apply_overrides(cfg: ConfigDict, overrides: Iterable[tuple[str, Any]]) -> ConfigDict:
  for key, value in overrides:
    set_value(cfg, key, value)
  return cfg


def parse_args(argv: list[str], default: str | None = None) -> tuple[ConfigDict, list[str]]:
  """Splits `--config=FILE[:arg]` and `--config.a.b=v` out of argv.

  Returns the validated, locked config and the remaining arguments. `default` is the config file
  used when argv names none (None: `base_config()`).
  """
  spec, overrides, rest = default, [], []
  it = iter(argv)
  for a in it:
    if a == "--config" or a.startswith("--config="):
      spec = a.split("=", 1)[1] if "=" in a else next(it, "")
    elif a.startswith("--config."):
      key, eq, val = a[len("--config."):].partition("=")
      if not eq:
        val = next(it, None)
        if val is None:
          raise ConfigError(f"--config.{key} needs a value")
      overrides.append((key, _parse_value(val)))
    else:
      rest.append(a)
  cfg = _load_file(spec) if spec else base_config()
  return finalize(apply_overrides(cfg, overrides)), rest


def finalize(cfg: ConfigDict) -> ConfigDict:
  """Validates cross-field rules and locks the config."""
  preset = cfg.get("model", {}).get("preset") if "model" in cfg else None
  if preset is not None:
    presets.ModelConfig.from_dict(cfg.model)  # unknown model keys fail here
  if "train" in cfg and cfg.train.batch_size % cfg.train.grad_accum:
    raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by "
                      f"train.grad_accum={cfg.train.grad_accum}")
  if "train" in cfg and "lora" in cfg and cfg.train.get("peft", "none") != "none":
    from gift import lora
    try:
      lora.config_of(cfg)
    except ValueError as e:
      raise ConfigError(str(e)) from e
  if "data" in cfg and cfg.data.spec_kind not in (
      "none", "typedesc", "io_examples", "io_summary", "mixture"):
    raise ConfigError(f"data.spec_kind={cfg.data.spec_kind!r}; expected one of none, typedesc, "
                      "io_examples, io_summary, mixture")
  if "checkpoint" in cfg and cfg.checkpoint.get("keep_best") and not cfg.train.exec_eval_every:
    raise ConfigError(f"checkpoint.keep_best={cfg.checkpoint.keep_best!r} needs the in-training "
                      "evaluation: set train.exec_eval_every > 0")
  cfg.lock()
  return cfg


def with_preset(cfg: ConfigDict, name: str, **overrides: Any) -> ConfigDict:
  """Sets cfg.model to the named preset (plus overrides); used by config files."""
  shape = presets.get_preset(name, **overrides).to_dict()
  with cfg.unlocked():
    cfg.model = ConfigDict(dict(preset=name, **shape))
  return cfg


def open_recipe(cfg: ConfigDict) -> ConfigDict:
  """The GIFT4Code authors' open fine-tuning recipe, shared by the experiment configs: GIFT
  records with a mixture of spec kinds, sequences of 2k tokens, lr 2e-5 with 10 warm-up steps
  then cosine decay to 0, no weight decay; logs every 10 steps, eval and checkpoints every 200.
  Configs set the model, mesh, batch and number of steps (about 5 epochs) themselves."""
  for key, value in [("data.source", "tfds"), ("data.spec_kind", "mixture"),
                     ("data.seq_len", 2048), ("train.lr", 2e-5), ("train.warmup_steps", 10),
                     ("train.schedule", "cosine"), ("train.end_lr_ratio", 0.0),
                     ("train.weight_decay", 0.0), ("train.log_every", 10),
                     ("train.eval_every", 200), ("train.eval_steps", 8),
                     ("checkpoint.every", 200), ("checkpoint.keep", 3),
                     ("checkpoint.async_save", True)]:
    set_value(cfg, key, value)
  return cfg


# Model fields a run may choose freely (numerics, memory, kernels); the others are the model's
# shape, which a checkpoint fixes.
FREE_MODEL_FIELDS = ("dtype", "remat_policy", "scan_layers", "max_seq_len", "attention_impl",
                     "decode_attention")


def model_config(cfg: ConfigDict) -> presets.ModelConfig:
  """The run's model: `config.model`, or with `init_from` the checkpoint's shape with
  `config.model`'s numerics (see `model_from_checkpoint`)."""
  stated = presets.ModelConfig.from_dict(cfg.model)
  if not cfg.get("init_from"):
    return stated
  from gift import checkpoint
  default = presets.ModelConfig.from_dict(base_config().model)
  return model_from_checkpoint(stated, default, checkpoint.read_model_config(cfg.init_from),
                               f"init_from={cfg.init_from}")


def model_from_checkpoint(stated: presets.ModelConfig, default: presets.ModelConfig,
                          ckpt: presets.ModelConfig, where: str) -> presets.ModelConfig:
  """A fine-tuning run's model: `ckpt`'s shape with the run's numerics.

  `stated` is config.model, `default` base_config()'s: a field config.model leaves at its default
  is not stated. Shape fields come from the checkpoint; one that config.model states with another
  value is an error naming it. Free fields (FREE_MODEL_FIELDS) come from config.model, except
  max_seq_len, which keeps the checkpoint's unless stated.
  """
  fields = [f.name for f in dataclasses.fields(ckpt)]
  bad = [k for k in fields if k not in FREE_MODEL_FIELDS
         and getattr(stated, k) != getattr(default, k) and getattr(stated, k) != getattr(ckpt, k)]
  if bad:
    raise ConfigError(f"config.model contradicts {where}: " + ", ".join(
        f"config.model.{k}={getattr(stated, k)!r} but the checkpoint has {k}="
        f"{getattr(ckpt, k)!r}" for k in bad) + "; with init_from the shape comes from the "
        "checkpoint: leave these unset (or set them to the checkpoint's values)")
  free = {k: getattr(stated, k) for k in FREE_MODEL_FIELDS
          if k != "max_seq_len" or stated.max_seq_len != default.max_seq_len}
  return ckpt.replace(**free)
