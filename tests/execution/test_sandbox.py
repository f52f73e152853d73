"""Adversarial tests of the sandbox. Each is safe even if the sandbox were broken: loops and
forks are bounded, file-system probes only touch canary dirs these tests create, sockets only
go to a port the test itself listens on or to TEST-NET (192.0.2.1, never routed), with short
timeouts. After every attack a control job must still pass in the same pool."""
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import pytest

from gift.execution import compare
from gift.execution.sandbox import Job, Sandbox, SandboxStartError, _verdict

SECRET = "gift-test-secret-4f1d9c"
os.environ["GIFT_SANDBOX_TEST_SECRET"] = SECRET  # set before the zygotes start: must not leak
CTX = ("import pandas as pd\nimport numpy as np\n"
       "df = pd.DataFrame({'a': [1, 2, 3], 'b': list('xyz')})\n")


@pytest.fixture(scope="module")
def sb():
  with Sandbox(num_workers=2, timeout_s=5.0, memory_mb=2048, output_limit_bytes=1 << 20,
               result_limit_bytes=4 << 20) as sandbox:
    yield sandbox


def need(sb, *layers):
  missing = [name for name in layers if not sb.layers.get(name)]
  if missing:
    pytest.skip(f"isolation layer(s) not available on this machine: {', '.join(missing)}")


def run(sb, code, **kw):
  """Runs an attack, then checks that the pool still serves a clean control job."""
  verdict = sb.run(kw.pop("context", CTX), code, **kw)
  control = sb.run(CTX, "result = df.a.sum()")
  assert control.status == "ok" and control.result == 6, control
  return verdict


# ---------------------------------------------------------------- results and semantics
def test_result_value_roundtrips_as_data(sb):
  v = sb.run(CTX, "result = df[df.a > 1]")
  assert v.status == "ok" and v.has_result
  pd.testing.assert_frame_equal(v.result, pd.DataFrame({"a": [2, 3], "b": ["y", "z"]},
                                                       index=[1, 2]))


def test_final_expression_is_the_result_when_output_var_is_none(sb):
  v = sb.run(CTX, "x = 2\ndf.a * x", output_var=None)
  assert v.status == "ok" and v.result.tolist() == [2, 4, 6]
  v = sb.run(CTX, "x = 2", output_var=None)
  assert v.status == "ok" and not v.has_result


def test_missing_output_var_is_an_error(sb):
  v = sb.run(CTX, "x = 1")
  assert v.status == "error" and v.error_type == "NameError"


def test_inputs_and_capture(sb):
  frame = pd.DataFrame({"k": ["a", "b"], "v": [1.5, np.nan]})
  v = sb.run("total = float(frame.v.sum())", "result = frame.k.tolist()",
             inputs={"frame": frame}, capture=("total", "missing"))
  assert v.status == "ok" and v.result == ["a", "b"]
  assert v.captured == {"total": 1.5} and "missing" in v.captured_errors


def test_context_runs_once_and_namespace_does_not_leak(sb):
  ctx = CTX + "import os\ntoken = os.urandom(8).hex()\n"
  jobs = [Job(ctx, "df['c'] = 1\nimport builtins\nbuiltins.len = lambda x: 42\n"
              "result = (token, len(df.columns))")] * 8
  jobs.append(Job(ctx, "result = (token, len(df.columns), len([1]))"))
  verdicts = sb.run_many(jobs)
  assert all(v.status == "ok" for v in verdicts), verdicts
  assert len({v.result[0] for v in verdicts}) <= 2  # one context process per zygote
  assert verdicts[-1].result[1:] == (2, 1)  # column and patched builtin did not leak


def test_rng_is_reset_per_context(sb):
  verdicts = sb.run_many([Job(CTX, "result = float(np.random.rand())")] * 3)
  assert len({v.result for v in verdicts}) == 1


def test_syntax_errors_and_context_failures(sb):
  assert run(sb, "result = (").status == "syntax_error"
  v = run(sb, "result = 1", context="raise ValueError('bad context')")
  assert v.status == "error" and "bad context" in v.error_message


