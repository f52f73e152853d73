"""Multi-process start-up: `jax.distributed.initialize` driven by the config and the environment.

Every host runs the same `gift train` command. Who is who comes from, in order:
  1. the config: `distributed.coordinator_address`, `num_processes`, `process_id`;
  2. JAX's variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`
     (`launch/slurm_gpu.sbatch` sets them from SLURM's);
  3. inside an `srun` step, SLURM's `SLURM_NTASKS` / `SLURM_PROCID` (the coordinator then comes
     from JAX's SLURM detection: the first node of the step);
  4. on a TPU pod slice, JAX's own detection (TPU metadata), asking nothing.
`distributed.initialize`: "no" never starts, "yes" always does, "auto" does when one of the above
says there are several processes. Must run before anything touches a JAX device.

On CPU (tests), cross-process collectives need `jax_cpu_collectives_implementation` ("gloo").
"""
from __future__ import annotations

import os
from typing import Any, Mapping


def _tpu_pod(env: Mapping[str, str]) -> bool:
  """A multi-host TPU slice: several worker hostnames, or a multislice coordinator."""
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  return len(hosts) > 1 or bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))


def plan(dist_cfg: Any, env: Mapping[str, str]) -> dict[str, Any] | None:
  """The keyword arguments for `jax.distributed.initialize`, or None to stay single-process.

  A pure function of the `distributed` config section and the environment (testable anywhere).
  Arguments left out are auto-detected by JAX (TPU pods, SLURM).
  """
  mode = dist_cfg.initialize
  if mode not in ("auto", "yes", "no"):
    raise ValueError(f"distributed.initialize={mode!r}; expected 'auto', 'yes' or 'no'")
  if mode == "no":
    return None
  # SLURM's variables describe the processes only inside an `srun` step (the batch script
  # itself is one process even when SLURM_NTASKS > 1).
  in_step = bool(env.get("SLURM_STEP_ID"))
  coordinator = dist_cfg.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
  num = dist_cfg.num_processes or int(env.get("JAX_NUM_PROCESSES") or
                                      (env.get("SLURM_NTASKS") if in_step else 0) or 0)
  pid = dist_cfg.process_id
  if pid < 0:
    pid = int(env.get("JAX_PROCESS_ID") or (env.get("SLURM_PROCID") if in_step else -1) or -1)
  slurm = in_step and int(env.get("SLURM_NTASKS", 1) or 1) > 1
  if mode == "auto" and not (coordinator or num > 1 or slurm or _tpu_pod(env)):
    return None
  if mode == "auto" and coordinator and num == 1:
    return None
  kwargs: dict[str, Any] = {}
  if coordinator:
    kwargs["coordinator_address"] = coordinator
  if num > 0:
    kwargs["num_processes"] = num
  if pid >= 0:
    kwargs["process_id"] = pid
  if dist_cfg.local_device_ids:
    try:
      kwargs["local_device_ids"] = [int(i) for i in str(dist_cfg.local_device_ids).split(",")]
    except ValueError as e:
      raise ValueError(f"distributed.local_device_ids={dist_cfg.local_device_ids!r}; expected "
                       "comma-separated integers such as '0,1,2,3'") from e
  if coordinator and ("num_processes" not in kwargs or "process_id" not in kwargs):
    raise ValueError(f"distributed: coordinator {coordinator!r} given but num_processes/process_id "
                     "are not (set distributed.num_processes and distributed.process_id, or "
                     "JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
  return kwargs


def initialize(dist_cfg: Any, env: Mapping[str, str] | None = None) -> bool:
  """Starts the JAX distributed runtime if `plan` says so; returns whether it did."""
  import jax

  kwargs = plan(dist_cfg, os.environ if env is None else env)
  if kwargs is None:
    return False
  if dist_cfg.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", dist_cfg.cpu_collectives)
  jax.distributed.initialize(**kwargs)
  return True


def describe() -> str:
  """One line: this process, the process count and the devices (for the run log)."""
  import jax

  return (f"process {jax.process_index()}/{jax.process_count()}, "
          f"{jax.local_device_count()} local / {jax.device_count()} global devices "
          f"({jax.devices()[0].device_kind})")


def any_process(flag: bool) -> bool:
  """True if `flag` is True on any process (a collective: every process must call it)."""
  import jax
  import numpy as np

  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))
