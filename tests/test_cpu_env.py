"""gift.cpu_env: the glibc huge-page tunable is added once, keeps the user's tunables, and the
re-executed process sees it (and does not re-execute again)."""
import os
import platform
import subprocess
import sys

import pytest

from gift import cpu_env


def test_wanted_env_appends_and_respects_user_choice():
  assert cpu_env.wanted_env({}) == {"GLIBC_TUNABLES": cpu_env.TUNABLE}
  assert cpu_env.wanted_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {
      "GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{cpu_env.TUNABLE}"}
  assert cpu_env.wanted_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == {}


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="the tunable is glibc's")
def test_reexec_applies_tunable_once():
  code = ("import os; print('start', flush=True); from gift import cpu_env; "
          "cpu_env.reexec_with_cpu_env(); print(os.environ['GLIBC_TUNABLES'])")
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60, check=True).stdout.split()
  assert out == ["start", "start", cpu_env.TUNABLE]  # ran twice, then stopped with it set
