"""gift.cpu_env: the glibc tunables are added once, keep the user's choices, the re-executed
process sees them (and does not re-execute again), and they do what they are for: a large
buffer freed and allocated again by a worker thread is reused instead of faulted in anew."""
import os
import platform
import subprocess
import sys

import pytest

from gift import cpu_env

ALL = ":".join(f"{k}={v}" for k, v in cpu_env.TUNABLES.items())
glibc_only = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                                reason="the tunables are glibc's")


def test_wanted_env_appends_and_respects_user_choice():
  assert cpu_env.wanted_env({}) == {"GLIBC_TUNABLES": ALL}
  # The user's arena_max stays; the other three are appended after it.
  got = cpu_env.wanted_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"]
  assert got.split(":") == ["glibc.malloc.arena_max=2"] + [
      f"{k}={v}" for k, v in cpu_env.TUNABLES.items() if k != "glibc.malloc.arena_max"]
  assert cpu_env.wanted_env({"GLIBC_TUNABLES": ALL}) == {}
  assert cpu_env.wanted_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0:" + ALL}) == {}


@glibc_only
def test_reexec_applies_tunables_once():
  code = ("import os; print('start', flush=True); from gift import cpu_env; "
          "cpu_env.reexec_with_cpu_env(); print(os.environ['GLIBC_TUNABLES'])")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", cpu_env._DONE)}
  env["JAX_PLATFORMS"] = "cpu"  # as on a CPU-only host, even where a GPU is present
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60, check=True).stdout.split()
  assert out == ["start", "start", ALL]  # ran twice, then stopped with them set


_FAULTS = """
import resource, threading
import numpy as np
def work():
  for _ in range(6):
    a = np.ones(96 << 17)  # 96 MiB: more than a thread arena's 64 MiB heap
    del a
work()  # the first pass may fault everything in; count the second
t = threading.Thread(target=work)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t.start(); t.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


@glibc_only
def test_tunables_reuse_large_buffers_of_worker_threads():
  def faults(tunables):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", cpu_env._DONE)}
    if tunables:
      env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return int(out.split()[-1])

  default, tuned = faults(""), faults(ALL)
  # Default glibc: six fresh mmaps of 96 MiB, each faulted in (>= 48 huge pages, or 24k small
  # pages); tuned: the heap block from the first pass is reused.
  assert default >= 6 * 40, default
  assert tuned * 5 < default, (tuned, default)


def test_only_cpu_hosts_get_the_tunables(tmp_path):
  none = (str(tmp_path / "nvidia[0-9]*"),)
  (tmp_path / "nvidia0").touch()
  assert cpu_env.cpu_only_host({}, device_globs=(str(tmp_path / "absent*"),))
  assert not cpu_env.cpu_only_host({}, device_globs=none)  # a GPU device node
  assert cpu_env.cpu_only_host({"JAX_PLATFORMS": "cpu"}, device_globs=none)  # forced CPU
  assert not cpu_env.cpu_only_host({"JAX_PLATFORMS": "cuda"}, device_globs=())


@glibc_only
def test_opt_out_and_accelerator_platforms_do_not_reexec():
  code = ("import os; print('start', flush=True); from gift import cpu_env; "
          "cpu_env.reexec_with_cpu_env(); print(os.environ.get('GLIBC_TUNABLES', '-'))")
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", cpu_env._DONE)}
  for extra in ({"GIFT_CPU_ENV": "0"}, {"JAX_PLATFORMS": "tpu"}):
    out = subprocess.run([sys.executable, "-c", code], env={**base, **extra},
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == ["start", "-"], extra
