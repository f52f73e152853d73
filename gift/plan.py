"""`gift plan --config FILE [--config.x=...] [--num_devices N] [--json] [--compile]`: size a
run, allocate nothing (`--compile` compiles the train steps ahead of time to read their peak
memory). `gift plan --presets` lists the model presets with their parameter counts.

Shapes come from `jax.eval_shape`; per-device memory from the sharding rules applied to the
configured mesh sizes (no real mesh is built, so a laptop can plan a pod; when the mesh has a -1,
`--num_devices` says how many devices fill it, default this host's). Prints the parameter count,
bytes of parameters, gradients and AdamW state (f32), training FLOPs per token (gift/flops.py),
and the memory per device. The `peft` table sets full fine-tuning beside LoRA and QLoRA (the
config's `lora.*` settings): bytes per device of the (frozen) parameters, the adapters, their
gradients and AdamW state. `--compile` lowers and compiles the real train step of each
(`jax.jit(...).lower(...).compile().memory_analysis()`, abstract inputs: nothing is allocated)
and reports its peak memory per device for the configured batch and sequence length, as the
XLA backend of this host computes it (a CPU-only host gives XLA:CPU's figures; for a mesh of N
devices there, set XLA_FLAGS=--xla_force_host_platform_device_count=N).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gift
from gift import config as config_lib
from gift import flops, sharding, step
from gift.model import transformer


def _nbytes(x) -> int:
  return math.prod(x.shape) * np.dtype(x.dtype).itemsize


def plan(cfg, num_devices: int | None = None) -> dict[str, Any]:
  """The plan's figures as a dict (bytes, counts, FLOPs); see the module docstring."""
  model_cfg = config_lib.model_config(cfg)
  shapes = transformer.abstract_params(model_cfg)
  leaves = jax.tree.leaves(shapes)
  num_params = sum(math.prod(x.shape) for x in leaves)
  param_bytes = sum(_nbytes(x) for x in leaves)
  opt_bytes = sum(_nbytes(x) for x in jax.tree.leaves(
      jax.eval_shape(step.make_optimizer(cfg.train).init, shapes)))

  if num_devices is None:  # a fully specified mesh needs no devices; a -1 takes this host's
    fixed = [int(cfg.mesh[a]) for a in sharding.MESH_AXES]
    num_devices = jax.device_count() if -1 in fixed else math.prod(fixed)
  sizes = sharding.mesh_sizes(cfg.mesh, num_devices)
  specs = sharding.param_specs(model_cfg, sizes)
  param_dev = sum(sharding.bytes_per_device(x.shape, x.dtype, spec, sizes) for x, spec in zip(
      leaves, jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))))
  # AdamW's mu and nu follow their parameters; its scalars (counts, hyperparameters) replicate.
  opt_dev = 2 * param_dev + (opt_bytes - 2 * param_bytes)

  seq_len, batch = cfg.data.seq_len, cfg.train.batch_size
  rows_dev = batch / cfg.train.grad_accum / (sizes["data"] * sizes["fsdp"])
  act_bytes = np.dtype(model_cfg.dtype).itemsize
  # With a remat policy only each layer's input survives the forward pass; the f32 logits and
  # their gradient are split over the vocabulary by the tensor axis.
  act_dev = (model_cfg.num_layers * rows_dev * seq_len * model_cfg.d_model * act_bytes
             + 2 * rows_dev * seq_len * model_cfg.vocab_size * 4 / sizes["tensor"])
  fpt = flops.train_flops_per_token(model_cfg, seq_len)
  return dict(
      model=f"init_from={cfg.init_from}" if cfg.get("init_from") else cfg.model.get("preset", ""),
      num_params=num_params,
      matmul_params=flops.matmul_params(model_cfg),
      param_bytes=param_bytes, grad_bytes=param_bytes, opt_state_bytes=opt_bytes,
      flops_per_token=fpt, attention_flops_per_token=flops.attention_flops_per_token(
          model_cfg, seq_len),
      seq_len=seq_len, global_batch=batch, grad_accum=cfg.train.grad_accum,
      flops_per_step=fpt * batch * seq_len,
      mesh=sizes, num_devices=math.prod(sizes.values()),
      per_device=dict(params=param_dev, grads=param_dev, opt_state=opt_dev,
                      states_total=2 * param_dev + opt_dev, rows_per_microbatch=rows_dev,
                      activations_estimate=int(act_dev)),
      peft=peft_memory(cfg, sizes),
  )