def test_runtime_error_reports_type_and_message(sb):
  v = run(sb, "result = df['nope']")
  assert v.status == "error" and v.error_type == "KeyError" and "nope" in v.error_message


def test_200kb_single_line_and_invalid_utf8(sb):
  v = run(sb, "result = len('" + "a" * 200_000 + "')\nprint('b' * 200_000)\n"
          "import sys\nsys.stdout.flush()\nsys.stdout.buffer.write(b'\\xff\\xfe\\x80ok')")
  assert v.status == "ok" and v.result == 200_000
  assert v.stdout.startswith("b" * 200_000) and v.stdout.endswith("\ufffd\ufffd\ufffdok")


# ---------------------------------------------------------------- time
@pytest.mark.parametrize("code", [
    "while True:\n  pass",
    "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')",  # a C-level loop: no bytecode boundary
    "import time\ntime.sleep(1000)",
    "import signal, time\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):\n"
    "  signal.signal(s, signal.SIG_IGN)\nwhile True:\n  time.sleep(0.01)",
    "import time\nwhile True:\n  try:\n    time.sleep(10)\n  except BaseException:\n    pass",
], ids=["python_loop", "c_loop", "sleep", "ignored_signals", "swallowed_exceptions"])
def test_runaway_jobs_time_out(sb, code):
  t0 = time.monotonic()
  v = run(sb, code, timeout_s=1.0)
  assert v.status == "timeout", v
  assert time.monotonic() - t0 < 6.0


def test_cpu_limit_kill_is_a_timeout_and_other_kills_are_not():
  header = {"timeout_s": 2.0, "rlimits": {"RLIMIT_CPU": 2}}
  exit_report = lambda sig, cpu: {"op": "exit", "status": sig, "cpu_s": cpu}
  facts = lambda sig, cpu: {"killed": None, "exit": exit_report(sig, cpu), "wall_s": 1.0}
  outs = [b"", b"", b""]
  assert _verdict(facts(signal.SIGKILL, 2.0), outs, header, 1, 1).status == "timeout"
  assert _verdict(facts(signal.SIGXCPU, 2.01), outs, header, 1, 1).status == "timeout"
  assert _verdict(facts(signal.SIGKILL, 0.1), outs, header, 1, 1).status == "memory_error"
  assert _verdict(facts(signal.SIGSEGV, 0.1), outs, header, 1, 1).status == "error"


def test_threads_outliving_the_job_are_killed(sb):
  code = ("import threading, time, sys\n"
          "def spam():\n  for _ in range(10_000):\n    print('tick'); time.sleep(0.001)\n"
          "threading.Thread(target=spam).start()\nresult = 1")
  t0 = time.monotonic()
  v = run(sb, code)
  assert v.status == "ok" and v.result == 1 and time.monotonic() - t0 < 4.0


# ---------------------------------------------------------------- memory and output
@pytest.mark.parametrize("code", [
    "x = bytearray(64 * 2**30)",
    "import numpy as np\nchunks = []\nfor _ in range(64):\n  chunks.append(np.empty(2**24))",
    "import numpy as np\nx = np.ones((2**16, 2**16))",
], ids=["one_shot", "gradual", "numpy"])
def test_memory_bombs_are_memory_errors(sb, code):
  assert run(sb, code).status == "memory_error"


def test_raising_hard_limits_is_refused(sb):
  code = ("import resource\nerrors = 0\n"
          "for r in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_NPROC):\n"
          "  try:\n    resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
          "  except (ValueError, OSError):\n    errors += 1\n"
          "result = (errors, resource.getrlimit(resource.RLIMIT_AS))")
  v = run(sb, code)
  assert v.status == "ok" and v.result == (3, (2048 << 20, 2048 << 20))


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_floods_are_capped(sb, stream):
  code = f"import sys\nline = 'x' * 2**20\nfor _ in range(1024):\n  sys.{stream}.write(line)"
  t0 = time.monotonic()
  v = run(sb, code)
  assert v.status == "output_limit" and time.monotonic() - t0 < 5.0
  assert len(getattr(v, stream)) <= 1 << 20


