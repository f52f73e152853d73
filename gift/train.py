"""The trainer: `gift train --config=configs/x.py --workdir=DIR [--config.a.b=v ...]`.

One readable `train(cfg, workdir)`, top to bottom: devices -> model config and tokenizer -> mesh
and shardings -> input pipeline -> optimizer and update step -> checkpoint (resume or init) ->
loop (log, eval, save) -> final save. Fine-tuning (`init_from`) takes the model's shape and the
tokenizer from the checkpoint; config.model then sets only numerics (`config.model_config`).
Every process of a multi-host run executes the same code; process 0 alone writes metrics and the
root files.

The workdir is itself a gift checkpoint (`gift/checkpoint.py`): `model_config.json`,
`config.json` and the tokenizer's files at its root, Orbax steps with params, optimizer state and
the input pipeline's state. Starting the same command again resumes from the latest readable step,
and the resumed run is exactly the uninterrupted one (the batch at step s is a pure function of
(seed, s)). SIGTERM (preemption) saves and exits cleanly; a NaN/Inf loss or gradient norm stops
the run before anything is saved, so the last good checkpoint stays in place.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any

# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------
USAGE = ("usage: gift train --config=configs/FILE.py --workdir=DIR [--config.KEY=VALUE ...]\n"
         "  Re-running the same command resumes from the latest checkpoint in DIR.")


class NonFiniteLossError(RuntimeError):
  """The loss or gradient norm became NaN/Inf; the last good checkpoint was left in place."""


def main(argv: list[str]) -> int:
  from gift import config as config_lib

  if any(a in ("-h", "--help") for a in argv):
    print(USAGE)
    return 0
  try:
    cfg, rest = config_lib.parse_args(argv)
  except config_lib.ConfigError as e:
    print(f"gift train: {e}", file=sys.stderr)
    return 2
  workdir, it = None, iter(rest)
  for a in it:
    if a.startswith("--workdir="):
      workdir = a.split("=", 1)[1]
    elif a == "--workdir":
      workdir = next(it, None)
    else:
      print(f"gift train: unknown argument {a!r}\n{USAGE}", file=sys.stderr)
      return 2
  if not workdir:
    print(f"gift train: --workdir is required\n{USAGE}", file=sys.stderr)
    return 2
  try:
    train(cfg, workdir)
  except NonFiniteLossError as e:
    print(f"gift train: {e}", file=sys.stderr)
    return 1
  return 0


def _check_same_model(model_cfg, other, where: str) -> None:
  """The shape fields must agree (numerics such as dtype or remat may differ)."""
  from gift.config import FREE_MODEL_FIELDS as free
  diff = {f.name: (getattr(other, f.name), getattr(model_cfg, f.name))
          for f in dataclasses.fields(model_cfg) if f.name not in free
          and getattr(other, f.name) != getattr(model_cfg, f.name)}
  if diff:
    raise ValueError(f"model config does not match {where}: " + ", ".join(
        f"{k}: {a!r} there vs {b!r} in config.model" for k, (a, b) in sorted(diff.items())))


def train(cfg: Any, workdir: str) -> dict[str, Any]:
  """Trains per `cfg` in `workdir` (resuming if it holds a checkpoint); returns a summary dict."""
  # -------------------------------------------------------------------------------------------
  # Devices: start the multi-process runtime first (before anything touches a device).
  # -------------------------------------------------------------------------------------------
  from gift import distributed
  distributed.initialize(cfg.distributed)

  import jax
  import numpy as np
  import tqdm

  from gift import checkpoint as ckpt_lib
  from gift import config as config_lib
  from gift import flops as flops_lib
  from gift import lora as lora_lib
  from gift import metrics as metrics_lib
  from gift import sharding
  from gift import step as step_lib
  from gift import tokenizer as tokenizer_lib
  from gift.data import pipeline
  from gift.model import transformer

  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  say = print if is_main else (lambda *a, **k: None)
  say(f"gift train: {distributed.describe()}; workdir {workdir}", flush=True)

  # -------------------------------------------------------------------------------------------
  # Model config and tokenizer (fine-tuning takes both from `init_from` unless overridden).
  # -------------------------------------------------------------------------------------------
  model_cfg = config_lib.model_config(cfg)  # with init_from: the checkpoint's shape
  lcfg = lora_lib.config_of(cfg)  # LoRA/QLoRA: the trained `params` are the adapters only
  if lcfg is not None and not cfg.init_from:
    raise ValueError(f"train.peft={lcfg.peft!r} adapts a base model: set config.init_from to a "
                     "gift checkpoint (e.g. from `gift import-hf`)")
  if os.path.exists(os.path.join(workdir, ckpt_lib.MODEL_CONFIG)):
    _check_same_model(model_cfg, ckpt_lib.read_model_config(workdir), f"the workdir {workdir}")
  tok_path = cfg.tokenizer or (ckpt_lib.tokenizer_path(cfg.init_from) if cfg.init_from else None)
  tok = tokenizer_lib.load(tok_path or None, vocab_size=model_cfg.vocab_size)
  if cfg.data.chat_template:
    tokenizer_lib.chat_frame(tok)  # fails now, naming the tokenizer, if it has no template
  ckpt_lib.write_root(workdir, model_cfg, tok.path, cfg.to_dict())
  if lcfg is not None:
    from gift import peft_io
    base_dir, init_adapters_dir = peft_io.resolve(cfg.init_from)
    peft_io.write_root(workdir, lcfg, base_dir)

  # -------------------------------------------------------------------------------------------
  # Mesh and shardings: parameters by the logical-axis rules, batch rows over (data, fsdp).
  # -------------------------------------------------------------------------------------------
  mesh = sharding.make_mesh(cfg.mesh)
  b_sharding = sharding.batch_sharding(mesh)
  batch_size, seq_len = cfg.train.batch_size, cfg.data.seq_len
  say(f"mesh {dict(mesh.shape)}; global batch {batch_size} x {seq_len} tokens", flush=True)

  # -------------------------------------------------------------------------------------------
  # Input pipeline: this process builds only the rows its devices hold.
  # -------------------------------------------------------------------------------------------
  rows = pipeline.local_rows(b_sharding, batch_size, seq_len)
  train_source = pipeline.make_source(cfg.data, "train", cfg.seed)
  eval_source = pipeline.make_source(cfg.data, "eval", cfg.seed) if cfg.train.eval_every else None
  pipe = pipeline.Pipeline(train_source, tok, seq_len, batch_size, rows, seed=cfg.seed,
                           num_epochs=cfg.data.num_epochs, pack=cfg.data.pack)
  say(f"train examples: {len(train_source)}"
      + (f"; eval examples: {len(eval_source)}" if eval_source else ""), flush=True)

  # -------------------------------------------------------------------------------------------
  # Optimizer and the jitted, donated update step.
  # -------------------------------------------------------------------------------------------
  optimizer = step_lib.make_optimizer(cfg.train)
  if lcfg is None:
    p_shardings, o_shardings = step_lib.state_shardings(model_cfg, optimizer, mesh)
  else:  # `params` = the adapters; the frozen base is an argument of the step, never updated
    _, p_shardings, o_shardings = lora_lib.state_shardings(model_cfg, lcfg, optimizer, mesh)

  def with_sharding(tree, shardings):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        tree, shardings)

  abstract_params = with_sharding(
      transformer.abstract_params(model_cfg) if lcfg is None else
      lora_lib.abstract_adapters(model_cfg, lcfg), p_shardings)
  abstract_opt = with_sharding(jax.eval_shape(optimizer.init, abstract_params), o_shardings)
  if lcfg is None:
    train_step = step_lib.make_train_step(model_cfg, optimizer, grad_accum=cfg.train.grad_accum,
                                          mesh=mesh)
    eval_step = step_lib.make_eval_step(model_cfg, mesh)
  else:
    base = peft_io.load_base(base_dir, model_cfg, lcfg, mesh)
    lora_step = lora_lib.make_train_step(model_cfg, lcfg, optimizer,
                                         grad_accum=cfg.train.grad_accum, mesh=mesh, seed=cfg.seed)
    lora_eval = lora_lib.make_eval_step(model_cfg, lcfg, mesh)
    train_step = lambda p, o, b: lora_step(base, p, o, b)  # noqa: E731
    eval_step = lambda p, b: lora_eval(base, p, b)  # noqa: E731
    say(f"{lcfg.peft}: rank {lcfg.rank}, alpha {lcfg.alpha:g}, "
        f"{len(lora_lib.targets(model_cfg, lcfg))} targets, "
        f"{sum(x.size for x in jax.tree.leaves(abstract_params)):,} trainable parameters; "
        f"base {base_dir}", flush=True)

  # -------------------------------------------------------------------------------------------
  # Checkpoint: resume from the workdir's latest readable step, else initialize.
  # -------------------------------------------------------------------------------------------
  ckpt = ckpt_lib.TrainCheckpointer(workdir, cfg.checkpoint.every, cfg.checkpoint.keep,
                                    cfg.checkpoint.async_save,
                                    handle_sigterm=cfg.checkpoint.save_on_preemption)
  abstract_state = {"params": abstract_params, "opt_state": abstract_opt,
                    "data": pipeline.abstract_state(b_sharding, batch_size)}
  start_step, state = ckpt.restore_latest(abstract_state)
  if state is not None:
    params, opt_state = state["params"], state["opt_state"]
    pipe.set_state(pipeline.local_state(state["data"], rows))
    say(f"resumed from step {start_step}", flush=True)
  else:
    start_step = 0
    if lcfg is not None:
      if init_adapters_dir:  # continue from a LoRA checkpoint's (e.g. an imported) adapters
        params = peft_io.load_adapters(init_adapters_dir, shardings=p_shardings)
        got = peft_io.read_root(init_adapters_dir)[0]
        if (got.rank, got.targets) != (lcfg.rank, lcfg.targets):
          raise ValueError(f"init_from={cfg.init_from} holds rank {got.rank} adapters on "
                           f"{got.targets!r}; set lora.rank and lora.targets to match")
      else:
        params = jax.jit(lambda r: lora_lib.init_adapters(model_cfg, lcfg, r),
                         out_shardings=p_shardings)(jax.random.key(cfg.seed))
      opt_state = jax.jit(optimizer.init, out_shardings=o_shardings)(params)
      say(f"initialized adapters on the base {base_dir}", flush=True)
    elif cfg.init_from:
      _, params, _ = ckpt_lib.load_model(cfg.init_from, shardings=p_shardings)
      opt_state = jax.jit(optimizer.init, out_shardings=o_shardings)(params)
      say(f"initialized from {cfg.init_from}", flush=True)
    else:
      params, opt_state = step_lib.init_train_state(model_cfg, optimizer, cfg.seed, mesh)

  # -------------------------------------------------------------------------------------------
  # Metrics: analytic FLOPs per token (MaxText-style) and the device's peak, if known.
  # -------------------------------------------------------------------------------------------
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_main)
  flops_per_token = flops_lib.train_flops_per_token(model_cfg, seq_len)
  if lcfg is not None:  # the frozen weights get no dW (2 x matmul params); adapters get all 6
    flops_per_token += (6 * sum(x.size for x in jax.tree.leaves(abstract_params))
                        - 2 * flops_lib.matmul_params(model_cfg))
  peak = flops_lib.peak_flops(jax.devices()[0].device_kind)
  tokens_per_step = batch_size * seq_len

  # Execution-based evaluation (gift/eval/intrain.py): sampled here, executed in the background.
  exec_every = cfg.train.exec_eval_every
  exec_eval = None
  if exec_every:
    from gift.eval import intrain
    exec_eval = intrain.ExecEval(cfg, model_cfg, tok, mesh, workdir, is_main, say)
  evaluated = set()

  def run_exec_eval(step: int, final: bool = False) -> None:
    final = final or step >= num_steps
    if lcfg is None:
      exec_eval.run(step, params, final)
    else:  # the sampler runs the merged model (in the compute dtype)
      exec_eval.run(step, jax.jit(lambda b, a: lora_lib.merge(
          model_cfg, lcfg, b, a, jax.numpy.dtype(model_cfg.dtype)))(base, params), final)
    evaluated.add(step)

  def log_exec_eval(wait: bool = False) -> None:
    for s, row in (exec_eval.close() if wait else exec_eval.poll()):
      writer.write(s, row)
      passes = {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("pass@1/")}
      if passes:
        say(f"\nexec eval step {s}: pass@1 " + ", ".join(
            f"{k} {100 * v:.1f}%" for k, v in passes.items()), flush=True)

  def run_eval(params) -> float:
    eval_pipe = pipeline.Pipeline(eval_source, tok, seq_len, batch_size, rows, seed=cfg.seed,
                                  num_epochs=1, pack=cfg.data.pack)
    total, weight = 0.0, 0.0
    for _ in range(cfg.train.eval_steps):
      local, _ = next(eval_pipe)
      out = jax.device_get(eval_step(params, pipeline.to_global(local, b_sharding, batch_size)))
      total, weight = total + float(out["loss_sum"]), weight + float(out["weight"])
    return total / max(weight, 1.0)

  def save_state(step: int, data_state, now: bool) -> None:
    """Saves now, or if `step` is on the checkpoint interval (async when configured)."""
    state = {"params": params, "opt_state": opt_state,
             "data": pipeline.to_global(data_state, b_sharding, batch_size)}
    if now:
      ckpt.save(step, state)
    else:
      ckpt.maybe_save(step, state)

  # -------------------------------------------------------------------------------------------
  # Loop.
  # -------------------------------------------------------------------------------------------
  num_steps, log_every = cfg.train.num_steps, max(cfg.train.log_every, 1)
  batches = pipeline.prefetch(pipe, cfg.data.prefetch)
  bar = tqdm.tqdm(total=num_steps, initial=start_step, desc="train", unit="step",
                  disable=not (is_main and cfg.train.progress), dynamic_ncols=True)
  pending: list[tuple[int, Any]] = []  # (step, device metrics) not yet fetched
  data_state, last_logged = pipe.state(), None
  t_mark, steps_timed, compile_s = time.perf_counter(), 0, None
  step = start_step
  try:
    if (exec_eval is not None and start_step and (start_step % exec_every == 0
                                                  or start_step == num_steps)
        and start_step not in intrain.logged_steps(workdir)):
      run_exec_eval(start_step)  # the run stopped after saving this step, before its eval logged
    for step in range(start_step + 1, num_steps + 1):
      local_batch, next_data_state = next(batches)
      if cfg.data.num_epochs and not distributed.any_process(bool(local_batch["loss_mask"].any())):
        say(f"data exhausted after {cfg.data.num_epochs} epoch(s) at step {step - 1}", flush=True)
        step -= 1
        break
      batch = pipeline.to_global(local_batch, b_sharding, batch_size)
      params, opt_state, step_metrics = train_step(params, opt_state, batch)
      data_state = next_data_state
      pending.append((step, step_metrics))
      if compile_s is None:  # the first step compiles: keep it out of the throughput figures
        jax.block_until_ready(step_metrics)
        compile_s = time.perf_counter() - t_mark
        t_mark, steps_timed = time.perf_counter(), 0
      else:
        steps_timed += 1
      bar.update(1)

      preempted = ckpt.preempted(step)
      every = cfg.checkpoint.every
      will_save = preempted or step == num_steps or (every > 0 and step % every == 0)
      will_exec = exec_eval is not None and (step % exec_every == 0 or step == num_steps)
      if step % log_every and not will_save and not will_exec:
        continue
      # Fetch (a sync point), check every pending step before anything is saved, then log.
      fetched = jax.device_get([m for _, m in pending])
      now = time.perf_counter()
      for (s, _), m in zip(pending, fetched):
        if not (math.isfinite(float(m["loss"])) and math.isfinite(float(m["grad_norm"]))):
          raise NonFiniteLossError(
              f"step {s}: loss={float(m['loss'])}, grad_norm={float(m['grad_norm'])} is not "
              f"finite; stopping. The last good checkpoint (step {ckpt.latest_step()}) is left "
              f"in {workdir}; lower train.lr or raise train.warmup_steps and re-run.")
      pending.clear()
      if step % log_every == 0 or step == num_steps:
        m = fetched[-1]
        row = {k: float(v) for k, v in m.items()}
        if steps_timed:
          row["step_time_s"] = (now - t_mark) / steps_timed
          row.update(metrics_lib.throughput(row["step_time_s"], tokens_per_step,
                                            flops_per_token, jax.device_count(), peak))
        if compile_s is not None and last_logged is None:
          row["compile_time_s"] = compile_s
        row["examples_dropped"] = int(np.sum(data_state["dropped_b"]))
        writer.write(step, row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
        last_logged = step
      if eval_source is not None and (step % cfg.train.eval_every == 0 or step == num_steps):
        writer.write(step, {"loss": run_eval(params)}, prefix="eval_")
      if will_exec:
        run_exec_eval(step)
      if exec_eval is not None:
        log_exec_eval()
      if preempted:
        save_state(step, data_state, now=True)
        say(f"\npreempted (SIGTERM): saved step {step}; re-run the same command to resume",
            flush=True)
        break
      save_state(step, data_state, now=False)
      t_mark, steps_timed = time.perf_counter(), 0  # eval and saving stay out of step times
    if step > start_step:
      save_state(step, data_state, now=True)  # the end of the run (no-op if already saved)
    if exec_eval is not None and not ckpt.preempted(step) and step > start_step \
        and step not in evaluated:
      run_exec_eval(step, final=True)  # the data ran out before num_steps
  finally:
    if exec_eval is not None:
      log_exec_eval(wait=True)
    bar.close()
    ckpt.close()
    writer.close()
  say(f"done: step {step}, checkpoint in {workdir}", flush=True)
  return {"step": step, "workdir": workdir}

