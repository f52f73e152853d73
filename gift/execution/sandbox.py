"""Run untrusted generated code safely and fast: a fork server whose verdicts cannot be forged.

    with Sandbox(num_workers=2) as sandbox:
      verdict = sandbox.run("import pandas as pd\\ndf = pd.DataFrame({'a': [1, 2]})",
                            "result = df.a.sum()")
      verdict.status, verdict.result  # ('ok', 3)

Security model
--------------
Every GIFT sample and every evaluated completion is code we did not write. It runs far from the
caller: `Sandbox` starts N zygotes (`zygote.py`, default one per core), each a clean interpreter
(`python -I`, minimal environment, optionally another interpreter such as a pinned evaluation
venv) that imports numpy/pandas once, stays single-threaded (one BLAS thread, no Arrow
background thread) and never runs job code. For each distinct context (context code + inputs +
env) a zygote forks a *context process*, which runs the context code once; for each job the
context process forks a fresh *job process*. Layers, strongest available, detected at start-up
and logged once (a missing layer is a logged warning, never silent):

- pid, network, mount, IPC and UTS namespaces per context process: the job sees only its own
  processes, has no network interface but a down loopback, a read-only view of the whole file
  system except a private tmpfs `/tmp` (its scratch dir, also its cwd) and `/dev/shm`; the
  interpreter's own directories under `/tmp` (e.g. a runtime venv there) stay visible,
  read-only. A job's `data_dirs` (e.g. the folder of the notebook its context comes from)
  appear at their own paths for that context only, read-only, through an idmapped mount that
  shows the folder owner's files as the jobs' uid's (so a mode-0700 home folder is readable);
  the directories above them show nothing else. As pid 1 of its namespace, the context process
  kills everything left after each job.
- an unprivileged uid/gid (65534) when the caller is root (directories others may not traverse,
  like /root above a pyenv, are re-exposed read-only so the interpreter's libraries import).
- hard rlimits (soft == hard): address space, CPU seconds, file size, open files, processes,
  no core dumps; `no_new_privs`; the process is not dumpable (no /proc/<pid>/mem peeking).
- seccomp (pyseccomp over libseccomp): no exec, no non-UNIX sockets, no ptrace/mount/unshare/
  bpf/keyctl/...; in the job additionally no fork/vfork/clone without CLONE_THREAD (threads and
  numpy keep working), no signals to other processes, no raising rlimits.
- its own session; the wall clock is kept by the zygote, which has the whole process group
  SIGKILLed at the deadline (and the whole context namespace if the context process does not
  answer within 2 s). CPU-limit kills are classified as `timeout`, MemoryError and unexplained
  SIGKILLs (the OOM killer) as `memory_error`.
- a fresh job environment (minimal variables plus only what the caller passes), cwd,
  `tempfile.tempdir`, signal handlers, warning filters; numpy's and `random`'s global RNGs are
  seeded before the context code, so every job of a context starts from the same state.

Results are data, not code: stdout/stderr are drained while the job runs and capped
(`output_limit_bytes`, overflow kills the job: `output_limit`); the result value is serialized
inside the job, under its limits, by `codec.py` (JSON, exact types, byte/node budget, never
pickle) and written to a pipe the zygote created for this job only; the caller decodes it (a
whitelist of tags, no code runs) and compares outside the job (`compare.py`), where the expected
answer lives and the job never can reach it. A verdict is `ok` only if the job process exited
with status 0 *after* writing one well-formed result frame, and was not killed; `os._exit(0)`
early, a crash, a kill or an overflow can never turn into `ok`, and a frame written before a
timeout does not count. Inherited file descriptors are closed, so a job cannot write to the
caller's or another job's channels.

Limits (what this does not promise): the job chooses its own result value (as any code can);
context code runs in the same sandbox but is allowed to fork (jobs are forked from it), so
treat contexts as dataset code; files a job writes into its context's `/tmp` outside its own
job dir are visible to later jobs of that context (the Python namespace never is); on machines
without namespaces, a root uid or seccomp (see the start-up log), the matching protections are
absent: rlimits, sessions, the wall clock and the data-only result channel remain. Kernel bugs
and side channels are out of scope; for hostile workloads add a VM or gVisor around it.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
from typing import Any

from gift.execution import codec, zygote

log = logging.getLogger(__name__)

STATUSES = ("ok", "error", "syntax_error", "timeout", "memory_error", "output_limit",
            "result_error")
LAYERS = {  # name in the zygote's report -> what is missing without it
    "pid": "pid namespace (jobs could see/signal other processes)",
    "net": "network namespace (jobs could reach the network if seccomp is also missing)",
    "mount": "mount namespace (no read-only root, no private /tmp)",
    "ipc": "IPC namespace (System V IPC shared with the host)",
    "readonly_root": "read-only root file system",
    "private_tmp": "private tmpfs /tmp and /dev/shm",
    "uid": "unprivileged uid (jobs run as the caller's user)",
    "seccomp": "seccomp filter (jobs may fork, exec and open sockets)",
}
_BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
             "HOME": "/tmp", "TMPDIR": "/tmp", "OMP_NUM_THREADS": "1",
             "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1",
             "VECLIB_MAXIMUM_THREADS": "1", "PYTHONHASHSEED": "0"}
# The zygote must stay single-threaded to fork safely: no Arrow jemalloc background thread.
_ZYGOTE_ENV = dict(_BASE_ENV, JE_ARROW_MALLOC_CONF="background_thread:false",
                   ARROW_DEFAULT_MEMORY_POOL="system")
_logged_layers: set[str] = set()


@dataclasses.dataclass
class Job:
  """One execution request; fields as in `Sandbox.run`."""
  context_code: str
  code: str
  output_var: str | None = "result"
  inputs: dict[str, Any] | None = None
  capture: tuple[str, ...] = ()
  timeout_s: float | None = None
  env: dict[str, str] | None = None
  data_dirs: tuple[str, ...] = ()


@dataclasses.dataclass
class Verdict:
  """The outcome of one job. `status` is one of STATUSES; `result` is valid iff `has_result`;
  `captured` maps the requested `capture` names that were defined and serializable to values
  (the others, with the reason, are in `captured_errors`). Seconds are the job's own (the
  context's time is in `context_s` when this job started the context)."""
  status: str
  result: Any = None
  has_result: bool = False
  captured: dict[str, Any] = dataclasses.field(default_factory=dict)
  captured_errors: dict[str, str] = dataclasses.field(default_factory=dict)
  error_type: str | None = None
  error_message: str | None = None
  stdout: str = ""
  stderr: str = ""
  wall_s: float = 0.0
  cpu_s: float = 0.0

  @property
  def ok(self) -> bool:
    return self.status == "ok"

  def to_json(self) -> dict:
    """A JSON-serializable dict; the result (and captured values) as codec trees + repr."""
    d = dataclasses.asdict(self)
    d["result"] = json.loads(codec.encode(self.result)) if self.has_result else None
    d["result_repr"] = repr(self.result)[:10000] if self.has_result else None
    d["captured"] = {k: json.loads(codec.encode(v)) for k, v in self.captured.items()}
    return d


