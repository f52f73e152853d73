"""Pinned evaluation runtimes: a separate virtualenv whose interpreter runs the sandbox zygotes.

Benchmarks pin their libraries (DS-1000's references all pass only with pandas 1.5.3 and numpy
1.26.4), while training needs current numpy for JAX. So gift builds a virtual environment with
the benchmark's pins next to (never inside) its own, and `Sandbox(python=runtime.python)` runs the
candidates there. Every report states `info(...)` so numbers are comparable.

  gift runtime create --preset ds1000 /tmp/ds1000-runtime
  gift runtime info /tmp/ds1000-runtime

A runtime directory is complete once `gift_runtime.json` exists in it (written last, atomically).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

import gift

MARKER = "gift_runtime.json"
# Pins per preset. DS-1000 (pandas): upstream's environment.yml pins pandas and numpy; problem 15
# imports yaml. The test harnesses use only the stdlib besides these.
PRESETS: dict[str, tuple[str, ...]] = {
    "ds1000": ("pandas==1.5.3", "numpy==1.26.4", "pyyaml==6.0.2"),
}
# Environment pinned per preset, set by the runtime's own `sitecustomize.py` before anything is
# imported (so it holds under `python -I` in the sandbox, and for any other use of the runtime).
# DS-1000: numpy 1.26 sorts with AVX-512 (x86-simd-sort) where the CPU has it, which orders ties
# differently from its generic sort; DS-1000's published scores were computed with the generic
# sort (codex002 problem 276 relies on the order of ties). Disabling its AVX-512 targets makes
# scores the same on every CPU (disabling a feature the CPU lacks is a no-op in numpy).
PRESET_ENV: dict[str, dict[str, str]] = {
    "ds1000": {"NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX "
                                           "AVX512_CLX AVX512_CNL AVX512_ICL"},
}
# Packages whose versions `info` reports (when importable in the runtime).
REPORTED = ("pandas", "numpy", "pyyaml", "python-dateutil", "pytz")

_PROBE = r"""
import json, platform, sys
from importlib import metadata
names = json.loads(sys.argv[1])
versions = {}
for n in names:
  try:
    versions[n] = metadata.version(n)
  except metadata.PackageNotFoundError:
    pass
print(json.dumps({"python": sys.executable, "python_version": platform.python_version(),
                  "packages": versions}))
