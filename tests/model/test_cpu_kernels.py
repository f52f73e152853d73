"""gift's XLA:CPU decode-attention kernel (gift/model/cpu_kernels.py) against XLA's ops: ragged
rows, GQA, sliding-window spans, soft-capping, empty rows, vmap; the switch that keeps meshes on
XLA's ops; and the fallback when no compiler builds it."""
import dataclasses
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gift.model import cpu_kernels, layers, presets, transformer

pytestmark = pytest.mark.skipif(
    not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")),
    reason="no C++ compiler on this host: the kernel is not built and XLA's ops run instead")


def _problem(seed, b=6, k=2, g=3, w=40, h=16):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, 1, k * g, h)).astype(np.float32)
  kv = [rng.normal(size=(b, k, w, h)).astype(np.float32) for _ in range(2)]
  # Ragged rows: row r sees slots [lo, hi) minus a hole; one row sees nothing at all.
  mask = np.zeros((b, 1, w), bool)
  for r in range(b - 1):
    lo, hi = sorted(rng.choice(np.arange(w + 1), 2, replace=False))
    mask[r, 0, lo:hi] = True
    mask[r, 0, (lo + hi) // 2] = hi - lo < 3  # a masked slot inside the span
  mask[0, 0, :] = True  # and one full row
  return jnp.asarray(q), jnp.asarray(kv[0]), jnp.asarray(kv[1]), jnp.asarray(mask)


# (queries per kv head, head dim): 16 runs the portable C++ path; 64, 128 and 256 the AVX-512
# one where the host has it (spans of 40 slots: whole blocks of 16 and a ragged tail).
SHAPES = [(3, 16), (1, 64), (3, 64), (2, 128), (1, 256)]


def _both(q, k, v, mask, cap=0.0):
  run = jax.jit(lambda *a, impl: layers.attend_cached(*a, None, cap, impl),
                static_argnames="impl")
  return run(q, k, v, mask, impl="auto"), run(q, k, v, mask, impl="xla")


@pytest.mark.parametrize("g,h", SHAPES)
def test_the_kernel_is_built_and_matches_xla_on_ragged_gqa_rows(g, h):
  assert cpu_kernels.available()
  q, k, v, mask = _problem(0, g=g, h=h)
  got, want = _both(q, k, v, mask)
  seen = np.asarray(mask[:, 0].any(-1))
  np.testing.assert_allclose(np.asarray(got)[seen], np.asarray(want)[seen], atol=2e-6, rtol=1e-5)
  # A row that sees nothing gets zeros (XLA's form gives the mean of all values: never used).
  assert not seen[-1] and not np.asarray(got)[-1].any()


@pytest.mark.parametrize("g,h", SHAPES)
def test_soft_capped_scores_match_xla(g, h):
  q, k, v, mask = _problem(1, g=g, h=h)
  q = q * 30.0  # scores far past the cap, so soft-capping changes the weights
  got, want = _both(q, k, v, mask, cap=5.0)
  seen = np.asarray(mask[:, 0].any(-1))
  np.testing.assert_allclose(np.asarray(got)[seen], np.asarray(want)[seen], atol=2e-5, rtol=1e-4)
  uncapped, _ = _both(q, k, v, mask)
  assert np.abs(np.asarray(uncapped)[seen] - np.asarray(got)[seen]).max() > 1e-2


@pytest.mark.parametrize("g,h", SHAPES)
def test_a_row_does_not_depend_on_the_extent_or_its_neighbours(g, h):
  q, k, v, mask = _problem(2, g=g, h=h)
  got, _ = _both(q, k, v, mask)
  wide = lambda x: jnp.concatenate([x, jnp.ones_like(x)], axis=2)  # 40 more slots, all unseen
  got_wide, _ = _both(q, wide(k), wide(v), jnp.concatenate([mask, jnp.zeros_like(mask)], 2))
  np.testing.assert_array_equal(got_wide, got)  # bit for bit
  alone, _ = _both(q[2:3], k[2:3], v[2:3], mask[2:3])
  np.testing.assert_array_equal(alone, got[2:3])


def test_vmap_over_a_leading_axis():
  q, k, v, mask = _problem(3)
  f = jax.jit(jax.vmap(lambda *a: layers.attend_cached(*a)))
  got = f(q[None].repeat(2, 0), k[None].repeat(2, 0), v[None].repeat(2, 0), mask[None].repeat(2, 0))
  want, _ = _both(q, k, v, mask)
  np.testing.assert_array_equal(got[0], want)
  np.testing.assert_array_equal(got[1], want)


def _decode_hlo(cfg):
  params = transformer.init_params(cfg, jax.random.key(0))
  cache = transformer.init_cache(cfg, 2, 16)
  step = jax.jit(lambda p, c: transformer.apply(cfg, p, jnp.ones((2, 1), jnp.int32),
                                                jnp.zeros((2, 1), jnp.int32), None, c)[0])
  return step.lower(params, cache).as_text()


def test_decode_steps_use_the_kernel_unless_the_config_or_a_mesh_says_xla():
  cfg = presets.ModelConfig()
  assert cfg.decode_attention == "auto"
  assert "gift_decode_attention" in _decode_hlo(cfg)
  xla = dataclasses.replace(cfg, decode_attention="xla")
  assert "gift_decode_attention" not in _decode_hlo(xla)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("fsdp",))
  assert cpu_kernels.for_mesh(cfg, mesh).decode_attention == "xla"
  one = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("fsdp",))
  assert cpu_kernels.for_mesh(cfg, one) is cfg and cpu_kernels.for_mesh(cfg, None) is cfg
  with pytest.raises(ValueError, match="decode_attention='fast'.*auto"):
    _decode_hlo(dataclasses.replace(cfg, decode_attention="fast"))