def _gib(n: float) -> str:
  """Bytes in GiB, or MiB below 1 GiB."""
  return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.2f} MiB"


def _count(n: int) -> str:
  for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
    if n >= scale:
      return f"{n / scale:,.3f} {unit}"
  return str(n)


def format_plan(p: dict[str, Any], model_cfg) -> str:
  m, d = model_cfg, p["per_device"]
  lines = [
      f"model {p['model'] or '(custom)'}: L={m.num_layers} D={m.d_model} N={m.num_heads} "
      f"K={m.num_kv_heads} H={m.head_dim} F={m.mlp_dim} ({m.mlp_activation}) V={m.vocab_size} "
      f"{'tied' if m.tie_embeddings else 'untied'}; compute {m.dtype}, remat {m.remat_policy}",
      f"parameters            {_count(p['num_params'])} ({p['num_params']:,})",
      f"  params (f32)        {_gib(p['param_bytes'])}",
      f"  grads (f32)         {_gib(p['grad_bytes'])}",
      f"  AdamW state (f32)   {_gib(p['opt_state_bytes'])}",
      f"FLOPs per token       {p['flops_per_token']:.4g} = 6 x {p['matmul_params']:,} matmul "
      f"params + causal attention 6*L*T*N*H = {p['attention_flops_per_token']:.4g} "
      f"(T={p['seq_len']}{'; sliding layers see fewer keys' if any(m.sliding_layers) else ''})",
      f"FLOPs per step        {p['flops_per_step']:.4g} ({p['global_batch']} rows x "
      f"{p['seq_len']} tokens)",
      f"mesh                  {p['mesh']} = {p['num_devices']} devices",
      "per device:",
      f"  params              {_gib(d['params'])}",
      f"  grads               {_gib(d['grads'])}",
      f"  AdamW state         {_gib(d['opt_state'])}",
      f"  states total        {_gib(d['states_total'])}",
      f"  activations (est.)  {_gib(d['activations_estimate'])} ({d['rows_per_microbatch']:g} "
      "rows/microbatch; saved layer inputs + f32 logits and their gradient"
      + ("" if m.remat_policy in ("full", "nothing_saveable") else
         f"; a lower bound: remat {m.remat_policy} saves more") + ")",
  ]
  if "peft" in p:
    lines += ["per device by train.peft   params      adapters    grads       AdamW       total"]
    for kind, r in p["peft"].items():
      lines.append(f"  {kind:<24}" + "".join(f"{_gib(r[k]):<12}" for k in (
          "params", "adapters", "grads", "opt_state", "total")))
  if "compiled" in p:
    lines.append("compiled train step, per device (XLA memory analysis on "
                 f"{next(iter(p['compiled'].values()))['device']}):")
    for kind, r in p["compiled"].items():
      lines.append(f"  {kind:<8} peak {_gib(r['peak'])}  (arguments {_gib(r['argument'])}, "
                   f"outputs {_gib(r['output'])}, temporaries {_gib(r['temp'])}, aliased "
                   f"{_gib(r['alias'])})")
  return "\n".join(lines)