"""


class RuntimeSetupError(RuntimeError):
  """A runtime directory is missing, incomplete, or its interpreter does not run."""


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
  """What a report states about the interpreter that executed the candidates.

  `python` is the interpreter path (absolute); `packages` maps distribution name -> version;
  `preset` and `pins` are empty for the current (unpinned) interpreter.
  """
  python: str
  python_version: str
  packages: dict[str, str]
  preset: str = ""
  pins: tuple[str, ...] = ()
  path: str = ""
  env: dict[str, str] = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def describe(self) -> str:
    """One line, e.g. `python 3.11.7, pandas 1.5.3, numpy 1.26.4 (preset ds1000)`."""
    pkgs = ", ".join(f"{k} {v}" for k, v in self.packages.items() if k in ("pandas", "numpy"))
    pkgs += "".join(f", {k}={v}" for k, v in self.env.items())
    where = f" (preset {self.preset}: {self.path})" if self.preset else " (current interpreter)"
    return f"python {self.python_version}, {pkgs}{where}"


def python_path(runtime_dir: str) -> str:
  """The interpreter of a runtime directory (`DIR/bin/python`), absolute."""
  return os.path.join(os.path.abspath(runtime_dir), "bin", "python")


def probe(python: str) -> RuntimeInfo:
  """Runs `python` once to read its version and the versions of `REPORTED` packages."""
  try:
    out = subprocess.run([python, "-c", _PROBE, json.dumps(REPORTED)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
  except (OSError, subprocess.SubprocessError) as e:
    raise RuntimeSetupError(f"interpreter {python!r} does not run: {e}") from e
  d = json.loads(out)
  return RuntimeInfo(python=d["python"], python_version=d["python_version"],
                     packages=d["packages"])


def current() -> RuntimeInfo:
  """The interpreter gift itself runs on (used when no pinned runtime is given)."""
  return probe(sys.executable)


def info(runtime_dir: str) -> RuntimeInfo:
  """Reads a complete runtime directory and probes its interpreter."""
  marker = os.path.join(runtime_dir, MARKER)
  if not os.path.isfile(marker):
    raise RuntimeSetupError(f"{runtime_dir!r} is not a complete gift runtime: {MARKER} is missing "
                        "(create it with `gift runtime create --preset ds1000 DIR`)")
  with open(marker) as f:
    meta = json.load(f)
  probed = probe(python_path(runtime_dir))
  return dataclasses.replace(probed, preset=meta["preset"], pins=tuple(meta["pins"]),
                             path=os.path.abspath(runtime_dir), env=meta.get("env", {}))


def resolve(runtime_dir: str | None) -> RuntimeInfo:
  """`info(runtime_dir)` for a pinned runtime, or `current()` when none is given."""
  return info(runtime_dir) if runtime_dir else current()


def create(runtime_dir: str, preset: str = "ds1000", python: str | None = None,
           pip_args: tuple[str, ...] = (), quiet: bool = False) -> RuntimeInfo:
  """Builds a virtualenv with the preset's pins in `runtime_dir` (which must not be a runtime).

  Args:
    runtime_dir: where the virtualenv goes; created if missing, must be empty otherwise.
    preset: a key of `PRESETS`.
    python: the base interpreter (default: this one); the venv gets its minor version, which
      must have wheels for the pins (pandas 1.5.3 has wheels for CPython 3.8-3.11).
    pip_args: extra `pip install` arguments (e.g. `--index-url`, `--find-links`).
  Returns the new runtime's `info`, with the pinned versions verified.
  """
  if preset not in PRESETS:
    raise ValueError(f"unknown runtime preset {preset!r}; expected one of {sorted(PRESETS)}")
  if os.path.isdir(runtime_dir) and os.listdir(runtime_dir):
    raise RuntimeSetupError(f"{runtime_dir!r} exists and is not empty; pick a new directory")
  pins = PRESETS[preset]
  base = python or sys.executable
  out = subprocess.DEVNULL if quiet else None
  subprocess.run([base, "-m", "venv", runtime_dir], check=True, stdout=out)
  py = python_path(runtime_dir)
  subprocess.run([py, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                  *pip_args, *pins], check=True, stdout=out)
  env = PRESET_ENV.get(preset, {})
  if env:
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "sitecustomize.py"), "w") as f:
      f.write("# Written by `gift runtime create`: the preset's pinned environment.\n"
              "import os\n" + "".join(f"os.environ.setdefault({k!r}, {v!r})\n"
                                     for k, v in env.items()))
  probed = probe(py)
  for pin in pins:
    name, _, want = pin.partition("==")
    got = probed.packages.get(name)
    if got != want:
      raise RuntimeSetupError(f"runtime {runtime_dir!r}: {name} is {got}, expected {want}")
  tmp = os.path.join(runtime_dir, MARKER + ".tmp")
  with open(tmp, "w") as f:
    json.dump({"preset": preset, "pins": list(pins), "base_python": base, "env": env}, f,
              indent=1)
  os.replace(tmp, os.path.join(runtime_dir, MARKER))
  return info(runtime_dir)


def main(argv: list[str]) -> int:
  """`gift runtime create --preset NAME DIR` | `gift runtime info DIR`."""
  parser = gift.ArgumentParser(prog="gift runtime", description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="cmd", required=True)
  c = sub.add_parser("create", help="build a pinned virtualenv")
  c.add_argument("--preset", default="ds1000", choices=sorted(PRESETS))
  c.add_argument("--python", default=None, help="base interpreter (default: this one)")
  c.add_argument("--pip-arg", action="append", default=[], help="extra pip install argument")
  c.add_argument("dir")
  i = sub.add_parser("info", help="print a runtime's interpreter and versions as JSON")
  i.add_argument("dir")
  args = parser.parse_args(argv)
  try:
    if args.cmd == "create":
      rt = create(args.dir, args.preset, args.python, tuple(args.pip_arg))
    else:
      rt = info(args.dir)
  except (RuntimeSetupError, subprocess.CalledProcessError) as e:
    print(f"gift runtime {args.cmd}: {e}", file=sys.stderr)
    return 1
  print(json.dumps(rt.to_dict(), indent=1))
  return 0