def _log_layers(layers: dict, hello: dict) -> None:
  """Logs the detected isolation layers once per process (and each missing one as a warning)."""
  key = json.dumps([layers, hello["python"]], sort_keys=True)
  if key in _logged_layers:
    return
  _logged_layers.add(key)
  have = sorted(k for k in LAYERS if layers.get(k))
  log.info("sandbox: python %s, numpy %s, pandas %s; isolation layers: %s", hello["python"],
           hello["numpy"], hello["pandas"], ", ".join(have) or "none")
  for name, what in LAYERS.items():
    if not layers.get(name):
      reason = layers.get(f"{name}_error", "")
      log.warning("sandbox: isolation layer missing on this machine: %s%s", what,
                  f" ({reason})" if reason else "")
  if hello["threads"] != 1:
    log.warning("sandbox: zygote has %d threads at fork time (expected 1)", hello["threads"])


class SandboxStartError(RuntimeError):
  """A zygote interpreter died or hung before it was ready; the message names the interpreter
  and says what it printed last."""


def _forward_stderr(stream, tail: collections.deque) -> None:
  """Copies a zygote's stderr lines to ours, keeping the last ones in `tail`."""
  for raw in iter(stream.readline, b""):
    line = raw.decode("utf-8", "replace")
    tail.append(line)
    try:
      sys.stderr.write(line)
    except (OSError, ValueError):
      pass  # our stderr is closed: keep draining so the zygote never blocks on a full pipe


