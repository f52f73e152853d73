"""Checkpoints: the gift checkpoint format, and the trainer's preemption-safe manager.

A *gift checkpoint* is an Orbax `CheckpointManager` directory:

  CKPT/
    model_config.json      ModelConfig fields (always)
    config.json            the run config (when written by `gift train`)
    tokenizer.json | tokenizer.model   the tokenizer (when one is known): a Hugging Face
                           tokenizer.json or a SentencePiece model, with tokenizer_config.json,
                           special_tokens_map.json, chat_template.jinja and
                           generation_config.json when its source had them
    <step>/params/         the parameter pure dict (see docs/contracts.md), f32
    <step>/opt_state/      optimizer state (training only)
    <step>/data/           input-pipeline state (training only), see gift/data/pipeline.py

A training workdir is itself a gift checkpoint, so `gift sample --checkpoint WORKDIR` works on a
run in progress. Root files are written to a temporary name and renamed, so a reader never sees
a half-written one; Orbax finalizes a step the same way (a step killed mid-save is never listed).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import time
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from gift.model.presets import ModelConfig

MODEL_CONFIG = "model_config.json"
RUN_CONFIG = "config.json"
TRAIN_ITEMS = ("params", "opt_state", "data")

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
  """The caller's target tree does not fit the stored one (a bug to report, not a bad step)."""


# ---------------------------------------------------------------------------------------------
# Root files.
# ---------------------------------------------------------------------------------------------
def _write_atomic(path: str, data: bytes) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_root(ckpt_dir: str, model_cfg: ModelConfig, tokenizer_path: str | None = None,
               run_config: Mapping[str, Any] | None = None) -> None:
  """Writes model_config.json, config.json (if given) and a copy of the tokenizer (if given:
  a `.model` file or a tokenizer folder, see `gift.tokenizer.copy_files`).

  Process 0 only writes; other processes return at once.
  """
  if jax.process_index() != 0:
    return
  os.makedirs(ckpt_dir, exist_ok=True)
  _write_atomic(os.path.join(ckpt_dir, MODEL_CONFIG),
                json.dumps(model_cfg.to_dict(), indent=2).encode())
  if run_config is not None:
    _write_atomic(os.path.join(ckpt_dir, RUN_CONFIG),
                  json.dumps(run_config, indent=2, default=str).encode())
  if tokenizer_path:
    from gift import tokenizer as tokenizer_lib
    tokenizer_lib.copy_files(tokenizer_path, ckpt_dir)


def read_model_config(ckpt_dir: str) -> ModelConfig:
  path = os.path.join(ckpt_dir, MODEL_CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: {ckpt_dir!r} is not a gift checkpoint "
                            f"(expected {MODEL_CONFIG} at its root)")
  with open(path) as f:
    return ModelConfig.from_dict(json.load(f))


def tokenizer_path(ckpt_dir: str) -> str | None:
  """The checkpoint folder if it holds a tokenizer (for `gift.tokenizer.load`), else None."""
  has = lambda name: os.path.isfile(os.path.join(ckpt_dir, name))
  return ckpt_dir if has("tokenizer.json") or has("tokenizer.model") else None


# ---------------------------------------------------------------------------------------------
# Restoring with fallback: a corrupt latest step is moved aside and the previous one is used.
# ---------------------------------------------------------------------------------------------
def _abstract(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, so Orbax restores straight into them."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def _quarantine(directory: str, step: int) -> None:
  """Renames a bad step folder to `<step>.corrupt-<time>` so that new saves can reuse the step."""
  src = os.path.join(directory, str(step))
  if jax.process_index() == 0 and os.path.isdir(src):
    os.replace(src, f"{src}.corrupt-{int(time.time())}")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"gift_quarantine_{step}")


