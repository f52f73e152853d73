"""`gift serve`'s HTTP API on a real uvicorn server on 127.0.0.1 (in a thread of the test
process): greedy completions equal `gift sample`'s, the official `openai` client (completions,
chat by the tokenizer's template, streaming, logprobs), OpenAI-style errors for bad input with
the server serving on, client disconnects freeing their slots, 64 concurrent requests with no
lost or mixed-up response."""
import concurrent.futures
import http.client
import json
import socket
import threading
import time

import jax
import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from gift import checkpoint, sample  # noqa: E402
from gift import tokenizer as tokenizer_lib  # noqa: E402
from gift.model import presets, transformer  # noqa: E402
from gift.serve import app as app_lib  # noqa: E402
from gift.serve.engine import Engine  # noqa: E402

CFG = presets.get_preset("test_tiny", vocab_size=259, num_layers=2, max_seq_len=128)
KEY = "sekret"
MAX_TOKENS = 20  # the references' length; requests ask for up to this


class ChatBytes(tokenizer_lib.ByteTokenizer):
  """The byte tokenizer with a chat template (as a tokenizer.json's would be)."""
  chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                   "{% if add_generation_prompt %}<|assistant|>{% endif %}")


TOK = ChatBytes()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def params():
  p = transformer.init_params(CFG, jax.random.key(0))
  return jax.tree.map(lambda x: x * 3.0 if x.ndim > 2 else x, p)


@pytest.fixture(scope="module")
def served(params):
  """(base url, engine) of a server with 16 slots, a 64-sequence queue, n up to 80."""
  engine = Engine(CFG, params, TOK, max_batch=16, max_seq_len=128, max_queue=64, decode_steps=4,
                  prompt_buckets=(128,), extent_buckets=(128,)).start()
  server = app_lib.Server(engine, "tiny", api_key=KEY, max_n=80, max_body_bytes=64 << 10)
  port = _free_port()
  uv = uvicorn.Server(uvicorn.Config(app_lib.create_app(server), host="127.0.0.1", port=port,
                                     log_level="warning"))
  thread = threading.Thread(target=uv.run, daemon=True)
  thread.start()
  deadline = time.time() + 60
  while not uv.started:
    assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
    time.sleep(0.05)
  yield f"http://127.0.0.1:{port}", engine
  uv.should_exit = True
  thread.join(10)
  engine.stop()


@pytest.fixture(scope="module")
def sampler(params):
  return sample.Sampler(CFG, params, TOK, batch_size=8, buckets=(128,))


def _expected(sampler, prompts, max_tokens, bos=True):
  """Greedy texts `gift sample` gives for these prompts (BOS + text), cut to max_tokens ids."""
  ids = [[TOK.bos_id] * bos + TOK.encode(p) for p in prompts]
  out = sampler.generate_ids(ids, max_new_tokens=MAX_TOKENS)
  return [TOK.decode(row[0][:m]) for row, m in zip(out, max_tokens)]


def _request(url, method, path, body=None, key=KEY, raw=None, timeout=120):
  """(status, parsed JSON or text) of one HTTP request."""
  host, port = url.removeprefix("http://").split(":")
  conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
  headers = {"Content-Type": "application/json"}
  if key:
    headers["Authorization"] = f"Bearer {key}"
  data = raw if raw is not None else (json.dumps(body) if body is not None else None)
  conn.request(method, path, body=data, headers=headers)
  resp = conn.getresponse()
  text = resp.read().decode()
  conn.close()
  try:
    return resp.status, json.loads(text)
  except ValueError:
    return resp.status, text


def _health(url):
  status, body = _request(url, "GET", "/health", key=None)
  assert status == 200, body
  return body


