"""The sandbox zygote: a clean interpreter that forks one sandboxed process per job.

Self-contained: stdlib + numpy + pandas (+ `pyseccomp` when importable), Python >= 3.9. It never
imports gift, so it runs under any interpreter (`execution.python`, e.g. a pinned evaluation venv).
`sandbox.py` starts it as `python -I zygote.py` with a minimal environment and talks to it over its
stdin/stdout with length-prefixed JSON messages (`send_msg`/`recv_msg`).

Process tree (one zygote per worker; only the zygote is trusted, it never runs job code):

  zygote (pandas/numpy imported, single-threaded, child subreaper)
    └─ context process, one per live context (LRU): pid 1 of new pid/net/mount/ipc/uts
       namespaces; read-only root, private tmpfs /tmp and /dev/shm, unprivileged uid, rlimits,
       seccomp (no exec, no non-UNIX sockets, no ptrace/mount/...); runs the context code once
         └─ job process, one fresh fork per job: own session and scratch dir, fresh environment,
            tighter rlimits, a second seccomp filter that also denies new processes; runs the
            code, then serializes its result (codec.py) to the result pipe and exits.

The zygote creates each job's stdout/stderr/result pipes and keeps the read ends: it drains
them while the job runs (capped), enforces the wall clock (asks the context process to SIGKILL
the job's process group, or kills the whole context namespace if that does not answer), and
reports raw facts (exit status, CPU seconds, bytes read, kills) to the caller, which decides the
verdict. Nothing the job writes is interpreted here.
"""
import ast
import builtins
import collections
import ctypes
import ctypes.util
import errno
import hashlib
import importlib.util
import io
import json
import math
import os
import random
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np
import pandas as pd

