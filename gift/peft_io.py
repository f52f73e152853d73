"""LoRA checkpoints, and Hugging Face PEFT adapters in and out.

A *LoRA checkpoint* is a gift checkpoint (gift/checkpoint.py) whose root also holds `lora.json`
({"lora": LoraConfig fields, "base": the base model's gift checkpoint}) and whose steps' `params`
item holds only the adapters tree (gift/lora.py), so it is small: a training workdir with
`train.peft = lora | qlora` is one (plus opt_state and data for the adapters). The base is
read from `base` (a path relative to the checkpoint, or absolute); QLoRA quantizes it again at
load time (deterministic), so nothing quantized is ever stored.

  load_model(ckpt, merge=True)     ModelConfig, params (merged, or LoraWeight at the targets)
  export_peft(ckpt, out)           adapter_config.json + adapter_model.safetensors (PEFT names)
  import_peft(adapter_dir, base, out)   a PEFT LoRA adapter -> a LoRA checkpoint

PEFT tensor names: `base_model.model.<HF module>.lora_A.weight` [r, in_features] and
`.lora_B.weight` [out_features, r], the HF module of each gift path from gift/hf.py's table, e.g.
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` <-> layers/attn/q/a[0]
([D, r]: transposed), `...q_proj.lora_B.weight` [N*H, r] <-> layers/attn/q/b[0] ([r, N, H]).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gift import checkpoint as ckpt_lib
from gift import lora as lora_lib
from gift.model.presets import ModelConfig

LORA_FILE = "lora.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


# ------------------------------------------------------------------------------------------------
# The LoRA checkpoint's root file
# ------------------------------------------------------------------------------------------------
def is_lora(ckpt_dir: str) -> bool:
  return os.path.isfile(os.path.join(ckpt_dir, LORA_FILE))


def write_root(ckpt_dir: str, lcfg: lora_lib.LoraConfig, base_dir: str) -> None:
  """Writes `lora.json` (process 0; atomic). `base_dir` is stored relative when inside."""
  if jax.process_index() != 0:
    return
  ckpt_dir, base_dir = os.path.abspath(ckpt_dir), os.path.abspath(base_dir)
  rel = os.path.relpath(base_dir, ckpt_dir)
  os.makedirs(ckpt_dir, exist_ok=True)
  ckpt_lib._write_atomic(  # noqa: SLF001 - the same atomic root-file write
      os.path.join(ckpt_dir, LORA_FILE),
      json.dumps({"lora": lcfg.to_dict(), "base": rel if not rel.startswith("..") else base_dir},
                 indent=2).encode())


def read_root(ckpt_dir: str) -> tuple[lora_lib.LoraConfig, str]:
  """(LoraConfig, absolute base checkpoint dir) of a LoRA checkpoint."""
  path = os.path.join(ckpt_dir, LORA_FILE)
  with open(path) as f:
    d = json.load(f)
  for key in ("lora", "base"):
    if key not in d:
      raise ValueError(f"{path}: missing key {key!r} (expected {{'lora': {{...}}, 'base': DIR}})")
  base = d["base"] if os.path.isabs(d["base"]) else os.path.join(ckpt_dir, d["base"])
  if not os.path.isfile(os.path.join(base, ckpt_lib.MODEL_CONFIG)):
    raise FileNotFoundError(f"{path}: base model {base!r} is not a gift checkpoint (no "
                            f"{ckpt_lib.MODEL_CONFIG}); the adapters need their base model")
  return lora_lib.LoraConfig.from_dict(d["lora"]), os.path.abspath(base)


def resolve(ckpt_dir: str) -> tuple[str, str | None]:
  """(base model dir, LoRA checkpoint dir or None) for `init_from`: a LoRA checkpoint names its
  base; any other gift checkpoint is a base itself."""
  if is_lora(ckpt_dir):
    return read_root(ckpt_dir)[1], ckpt_dir
  return ckpt_dir, None


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
def load_base(base_dir: str, model_cfg: ModelConfig, lcfg: lora_lib.LoraConfig,
              mesh=None) -> dict:
  """The frozen base (`lora.prepare_base`) from a gift checkpoint, sharded by
  `lora.base_shardings` when a mesh is given. LoRA restores straight into the compute dtype.
  QLoRA on an accelerator restores to host memory first and quantizes one weight at a time on
  the device, so the device never holds the float model."""
  dtype = jnp.dtype(model_cfg.dtype)
  if mesh is not None:
    full_sh = _param_shardings(model_cfg, mesh)
    b_sh = lora_lib.base_shardings(model_cfg, lcfg, mesh)
  else:
    full_sh = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    b_sh = None
  host = lcfg.peft == "qlora" and jax.default_backend() != "cpu"
  restore_sh = (jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
                if host else full_sh)
  _, params, _ = ckpt_lib.load_model(base_dir, shardings=restore_sh, dtype=dtype, raw=True)
  quantized = {t.path: t for t in lora_lib.quantized_targets(model_cfg, lcfg)}
  flat = dict(lora_lib._flat(params))  # noqa: SLF001
  del params
  out = {}
  for path in list(flat):
    x = flat.pop(path)  # dropped from `flat`, so each float weight is freed once converted
    if host:
      x = jax.device_put(x, full_sh if mesh is None else lora_lib._get(full_sh, path))  # noqa
    sh = None if b_sh is None else lora_lib._get(b_sh, path)  # noqa: SLF001
    if path in quantized:
      t = quantized[path]
      x = jax.jit(lambda w, t=t: lora_lib.quantize(w, lcfg.quant, t.in_axes, lcfg.block_size,
                                                  dtype), out_shardings=sh)(x)
    out[path] = x
  return lora_lib._nest(out)  # noqa: SLF001


def _param_shardings(model_cfg, mesh):
  from gift import sharding
  return sharding.param_shardings(model_cfg, mesh)


def load_adapters(ckpt_dir: str, step: int | None = None, shardings: Any = None) -> dict:
  """The adapters tree (the `params` item) of a LoRA checkpoint's step (None: latest)."""
  _, adapters, _ = ckpt_lib.load_model(ckpt_dir, step=step, shardings=shardings, raw=True)
  return adapters