def _remove_unfinished(directory: str) -> None:
  """Deletes step folders that a killed run left half-written (Orbax's `*.orbax-checkpoint-tmp*`).

  Done once, synchronously, by process 0, rather than by Orbax on every manager construction
  (several managers cleaning up the same folder concurrently race each other).
  """
  if jax.process_index() == 0 and os.path.isdir(directory):
    for name in os.listdir(directory):
      if re.fullmatch(r"\d+\.orbax-checkpoint-tmp.*", name):
        log.warning("removing unfinished checkpoint %s", os.path.join(directory, name))
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("gift_remove_unfinished")


def _restore_with_fallback(directory: str, make_manager, restore_step, step: int | None,
                           quarantine: bool):
  """Restores `step` (or the latest finalized step, falling back past unreadable ones).

  `restore_step(manager, step)` does the restore. Returns (step, restored) or (None, None) when
  the directory holds no step. With an explicit `step`, errors propagate. `quarantine` moves an
  unreadable step aside (the trainer owns its workdir); otherwise it is only skipped.
  """
  manager = make_manager()
  if step is not None:
    try:
      return step, restore_step(manager, step)
    finally:
      manager.close()
  steps = sorted(manager.all_steps(), reverse=True)
  for s in steps:
    try:
      restored = restore_step(manager, s)
      manager.close()
      return s, restored
    except CheckpointMismatchError:
      manager.close()
      raise
    except Exception as e:  # noqa: BLE001 - any read error means this step is unusable
      msg = (f"WARNING: checkpoint step {s} in {directory} cannot be read "
             f"({type(e).__name__}: {str(e)[:300]}); "
             f"{'moving it aside and ' if quarantine else ''}falling back to the previous step")
      log.warning(msg)
      print(msg, flush=True)
      if quarantine:
        manager.close()
        _quarantine(directory, s)
        manager = make_manager()
  manager.close()
  return None, None


# ---------------------------------------------------------------------------------------------
# The model format: save_model / load_model (import-hf, sampler, eval, init_from).
# ---------------------------------------------------------------------------------------------
def save_model(ckpt_dir: str, model_cfg: ModelConfig, params: Any,
               tokenizer_path: str | None = None, step: int = 0) -> None:
  """Writes `params` (the pure dict) as step `step` of a gift checkpoint, plus its root files.

  Fails if the directory already holds that step (never overwrites weights silently).
  """
  ckpt_dir = os.path.abspath(ckpt_dir)
  write_root(ckpt_dir, model_cfg, tokenizer_path)
  manager = ocp.CheckpointManager(
      ckpt_dir, item_handlers={"params": ocp.StandardCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True))
  try:
    if step in manager.all_steps():
      raise FileExistsError(f"{ckpt_dir} already holds step {step}; choose another --out")
    manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    manager.wait_until_finished()
  finally:
    manager.close()


def load_model(ckpt_dir: str, step: int | None = None, shardings: Any = None
               ) -> tuple[ModelConfig, Any, str | None]:
  """Reads a gift checkpoint's model: (ModelConfig, params pure dict, tokenizer path or None).

  Args:
    ckpt_dir: a gift checkpoint (from `save_model`, `gift import-hf` or a `gift train` workdir).
    step: which step; None = the latest readable one (a corrupt latest step is skipped).
    shardings: a pytree of `jax.sharding.Sharding` matching params, or one Sharding for all
      leaves; arrays are restored directly into it (no host copy of the whole model). None = the
      first local device (single-process use).
  """
  ckpt_dir = os.path.abspath(ckpt_dir)
  model_cfg = read_model_config(ckpt_dir)

  def make_manager():
    return ocp.CheckpointManager(
        ckpt_dir, item_handlers={"params": ocp.StandardCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(read_only=True, create=False))

  def restore(manager, s):
    meta = manager.item_metadata(s)["params"]
    meta = getattr(meta, "tree", meta)
    target = shardings if shardings is not None else jax.sharding.SingleDeviceSharding(
        jax.local_devices()[0])
    try:
      abstract = _abstract(meta, target)
    except ValueError as e:
      raise CheckpointMismatchError(f"{ckpt_dir} step {s}: the shardings given do not match "
                                    f"the stored parameter tree: {e}") from e
    return manager.restore(s, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract)))["params"]

  # Orbax warns about every other item (opt_state, data) of a training workdir that this
  # params-only read leaves alone; that is the intent here, not a problem worth printing.
  from absl import logging as absl_logging
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    found, params = _restore_with_fallback(ckpt_dir, make_manager, restore, step,
                                           quarantine=False)
  finally:
    absl_logging.set_verbosity(verbosity)
  if found is None:
    raise FileNotFoundError(f"{ckpt_dir} holds no readable checkpoint step "
                            f"(expected a <step>/params folder)")
  return model_cfg, params, tokenizer_path(ckpt_dir)