_HEADER = struct.Struct("!I")
_MAX_HEADER = 256 << 20
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET, CLONE_THREAD = 0x20000000, 0x40000000, 0x00010000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE, MNT_DETACH = 32, 4096, 16384, 1 << 18, 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
CLONE_NEWUSER, AT_FDCWD, AT_EMPTY_PATH, AT_RECURSIVE = 0x10000000, -100, 0x1000, 0x8000
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, MOVE_MOUNT_F_EMPTY_PATH = 1, 0o2000000, 4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_IDMAP = 1, 2, 4, 0x100000
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # the same on every arch
_NAMESPACES = (("pid", CLONE_NEWPID), ("net", CLONE_NEWNET), ("mount", CLONE_NEWNS),
               ("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS))
_DENIED_SYSCALLS = (
    "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2",
    "pivot_root", "chroot", "unshare", "setns", "bpf", "perf_event_open", "keyctl", "add_key",
    "request_key", "userfaultfd", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "reboot", "swapon", "swapoff", "acct", "io_uring_setup", "open_by_handle_at",
    "name_to_handle_at")


# ---------------------------------------------------------------- wire protocol
def send_msg(fd: int, header: dict, blobs=()) -> None:
  """Writes `header` (JSON, with the blob lengths added) then the raw `blobs` to `fd`."""
  header = dict(header, blobs=[len(b) for b in blobs])
  data = json.dumps(header, separators=(",", ":")).encode()
  _write_all(fd, b"".join([_HEADER.pack(len(data)), data, *blobs]))


def recv_msg(fd: int):
  """(header, blobs) from `fd`; raises EOFError when the peer has gone."""
  (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
  if n > _MAX_HEADER:
    raise EOFError(f"protocol error: header of {n} bytes")
  header = json.loads(_read_exact(fd, n))
  return header, [_read_exact(fd, k) for k in header.pop("blobs")]


def _write_all(fd: int, data: bytes) -> None:
  view = memoryview(data)
  while view:
    view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes:
  parts, left = [], n
  while left:
    chunk = os.read(fd, min(left, 1 << 20))
    if not chunk:
      raise EOFError("peer closed the channel")
    parts.append(chunk)
    left -= len(chunk)
  return b"".join(parts)


# ---------------------------------------------------------------- isolation layers
def _check(rc: int, what: str) -> None:
  if rc != 0:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data=None) -> None:
  enc = lambda s: None if s is None else s.encode()
  _check(_libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
         f"mount {target}")


def _mountinfo():
  """(mount point, per-mount options) of each mount, in mount order."""
  with open("/proc/self/mountinfo") as f:
    for line in f:
      fields = line.split()
      point = fields[4].encode().decode("unicode_escape")  # "\040" etc. in paths
      yield point, fields[5].split(",")


def _untraversable(paths) -> dict:
  """{directory others may not traverse: {its children on the way to `paths`}}."""
  blocked = collections.defaultdict(set)
  for path in paths:
    parts = [p for p in os.path.realpath(path).split("/") if p]
    for i in range(len(parts)):
      parent = "/" + "/".join(parts[:i])
      if not os.stat(parent).st_mode & 0o001:
        blocked[parent].add(parts[i])
        break
  return blocked


def _expose(paths, stage_root: str) -> None:
  """Makes `paths` (e.g. the interpreter's library dirs) reachable by an unprivileged uid.

  A directory others may not traverse (e.g. /root, mode 700, above a pyenv) is covered by a
  tmpfs (0755) into which only the children on the way to `paths` are bind-mounted back, level
  by level until every path is reachable. Only in this private mount namespace; the real
  directories are untouched, and nothing else below them becomes visible."""
  n = 0
  while blocked := _untraversable(paths):
    for parent, children in sorted(blocked.items()):
      stage = os.path.join(stage_root, f".stage{n}")
      n += 1
      os.mkdir(stage)
      _mount(parent, stage, None, MS_BIND)
      _mount("tmpfs", parent, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
      for child in children:
        src, dst = os.path.join(stage, child), os.path.join(parent, child)
        if os.path.isdir(src):
          os.mkdir(dst)
        else:
          open(dst, "w").close()
        _mount(src, dst, None, MS_BIND | MS_REC)
      _check(_libc.umount2(stage.encode(), MNT_DETACH), f"umount {stage}")
      os.rmdir(stage)


def _syscall(number: int, *args) -> int:
  rc = _libc.syscall(number, *args)
  if rc < 0:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))
  return rc


class _MountAttr(ctypes.Structure):
  _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
              ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _userns(uid: int, gid: int, to_id: int) -> int:
  """A descriptor of a new user namespace mapping `uid`/`gid` to kernel id `to_id` (for an
  idmapped mount: files of that owner appear owned by `to_id`). Needs a /proc of our pid ns."""
  r, w = os.pipe()
  pid = os.fork()
  if pid == 0:  # a placeholder process whose only job is to own the namespace
    os.close(w)
    _libc.unshare(CLONE_NEWUSER)
    os.read(r, 1)
    os._exit(0)
  os.close(r)
  try:
    own = os.readlink("/proc/self/ns/user")
    deadline = time.monotonic() + 5.0
    while os.readlink(f"/proc/{pid}/ns/user") == own:
      if time.monotonic() > deadline:
        raise OSError(errno.EPERM, "could not create a user namespace")
      time.sleep(0.0005)
    for name, ident in (("uid_map", uid), ("gid_map", gid)):
      with open(f"/proc/{pid}/{name}", "w") as f:
        f.write(f"{ident} {to_id} 1\n")
    return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
  finally:
    os.close(w)
    os.waitpid(pid, 0)


def _clone_tree(path: str, dirfd: int = AT_FDCWD) -> int:
  """A detached copy of the mount tree at `path` (relative to `dirfd`), as a descriptor."""
  return _syscall(SYS_OPEN_TREE, dirfd, path.encode(),
                  OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)


def _attach_data_dir(tree: int, path: str, owner, to_id) -> str:
  """Mounts the detached `tree` at `path`, read-only, nosuid, nodev; with `to_id` (the jobs'
  uid) the files of `owner` (uid, gid) appear owned by the jobs' uid (an idmapped mount), so a
  private folder of the user is readable and still not writable. Returns "" or what failed."""
  note, flags = "", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
  if to_id is not None:
    try:
      ns = _userns(owner[0], owner[1], to_id)
      try:
        attr = _MountAttr(flags | MOUNT_ATTR_IDMAP, 0, 0, ns)
        _syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH | AT_RECURSIVE, ctypes.byref(attr),
                 ctypes.sizeof(attr))
        flags = 0
      finally:
        os.close(ns)
    except OSError as e:  # e.g. a file system without idmapped mounts: plain read-only bind
      note = f"{path}: no idmapped mount ({e.strerror}); readable only where others may read"
  if flags:
    attr = _MountAttr(flags, 0, 0, 0)
    _syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH | AT_RECURSIVE, ctypes.byref(attr),
             ctypes.sizeof(attr))
  _syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, path.encode(), MOVE_MOUNT_F_EMPTY_PATH)
  return note


