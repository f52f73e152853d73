"""Process environment that makes XLA:CPU training faster, applied by re-executing the command.

XLA:CPU allocates each execution's temporaries as one large buffer with a fresh `mmap` (216 MB
per train step for the model of benchmarks/bench_train.py). With 4 KiB pages, first touching it
costs ~55k page faults per step: ~30% of a 2-core VM's step time went to the kernel. glibc's
`glibc.malloc.hugetlb=1` tunable makes malloc ask for transparent huge pages on such mappings
(effective when /sys/kernel/mm/transparent_hugepage/enabled is `madvise` or `always`): ~150
faults per step, and 1.3x faster CPU train steps (PyTorch's large tensors benefit a little too).

glibc reads `GLIBC_TUNABLES` only at process start, so `reexec_with_cpu_env()` restarts the
current command (same pid, same argv) once with it set. Call it first thing in a CPU entry point,
before any work; it returns without doing anything where it does not apply:

  from gift import cpu_env
  cpu_env.reexec_with_cpu_env()
"""
from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_DONE = "GIFT_CPU_ENV_APPLIED"  # set in the re-executed process: never loop


def wanted_env(environ: dict[str, str] | None = None) -> dict[str, str]:
  """The variables to change ({} when nothing is missing): TUNABLE appended to any existing
  GLIBC_TUNABLES (colon-separated), unless a hugetlb tunable is already chosen."""
  environ = os.environ if environ is None else environ
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:
    return {}
  return {"GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def reexec_with_cpu_env() -> None:
  """Re-executes this process with `wanted_env()` applied, on Linux with glibc, once; a no-op
  when already applied (or set by the user), elsewhere, or when re-executing is impossible."""
  if os.environ.get(_DONE) or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return
  changes = wanted_env()
  argv = getattr(sys, "orig_argv", None)  # keeps `python -m module` and interpreter flags
  if not changes or not argv:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], {**os.environ, **changes, _DONE: "1"})