# ---------------------------------------------------------------------------------------------
# The trainer's manager: async saves every N steps, keep K, preemption, auto-resume.
# ---------------------------------------------------------------------------------------------
class TrainCheckpointer:
  """Saves and restores the training state {params, opt_state, data} of a workdir.

  - `maybe_save(step, state)` saves every `every` steps (asynchronously when `async_save`),
    keeping the last `keep`; `save(step, state)` saves now (preemption, end of run).
  - `restore_latest(abstract_state)` restores the newest readable step directly into the
    shardings carried by `abstract_state` (ShapeDtypeStructs); a corrupt latest step is moved
    aside with a warning and the previous one is used.
  - `preempted(step)` is True once SIGTERM arrived (single process: our handler; several
    processes: JAX's preemption sync point, so that all hosts agree on the step).
  """

  def __init__(self, workdir: str, every: int, keep: int, async_save: bool = True,
               handle_sigterm: bool = True):
    self.directory, self.every = os.path.abspath(workdir), every
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=keep or None,
        enable_async_checkpointing=async_save, create=True)
    _remove_unfinished(self.directory)
    self._manager = self._make_manager()
    self._sigterm = False
    if handle_sigterm and jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._on_sigterm)

  def _make_manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory, options=self._options,
        item_handlers={k: ocp.StandardCheckpointHandler() for k in TRAIN_ITEMS})

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._sigterm = True

  def preempted(self, step: int) -> bool:
    if jax.process_count() > 1:
      return self._manager.reached_preemption(step)
    return self._sigterm

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def _args(self, state: Mapping[str, Any]) -> ocp.args.Composite:
    return ocp.args.Composite(**{k: ocp.args.StandardSave(state[k]) for k in TRAIN_ITEMS})

  def maybe_save(self, step: int, state: Mapping[str, Any]) -> bool:
    """Starts a save if `step` is a multiple of `every` (0: never; the trainer checks first that
    the state is finite)."""
    if self.every <= 0 or step % self.every:
      return False
    self._manager.save(step, args=self._args(state), force=True)
    return True

  def save(self, step: int, state: Mapping[str, Any]) -> None:
    """Saves `step` now (unless it is already saved) and waits until it is on disk."""
    if step not in self._manager.all_steps():
      self._manager.save(step, args=self._args(state), force=True)
    self._manager.wait_until_finished()

  def restore_latest(self, abstract_state: Mapping[str, Any]) -> tuple[int | None, Any]:
    """Returns (step, state) of the newest readable step, or (None, None) in a fresh workdir."""
    self._manager.wait_until_finished()

    def restore(manager, s):
      return manager.restore(s, args=ocp.args.Composite(
          **{k: ocp.args.StandardRestore(abstract_state[k]) for k in TRAIN_ITEMS}))

    self._manager.close()
    step, restored = _restore_with_fallback(self.directory, self._make_manager, restore, None,
                                            quarantine=True)
    self._manager = self._make_manager()
    if restored is None:
      return None, None
    return step, {k: restored[k] for k in TRAIN_ITEMS}

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