def _below(root: str, paths) -> list:
  """The `paths` inside `root` (each as given and resolved), outermost only, sorted."""
  prefix = root.rstrip("/") + "/"
  found = sorted({q for p in paths for q in (os.path.abspath(p), os.path.realpath(p))
                  if q.startswith(prefix) and q != prefix and os.path.exists(q)})
  outer = []
  for q in found:
    if not any(q.startswith(o + "/") for o in outer):
      outer.append(q)
  return outer


def _setup_mounts(cfg: dict, layers: dict, data_dirs=()) -> None:
  """Private mount tree: everything read-only except fresh tmpfs /tmp and /dev/shm.

  The interpreter's own directories that live under /tmp (e.g. a runtime venv created there)
  are bind-mounted back into the fresh /tmp from the old one, reached through a descriptor
  opened before the tmpfs covered it; they end up read-only like the rest. `data_dirs` (a
  context's own folders, e.g. a notebook's) appear at their own paths, read-only and readable
  by the jobs' uid (`_attach_data_dir`), the directories above them reachable but showing
  nothing else (`_expose`). Problems with data dirs are noted in layers["data_dirs_error"]."""
  _mount(None, "/", None, MS_REC | MS_PRIVATE)
  keep = _below("/tmp", cfg["expose"])
  trees, notes = [], []
  for path in _below("/", data_dirs):  # outermost only; cloned before anything is covered
    try:
      st = os.stat(path)
      trees.append((path, _clone_tree(path), (st.st_uid, st.st_gid)))
    except OSError as e:
      notes.append(f"{path}: {e.strerror}")
  old_tmp = os.open("/tmp", os.O_PATH | os.O_DIRECTORY)
  try:
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={cfg['scratch_mb']}m,mode=1777")
    for path in keep:
      src = f"/proc/self/fd/{old_tmp}/{os.path.relpath(path, '/tmp')}"
      if os.path.isdir(src):
        os.makedirs(path, mode=0o755)
      else:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        open(path, "w").close()
      _mount(src, path, None, MS_BIND | MS_REC)
  finally:
    os.close(old_tmp)
  for path, _, _ in trees:
    if path.startswith("/tmp/"):  # a mount point in the fresh /tmp; its parents are 0755
      os.makedirs(path, mode=0o755, exist_ok=True)
  if cfg["uid"] is not None:
    _expose(cfg["expose"] + [p for p, _, _ in trees], "/tmp")
  if layers.get("pid"):
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
  for path, tree, owner in trees:
    try:
      notes.append(_attach_data_dir(tree, path, owner, cfg["uid"]))
    except OSError as e:
      notes.append(f"{path}: not mounted ({e.strerror})")
    finally:
      os.close(tree)
  if any(notes):
    layers["data_dirs_error"] = "; ".join(n for n in notes if n)
  keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
  for point, opts in _mountinfo():
    if point in ("/tmp", "/proc") or point.startswith("/proc/"):
      continue
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | sum(keep.get(o, 0) for o in set(opts))
    try:
      _mount(None, point, None, flags)
    except OSError:
      if point == "/":
        raise
  if os.path.isdir("/dev/shm"):
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
  layers["readonly_root"] = layers["private_tmp"] = True


def _load_seccomp(cfg: dict):
  """The pyseccomp module, or None (then the caller warns): importable here, or by its path."""
  try:
    import pyseccomp
    return pyseccomp
  except ImportError:
    path = cfg.get("seccomp_path")
    if not path or not os.path.exists(path):
      return None
    try:
      spec = importlib.util.spec_from_file_location("pyseccomp", path)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      return module
    except Exception:  # a foreign interpreter it does not support: degrade, reported by caller
      return None