def test_huge_self_referential_and_custom_results_are_refused(sb):
  assert run(sb, "result = np.zeros(10**7)").status == "result_error"
  assert run(sb, "result = []\nresult.append(result)").status == "result_error"
  v = run(sb, "class Evil:\n  def __reduce__(self):\n    import os\n"
          "    return (os.system, ('echo pwned',))\nresult = Evil()")
  assert v.status == "result_error" and "Evil" in v.error_message
  v = run(sb, "import pickle\nresult = pickle.dumps([1, 2])")  # bytes are data, never unpickled
  assert v.status == "ok" and type(v.result) is bytes


def test_segfault_is_an_error(sb):
  v = run(sb, "import ctypes\nctypes.string_at(0)")
  assert v.status == "error" and "SIGSEGV" in v.error_message


# ---------------------------------------------------------------- forging the verdict
def test_early_exit_is_never_ok(sb):
  v = run(sb, "import os\nresult = 1\nos._exit(0)")
  assert v.status == "error" and v.error_type == "NoResult"
  v = run(sb, "import sys\nresult = 1\nsys.exit(0)")
  assert v.status == "error" and v.error_type == "SystemExit"


def test_forged_frames_do_not_count(sb):
  forge = ("import os\nfake = b'{\"meta\":{\"status\":\"ok\",\"has_result\":true,'"
           "b'\"error_type\":null,\"error_message\":null,\"captured_names\":[],'"
           "b'\"captured_errors\":{}},\"result\":42,\"captured\":[]}'\nopen_fds = 0\n"
           "for fd in range(3, 256):\n  try:\n    os.write(fd, fake); open_fds += 1\n"
           "  except OSError:\n    pass\n")
  v = run(sb, forge + "raise RuntimeError('real failure')")
  assert v.status in ("error", "result_error") and v.result != 42
  v = run(sb, forge + "while True:\n  pass", timeout_s=1.0)
  assert v.status == "timeout"
  v = run(sb, forge + "result = open_fds")
  assert v.status == "result_error"  # the fake frame corrupted only its own channel
  v = run(sb, "import os\nn = 0\nfor fd in range(4, 256):\n  try:\n    os.fstat(fd); n += 1\n"
          "  except OSError:\n    pass\nresult = n")
  assert v.status == "ok" and v.result == 0  # nothing inherited beyond stdio + result pipe


def test_patched_comparators_cannot_change_the_outcome(sb):
  code = ("import pandas.testing, numpy, builtins\n"
          "pandas.testing.assert_frame_equal = lambda *a, **k: None\n"
          "numpy.array_equal = lambda *a, **k: True\nbuiltins.all = lambda *a: True\n"
          "result = df.iloc[:1]")
  v = run(sb, code)
  assert v.status == "ok"
  assert not compare.exact_match(v.result, pd.DataFrame({"a": [1, 2, 3], "b": list("xyz")}))
  assert not compare.fuzzy_match(v.result, pd.DataFrame({"a": [1, 2, 3], "b": list("xyz")}))
  v = run(sb, "import builtins\nbuiltins.isinstance = lambda *a: True\nresult = df.iloc[:1]")
  assert v.status != "ok" or not compare.exact_match(v.result, pd.DataFrame({"a": [1, 2, 3]}))


