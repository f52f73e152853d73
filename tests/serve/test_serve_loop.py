"""The loop closed: `gift serve` as a subprocess on 127.0.0.1 with a tiny checkpoint, the official
`openai` client talking to it, and `gift build-data` with the `openai` backend using it as the
code LLM, end to end (the random model's code does not run, so records are dropped with
counted reasons; the test checks that every intent's code samples came from the server)."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import jax
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from gift import checkpoint  # noqa: E402
from gift.model import presets, transformer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = "loop-key"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env() -> dict:
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's server would have
  return env


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  """(base url, log path) of `gift serve` running a tiny random checkpoint."""
  tmp = tmp_path_factory.mktemp("loop")
  cfg = presets.get_preset("test_tiny", vocab_size=259, max_seq_len=2048)  # build-data prompts
  ckpt = str(tmp / "tiny")                                                 # are ~1k bytes
  checkpoint.save_model(ckpt, cfg, transformer.init_params(cfg, jax.random.key(0)))
  port = _free_port()
  log_path = tmp / "serve.log"
  log = open(log_path, "w")
  proc = subprocess.Popen(
      [sys.executable, "-m", "gift.cli", "serve", "--checkpoint", ckpt, "--host", "127.0.0.1",
       "--port", str(port), "--api_key", KEY, "--max_batch", "8"],
      stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)
  url = f"http://127.0.0.1:{port}"
  deadline = time.time() + 600  # JAX start-up + the warm-up compiles, on a loaded host
  while True:
    assert proc.poll() is None, open(log_path).read()
    assert time.time() < deadline, "gift serve did not come up:\n" + open(log_path).read()
    try:
      with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
        if json.load(r)["status"] == "ok":
          break
    except OSError:
      time.sleep(0.5)
  yield url, log_path
  proc.terminate()
  try:
    proc.wait(30)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
  log.close()


@pytest.mark.slow  # a subprocess server (JAX start-up + compilation): ~40 s on 2 cores
def test_openai_client_against_gift_serve_subprocess(server):
  url, _ = server
  client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
  assert client.models.list().data[0].id == "tiny"
  r = client.completions.create(model="tiny", prompt="df.", max_tokens=8, temperature=0)
  assert r.choices[0].finish_reason in ("stop", "length") and r.usage.prompt_tokens == 4
  streamed = "".join(c.choices[0].text for c in client.completions.create(
      model="tiny", prompt="df.", max_tokens=8, temperature=0, stream=True))
  assert streamed == r.choices[0].text
  # the byte tokenizer has no chat template: a clear 400, and the server serves on
  with pytest.raises(openai.BadRequestError, match="no chat template"):
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
  with pytest.raises(openai.AuthenticationError):
    openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
  assert client.completions.create(model="tiny", prompt="x", max_tokens=2).choices


@pytest.mark.slow  # the data build + compiling the server's longer prompt shapes: ~1-2 min
def test_build_data_with_the_openai_backend_on_gift_serve(server, tmp_path):
  url, _ = server
  workdir = tmp_path / "data"
  cmd = [sys.executable, "-m", "gift.cli", "build-data", "--config", "configs/synth_openai.py",
         "--workdir", str(workdir), f"--config.synth.openai.base_url={url}/v1",
         "--config.synth.openai.model=tiny", "--config.synth.openai.endpoint=completions",
         "--config.synth.num_bundled=1", "--config.synth.bundled_real=False",
         "--config.synth.max_contexts=1", "--config.synth.intents_per_context=2",
         "--config.synth.samples_per_intent=2", "--config.synth.max_new_tokens=16",
         "--config.synth.temperature=0.0", "--quiet"]
  done = subprocess.run(cmd, env=dict(_env(), OPENAI_API_KEY=KEY), cwd=REPO,
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stdout + done.stderr
  with open(workdir / "card.json") as f:
    card = json.load(f)
  stages = card["stages"]
  # The generalist's (random) text gave at least one intent; each got its 2 code samples from
  # the server, and every candidate is accounted for (kept or dropped with a reason).
  assert stages["intents"] >= 1 and stages["candidates"] == 2 * stages["intents"]
  assert card["kept"] + sum(card["drop_reasons"].values()) == stages["candidates"]
  assert card["backend"] == "openai"


@pytest.mark.slow  # two replica processes compile their shapes in parallel: ~1 min on 2 cores
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="2 replicas need 2 cores")
def test_gift_serve_replicas_answer_like_one_engine(tmp_path):
  """`gift serve --replicas 2`: the official client's greedy completions (plain and streamed)
  equal a one-engine server's, /health counts the replicas; --replicas past the cores fails
  with the reason."""
  cfg = presets.get_preset("test_tiny", vocab_size=259, max_seq_len=256)
  ckpt = str(tmp_path / "tiny")
  checkpoint.save_model(ckpt, cfg, transformer.init_params(cfg, jax.random.key(1)))
  cores = len(os.sched_getaffinity(0))
  bad = subprocess.run([sys.executable, "-m", "gift.cli", "serve", "--checkpoint", ckpt,
                        "--replicas", str(cores + 1)], capture_output=True, text=True,
                       env=_env(), cwd=REPO, timeout=300)
  assert bad.returncode != 0 and f"replicas={cores + 1}; expected 1 to {cores}" in bad.stderr
  texts = {}
  for replicas in (1, 2):
    port = _free_port()
    with open(tmp_path / f"serve{replicas}.log", "w") as log:
      proc = subprocess.Popen(
          [sys.executable, "-m", "gift.cli", "serve", "--checkpoint", ckpt, "--port", str(port),
           "--max_batch", "4", "--max_seq_len", "128", "--replicas", str(replicas)],
          stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)
      try:
        url, deadline = f"http://127.0.0.1:{port}", time.time() + 600
        while True:
          assert proc.poll() is None, open(log.name).read()
          assert time.time() < deadline, open(log.name).read()
          try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
              health = json.load(r)
              if health["status"] == "ok":
                break
          except OSError:
            time.sleep(0.5)
        assert health.get("replicas", 1) == replicas and health["slots"] == 4
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        got = []
        for prompt in ("import pandas", "df.groupby(", "x = 1", "print("):
          r = client.completions.create(model="tiny", prompt=prompt, max_tokens=12,
                                        temperature=0)
          stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=12,
                                             temperature=0, stream=True)
          streamed = "".join(c.choices[0].text for c in stream if c.choices)
          assert streamed == r.choices[0].text and r.usage.completion_tokens == 12
          got.append(r.choices[0].text)
        texts[replicas] = got
      finally:
        proc.terminate()
        proc.wait(60)
  assert texts[2] == texts[1]
