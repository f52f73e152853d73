"""`gift plan --config FILE [--config.x=...] [--num_devices N] [--json]`: size a run, allocate
nothing. `gift plan --presets` lists the model presets with their parameter counts.

Shapes come from `jax.eval_shape`; per-device memory from the sharding rules applied to the
configured mesh sizes (no real mesh is built, so a laptop can plan a pod; when the mesh has a -1,
`--num_devices` says how many devices fill it, default this host's). Prints the parameter count,
bytes of parameters, gradients and AdamW state (f32), training FLOPs per token (gift/flops.py),
and the memory per device.
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Any

import jax
import numpy as np

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
  parser = argparse.ArgumentParser(prog="gift plan", description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_devices", type=int, default=None,
                      help="devices that fill the mesh's -1 axis (default: this host's)")
  parser.add_argument("--json", action="store_true", help="print the figures as JSON")
  parser.add_argument("--presets", action="store_true",
                      help="list the model presets with their parameter counts and exit")
  args = parser.parse_args(rest)
  try:
    p = plan(cfg, args.num_devices)
  except ValueError as e:
    print(f"gift plan: {e}. Pass --num_devices N to plan for N devices.")
    return 2
  print(json.dumps(p, indent=1) if args.json else format_plan(p, config_lib.model_config(cfg)))
  return 0