def test_expected_answers_and_secrets_are_unreachable(sb):
  expected = pd.DataFrame({"answer": ["gift-expected-7a3e"]})  # lives only in this process
  code = ("import gc, os, sys\nneedles = ('gift-expected-7a3e', 'gift-test-secret-4f1d9c')\n"
          "hits = []\nfor o in gc.get_objects():\n  if isinstance(o, (dict, list)):\n"
          "    vals = o.values() if isinstance(o, dict) else o\n"
          "    hits += ['gc' for x in vals if isinstance(x, str) and x in needles]\n"
          "f = sys._getframe()\nwhile f is not None:\n"
          "  hits += ['frame' for v in f.f_locals.values() if type(v) is str and v in needles]\n"
          "  f = f.f_back\nhits += ['env' for v in os.environ.values() if v in needles]\n"
          "for pid in os.listdir('/proc'):\n  try:\n"
          "    if b'4f1d9c' in open(f'/proc/{pid}/environ', 'rb').read():\n"
          "      hits.append('proc' + pid)\n  except (OSError, ValueError):\n    pass\n"
          "try:\n  open('/etc/shadow').read(); hits.append('shadow')\n"
          "except OSError:\n  pass\nresult = hits")
  v = run(sb, code)
  assert v.status == "ok" and v.result == [], v.result
  assert expected.answer[0] == "gift-expected-7a3e"


# ---------------------------------------------------------------- processes
def test_fork_storm_and_exec_are_denied(sb):
  need(sb, "seccomp")
  code = ("import os, subprocess\nforked = 0\nfor _ in range(50):\n  try:\n    pid = os.fork()\n"
          "  except OSError:\n    continue\n  if pid == 0:\n    os._exit(0)\n  forked += 1\n"
          "  os.waitpid(pid, 0)\ntry:\n  subprocess.run(['true'], timeout=2); ran = True\n"
          "except OSError:\n  ran = False\nimport multiprocessing\ntry:\n"
          "  p = multiprocessing.Process(target=print); p.start(); p.join(2); mp = True\n"
          "except OSError:\n  mp = False\nresult = (forked, ran, mp)")
  v = run(sb, code)
  assert v.status == "ok" and v.result == (0, False, False), v


def test_setsid_daemon_and_killing_the_parent_fail(sb):
  code = ("import os, signal\nerrors = 0\nfor pid in (os.getppid(), 1, -1, 0):\n  try:\n"
          "    os.kill(pid, signal.SIGKILL)\n  except OSError:\n    errors += 1\ntry:\n"
          "  os.setsid()\nexcept OSError:\n  errors += 1\nresult = errors")
  v = run(sb, code)
  assert v.status == "ok" and v.result == 5
  assert os.getpid() > 0  # the caller is alive (the control job in run() used the pool too)


# ---------------------------------------------------------------- file system and network
@pytest.fixture
def canaries(tmp_path):
  """Two canary dirs the job must not change: one under tmp_path, one world-writable under
  /var/tmp (visible to the job, so only the read-only root and the uid protect it)."""
  dirs = [tmp_path / "canary", tempfile.mkdtemp(prefix="gift-canary-", dir="/var/tmp")]
  for d in map(str, dirs):
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o777)
    with open(os.path.join(d, "keep.txt"), "w") as f:
      f.write("keep")
  yield [str(d) for d in dirs]
  import shutil
  shutil.rmtree(dirs[1], ignore_errors=True)


def test_writes_outside_scratch_fail(sb, canaries):
  code = ("import os\nresults = []\nfor d in dirs:\n  for act in ("
          "lambda: open(os.path.join(d, 'new.txt'), 'w').write('x'),"
          "lambda: os.remove(os.path.join(d, 'keep.txt')),"
          "lambda: os.symlink('/etc/passwd', os.path.join(d, 'link')),"
          "lambda: os.rename(os.path.join(d, 'keep.txt'), os.path.join(d, 'moved')),"
          "lambda: os.chmod(d, 0o700)):\n"
          "    try:\n      act(); results.append('done')\n    except OSError:\n"
          "      results.append('denied')\n"
          "open('scratch.txt', 'w').write('mine')\nresult = (results, open('scratch.txt').read())")
  v = run(sb, code, inputs={"dirs": canaries})
  assert v.status == "ok", v
  assert v.result == (["denied"] * 10, "mine")
  for d in canaries:
    assert sorted(os.listdir(d)) == ["keep.txt"]
    assert open(os.path.join(d, "keep.txt")).read() == "keep"