def load_model(ckpt_dir: str, step: int | None = None, shardings: Any = None,
               merge: bool = True) -> tuple[ModelConfig, Any, str | None]:
  """A LoRA checkpoint as a model: (ModelConfig, params, tokenizer path). `merge`: plain params
  (base + a @ b * scale, f32); else the base (QLoRA: dequantized, f32) with LoraWeight nodes,
  which `transformer.apply` and the sampler run unmerged. `shardings` (merged only) as
  `checkpoint.load_model`."""
  model_cfg = ckpt_lib.read_model_config(ckpt_dir)
  lcfg, base_dir = read_root(ckpt_dir)
  tok = ckpt_lib.tokenizer_path(ckpt_dir) or ckpt_lib.tokenizer_path(base_dir)
  f32 = ModelConfig.from_dict(dict(model_cfg.to_dict(), dtype="float32"))
  base = load_base(base_dir, f32, lcfg)
  adapters = load_adapters(ckpt_dir, step)
  if merge:
    params = jax.jit(lambda b, a: lora_lib.merge(f32, lcfg, b, a))(base, adapters)
    if shardings is not None:
      params = jax.device_put(params, shardings)
    return model_cfg, params, tok
  if shardings is not None:
    raise ValueError("unmerged LoRA params take no shardings; load them merged for a mesh")
  plain = lora_lib.dequantized_base(base)
  return model_cfg, lora_lib.combine(f32, dataclass_replace(lcfg, dropout=0.0), plain,
                                     adapters), tok


def dataclass_replace(obj, **kw):
  import dataclasses
  return dataclasses.replace(obj, **kw)


# ------------------------------------------------------------------------------------------------
# PEFT export / import
# ------------------------------------------------------------------------------------------------
def _hf_modules(model_cfg: ModelConfig) -> dict[tuple[str, ...], str]:
  """gift path under layers -> the HF module within a layer (e.g. self_attn.q_proj), by the
  Hugging Face architecture the model exports as (gift/hf.py's tables)."""
  from gift import hf
  arch = hf._arch_for(model_cfg)[0]  # noqa: SLF001
  return {path: name.removesuffix(".weight") for path, name in arch.layer_names.items()
          if name.endswith(".weight") and "norm" not in name}


def _module_of(t: lora_lib.Target, model_cfg: ModelConfig) -> str:
  if t.path[0] == "layers":
    mods = _hf_modules(model_cfg)
    if t.path[1:] not in mods:
      raise ValueError(f"{t.name}: no Hugging Face module is known for this target")
    return mods[t.path[1:]]
  if t.path == ("unembed",):
    return "lm_head"
  raise ValueError(f"{t.name}: no Hugging Face module is known for this target")