def _features(m) -> str:
  """The model's non-Llama math, in ModelConfig field terms."""
  out = [f"{m.mlp_activation}{'' if m.mlp_gated else ' plain-mlp'}"]
  out += [name for name in ("qkv_bias", "o_bias", "mlp_bias", "qk_norm", "sandwich_norms",
                            "embed_scale") if getattr(m, name)]
  if m.norm_type != "rms":
    out.append(f"{m.norm_type}-norm")
  if m.rope_scaling:
    out.append(f"rope={dict(m.rope_scaling)['rope_type']}")
  if m.sliding_window:
    sliding = sum(m.sliding_layers)
    out.append(f"window={m.sliding_window} on {sliding}/{m.num_layers}")
  if m.attn_logit_softcap or m.final_logit_softcap:
    out.append(f"softcap={m.attn_logit_softcap:g}/{m.final_logit_softcap:g}")
  return " ".join(out)


def format_presets() -> str:
  """One line per model preset: parameter count, shape and math (`gift plan --presets`)."""
  from gift.model import presets
  lines = [f"{'preset':22s} {'params':>10s}  L     D    N   K    H      F       V  tie  math"]
  for name in presets.PRESETS:
    m = presets.get_preset(name)
    lines.append(f"{name:22s} {_count(transformer.param_count(m)):>10s} {m.num_layers:2d} "
                 f"{m.d_model:5d} {m.num_heads:3d} {m.num_kv_heads:3d} {m.head_dim:4d} "
                 f"{m.mlp_dim:6d} {m.vocab_size:7d}  {'yes' if m.tie_embeddings else 'no ':3s}"
                 f"  {_features(m)}")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  if "--presets" in argv:
    print(format_presets())
    return 0
  cfg, rest = config_lib.parse_args(argv)
  parser = gift.ArgumentParser(prog="gift plan", description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_devices", type=int, default=None,
                      help="devices that fill the mesh's -1 axis (default: this host's)")
  parser.add_argument("--json", action="store_true", help="print the figures as JSON")
  parser.add_argument("--presets", action="store_true",
                      help="list the model presets with their parameter counts and exit")
  parser.add_argument("--compile", action="store_true",
                      help="compile the train steps (full, LoRA, QLoRA) ahead of time and report "
                      "their peak memory per device")
  parser.add_argument("--peft", default="all", choices=("all", "none", "lora", "qlora"),
                      help="with --compile: which train steps to compile")
  args = parser.parse_args(rest)
  if args.compile:
    from gift import cpu_env
    if cpu_env.cpu_only_host() and _NO_LICM not in os.environ.get("XLA_FLAGS", ""):
      # XLA:CPU has no bf16 dot: it converts operands to f32, and loop-invariant code motion
      # then hoists those converts of every stacked weight out of the layer scan (an f32 copy
      # of the model, which no accelerator build makes). Set before the backend starts.
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _NO_LICM).strip()
  try:
    p = plan(cfg, args.num_devices)
  except ValueError as e:
    print(f"gift plan: {e}. Pass --num_devices N to plan for N devices.")
    return 2
  if args.compile:
    kinds = PEFT_ROWS if args.peft == "all" else (args.peft,)
    try:
      p["compiled"] = compiled_memory(cfg, kinds)
    except ValueError as e:
      print(f"gift plan --compile: {e}")
      return 2
  print(json.dumps(p, indent=1) if args.json else format_plan(p, config_lib.model_config(cfg)))
  return 0


# ------------------------------------------------------------------------------------------------
# LoRA / QLoRA: states per device, and the compiled train step's memory
# ------------------------------------------------------------------------------------------------
PEFT_ROWS = ("none", "lora", "qlora")
_NO_LICM = "--xla_disable_hlo_passes=while-loop-invariant-code-motion"


def _lora_cfg(cfg, kind: str):
  from gift import lora
  if kind == "none":
    return None
  lc = cfg.get("lora") or {}
  return lora.LoraConfig(peft=kind, **{k: lc[k] for k in (
      "rank", "alpha", "dropout", "targets", "quant", "block_size") if k in lc}).validate()


def _bytes_dev(shapes: Any, specs: Any, sizes) -> int:
  specs = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
  return sum(sharding.bytes_per_device(x.shape, x.dtype, s, sizes)
             for x, s in zip(jax.tree.leaves(shapes), specs))