def test_greedy_completion_equals_gift_sample_with_usage(served, sampler):
  url, _ = served
  prompt = "df.groupby('a')"
  status, body = _request(url, "POST", "/v1/completions",
                          {"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS,
                           "temperature": 0})
  assert status == 200, body
  (choice,) = body["choices"]
  assert choice["text"] == _expected(sampler, [prompt], [MAX_TOKENS])[0]
  assert choice["finish_reason"] in ("stop", "length") and body["object"] == "text_completion"
  u = body["usage"]
  assert u["prompt_tokens"] == 1 + len(prompt.encode())
  assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
  assert 1 <= u["completion_tokens"] <= MAX_TOKENS


def test_openai_client_completions_chat_streaming(served, sampler):
  url, _ = served
  client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
  assert [m.id for m in client.models.list().data] == ["tiny"]
  prompt = "import pandas as pd\n"
  want = _expected(sampler, [prompt], [12])[0]
  r = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                                logprobs=2)
  assert r.choices[0].text == want
  lp = r.choices[0].logprobs
  assert len(lp.token_logprobs) == r.usage.completion_tokens and all(
      x <= 0 for x in lp.token_logprobs) and all(len(t) <= 2 for t in lp.top_logprobs)
  # n samples with a seed: reproducible, and the choices differ
  kw = dict(model="tiny", prompt=prompt, max_tokens=12, temperature=1.0, top_p=0.95, n=3,
            seed=11)
  a, b = client.completions.create(**kw), client.completions.create(**kw)
  assert [c.text for c in a.choices] == [c.text for c in b.choices]
  assert len({c.text for c in a.choices}) > 1 and [c.index for c in a.choices] == [0, 1, 2]
  # streaming: the chunks add up to the non-streamed text; usage on request
  chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=12,
                                          temperature=0, stream=True,
                                          stream_options={"include_usage": True}))
  assert "".join(c.choices[0].text for c in chunks if c.choices) == want
  assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
  # chat: the tokenizer's template renders the prompt
  messages = [{"role": "user", "content": "Sum column x."}]
  rendered = "<|user|>Sum column x.\n<|assistant|>"
  want_chat = _expected(sampler, [rendered], [10], bos=False)[0]  # the template writes none
  c = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                     temperature=0, logprobs=True, top_logprobs=1)
  assert c.choices[0].message.content == want_chat and c.choices[0].message.role == "assistant"
  assert c.usage.prompt_tokens == len(rendered.encode())
  assert len(c.choices[0].logprobs.content) == c.usage.completion_tokens
  stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                          temperature=0, stream=True)
  parts = [ch.choices[0].delta.content or "" for ch in stream if ch.choices]
  assert "".join(parts) == want_chat