_PROBE = """
import logging, os, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
from gift.model import cpu_kernels
print("available", cpu_kernels.available())
print("files", sorted(os.listdir(os.environ["GIFT_KERNEL_CACHE"]))
      if os.path.isdir(os.environ["GIFT_KERNEL_CACHE"]) else [])
"""


def _probe(tmp_path, **env):
  run = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                       env={**os.environ, "GIFT_KERNEL_CACHE": str(tmp_path / "k"), **env},
                       timeout=600)
  assert run.returncode == 0, run.stderr
  return run.stdout


def test_the_build_lands_whole_and_a_missing_compiler_falls_back(tmp_path):
  out = _probe(tmp_path)
  assert "available True" in out
  files = eval(out.split("files ", 1)[1])  # one finished library, no temporary left over
  assert len(files) == 1 and files[0].startswith("decode_attention-") and files[0].endswith(".so")
  out = _probe(tmp_path, CXX=str(tmp_path / "no-such-compiler"))
  assert "available False" in out and "using XLA's ops" in out
  assert "available False" in _probe(tmp_path, GIFT_CPU_KERNELS="0")
  (tmp_path / "file").write_text("")  # a cache folder that cannot be made
  run = subprocess.run([sys.executable, "-c", _PROBE.replace('os.environ["GIFT_KERNEL_CACHE"]',
                                                             '"/nonexistent"')],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "GIFT_KERNEL_CACHE": str(tmp_path / "file" / "k")})
  assert "available False" in run.stdout and "set GIFT_KERNEL_CACHE" in run.stdout, run.stderr


_PORTABLE = """
import numpy as np, jax
from gift.model import layers
q, k, v, mask = [np.load(f"{sys.argv[1]}/{x}.npy") for x in "qkvm"]
run = jax.jit(lambda *a, impl: layers.attend_cached(*a, decode_impl=impl), static_argnames="impl")
got, want = run(q, k, v, mask, impl="auto"), run(q, k, v, mask, impl="xla")
seen = mask[:, 0].any(-1)
np.testing.assert_allclose(np.asarray(got)[seen], np.asarray(want)[seen], atol=2e-6, rtol=1e-5)
print("ok")
"""


def test_extra_build_flags_make_a_build_of_their_own_and_the_portable_loop_matches(tmp_path):
  """GIFT_KERNEL_FLAGS joins the build (and the library's name): -mno-avx512f builds the loop
  that CPUs without AVX-512 run, here checked at a head dim the AVX-512 path also takes."""
  for x, a in zip("qkvm", _problem(4, g=3, h=64)):
    np.save(tmp_path / f"{x}.npy", np.asarray(a))
  env = {**os.environ, "GIFT_KERNEL_CACHE": str(tmp_path / "k")}
  for flags in ("", "-mno-avx512f"):
    run = subprocess.run([sys.executable, "-c", "import sys\n" + _PORTABLE, str(tmp_path)],
                         capture_output=True, text=True, timeout=600,
                         env={**env, "GIFT_KERNEL_FLAGS": flags})
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]
  assert len(os.listdir(tmp_path / "k")) == 2