def peft_tensors(model_cfg: ModelConfig, lcfg: lora_lib.LoraConfig, adapters: dict,
                 dtype=np.float32) -> dict[str, np.ndarray]:
  """PEFT's adapter_model.safetensors tensors for the gift adapters."""
  out = {}
  for t in lora_lib.targets(model_cfg, lcfg):
    ad = lora_lib._get(adapters, t.path)  # noqa: SLF001
    a, b = np.asarray(ad["a"], np.float32), np.asarray(ad["b"], np.float32)
    mod = _module_of(t, model_cfg)
    for i in range(t.shape[0] if t.lead else 1):
      ai, bi = (a[i], b[i]) if t.lead else (a, b)
      prefix = (f"base_model.model.model.layers.{i}.{mod}" if t.lead
                else f"base_model.model.{mod}")
      out[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(
          ai.reshape(-1, lcfg.rank).T, dtype)
      out[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(
          bi.reshape(lcfg.rank, -1).T, dtype)
  return out


def peft_config(model_cfg: ModelConfig, lcfg: lora_lib.LoraConfig,
                base_name: str | None = None) -> dict[str, Any]:
  mods = sorted({_module_of(t, model_cfg).split(".")[-1]
                 for t in lora_lib.targets(model_cfg, lcfg)})
  return {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
      "r": lcfg.rank, "lora_alpha": lcfg.alpha, "lora_dropout": lcfg.dropout,
      "target_modules": mods, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
      "use_dora": False, "init_lora_weights": True, "modules_to_save": None,
      "inference_mode": True, "layers_to_transform": None, "rank_pattern": {},
      "alpha_pattern": {}, "revision": None,
  }


def _write_dir(out_dir: str, write) -> None:
  """Builds a directory beside `out_dir` and renames it into place (never half-written)."""
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"export target {out_dir} exists and is not empty")
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".export-peft-", dir=parent)
  try:
    write(tmp)
    if os.path.exists(out_dir):
      os.rmdir(out_dir)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def export_peft(ckpt_dir: str, out_dir: str, step: int | None = None,
                dtype: str = "float32") -> None:
  """Writes a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) for the LoRA
  checkpoint's adapters; `peft.PeftModel.from_pretrained(base, out_dir)` loads it onto the base
  exported by `gift export-hf` (or the original Hugging Face model)."""
  from safetensors.numpy import save_file

  from gift import hf
  model_cfg = ckpt_lib.read_model_config(ckpt_dir)
  lcfg, base_dir = read_root(ckpt_dir)
  adapters = load_adapters(ckpt_dir, step)
  tensors = peft_tensors(model_cfg, lcfg, adapters, hf._DTYPES[dtype])  # noqa: SLF001
  config = peft_config(model_cfg, lcfg, base_dir)

  def write(tmp):
    save_file(tensors, os.path.join(tmp, PEFT_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(tmp, PEFT_CONFIG), "w") as f:
      json.dump(config, f, indent=2)
  _write_dir(out_dir, write)


def _peft_targets_regex(modules: list[str], model_cfg: ModelConfig) -> str:
  inv = {v.split(".")[-1]: "/".join(k) for k, v in _hf_modules(model_cfg).items()}
  paths = []
  for m in modules:
    if m == "lm_head":
      paths.append("unembed")
    elif m in inv:
      paths.append("layers/" + inv[m])
    else:
      raise ValueError(f"PEFT target module {m!r} has no gift counterpart; known: "
                       f"{sorted(inv) + ['lm_head']}")
  return "^(" + "|".join(sorted(paths)) + ")$"


def import_peft(adapter_dir: str, base_dir: str, out_dir: str) -> lora_lib.LoraConfig:
  """Reads a PEFT LoRA adapter made for the base model in gift checkpoint `base_dir` and writes
  the LoRA checkpoint `out_dir` (lora.json + step 0 adapters); returns its LoraConfig."""
  from safetensors.numpy import load_file
  cfg_path = os.path.join(adapter_dir, PEFT_CONFIG)
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{cfg_path} not found: is {adapter_dir} a PEFT adapter dir?")
  with open(cfg_path) as f:
    pc = json.load(f)
  if pc.get("peft_type", "LORA") != "LORA":
    raise ValueError(f"{cfg_path}: peft_type={pc.get('peft_type')!r}; gift imports LORA only")
  for key, ok in (("use_dora", False), ("fan_in_fan_out", False), ("bias", "none")):
    if pc.get(key, ok) != ok:
      raise ValueError(f"{cfg_path}: {key}={pc.get(key)!r} is not supported (expected {ok!r})")
  for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
    if pc.get(key):
      raise ValueError(f"{cfg_path}: {key}={pc[key]!r} is not supported")
  modules = pc.get("target_modules")
  if isinstance(modules, str) or not modules:
    raise ValueError(f"{cfg_path}: target_modules={modules!r}; expected a list of module names")
  rank = int(pc["r"])
  alpha = float(pc.get("lora_alpha", rank))
  if pc.get("use_rslora"):  # scale alpha / sqrt(r) == alpha' / r with alpha' = alpha sqrt(r)
    alpha = alpha * rank ** 0.5
  model_cfg = ckpt_lib.read_model_config(base_dir)
  lcfg = lora_lib.LoraConfig(peft="lora", rank=rank, alpha=alpha,
                             dropout=float(pc.get("lora_dropout", 0.0)),
                             targets=_peft_targets_regex(sorted(modules), model_cfg)).validate()
  weights_path = os.path.join(adapter_dir, PEFT_WEIGHTS)
  if not os.path.isfile(weights_path):
    raise FileNotFoundError(f"{weights_path} not found (gift reads safetensors adapters)")
  raw = load_file(weights_path)
  # PEFT saves without the adapter name; older files may carry ".default".
  tensors = {k.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B."): v
             for k, v in raw.items()}
  shapes = lora_lib.abstract_adapters(model_cfg, lcfg)
  adapters: dict = {}
  used = set()
  for t in lora_lib.targets(model_cfg, lcfg):
    mod = _module_of(t, model_cfg)
    sa, sb = t.adapter_shapes(rank)
    a, b = np.empty(sa, np.float32), np.empty(sb, np.float32)
    for i in range(t.shape[0] if t.lead else 1):
      prefix = (f"base_model.model.model.layers.{i}.{mod}" if t.lead
                else f"base_model.model.{mod}")
      names = (f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight")
      for n in names:
        if n not in tensors:
          raise ValueError(f"{weights_path}: missing tensor {n} (target_modules={modules}, "
                           f"{model_cfg.num_layers} layers)")
      ta, tb = tensors[names[0]], tensors[names[1]]
      ea, eb = (rank, int(np.prod(sa[t.lead:-1]))), (int(np.prod(sb[t.lead + 1:])), rank)
      if ta.shape != ea or tb.shape != eb:
        raise ValueError(f"{weights_path}: {names[0]} {list(ta.shape)} / {names[1]} "
                         f"{list(tb.shape)}; expected {list(ea)} / {list(eb)} for the base "
                         f"model in {base_dir}")
      (a[i] if t.lead else a)[...] = ta.astype(np.float32).T.reshape(sa[t.lead:])
      (b[i] if t.lead else b)[...] = tb.astype(np.float32).T.reshape(sb[t.lead:])
      used.update(names)
    adapters[t.path] = {"a": a, "b": b}
  unexpected = sorted(set(tensors) - used)
  if unexpected:
    raise ValueError(f"{weights_path}: unexpected tensors {unexpected[:6]} ({len(unexpected)})")
  adapters = lora_lib._nest(adapters)  # noqa: SLF001
  jax.tree.map(lambda x, s: None, adapters, shapes)  # same tree as gift's adapters
  ckpt_lib.save_model(out_dir, model_cfg, adapters,
                      tokenizer_path=ckpt_lib.tokenizer_path(base_dir))
  write_root(out_dir, lcfg, base_dir)
  return lcfg


# ------------------------------------------------------------------------------------------------
# Command-line pieces (called from gift/hf.py's import-hf / export-hf)
# ------------------------------------------------------------------------------------------------
def export_main(args: argparse.Namespace) -> int:
  """export-hf on a LoRA checkpoint: --adapter_only (PEFT adapter) or --merge (full model)."""
  if args.adapter_only:
    export_peft(args.checkpoint, args.out, step=args.step, dtype=args.dtype)
    print(f"exported the LoRA adapter of {args.checkpoint} -> {args.out} (PEFT format)")
    return 0
  from gift import hf
  cfg, params, tok = load_model(args.checkpoint, step=args.step, merge=True)
  hf.export_hf(cfg, params, args.out, tokenizer_path=tok, dtype=args.dtype,
               max_shard_bytes=int(args.max_shard_gb * (1 << 30)))
  print(f"exported {args.checkpoint} merged (base + adapters) -> {args.out}")
  return 0