class _Worker:
  """One zygote process and the protocol to it (used by one thread at a time)."""

  def __init__(self, python: str, cfg: dict):
    self.python, self.cfg = python, cfg
    self.recent = collections.OrderedDict()  # context keys this zygote probably holds
    self.proc = None
    self.hello: dict = {}

  def start(self) -> None:
    self.proc = subprocess.Popen(
        [self.python, "-I", zygote.__file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=_ZYGOTE_ENV, cwd="/", close_fds=True,
        start_new_session=True)
    # The zygote's own stderr is forwarded to ours, and its last lines kept: when an interpreter
    # cannot start (a runtime without pandas, a broken venv), they are the only explanation.
    self.stderr_tail = collections.deque(maxlen=20)
    self._drain = threading.Thread(target=_forward_stderr, args=(self.proc.stderr,
                                                                 self.stderr_tail), daemon=True)
    self._drain.start()
    try:
      zygote.send_msg(self.proc.stdin.fileno(), self.cfg)
    except OSError:
      pass  # died at once; wait_hello reports why

  def wait_hello(self) -> dict:
    try:
      self.hello, _ = self._recv(120.0)
    except (OSError, EOFError, ValueError) as e:
      raise SandboxStartError(self._start_failure(e)) from None
    return self.hello

  def _start_failure(self, e: BaseException) -> str:
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      pass
    if self.proc.returncode is None:  # alive but silent: hung
      return f"the sandbox interpreter {self.python} failed to start: {e}"
    self._drain.join(timeout=5)
    lines = [ln.strip() for ln in self.stderr_tail if ln.strip()]
    why = lines[-1] if lines else "it printed nothing"
    return (f"the sandbox interpreter {self.python} failed to start (exit status "
            f"{self.proc.returncode}): {why}")

  def _recv(self, timeout_s: float):
    ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
    if not ready:
      raise TimeoutError(f"sandbox zygote (pid {self.proc.pid}) did not answer in {timeout_s} s")
    return zygote.recv_msg(self.proc.stdout.fileno())

  def run(self, header: dict, blobs: list[bytes]):
    zygote.send_msg(self.proc.stdin.fileno(), header, blobs)
    # The zygote keeps the job's clock; this bound only guards against a hung zygote.
    return self._recv(2 * header["timeout_s"] + 30.0)

  def stop(self) -> None:
    if self.proc is None:
      return
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)  # the zygote, its context processes, their jobs
    except ProcessLookupError:
      pass
    self.proc.wait()
    self._drain.join(timeout=5)
    for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
      f.close()
    self.proc = None
    self.recent.clear()


