"""What gift's Apache Beam pipelines share: runner choice, one sandbox per worker process,
isolation checks, retries and a test hook for injected faults.

Beam is an optional extra (`pip install "gift[beam]"`): nothing here imports `apache_beam` at
module level, and nothing in the default paths (`gift quickstart`, the local runner) imports
this module's Beam parts.

  runner, options = pipeline_options("--runner=DataflowRunner --project=p --region=r ...")

Without `--runner` (or with `--runner=DirectRunner`) the pipeline runs on this machine on Beam's
FnApiRunner in multi-process mode (`--direct_num_workers`, default 2), named explicitly: recent
Beam versions otherwise route the DirectRunner to the Prism runner, which downloads a binary.
"""
from __future__ import annotations

import logging
import os
import shlex
import socket
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

LOCAL_RUNNERS = ("DirectRunner", "direct", "FnApiRunner", "BundleBasedDirectRunner")
MAX_ATTEMPTS = 3  # per element, inside the DoFn (the DirectRunner does not retry bundles)
FAULT_ENV = "GIFT_BEAM_FAULT"  # tests: "<key>|<failures>|<counter file>", see `maybe_fail`


def pipeline_options(flags: str = "", num_workers: int = 2, light: bool = False
                     ) -> tuple[Any, Any]:
  """(runner object or None, PipelineOptions) from a command line of Beam flags.

  A local run (no `--runner`, or a DirectRunner) gets the multi-process FnApiRunner with
  `num_workers` workers unless the flags set `--direct_running_mode`/`--direct_num_workers`
  (`light`: a pipeline of light I/O work, e.g. writing records, runs in this process instead,
  sparing the workers' start-up); any other runner (Dataflow, Flink, Spark, Portable) is left
  to Beam to resolve from `--runner`."""
  from apache_beam.options import pipeline_options as po

  args = shlex.split(flags or "")
  options = po.PipelineOptions(args)
  options.view_as(po.TypeOptions).pipeline_type_check = False  # tagged outputs mix types
  runner_name = options.view_as(po.StandardOptions).runner
  if runner_name and runner_name not in LOCAL_RUNNERS:
    return None, options
  direct = options.view_as(po.DirectOptions)
  if not any(a.startswith("--direct_running_mode") for a in args):
    direct.direct_running_mode = "in_memory" if light else "multi_processing"
  if not any(a.startswith("--direct_num_workers") for a in args):
    direct.direct_num_workers = 1 if direct.direct_running_mode == "in_memory" else num_workers
  worker = options.view_as(po.WorkerOptions)
  if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
    worker.default_sdk_harness_log_level = "WARNING"  # workers log every bundle at INFO
  from apache_beam.runners.portability.fn_api_runner import fn_runner

  return fn_runner.FnApiRunner(), options


# ---------------------------------------------------------------------------------------------
# One object per worker process (a sandbox, a loaded model), shared by the DoFn instances the
# worker runs concurrently: created by the first `setup`, closed by the last `teardown`.
# ---------------------------------------------------------------------------------------------
_lock = threading.Lock()
_shared: dict[str, list] = {}  # key -> [object, reference count]


def acquire(key: str, make: Callable[[], Any]) -> Any:
  with _lock:
    if key not in _shared:
      _shared[key] = [make(), 0]
    _shared[key][1] += 1
    return _shared[key][0]


def release(key: str, close: Callable[[Any], None] | None = None) -> None:
  with _lock:
    entry = _shared.get(key)
    if entry is None:
      return
    entry[1] -= 1
    if entry[1] <= 0:
      del _shared[key]
      if close is not None:
        close(entry[0])


def check_isolation(sandbox: Any, required: bool) -> None:
  """With `required`, stops the run when this worker's sandbox lacks an isolation layer."""
  from gift.execution.sandbox import LAYERS

  missing = [f"{name}: {what}" for name, what in LAYERS.items() if not sandbox.layers.get(name)]
  if missing and required:
    raise RuntimeError(f"--require_isolation: on worker {socket.gethostname()} (pid "
                       f"{os.getpid()}) the sandbox lacks {len(missing)} isolation layer(s): "
                       + "; ".join(missing) + ". Run the workers as root in a container that "
                       "allows namespaces and seccomp (see README, 'Beam').")


def maybe_fail(key: str) -> None:
  """Test hook: with GIFT_BEAM_FAULT="<key>|<n>|<counter file>", the first n attempts on
  element `key` (across all worker processes) raise, as a crashing worker would."""
  spec = os.environ.get(FAULT_ENV, "")
  if not spec:
    return
  target, times, counter = spec.split("|", 2)
  if target != key:
    return
  with open(counter, "a+") as f:  # one line per attempt, O_APPEND: safe across processes
    f.write("x\n")
    f.flush()
    f.seek(0)
    attempt = len(f.read().splitlines())
  if attempt <= int(times):
    raise RuntimeError(f"injected fault on {key} (attempt {attempt})")


def with_retries(key: str, work: Callable[[], Any]) -> Any:
  """work() for one element, retried up to MAX_ATTEMPTS times. An attempt's outputs are emitted
  only once it has succeeded, so a retried element is neither lost nor duplicated. (The sandbox
  needs no reset between attempts: it restarts a zygote that died by itself.)"""
  for attempt in range(1, MAX_ATTEMPTS + 1):
    try:
      maybe_fail(key)
      return work()
    except Exception as e:
      if attempt == MAX_ATTEMPTS:
        raise
      log.warning("%s failed (attempt %d of %d): %s: %s; retrying", key, attempt,
                  MAX_ATTEMPTS, type(e).__name__, e)
      from apache_beam.metrics import Metrics

      Metrics.counter("gift", "retries").inc()
