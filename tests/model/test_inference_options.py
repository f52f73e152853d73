"""gift's CPU inference computations (`gift sample`, `gift serve`) compile with XLA's own dot
emitter instead of YNNPACK's fusions (cpu_kernels.inference_options), unless XLA_FLAGS chooses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gift import sample
from gift.model import cpu_kernels
from gift.serve import engine


def _matmul(x, w):
  return jnp.tanh(x @ w)


def test_inference_jit_compiles_without_ynnpack_fusions_and_gives_the_same_result():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 256)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(256, 512)), jnp.float32) * 0.05
  plain = jax.jit(_matmul).lower(x, w).compile().as_text()
  if "ynn_fusion" not in plain:
    pytest.skip("this jaxlib does not fuse f32 matmuls with YNNPACK: nothing to turn off")
  assert dict(cpu_kernels.inference_options()) == cpu_kernels.INFERENCE_OPTIONS
  f = cpu_kernels.inference_jit(_matmul)
  assert "ynn_fusion" not in f.lower(x, w).compile().as_text()
  np.testing.assert_allclose(f(x, w), jax.jit(_matmul)(x, w), rtol=1e-5, atol=1e-5)
  assert f._cache_size() == 1  # the jit's own attributes pass through
  assert "ynn_fusion" in f.plain().lower(x, w).compile().as_text()  # XLA's defaults, for A/Bs
  # The samplers' and the serve engine's model computations are such jits.
  for fn in (sample._prefill_jit, sample._decode_jit, engine._prefill_jit, engine._decode_jit):
    assert isinstance(fn, cpu_kernels.inference_jit)


def test_xla_flags_that_choose_the_fusions_win(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
  assert cpu_kernels.inference_options.__wrapped__() == ()
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # other flags
  assert cpu_kernels.inference_options.__wrapped__() == cpu_kernels.inference_options()


def test_a_jaxlib_without_the_option_falls_back_to_its_defaults(monkeypatch):
  monkeypatch.setattr(cpu_kernels, "INFERENCE_OPTIONS", {"xla_cpu_no_such_option_gift": ""})
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert cpu_kernels.inference_options.__wrapped__() == ()
