"""Process environment that makes XLA:CPU training faster, applied by re-executing the command.

XLA:CPU allocates each execution's temporaries as one large buffer (216 MB per train step for the
model of benchmarks/bench_train.py), from one of its worker threads. glibc serves it from a
thread's arena, which cannot hold more than 64 MB, so every step gets a fresh `mmap`, and frees
it with `munmap`: the kernel zeroes and faults in the whole buffer again each step. With 4 KiB
pages that was ~55k page faults and ~30% of a 2-core VM's step time. The tunables set here:

- `glibc.malloc.hugetlb=1`: transparent huge pages for malloc's memory (effective when
  /sys/kernel/mm/transparent_hugepage/enabled is `madvise` or `always`): 512x fewer faults.
- `glibc.malloc.arena_max=1`, `glibc.malloc.mmap_max=0`, `glibc.malloc.trim_threshold=1 TiB`:
  one heap for all threads that never hands large blocks back to the kernel, so the step's
  buffer is reused, already faulted in, step after step (0 faults per step). The price is that
  the process keeps its peak heap: right for a trainer whose steps all look alike.

Measured on the 2-core benchmark VM (`python benchmarks/bench_train.py`): 172 ms/step with none,
133 ms with the huge-page tunable alone (p90 170 ms: zeroing 216 MB competes with the step), and
121 ms with all four (p90 124 ms). PyTorch's large tensors come from malloc as well and gain too.

glibc reads `GLIBC_TUNABLES` only at process start, so `reexec_with_cpu_env()` restarts the
current command (same pid, same argv) once with them set. Call it first thing in a CPU entry
point, before any work; it returns without doing anything where it does not apply (hosts with a
GPU/TPU, see `cpu_only_host`; `GIFT_CPU_ENV=0` opts out). A tunable the user already set in
GLIBC_TUNABLES is left as they chose it; untrusted code run by gift.execution never inherits
these (its jobs get a minimal environment).

  from gift import cpu_env
  cpu_env.reexec_with_cpu_env()
"""
from __future__ import annotations

import glob
import os
import platform
import sys

TUNABLES = {"glibc.malloc.hugetlb": "1", "glibc.malloc.arena_max": "1",
            "glibc.malloc.mmap_max": "0", "glibc.malloc.trim_threshold": str(1 << 40)}
_DONE = "GIFT_CPU_ENV_APPLIED"  # set in the re-executed process: never loop


def wanted_env(environ: dict[str, str] | None = None) -> dict[str, str]:
  """The variables to change ({} when nothing is missing): each of TUNABLES that the user has
  not set appended to any existing GLIBC_TUNABLES (colon-separated `name=value` items)."""
  environ = os.environ if environ is None else environ
  tunables = environ.get("GLIBC_TUNABLES", "")
  chosen = {item.split("=", 1)[0] for item in tunables.split(":") if item}
  missing = [f"{k}={v}" for k, v in TUNABLES.items() if k not in chosen]
  if not missing:
    return {}
  return {"GLIBC_TUNABLES": ":".join(([tunables] if tunables else []) + missing)}


_ACCELERATOR_DEVICES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def cpu_only_host(environ: dict[str, str] | None = None,
                  device_globs: tuple[str, ...] = _ACCELERATOR_DEVICES) -> bool:
  """True where JAX will compute on the CPU: JAX_PLATFORMS is "cpu", or it is unset and there
  is no GPU/TPU device node (/dev/nvidia*, /dev/accel*, /dev/vfio/*). Accelerator hosts keep
  glibc's defaults: their step buffers live in device memory, and their host threads (input
  pipelines) are better served by per-thread arenas."""
  environ = os.environ if environ is None else environ
  platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms == "cpu"
  return not any(glob.glob(pattern) for pattern in device_globs)


def reexec_with_cpu_env() -> None:
  """Re-executes this process with `wanted_env()` applied, on a CPU-only Linux host with glibc,
  once; a no-op when already applied (or set by the user), when GIFT_CPU_ENV=0, elsewhere, or
  when re-executing is impossible."""
  if (os.environ.get(_DONE) or os.environ.get("GIFT_CPU_ENV") == "0" or sys.platform != "linux"
      or platform.libc_ver()[0] != "glibc" or not cpu_only_host()):
    return
  changes = wanted_env()
  argv = getattr(sys, "orig_argv", None)  # keeps `python -m module` and interpreter flags
  if not changes or not argv:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], {**os.environ, **changes, _DONE: "1"})