def test_sockets_are_denied(sb):
  listener = socket.socket()
  listener.bind(("127.0.0.1", 0))
  listener.listen(1)
  listener.settimeout(0.2)
  port = listener.getsockname()[1]
  code = ("import socket\nout = []\nfor host in ('127.0.0.1', '192.0.2.1'):\n  try:\n"
          f"    s = socket.create_connection((host, {port} if host == '127.0.0.1' else 80), "
          "timeout=1)\n    out.append('connected')\n  except OSError:\n    out.append('denied')\n"
          "result = out")
  v = run(sb, code)
  assert v.status == "ok" and v.result == ["denied", "denied"]
  with pytest.raises(TimeoutError):
    listener.accept()
  listener.close()


def test_isolation_layers_are_active(sb):
  need(sb, "uid", "pid", "net", "readonly_root", "private_tmp")
  fd, host_file = tempfile.mkstemp(dir="/tmp", prefix="gift-host-canary-")
  os.close(fd)
  try:
    first = run(sb, "import os\nopen('mine.txt', 'w').write('x')\n"
                "result = os.path.abspath('mine.txt')")
    assert first.status == "ok" and first.result.startswith("/tmp/job-"), first
    code = ("import os, socket\ntop = sorted(os.listdir('/tmp'))\nwritable = []\n"
            "for e in top:\n  if not e.startswith('job-'):\n    try:\n"
            "      open(os.path.join('/tmp', e, 'w.txt'), 'w'); writable.append(e)\n"
            "    except OSError:\n      pass\n"
            "result = (os.getuid(), os.getppid() == 1, top, writable, "
            f"os.path.exists({host_file!r}), os.path.exists({first.result!r}))")
    v = run(sb, code)
  finally:
    os.unlink(host_file)
  assert v.status == "ok", v
  uid, parent_is_ns_init, tmp_entries, writable, sees_host_file, sees_other_job = v.result
  assert uid == 65534 and parent_is_ns_init
  # Neither the host's /tmp nor another job's scratch is visible. Besides the job's own folder,
  # /tmp holds only the way to an interpreter that lives under /tmp (a virtualenv), read-only.
  assert not sees_host_file and not sees_other_job
  interpreter_tops = {os.path.relpath(p, "/tmp").split(os.sep)[0]
                      for p in (sys.prefix, sys.base_prefix, os.path.realpath(sys.executable))
                      if p.startswith("/tmp/")}
  assert {e for e in tmp_entries if not e.startswith("job-")} <= interpreter_tops, tmp_entries
  assert writable == []


def test_an_interpreter_under_tmp_still_imports_behind_the_private_tmp():
  """A runtime venv created under /tmp (here below a mode-0700 dir, like pytest's) stays
  visible, read-only, inside the jobs' private tmpfs /tmp: modules load lazily from it."""
  root = tempfile.mkdtemp(dir="/tmp", prefix="gift-venv-test-")  # mode 0700
  try:
    venv = os.path.join(root, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    venv], check=True, capture_output=True, timeout=120)
    (site,) = glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))
    # The new venv's base is the *base* interpreter; when this test itself runs in a virtualenv,
    # pandas lives in that virtualenv's site-packages, which the new venv must see too.
    with open(os.path.join(site, "gift_parent_env.pth"), "w") as f:
      f.write("\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")
    with open(os.path.join(site, "gift_lazy_probe.py"), "w") as f:
      f.write("VALUE = 42\n")
    with Sandbox(num_workers=1, python=os.path.join(venv, "bin", "python"), timeout_s=20.0) as sb:
      v = sb.run("import sys", "import gift_lazy_probe\n"
                 "result = (gift_lazy_probe.VALUE, sys.prefix, open(sys.prefix + '/pyvenv.cfg')"
                 ".read().startswith('home'))")
      assert v.status == "ok" and v.result == (42, venv, True), v
      w = sb.run("import sys", "open(sys.prefix + '/written', 'w')")
      assert w.status == "error" and w.error_type in ("PermissionError", "OSError"), w
      assert not os.path.exists(os.path.join(venv, "written"))
  finally:
    shutil.rmtree(root)