def peft_memory(cfg, sizes) -> dict[str, dict[str, int]]:
  """Bytes per device of params (f32 for full fine-tuning; the frozen base in the compute dtype,
  QLoRA's projections quantized), adapters (f32), gradients and AdamW state, by train.peft."""
  from gift import lora
  model_cfg = config_lib.model_config(cfg)
  out = {}
  for kind in PEFT_ROWS:
    lcfg = _lora_cfg(cfg, kind)
    if lcfg is None:
      params = _bytes_dev(transformer.abstract_params(model_cfg),
                          sharding.param_specs(model_cfg, sizes), sizes)
      adapters, trained = 0, params
    else:
      params = _bytes_dev(lora.abstract_base(model_cfg, lcfg),
                          lora.base_specs(model_cfg, lcfg, sizes), sizes)
      adapters = _bytes_dev(lora.abstract_adapters(model_cfg, lcfg),
                            lora.adapter_specs(model_cfg, lcfg, sizes), sizes)
      trained = adapters
    out[kind] = dict(params=params, adapters=adapters, grads=trained, opt_state=2 * trained,
                     total=params + adapters + 3 * trained)
  return out


def compiled_memory(cfg, kinds=PEFT_ROWS) -> dict[str, dict[str, Any]]:
  """Compiles the train step of each `train.peft` kind for the config's batch, sequence length,
  grad_accum and mesh (abstract inputs) and returns XLA's memory analysis per device: argument,
  output, temp and alias bytes, and peak = argument + output + temp - alias."""
  from gift import lora
  model_cfg = config_lib.model_config(cfg)
  fixed = [int(cfg.mesh[a]) for a in sharding.MESH_AXES]
  n = jax.device_count() if -1 in fixed else math.prod(fixed)
  if n > jax.device_count():
    raise ValueError(f"the mesh needs {n} devices, this host has {jax.device_count()} (on a CPU "
                     f"host: XLA_FLAGS=--xla_force_host_platform_device_count={n})")
  mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:n])
  optimizer = step.make_optimizer(cfg.train)
  b, t = cfg.train.batch_size, cfg.data.seq_len
  b_sh = sharding.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((b, t), jnp.float32 if k == "loss_mask" else jnp.int32,
                                   sharding=b_sh) for k in step.BATCH_KEYS}

  def spec(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)

  out = {}
  for kind in kinds:
    lcfg = _lora_cfg(cfg, kind)
    if lcfg is None:
      p_sh, o_sh = step.state_shardings(model_cfg, optimizer, mesh)
      params = spec(transformer.abstract_params(model_cfg), p_sh)
      args = (params, spec(jax.eval_shape(optimizer.init, params), o_sh), batch)
      fn = step.make_train_step(model_cfg, optimizer, grad_accum=cfg.train.grad_accum,
                                mesh=mesh)
    else:
      base_sh, a_sh, o_sh = lora.state_shardings(model_cfg, lcfg, optimizer, mesh)
      adapters = spec(lora.abstract_adapters(model_cfg, lcfg), a_sh)
      args = (spec(lora.abstract_base(model_cfg, lcfg), base_sh), adapters,
              spec(jax.eval_shape(optimizer.init, adapters), o_sh), batch)
      fn = lora.make_train_step(model_cfg, lcfg, optimizer, grad_accum=cfg.train.grad_accum,
                                mesh=mesh)
    m = fn.lower(*args).compile().memory_analysis()
    row = dict(argument=m.argument_size_in_bytes, output=m.output_size_in_bytes,
               temp=m.temp_size_in_bytes, alias=m.alias_size_in_bytes)
    row["peak"] = row["argument"] + row["output"] + row["temp"] - row["alias"]
    row["device"] = jax.devices()[0].device_kind + (
        " (XLA:CPU, loop-invariant code motion off)" if _NO_LICM in os.environ.get(
            "XLA_FLAGS", "") and jax.default_backend() == "cpu" else "")
    out[kind] = row
  return out