def test_echo_stop_and_token_prompts(served, sampler):
  url, _ = served
  prompt = "x = 1"
  want = _expected(sampler, [prompt], [MAX_TOKENS])[0]
  for p in ([prompt, prompt], [[TOK.bos_id] + TOK.encode(prompt)] * 2):  # text or token ids
    status, body = _request(url, "POST", "/v1/completions", {
        "prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0, "echo": True})
    assert status == 200, body
    assert [c["text"] for c in body["choices"]] == [prompt + want] * 2
  stop = next(want[i:i + 1] for i in range(2, len(want)) if want[i].isascii()
              and want[i].isprintable() and want[i] not in want[:i])
  status, body = _request(url, "POST", "/v1/completions", {
      "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stop": [stop]})
  assert status == 200 and body["choices"][0]["text"] == want[:want.index(stop)]
  assert body["choices"][0]["finish_reason"] == "stop"


BAD = [  # (what, request body or raw bytes, key, status, error code or param)
    ("malformed JSON", b'{"prompt": "x", ', KEY, 400, "invalid_json"),
    ("not an object", [1, 2], KEY, 400, "invalid_json"),
    ("prompt missing", {"max_tokens": 3}, KEY, 400, "prompt"),
    ("max_tokens a string", {"prompt": "x", "max_tokens": "5"}, KEY, 400, "max_tokens"),
    ("temperature a string", {"prompt": "x", "temperature": "hot"}, KEY, 400, "temperature"),
    ("stream a string", {"prompt": "x", "stream": "yes"}, KEY, 400, "stream"),
    ("prompt a number", {"prompt": 3.5}, KEY, 400, "prompt"),
    ("n zero", {"prompt": "x", "n": 0}, KEY, 400, "n"),
    ("n past max_n", {"prompt": "x", "n": 81}, KEY, 400, "n"),
    ("max_tokens zero", {"prompt": "x", "max_tokens": 0}, KEY, 400, "max_tokens"),
    ("max_tokens past context", {"prompt": "x", "max_tokens": 1000}, KEY, 400,
     "context_length_exceeded"),
    ("prompt past context", {"prompt": "y" * 200, "max_tokens": 1}, KEY, 400,
     "context_length_exceeded"),
    ("top_p out of range", {"prompt": "x", "top_p": 0}, KEY, 400, "top_p"),
    ("logprobs past 5", {"prompt": "x", "logprobs": 6}, KEY, 400, "logprobs"),
    ("unsupported penalty", {"prompt": "x", "presence_penalty": 0.5}, KEY, 400, "unsupported"),
    ("token id out of vocabulary", {"prompt": [1, 999]}, KEY, 400, None),
    ("wrong API key", {"prompt": "x"}, "nope", 401, "invalid_api_key"),
    ("no API key", {"prompt": "x"}, None, 401, "invalid_api_key"),
    ("unknown model", {"prompt": "x", "model": "gpt-9"}, KEY, 404, "model_not_found"),
    ("body too large", {"prompt": "x" * (70 << 10)}, KEY, 413, "request_too_large"),
    ("queue full", {"prompt": "x", "n": 70, "max_tokens": 2}, KEY, 429, "queue_full"),
]


@pytest.mark.parametrize("what,body,key,status,code", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_openai_error_and_server_keeps_serving(served, what, body, key, status,
                                                              code):
  url, _ = served
  raw = body if isinstance(body, bytes) else None
  got, reply = _request(url, "POST", "/v1/completions", None if raw else body, key=key, raw=raw)
  assert got == status, reply
  err = reply["error"]
  assert set(err) == {"message", "type", "param", "code"} and err["message"]
  if code is not None:
    assert code in (err["code"], err["param"]), err
  assert _health(url)["status"] == "ok"
  ok, reply = _request(url, "POST", "/v1/completions", {"prompt": "ok", "max_tokens": 2})
  assert ok == 200 and len(reply["choices"]) == 1


def test_unknown_route_and_chat_errors(served):
  url, _ = served
  status, body = _request(url, "GET", "/v1/nothing")
  assert status == 404 and body["error"]["code"] == "not_found"
  status, body = _request(url, "POST", "/v1/chat/completions", {"messages": []})
  assert status == 400 and body["error"]["param"] == "messages"
  status, body = _request(url, "POST", "/v1/chat/completions",
                          {"messages": [{"role": "user", "content": 5}]})
  assert status == 400 and body["error"]["param"] == "messages"
  status, body = _request(url, "GET", "/v1/models", key="nope")
  assert status == 401


def _wait_idle(url, timeout=60):
  deadline = time.time() + timeout
  while time.time() < deadline:
    h = _health(url)
    if h["busy"] == 0 and h["waiting"] == 0:
      return h
    time.sleep(0.05)
  raise AssertionError(f"slots still busy after {timeout}s: {_health(url)}")


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_frees_the_slots(served, stream, monkeypatch):
  url, engine = served
  _wait_idle(url)
  decode = engine._decode

  def slow_decode(steps):  # ~2 s for the request below, so the client leaves mid-way
    time.sleep(0.06)
    decode(steps)

  monkeypatch.setattr(engine, "_decode", slow_decode)
  finished = engine.stats["finished"]
  host, port = url.removeprefix("http://").split(":")
  body = json.dumps({"prompt": "long", "max_tokens": 120, "n": 3, "stream": stream,
                     "ignore_eos": True}).encode()
  sock = socket.create_connection((host, int(port)))
  sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
               + body)
  if stream:
    got = b""
    while b"data: " not in got:  # the stream has begun
      data = sock.recv(4096)
      assert data, got
      got += data
  else:
    deadline = time.time() + 60
    while _health(url)["busy"] < 3:
      assert time.time() < deadline
      time.sleep(0.01)
  sock.close()
  _wait_idle(url)
  assert engine.stats["finished"] == finished  # cancelled, not run to the end
  status, _ = _request(url, "POST", "/v1/completions", {"prompt": "ok", "max_tokens": 2})
  assert status == 200


def test_64_concurrent_requests_each_get_their_own_answer(served, sampler):
  """A bounded loopback load test: 64 requests at once (16 slots, so most wait in the queue),
  different prompts and lengths, half streamed; every response is its own prompt's greedy
  completion."""
  url, _ = served
  rng = np.random.default_rng(0)
  prompts = [f"q{i}: " + "".join(chr(c) for c in rng.integers(97, 123, size=int(rng.integers(
      1, 60)))) for i in range(64)]
  max_tokens = [int(m) for m in rng.integers(1, MAX_TOKENS + 1, size=64)]
  want = _expected(sampler, prompts, max_tokens)

  def ask(i):
    body = {"prompt": prompts[i], "max_tokens": max_tokens[i], "temperature": 0,
            "stream": i % 2 == 0}
    status, reply = _request(url, "POST", "/v1/completions", body, timeout=300)
    assert status == 200, reply
    if body["stream"]:
      events = [line[6:] for line in reply.split("\n") if line.startswith("data: ")]
      assert events[-1] == "[DONE]"
      return "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    return reply["choices"][0]["text"]

  with concurrent.futures.ThreadPoolExecutor(64) as pool:
    got = list(pool.map(ask, range(64)))
  assert got == want
  _wait_idle(url)


def test_chat_on_a_tokenizer_json_checkpoint_equals_gift_sample(qwen_tokenizer_dir, tmp_path):
  """A checkpoint with a Hugging Face tokenizer.json and a chat template (Qwen-style, stop ids
  <|im_end|> and <|endoftext|>): /v1/chat/completions equals `gift sample` with the template,
  and text prompts get no BOS (the tokenizer adds none)."""
  tok = tokenizer_lib.load(qwen_tokenizer_dir)
  cfg = presets.get_preset("test_tiny", vocab_size=512, num_layers=2, max_seq_len=128)
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim > 2 else x,
                        transformer.init_params(cfg, jax.random.key(1)))
  ckpt = str(tmp_path / "ckpt")
  checkpoint.save_model(ckpt, cfg, params, tokenizer_path=qwen_tokenizer_dir)
  engine = Engine.from_checkpoint(ckpt, max_batch=16, max_seq_len=128, decode_steps=4,
                                  prompt_buckets=(128,), extent_buckets=(128,)).start()
  assert engine.stop_ids == tok.stop_ids
  port = _free_port()
  uv = uvicorn.Server(uvicorn.Config(app_lib.create_app(app_lib.Server(engine, "qwenish")),
                                     host="127.0.0.1", port=port, log_level="warning"))
  thread = threading.Thread(target=uv.run, daemon=True)
  thread.start()
  try:
    while not uv.started:
      assert thread.is_alive()
      time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none",
                           max_retries=0)
    ref = sample.Sampler(cfg, params, tok, batch_size=8, buckets=(128,))
    prompt = "Sum column x."
    want = ref.generate([prompt], max_new_tokens=16, chat_template=True)[0][0]
    c = client.chat.completions.create(model="qwenish", max_tokens=16, temperature=0,
                                       messages=[{"role": "user", "content": prompt}])
    assert c.choices[0].message.content == want
    assert c.usage.prompt_tokens == len(tokenizer_lib.prompt_ids(tok, prompt, chat=True))
    r = client.completions.create(model="qwenish", prompt=prompt, max_tokens=16, temperature=0)
    assert r.choices[0].text == ref.generate([prompt], max_new_tokens=16)[0][0]
    assert r.usage.prompt_tokens == len(tok.encode(prompt))  # no BOS
  finally:
    uv.should_exit = True
    thread.join(10)
    engine.stop()
