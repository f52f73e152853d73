"""XLA:CPU custom calls of gift's own (XLA FFI), compiled on first use with the host's C++
compiler. XLA's own ops stay the fallback: without a compiler, when the build fails, or with
GIFT_CPU_KERNELS=0, nothing here is used and every caller takes the plain JAX path.

`decode_attention`: one query token per row against a KV cache laid out [B, K, W, H] (the
decode steps of `gift sample` and `gift serve`), reading each row's cache only over the span
its mask selects (gift/model/kernels/decode_attention.cc). XLA's dense form reads all W slots
of every row; at the cache extents of a busy server that read is most of a decode step on a
CPU (it is memory-bound), and rows are on average half full.

`inference_jit`: jax.jit with the XLA:CPU compile options of gift's inference computations
(`INFERENCE_OPTIONS`: XLA's own dots, not YNNPACK's fusions, for matmuls of a few rows).

The shared library goes to $GIFT_KERNEL_CACHE (default ~/.cache/gift/kernels), named by a hash
of the source, the jaxlib version, the compiler command and the CPU's feature flags (it is
built with -march=native, plus $GIFT_KERNEL_FLAGS if set, e.g. "-mno-avx512f" for the
portable path), written to a temporary name and renamed: concurrent processes never load a
half-written file.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)
_SOURCE = os.path.join(os.path.dirname(__file__), "kernels", "decode_attention.cc")
_TARGET = "gift_decode_attention"
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return platform.processor()


def _build() -> str | None:
  """Path of the compiled library (building it if needed), or None (reason logged)."""
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if not cxx:
    log.info("gift CPU kernels: no C++ compiler (g++/c++/$CXX); using XLA's ops")
    return None
  with open(_SOURCE, "rb") as f:
    source = f.read()
  flags = [*_FLAGS, *os.environ.get("GIFT_KERNEL_FLAGS", "").split()]
  key = hashlib.sha256(b"\0".join([source, jax.lib.__version__.encode(), cxx.encode(),
                                   " ".join(flags).encode(), _cpu_flags().encode()]))
  cache = os.environ.get("GIFT_KERNEL_CACHE",
                         os.path.join(os.path.expanduser("~"), ".cache", "gift", "kernels"))
  path = os.path.join(cache, f"decode_attention-{key.hexdigest()[:16]}.so")
  if os.path.exists(path):
    return path
  try:
    os.makedirs(cache, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
  except OSError as e:
    log.warning("gift CPU kernels: cannot write to %s (%s; set GIFT_KERNEL_CACHE); using XLA's "
                "ops", cache, e)
    return None
  cmd = [cxx, *flags, "-I", jax.ffi.include_dir(), _SOURCE, "-o", tmp]
  try:
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
      log.warning("gift CPU kernels: `%s` failed (using XLA's ops):\n%s", " ".join(cmd),
                  run.stderr[-4000:])
      return None
    os.replace(tmp, path)
    return path
  except (OSError, subprocess.SubprocessError) as e:
    log.warning("gift CPU kernels: could not run %s (%s); using XLA's ops", cxx, e)
    return None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


_LOCK = threading.Lock()


def available() -> bool:
  """True once the kernels are built and registered with XLA:CPU (tried once per process,
  whichever thread asks first)."""
  with _LOCK:
    return _load()


@functools.cache
def _load() -> bool:
  if os.environ.get("GIFT_CPU_KERNELS", "1") == "0":
    return False
  path = _build()
  if path is None:
    return False
  try:
    lib = ctypes.cdll.LoadLibrary(path)
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.GiftDecodeAttention),
                                platform="cpu")
  except Exception as e:  # a stale or foreign library: fall back, say why
    log.warning("gift CPU kernels: could not load %s (%s); using XLA's ops", path, e)
    return False
  return True


def use_decode_attention(*xs: jax.Array) -> bool:
  """Whether `decode_attention` applies to these operands: float32, JAX computing on the CPU,
  the kernels available. (Sharding is the caller's: see ModelConfig.decode_attention.)"""
  return (all(x.dtype == jnp.float32 for x in xs) and jax.default_backend() == "cpu"
          and available())


def decode_attention(q_bkgh: jax.Array, k_bkwh: jax.Array, v_bkwh: jax.Array,
                     mask_bw: jax.Array, logit_cap: float = 0.0) -> jax.Array:
  """softmax(q k^T) v for one (scaled) query per row and query head, [B, K, G, H], over the
  slots of the cache [B, K, W, H] where mask [B, W] is set; zeros for a row that sees none."""
  w = mask_bw.shape[-1]
  slot_w = jnp.arange(w, dtype=jnp.int32)
  lo_b = jnp.min(jnp.where(mask_bw, slot_w, w), axis=-1).astype(jnp.int32)
  hi_b = jnp.max(jnp.where(mask_bw, slot_w + 1, 0), axis=-1).astype(jnp.int32)
  call = jax.ffi.ffi_call(_TARGET, jax.ShapeDtypeStruct(q_bkgh.shape, jnp.float32),
                          vmap_method="broadcast_all")
  return call(q_bkgh, k_bkwh, v_bkwh, mask_bw, lo_b, hi_b, logit_cap=np.float32(logit_cap))


def for_mesh(cfg: Any, mesh: Any) -> Any:
  """The model config a sampler over `mesh` runs: decode_attention "xla" when the mesh spans
  more than one device (a custom call has no sharding rule; GSPMD would gather the whole KV
  cache onto every device for it), else `cfg` as it is."""
  if mesh is None or mesh.size == 1 or cfg.decode_attention != "auto":
    return cfg
  return dataclasses.replace(cfg, decode_attention="xla")


# XLA:CPU's YNNPACK dot fusions (its default for f32 matmuls) split even a matmul of a few rows
# across the intra-op threads, and at a decode step's 32 rows that costs more than it gains: the
# serve benchmark model's four layers' matmuls alone at 32 rows took 5.5 ms with them, 3.9 ms
# with XLA's own dot emitter, 4.9 ms with YNNPACK on one core; `gift serve`'s engine under 32
# clients made 1.04-1.57x the tokens/s without them, in three pairs of processes run in turn
# (2-core EPYC, BENCHMARKS.md "Round 11"; the two compiled side by side in one process measured
# alike). gift's inference computations (the prefills and decode loops of
# `gift sample` and `gift serve`) are compiled without them on a CPU.
INFERENCE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def inference_options() -> tuple[tuple[str, Any], ...]:
  """The compile options of gift's CPU inference computations: `INFERENCE_OPTIONS` on a CPU
  backend whose jaxlib knows them, unless XLA_FLAGS sets one of them already (the user's
  choice stands); () elsewhere."""
  if jax.default_backend() != "cpu":
    return ()
  flags = os.environ.get("XLA_FLAGS", "")
  opts = {k: v for k, v in INFERENCE_OPTIONS.items() if k not in flags}
  if not opts:
    return ()
  try:
    jax.jit(lambda x: x + 1, compiler_options=opts).lower(np.float32(0)).compile()
  except Exception as e:  # an older jaxlib without the option: its defaults, say why
    log.info("gift CPU inference: compile options %s not taken (%s)", opts, e)
    return ()
  return tuple(opts.items())


_JIT_LOCK = threading.Lock()


class inference_jit:
  """`jax.jit(fun, **kw)` with `inference_options()`, decided at the first use (not at
  import: the backend is not known then); its other attributes (`lower`, ...) are the jit's."""

  def __init__(self, fun, **kw):
    self._fun, self._kw, self._jit = fun, kw, None
    functools.update_wrapper(self, fun)

  def _get(self):
    with _JIT_LOCK:  # threads that compile at once (the engine's warm-up) share one jit
      if self._jit is None:
        opts = dict(inference_options())
        self._jit = jax.jit(self._fun, **self._kw,
                            **({"compiler_options": opts} if opts else {}))
    return self._jit

  def __call__(self, *args, **kw):
    return self._get()(*args, **kw)

  def plain(self):
    """The same jit without the options (XLA's defaults), for A/B comparisons."""
    return jax.jit(self._fun, **self._kw)

  def __getattr__(self, name):  # lower, eval_shape, _cache_size, ...: the jit's own
    return getattr(self._get(), name)
