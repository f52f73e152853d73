"""LLM backends: the OpenAI wire format against a real HTTP server on 127.0.0.1 (started here),
including retries, timeouts and malformed replies; prompt parsing."""
import http.server
import json
import threading
import time

import pytest

from gift.synth import backends, contexts, llm_prompts


class Handler(http.server.BaseHTTPRequestHandler):
  script: list = []  # per request: "ok", "500", "400", "slow", "garbage", "few"
  seen: list = []

  def log_message(self, *args):
    pass

  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    Handler.seen.append((self.path, body, self.headers.get("Authorization")))
    mode = Handler.script.pop(0) if Handler.script else "ok"
    if mode == "slow":
      time.sleep(1.0)
    if mode in ("500", "400"):
      self.send_response(int(mode))
      self.end_headers()
      self.wfile.write(b"server says no")
      return
    n = 1 if mode == "few" else body.get("n", 1)
    if self.path.endswith("/chat/completions"):
      choices = [{"message": {"role": "assistant",
                              "content": f"```python\ndf.head({i})\n```"}} for i in range(n)]
    else:
      choices = [{"text": f"\ndf.head({i})\n# In[ ]:\nmore"} for i in range(n)]
    data = b"{not json" if mode == "garbage" else json.dumps({"choices": choices}).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.end_headers()
    self.wfile.write(data)


@pytest.fixture
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  Handler.script, Handler.seen = [], []
  yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
  httpd.shutdown()
  httpd.server_close()


def client(url, **kw):
  kw = dict(dict(model="m", timeout_s=0.5, max_retries=2, backoff_s=0.01, concurrency=4), **kw)
  return backends.OpenAIClient(url, **kw)


def test_chat_completions_n_samples_and_code_parsing(server):
  be = backends.OpenAIBackend(client(server, api_key="k"), temperature=0.7)
  ctx = contexts.Context("t", [("code", "df.head()", None)], "", {}, "csv")
  intents = [backends.Intent("t", i, "llm", f"task {i}") for i in range(3)]
  codes = be.codes(ctx, intents, 2, 0)
  assert codes == [["df.head(0)", "df.head(1)"]] * 3
  path, body, auth = Handler.seen[0]
  assert path == "/v1/chat/completions" and auth == "Bearer k" and body["n"] == 2
  assert body["messages"][0]["role"] == "system" and "task" in body["messages"][1]["content"]


def test_completions_endpoint_and_servers_that_ignore_n(server):
  Handler.script = ["few", "few", "few"]
  c = client(server, endpoint="completions")
  assert c.complete(["p"], 3, 0.5, 16) == [["\ndf.head(0)\n# In[ ]:\nmore"] * 3]
  assert [b["n"] for _, b, _ in Handler.seen] == [3, 2, 1] and "stop" in Handler.seen[0][1]
  assert llm_prompts.parse_code("\ndf.head(0)\n# In[ ]:\nmore") == "df.head(0)"


def test_transient_failures_are_retried(server):
  Handler.script = ["500", "garbage", "ok"]
  assert client(server).complete(["p"], 1, 0.0, 8) == [["```python\ndf.head(0)\n```"]]
  assert len(Handler.seen) == 3


def test_timeouts_retry_then_fail_naming_the_url(server):
  Handler.script = ["slow"] * 3
  with pytest.raises(backends.BackendError, match=r"127\.0\.0\.1.*3 attempts.*timed out"):
    client(server).complete(["p"], 1, 0.0, 8)


def test_malformed_replies_fail_clearly(server):
  Handler.script = ["garbage"] * 3
  with pytest.raises(backends.BackendError, match="malformed reply"):
    client(server).complete(["p"], 1, 0.0, 8)


def test_client_errors_are_not_retried(server):
  Handler.script = ["400"]
  with pytest.raises(backends.BackendError, match="HTTP 400: server says no"):
    client(server).complete(["p"], 1, 0.0, 8)
  assert len(Handler.seen) == 1


def test_unreachable_endpoint_fails_with_reason():
  c = backends.OpenAIClient("http://127.0.0.1:9/v1", "m", timeout_s=0.5, max_retries=1,
                            backoff_s=0.01)
  with pytest.raises(backends.BackendError, match="Connection refused|URLError"):
    c.complete(["p"], 1, 0.0, 8)


def test_intent_and_summary_parsing():
  assert llm_prompts.parse_intents(" Sum units per region.\n2) Top 3 rows by price\n3. x\n", 5) \
      == ["Sum units per region.", "Top 3 rows by price"]
  assert llm_prompts.parse_summary("The output is a Series.\n\n###\nnext", 100) == \
      "The output is a Series."
  assert "Types:\nT" in llm_prompts.summary_prompt("c", "T", "E")