@pytest.fixture
def private_home():
  """A user's private folder outside /tmp, as on a current Ubuntu (home mode 0700): `proj/`
  (mode 0700, root-owned) holds data; `secret.txt` lies beside it in the home."""
  home = tempfile.mkdtemp(prefix="gift-home-", dir="/var/tmp")
  proj = os.path.join(home, "proj")
  os.mkdir(proj, 0o700)
  with open(os.path.join(proj, "sales.csv"), "w") as f:
    f.write("a,b\n1,x\n2,y\n")
  with open(os.path.join(home, "secret.txt"), "w") as f:
    f.write(SECRET)
  os.chmod(home, 0o700)
  yield home, proj
  shutil.rmtree(home)


def test_data_dirs_are_readable_read_only_and_show_nothing_else(sb, private_home):
  need(sb, "uid", "readonly_root")
  home, proj = private_home
  ctx = f"import os\nimport pandas as pd\nos.chdir({proj!r})\ndf = pd.read_csv('sales.csv')"
  v = run(sb, "result = (df.b.tolist(), os.getuid(), sorted(os.listdir(HOME)))",
          context=f"HOME = {home!r}\n" + ctx, data_dirs=(proj,))
  assert v.status == "ok" and v.result == (["x", "y"], 65534, ["proj"]), v
  for code in (f"open({home!r} + '/secret.txt').read()",
               f"open({proj!r} + '/sales.csv', 'a').write('z')",
               f"open({proj!r} + '/new.txt', 'w').write('z')", f"os.chmod({proj!r}, 0o777)",
               f"os.remove({proj!r} + '/sales.csv')"):
    v = run(sb, code, context=ctx, data_dirs=(proj,), output_var=None)
    assert v.status == "error" and v.error_type in ("FileNotFoundError", "PermissionError",
                                                    "OSError"), (code, v)
    assert SECRET not in (v.stdout + v.stderr + (v.error_message or ""))
  assert sorted(os.listdir(proj)) == ["sales.csv"]
  assert open(os.path.join(proj, "sales.csv")).read() == "a,b\n1,x\n2,y\n"
  # without the folder among its data dirs, a context cannot read it: the failure names the file
  v = sb.run(ctx, "result = 1")
  assert v.status == "error" and f"Permission denied: {proj!r}" in v.error_message, v


def test_an_interpreter_that_cannot_start_is_named_with_its_error(tmp_path):
  """A runtime whose interpreter lacks pandas dies at start-up: the error names the interpreter
  and quotes what it printed, instead of a bare end-of-file from the protocol."""
  venv = tmp_path / "bare"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                 capture_output=True, timeout=120)
  python = str(venv / "bin" / "python")
  if subprocess.run([python, "-c", "import pandas"], capture_output=True).returncode == 0:
    pytest.skip("the base interpreter has pandas: a bare venv cannot fail the way users see it")
  with pytest.raises(SandboxStartError) as err:
    Sandbox(num_workers=1, python=python, timeout_s=5.0)
  msg = str(err.value)
  assert python in msg and "failed to start" in msg and "No module named" in msg, msg


def test_missing_layers_degrade_with_a_warning(caplog):
  with caplog.at_level("WARNING", logger="gift.execution.sandbox"):
    with Sandbox(num_workers=1, namespaces=False, timeout_s=5.0) as sandbox:
      v = sandbox.run(CTX, "import json, os\nresult = (df.a.sum(), json.dumps([1]))")
      assert v.status == "ok" and v.result == (6, "[1]")
      assert not sandbox.layers["pid"] and not sandbox.layers.get("private_tmp")
      assert sandbox.run(CTX, "while True:\n  pass", timeout_s=1.0).status == "timeout"
  assert "pid namespace" in caplog.text and "read-only root" in caplog.text