class Sandbox:
  """A pool of zygotes running jobs in isolation (see the module docstring). A context manager;
  `close()` kills every process it started."""

  def __init__(self, num_workers: int = 0, python: str | None = None, timeout_s: float = 10.0,
               memory_mb: int = 2048, output_limit_bytes: int = 1 << 20,
               result_limit_bytes: int = 16 << 20, result_nodes: int = 1_000_000,
               max_contexts: int = 4, file_size_mb: int = 64, scratch_mb: int = 256,
               uid: int | None = 65534, namespaces: bool = True):
    """num_workers: zygotes (0 = one per core). python: interpreter for the zygotes (None or ""
    = this one). memory_mb: address-space limit of context and job processes. max_contexts:
    live contexts per zygote (LRU). uid: unprivileged uid/gid for jobs when running as root
    (None = keep the caller's). namespaces: False skips the namespace layers (for debugging)."""
    self.timeout_s, self.memory_mb = float(timeout_s), int(memory_mb)
    self.result_limit, self.result_nodes = int(result_limit_bytes), int(result_nodes)
    self.file_size_mb, self.max_contexts = int(file_size_mb), int(max_contexts)
    limits = {"RLIMIT_AS": self.memory_mb << 20, "RLIMIT_FSIZE": self.file_size_mb << 20,
              "RLIMIT_NOFILE": 256, "RLIMIT_NPROC": 512, "RLIMIT_CORE": 0}
    self._limits = limits
    seccomp_path = None
    try:
      import pyseccomp
      seccomp_path = pyseccomp.__file__
    except ImportError:
      pass
    drop_uid = uid is not None and os.geteuid() == 0
    self._cfg = {
        "codec_path": os.path.abspath(codec.__file__), "seccomp_path": seccomp_path,
        "uid": uid if drop_uid else None, "gid": uid if drop_uid else None,
        "namespaces": bool(namespaces), "scratch_mb": int(scratch_mb),
        "max_contexts": self.max_contexts, "output_limit": int(output_limit_bytes),
        "context_rlimits": dict(limits, RLIMIT_CPU=3600)}
    self.python = python or sys.executable
    n = num_workers or os.cpu_count() or 1
    self._workers = [_Worker(self.python, self._cfg) for _ in range(n)]
    self._idle = list(self._workers)
    self._lock = threading.Condition()
    try:
      for w in self._workers:
        w.start()
      for w in self._workers:
        w.wait_hello()
    except BaseException:
      self.close()
      raise
    self.layers = self._workers[0].hello["layers"]
    _log_layers(self.layers, self._workers[0].hello)

  @property
  def runtime(self) -> dict:
    """Interpreter and library versions the jobs run under."""
    h = self._workers[0].hello
    return {"python": h["python"], "numpy": h["numpy"], "pandas": h["pandas"],
            "executable": self.python}

  def __enter__(self) -> Sandbox:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    for w in self._workers:
      w.stop()

  def run(self, context_code: str, code: str, output_var: str | None = "result",
          inputs: dict[str, Any] | None = None, capture=(), timeout_s: float | None = None,
          env: dict[str, str] | None = None, data_dirs=()) -> Verdict:
    """Runs `code` after `context_code` (see `Job`, the module docstring and docs/contracts.md).
    inputs: data values injected before the context code runs; output_var None: the value of
    the code's final expression statement, if any. data_dirs: folders (e.g. a notebook's own)
    visible to this context and its jobs at their own paths, read-only."""
    return self.run_many([Job(context_code, code, output_var, inputs, tuple(capture), timeout_s,
                              env, tuple(data_dirs))])[0]

  def run_many(self, jobs: list[Job]) -> list[Verdict]:
    """Runs `jobs` concurrently across the pool; verdicts in order. Jobs sharing a context
    prefer a zygote that already holds it, so the context runs once per zygote."""
    prepared = [self._prepare(j) for j in jobs]
    pending = collections.deque(range(len(jobs)))
    verdicts: list[Verdict | None] = [None] * len(jobs)
    lock = threading.Lock()

    def take(worker: _Worker):
      with lock:
        if not pending:
          return None
        for pos, i in enumerate(pending):
          if prepared[i][2] in worker.recent:
            del pending[pos]
            return i
        return pending.popleft()

    def loop(worker: _Worker) -> None:
      while (i := take(worker)) is not None:
        verdicts[i] = self._run_on(worker, *prepared[i])

    with self._lock:  # concurrent run_many calls share the workers one at a time
      while not self._idle:
        self._lock.wait()
      workers, self._idle = self._idle, []
    try:
      if len(jobs) == 1 or len(workers) == 1:
        loop(workers[0])
      else:
        threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
        for t in threads:
          t.start()
        for t in threads:
          t.join()
    finally:
      with self._lock:
        self._idle.extend(workers)
        self._lock.notify_all()
    return verdicts

  def _prepare(self, job: Job):
    """(header, blobs, context key) for the zygote protocol."""
    timeout_s = float(job.timeout_s or self.timeout_s)
    env = dict(_BASE_ENV, **{str(k): str(v) for k, v in (job.env or {}).items()})
    if job.inputs is not None and not (type(job.inputs) is dict
                                       and all(type(k) is str for k in job.inputs)):
      raise TypeError("Sandbox.run: inputs must be a dict of variable name -> value")
    blob = codec.encode(job.inputs, max_bytes=1 << 30) if job.inputs else b""
    data_dirs = sorted({os.path.realpath(d) for d in job.data_dirs})
    header = {"op": "run", "context_code": job.context_code, "code": job.code,
              "data_dirs": data_dirs,
              "output_var": job.output_var, "capture": list(job.capture), "env": env,
              "timeout_s": timeout_s, "result_limit": self.result_limit,
              "result_nodes": self.result_nodes,
              "rlimits": dict(self._limits, RLIMIT_CPU=max(1, math.ceil(timeout_s)))}
    key = hashlib.sha256(json.dumps([job.context_code, env, data_dirs]).encode()
                         + blob).hexdigest()
    return header, [blob], key

  def _run_on(self, worker: _Worker, header: dict, blobs: list[bytes], key: str) -> Verdict:
    try:
      if worker.proc is None or worker.proc.poll() is not None:
        worker.stop()
        worker.start()
        worker.wait_hello()
      facts, outs = worker.run(header, blobs)
    except (OSError, EOFError, TimeoutError, ValueError, SandboxStartError) as e:
      worker.stop()  # restarted lazily by the next job
      return Verdict("error", error_type="SandboxError",
                     error_message=f"sandbox worker failed: {type(e).__name__}: {e}")
    worker.recent[key] = True
    worker.recent.move_to_end(key)
    while len(worker.recent) > self.max_contexts:
      worker.recent.popitem(last=False)
    return _verdict(facts, outs, header, self.result_limit, self.result_nodes)