def _seccomp(sc, job_pid=None) -> None:
  """Context filter (job_pid None): no exec, no non-UNIX sockets, no ptrace/mount/namespaces/...
  Job filter (stacked on top): also no new processes (threads are fine), no signals to others,
  no raising rlimits."""
  f = sc.SyscallFilter(sc.ALLOW)
  deny = sc.ERRNO(errno.EPERM)

  def rule(action, name, *args):
    try:
      f.add_rule(action, name, *args)
    except Exception:  # syscall absent on this architecture (e.g. fork on aarch64)
      pass

  if job_pid is None:
    for name in _DENIED_SYSCALLS:
      rule(deny, name)
    rule(sc.ERRNO(errno.EACCES), "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
  else:
    rule(deny, "fork")
    rule(deny, "vfork")
    rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    rule(sc.ERRNO(errno.ENOSYS), "clone3")  # flags are behind a pointer: libc falls back to clone
    rule(deny, "kill", sc.Arg(0, sc.NE, job_pid))
    rule(deny, "tgkill", sc.Arg(0, sc.NE, job_pid))
    rule(deny, "tkill")
    rule(deny, "setrlimit")
    rule(deny, "prlimit64", sc.Arg(2, sc.NE, 0))
  f.load()


def _set_rlimits(limits: dict) -> None:
  for name, value in limits.items():
    value = int(value)
    resource.setrlimit(getattr(resource, name), (value, value))


def _drop_privileges(uid: int, gid: int) -> None:
  os.setgroups([])
  os.setresgid(gid, gid, gid)
  os.setresuid(uid, uid, uid)


# ---------------------------------------------------------------- context process
class Context:
  """A live context process, seen from the zygote."""

  def __init__(self, pid: int, sock: socket.socket, layers: dict, failure=None):
    self.pid, self.sock, self.layers, self.failure = pid, sock, layers, failure

  def kill(self) -> None:
    try:
      os.kill(self.pid, signal.SIGKILL)
      os.waitpid(self.pid, 0)
    except (ProcessLookupError, ChildProcessError):
      pass
    self.sock.close()


def _start_context(cfg: dict, data_dirs=()) -> Context:
  """Forks the intermediate A, which unshares namespaces and forks B (pid 1 there) and exits;
  B is re-parented to us (the subreaper). Returns once B sent its layer report."""
  zsock, csock = socket.socketpair()
  pid_r, pid_w = os.pipe()  # A -> zygote: B's pid (B itself talks on the socket)
  a = os.fork()
  if a == 0:
    try:
      zsock.close()
      os.close(pid_r)
      layers = {}
      for name, flag in _NAMESPACES:
        layers[name] = cfg["namespaces"] and _libc.unshare(flag) == 0
      b = os.fork()
      if b == 0:
        _context_main(csock, cfg, layers, data_dirs)
      os.write(pid_w, struct.pack("!i", b))
    finally:
      os._exit(0)
  csock.close()
  os.close(pid_w)
  os.waitpid(a, 0)
  try:
    (b,) = struct.unpack("!i", _read_exact(pid_r, 4))
  finally:
    os.close(pid_r)
  header, _ = recv_msg(zsock.fileno())
  return Context(b, zsock, header["layers"])


def _context_main(sock: socket.socket, cfg: dict, layers: dict, data_dirs=()) -> None:
  """Body of context process B: apply the layers, run the context code, then serve jobs."""
  try:
    fd = sock.fileno()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # pid 1 keeps only explicit handlers
    if layers["mount"]:
      try:
        _setup_mounts(cfg, layers, data_dirs)
      except OSError as e:
        layers["mount_error"] = str(e)
    if not layers.get("private_tmp"):
      tempfile.tempdir = None
      scratch = tempfile.mkdtemp(prefix="gift-ctx-")
      if cfg["uid"] is not None:
        os.chown(scratch, cfg["uid"], cfg["gid"])
      layers["scratch"] = scratch
    if layers["uts"]:
      socket.sethostname("sandbox")
    _set_rlimits(cfg["context_rlimits"])
    blocked = [] if layers.get("private_tmp") else sorted(_untraversable(cfg["expose"]))
    if cfg["uid"] is not None and blocked:  # without a mount namespace imports would break
      layers["uid_error"] = f"{blocked[0]} is not traversable by uid {cfg['uid']}"
    elif cfg["uid"] is not None:
      _drop_privileges(cfg["uid"], cfg["gid"])
      layers["uid"] = os.getuid()
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    sc = _load_seccomp(cfg)
    if sc is not None:
      _seccomp(sc)
      layers["seccomp"] = True
    os.closerange(3, fd)
    os.closerange(fd + 1, 1 << 16)
    devnull = os.open(os.devnull, os.O_RDWR)
    for i in (0, 1):  # fd 2 stays the zygote's stderr for sandbox errors; jobs get their own
      os.dup2(devnull, i)
    sys.stdout = sys.stderr = open(devnull, "w", closefd=False)  # GC must not close a job's fd
    send_msg(fd, {"op": "layers", "layers": layers})
    header, blobs = recv_msg(fd)
    ns = _run_context(fd, header, blobs, cfg, layers)
    if ns is None:
      os._exit(0)
    _serve_jobs(fd, ns, cfg, layers)
  except (EOFError, ConnectionError):  # the zygote went away or evicted this context
    pass
  except BaseException:  # a sandbox bug, not job code: say so on the zygote's stderr
    os.write(2, f"gift sandbox context process: {traceback.format_exc()}".encode())
  os._exit(1)


def _fresh_env(env: dict) -> None:
  os.environ.clear()
  os.environ.update(env)


def _failure(status: str, e: BaseException, note: str = "") -> dict:
  """The failure report; a missing/unreadable file is named by its absolute path (a relative
  name says little once the notebook's os.chdir is forgotten), with `note` (why a data dir may
  be absent) appended."""
  message = str(e)
  if isinstance(e, OSError) and isinstance(e.filename, str):
    try:
      path = os.path.join(os.getcwd(), e.filename)
    except OSError:
      path = e.filename
    message = f"{e.strerror or message}: {os.path.normpath(path)!r}"
    if note:
      message += f" (data dirs: {note})"
  return {"status": status, "error_type": type(e).__name__, "error_message": message[:4000]}


def _run_context(fd: int, header: dict, blobs, cfg: dict, layers: dict):
  """Executes the context code once in a fresh namespace; reports ready/failed to the zygote.
  Returns the namespace (None on failure)."""
  _fresh_env(header["env"])
  os.chdir(layers.get("scratch") or "/tmp")
  np.random.seed(0)  # every job of a context starts from the same RNG state
  random.seed(0)
  ns = {"__name__": "__main__", "__builtins__": builtins}
  failure = None
  try:
    if blobs[0]:
      ns.update(_codec.decode(blobs[0], max_bytes=len(blobs[0])))
    exec(compile(header["context_code"], "<context>", "exec"), ns)
  except MemoryError as e:
    failure = _failure("memory_error", e)
  except (SyntaxError, ValueError) as e:
    failure = _failure("syntax_error" if isinstance(e, SyntaxError) else "error", e)
  except BaseException as e:
    failure = _failure("error", e, layers.get("data_dirs_error", ""))
  send_msg(fd, {"op": "failed", **failure} if failure else {"op": "ready"})
  return None if failure else ns


def _serve_jobs(fd: int, ns: dict, cfg: dict, layers: dict) -> None:
  """Loop of the context process: fork one job per request, report its exit."""
  sock = socket.socket(fileno=fd)
  while True:
    kind, fds, _, _ = socket.recv_fds(sock, 1, 3)
    if not kind:
      return  # the zygote went away
    if kind == b"K":
      _read_exact(fd, 4)  # a kill for a job that already ended
      continue
    job, _ = recv_msg(fd)
    jobdir = tempfile.mkdtemp(prefix="job-", dir=layers.get("scratch") or "/tmp")
    pid = os.fork()
    if pid == 0:
      _job_child(job, fds, jobdir, ns, cfg)
    for f in fds:
      os.close(f)
    status, usage = _wait_job(sock, pid, job["id"])
    if layers.get("pid"):
      try:  # as pid 1 of the namespace: kill anything the job left behind
        os.kill(-1, signal.SIGKILL)
      except ProcessLookupError:
        pass
    shutil.rmtree(jobdir, ignore_errors=True)
    send_msg(fd, {"op": "exit", "job": job["id"], "status": status,
                  "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss})


def _kill_job(pid: int) -> None:
  for kill, target in ((os.killpg, pid), (os.kill, pid)):
    try:
      kill(target, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass


def _wait_job(sock: socket.socket, pid: int, job_id: int):
  """Waits for the job to exit, killing it when the zygote asks. Returns (status, rusage)."""
  pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
  try:
    while True:
      ready, _, _ = select.select([sock] + ([pidfd] if pidfd is not None else []), [], [],
                                  None if pidfd is not None else 0.01)
      if pidfd is None or pidfd in ready:
        wpid, status, usage = os.wait4(pid, 0 if pidfd is not None else os.WNOHANG)
        if wpid:
          return status, usage
      if sock in ready:
        kind = sock.recv(1)
        if not kind:
          _kill_job(pid)
          os._exit(0)
        if kind == b"K" and struct.unpack("!I", _read_exact(sock.fileno(), 4))[0] == job_id:
          _kill_job(pid)
  finally:
    if pidfd is not None:
      os.close(pidfd)


# ---------------------------------------------------------------- job process
def _compile_cell(code: str, output_var):
  """(body, last): the cell compiled; `last` evaluates its final expression statement when
  output_var is None (notebook Out[] semantics), else None."""
  tree = ast.parse(code, "<cell>", "exec")
  last = None
  if output_var is None and tree.body and isinstance(tree.body[-1], ast.Expr):
    last = compile(ast.Expression(tree.body.pop().value), "<cell>", "eval")
  return compile(tree, "<cell>", "exec"), last


def _frame(status: str, error=None, result=None, captured=(), captured_errors=None) -> bytes:
  """The job's one message on the result pipe: JSON with codec trees spliced in."""
  meta = {"status": status, "has_result": result is not None,
          "error_type": error[0] if error else None, "error_message": error[1] if error else None,
          "captured_names": [n for n, _ in captured], "captured_errors": captured_errors or {}}
  return b"".join([b'{"meta":', json.dumps(meta).encode(), b',"result":', result or b"null",
                   b',"captured":[', b",".join(v for _, v in captured), b"]}"])


def _execute(job: dict, ns: dict) -> bytes:
  budget = dict(max_bytes=job["result_limit"], max_nodes=job["result_nodes"])
  try:
    body, last = _compile_cell(job["code"], job["output_var"])
  except (SyntaxError, ValueError) as e:  # ValueError: null bytes in the source
    return _frame("syntax_error", (type(e).__name__, str(e)[:4000]))
  try:
    exec(body, ns)
    if last is not None:
      value, has_value = eval(last, ns), True
    elif job["output_var"] is not None:
      if job["output_var"] not in ns:
        raise NameError(f"name {job['output_var']!r} is not defined (the expected output variable)")
      value, has_value = ns[job["output_var"]], True
    else:
      value, has_value = None, False
  except MemoryError:
    raise
  except BaseException as e:  # SystemExit and KeyboardInterrupt too: the cell failed
    traceback.print_exc()
    return _frame("error", (type(e).__name__, str(e)[:4000]))
  try:
    result = _codec.encode(value, **budget) if has_value else None
  except _codec.CodecError as e:
    return _frame("result_error", ("CodecError", str(e)[:4000]))
  captured, errors = [], {}
  for name in job["capture"]:
    try:
      if name not in ns:
        raise _codec.CodecError(f"variable {name!r} is not defined")
      captured.append((name, _codec.encode(ns[name], **budget)))
    except _codec.CodecError as e:
      errors[name] = str(e)[:4000]
  return _frame("ok", result=result, captured=captured, captured_errors=errors)


def _job_child(job: dict, fds, jobdir: str, ns: dict, cfg: dict) -> None:
  """Body of a job process; never returns. Exit 0 only after the frame was written."""
  memory_frame = _frame("memory_error", ("MemoryError", "out of memory"))
  try:
    os.setsid()
    for target, f in zip((1, 2, 3), fds):
      os.dup2(f, target)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.closerange(4, 1 << 16)  # the context socket and anything else inherited
    os.chdir(jobdir)
    _fresh_env(job["env"])
    tempfile.tempdir = None
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGCHLD, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGXCPU, signal.SIGXFSZ):
      signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    warnings.filters[:] = _WARNING_FILTERS
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    out = sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                        errors="backslashreplace", write_through=True)
    err = sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                        errors="backslashreplace", write_through=True)
    _set_rlimits(job["rlimits"])
    sc = _load_seccomp(cfg)
    if sc is not None:
      _seccomp(sc, job_pid=os.getpid())
  except BaseException:
    traceback.print_exc()
    os._exit(71)
  try:
    frame = _execute(job, ns)
  except MemoryError:
    frame = memory_frame
  for stream in (out, err):
    try:
      stream.flush()
    except BaseException:
      pass
  try:
    _write_all(3, frame)
  except BaseException:
    traceback.print_exc()
    os._exit(72)
  os._exit(0)


# ---------------------------------------------------------------- the zygote itself
class Zygote:
  """Serves run requests from the caller, one at a time, keeping an LRU of live contexts."""

  def __init__(self, cfg: dict):
    self.cfg = cfg
    self.contexts = collections.OrderedDict()  # key -> Context (or a failure dict)
    self.job_id = 0

  def context(self, key: str, header: dict, blob: bytes):
    """(Context, None) or (None, failure dict)."""
    if key in self.contexts:
      self.contexts.move_to_end(key)
      ctx = self.contexts[key]
      return (None, ctx) if isinstance(ctx, dict) else (ctx, None)
    t0 = time.monotonic()
    try:
      ctx = _start_context(self.cfg, header.get("data_dirs") or ())
      send_msg(ctx.sock.fileno(), {"context_code": header["context_code"], "env": header["env"]},
               [blob])
      ready, _, _ = select.select([ctx.sock], [], [], header["timeout_s"])
      reply = recv_msg(ctx.sock.fileno())[0] if ready else None
    except (EOFError, OSError) as e:
      return None, {"status": "error", "error_type": "SandboxError",
                    "error_message": f"context process failed to start: {e}"}
    if reply is None or reply["op"] == "failed":
      ctx.kill()
      failure = reply or {"status": "timeout", "error_type": "Timeout",
                          "error_message": f"context code ran over {header['timeout_s']} s"}
      failure = {k: v for k, v in failure.items() if k != "op"}
      failure["context_s"] = time.monotonic() - t0
      if reply is not None:  # deterministic failures are cached; timeouts may be load
        self._remember(key, failure)
      return None, failure
    self._remember(key, ctx)
    return ctx, None

  def _remember(self, key: str, value) -> None:
    self.contexts[key] = value
    while len(self.contexts) > self.cfg["max_contexts"]:
      _, old = self.contexts.popitem(last=False)
      if isinstance(old, Context):
        old.kill()

  def _forget(self, key: str) -> None:
    ctx = self.contexts.pop(key, None)
    if isinstance(ctx, Context):
      ctx.kill()

  def run(self, header: dict, blobs):
    """Runs one job; returns (facts, [stdout, stderr, frame])."""
    key = hashlib.sha256(json.dumps([header["context_code"], header["env"],
                                     header.get("data_dirs") or []]).encode()
                         + blobs[0]).hexdigest()
    ctx, failure = self.context(key, header, blobs[0])
    if failure is not None:
      return {"context_failure": failure}, [b"", b"", b""]
    self.job_id += 1
    pipes = [os.pipe() for _ in range(3)]
    job = {k: header[k] for k in ("code", "output_var", "capture", "env", "rlimits",
                                  "result_limit", "result_nodes")}
    job["id"] = self.job_id
    t0 = time.monotonic()
    try:
      socket.send_fds(ctx.sock, [b"J"], [w for _, w in pipes])
      send_msg(ctx.sock.fileno(), job)
    except OSError:
      self._forget(key)
      for r, w in pipes:
        os.close(r), os.close(w)
      return {"context_failure": {"status": "error", "error_type": "SandboxError",
                                  "error_message": "context process died"}}, [b"", b"", b""]
    for _, w in pipes:
      os.close(w)
    reads = [r for r, _ in pipes]
    caps = dict(zip(reads, (self.cfg["output_limit"],) * 2 + (header["result_limit"] + 65536,)))
    bufs = {r: bytearray() for r in reads}
    overflow = {r: False for r in reads}
    open_fds, killed, exit_report = set(reads), None, None
    deadline, kill_deadline, drain_deadline = t0 + header["timeout_s"], math.inf, math.inf

    def request_kill(reason):
      nonlocal killed, kill_deadline
      if killed is None:
        killed, kill_deadline = reason, time.monotonic() + 2.0
        try:
          ctx.sock.sendall(b"K" + struct.pack("!I", job["id"]))
        except OSError:
          kill_deadline = 0.0

    while open_fds or exit_report is None:
      now = time.monotonic()
      if now >= deadline:
        request_kill("timeout")
      if now >= kill_deadline:  # the context process did not answer: end its whole namespace
        self._forget(key)
        exit_report = exit_report or {"op": "lost"}
        break
      if now >= drain_deadline:
        break
      watch = list(open_fds) + ([ctx.sock] if exit_report is None else [])
      wait = min(deadline if killed is None else kill_deadline, drain_deadline) - now
      ready, _, _ = select.select(watch, [], [], max(wait, 0.0))
      for f in ready:
        if f is ctx.sock:
          try:
            exit_report = recv_msg(ctx.sock.fileno())[0]
          except (EOFError, OSError):
            self._forget(key)
            exit_report = {"op": "lost"}
          drain_deadline = time.monotonic() + 1.0
          continue
        chunk = os.read(f, 1 << 16)
        if not chunk:
          open_fds.discard(f)
        elif not overflow[f]:
          room = caps[f] - len(bufs[f])
          bufs[f] += chunk[:room]
          if len(chunk) > room:
            overflow[f] = True
            request_kill("result_limit" if f == reads[2] else "output_limit")
    for r in reads:
      os.close(r)
    facts = {"killed": killed, "exit": exit_report, "wall_s": time.monotonic() - t0,
             "stdout_truncated": overflow[reads[0]], "stderr_truncated": overflow[reads[1]],
             "layers": ctx.layers}
    return facts, [bytes(b) for b in bufs.values()]

  def close(self) -> None:
    for key in list(self.contexts):
      self._forget(key)


def _load_codec(path: str):
  spec = importlib.util.spec_from_file_location("gift_sandbox_codec", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main() -> None:
  global _codec, _WARNING_FILTERS
  rfd, wfd = os.dup(0), os.dup(1)  # the protocol; stray prints must not corrupt it
  os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
  os.dup2(2, 1)
  _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the caller
  _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # adopt the context processes
  cfg, _ = recv_msg(rfd)
  _codec = _load_codec(cfg["codec_path"])
  _WARNING_FILTERS = list(warnings.filters)
  frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})  # load pandas' lazy modules once, here
  frame.merge(frame.groupby("a", as_index=False).size(), on="a").sort_values("b")["b"].str.upper()
  # Directories the jobs' imports read: the interpreter's prefixes (a venv root and the base
  # installation) and its import path.
  roots = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, *sys.path]
  cfg["expose"] = sorted({p for p in roots if p and os.path.isdir(p)})
  zygote = Zygote(cfg)
  probe = _start_context(cfg)  # detect which layers this machine supports
  probe.kill()
  send_msg(wfd, {"op": "hello", "layers": probe.layers, "python": sys.version.split()[0],
                 "numpy": np.__version__, "pandas": pd.__version__,
                 "threads": len(os.listdir("/proc/self/task")),
                 "seccomp_module": _load_seccomp(cfg) is not None})
  try:
    while True:
      header, blobs = recv_msg(rfd)
      if header["op"] == "exit":
        break
      facts, outs = zygote.run(header, blobs)
      send_msg(wfd, facts, outs)
  except EOFError:
    pass
  finally:
    zygote.close()


_codec = None
_WARNING_FILTERS = []

if __name__ == "__main__":
  main()