def _verdict(facts: dict, outs: list[bytes], header: dict, result_limit: int,
             result_nodes: int) -> Verdict:
  """Decides the verdict from what the zygote observed; the job's own frame counts only if the
  job exited 0 after writing it and was not killed."""
  stdout, stderr = (b.decode("utf-8", "replace") for b in outs[:2])
  if "context_failure" in facts:
    f = facts["context_failure"]
    return Verdict(f["status"], error_type=f.get("error_type"),
                   error_message=f"context: {f.get('error_message')}",
                   wall_s=f.get("context_s", 0.0))
  killed, exit_report = facts["killed"], facts["exit"]
  cpu_s = float(exit_report.get("cpu_s", 0.0))
  base = dict(stdout=stdout, stderr=stderr, wall_s=facts["wall_s"], cpu_s=cpu_s)
  status_word = exit_report.get("status")
  signum = os.WTERMSIG(status_word) if status_word is not None and os.WIFSIGNALED(
      status_word) else None
  code = os.WEXITSTATUS(status_word) if status_word is not None and os.WIFEXITED(
      status_word) else None
  cpu_limit = header["rlimits"]["RLIMIT_CPU"]
  if killed == "timeout":
    return Verdict("timeout", error_type="Timeout",
                   error_message=f"wall clock limit of {header['timeout_s']} s", **base)
  if killed == "output_limit":
    return Verdict("output_limit", error_type="OutputLimit",
                   error_message="stdout or stderr over the output limit", **base)
  if killed == "result_limit":
    return Verdict("result_error", error_type="ResultLimit",
                   error_message=f"result frame over {result_limit} bytes", **base)
  if signum in (signal.SIGKILL, signal.SIGXCPU) and cpu_s >= cpu_limit - 0.05:
    return Verdict("timeout", error_type="Timeout",
                   error_message=f"CPU limit of {cpu_limit} s", **base)
  if exit_report.get("op") == "lost":
    return Verdict("error", error_type="SandboxError",
                   error_message="the context process was lost during the job", **base)
  if code == 0 and outs[2]:
    return _from_frame(outs[2], base, result_limit, result_nodes)
  if signum == signal.SIGKILL:
    return Verdict("memory_error", error_type="Killed",
                   error_message="killed by SIGKILL (out of memory)", **base)
  if signum is not None:
    return Verdict("error", error_type="Crash",
                   error_message=f"killed by {signal.Signals(signum).name}", **base)
  return Verdict("error", error_type="NoResult",
                 error_message=f"exited with status {code} before producing a result", **base)


def _from_frame(frame: bytes, base: dict, result_limit: int, result_nodes: int) -> Verdict:
  try:
    doc = json.loads(frame)
    meta = doc["meta"]
    status = meta["status"]
    if status not in STATUSES:
      raise ValueError(f"unknown status {status!r}")
    budget = codec.Budget(result_nodes)
    result = codec.from_tree(doc["result"], budget) if meta["has_result"] else None
    names = meta["captured_names"]
    if len(names) != len(doc["captured"]):
      raise ValueError("captured names and values differ in length")
    captured = {str(n): codec.from_tree(v, budget) for n, v in zip(names, doc["captured"])}
    return Verdict(status, result=result, has_result=bool(meta["has_result"]), captured=captured,
                   captured_errors={str(k): str(v) for k, v in meta["captured_errors"].items()},
                   error_type=meta["error_type"], error_message=meta["error_message"], **base)
  except (codec.CodecError, ValueError, KeyError, TypeError, AttributeError,
          RecursionError) as e:
    return Verdict("result_error", error_type="MalformedResult",
                   error_message=f"the job's result could not be decoded: {e}", **base)
