"""The LLM roles of the data builder behind one interface, three implementations.

  intents(context, num, seed)      generalist: tasks for a context
  codes(context, intents, n, seed) coder: n code samples per intent
  summaries(items, seed)           generalist: I/O summaries of executed samples, or None per
                                   item to use the deterministic summarizer (`specs.io_summary`)

  templates  offline and deterministic (`templates.py`): intents with their code variants.
  gift       a gift checkpoint sampled with `gift.sample.Sampler` (the paper's code LLM role).
  openai     any OpenAI-compatible endpoint (`/v1/chat/completions` or `/v1/completions`:
             vLLM, llama.cpp server, Ollama) over stdlib HTTP, with timeouts, retries with
             exponential backoff, a concurrency limit and errors that name the URL and reply.
Prompts for the LLM backends live in `llm_prompts.py`.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Sequence

from gift.synth import llm_prompts, templates
from gift.synth.contexts import Context
from gift.synth.templates import Intent

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SummaryItem:
  """What the generalist sees to summarize one executed sample."""
  code: str
  typedesc: str
  io_examples: str


class Backend:
  name = "?"

  def intents(self, context: Context, num: int, seed: int) -> list[Intent]:
    raise NotImplementedError

  def codes(self, context: Context, intents: list[Intent], n: int, seed: int) -> list[list[str]]:
    raise NotImplementedError

  def summaries(self, items: list[SummaryItem], seed: int) -> list[str | None]:
    return [None] * len(items)


class TemplatesBackend(Backend):
  """The built-in generalist + coder: each intent's code variants are its n samples."""
  name = "templates"

  def __init__(self, operations: Sequence[str] = ()):
    unknown = set(operations) - set(templates.OPERATIONS)
    if unknown:
      raise ValueError(f"synth.operations: unknown {sorted(unknown)}; expected some of "
                       f"{sorted(templates.OPERATIONS)}")
    self.operations = tuple(operations)

  def intents(self, context, num, seed):
    return templates.generate(context, num, seed, self.operations)

  def codes(self, context, intents, n, seed):
    return [list(i.codes[:n]) for i in intents]


Complete = Callable[[list[str], int, float, int, str], list[list[str]]]


class LLMBackend(Backend):
  """Both roles from one text-completion function `complete(prompts, n, temperature,
  max_tokens, role) -> per prompt n completions` (role: intents | code | summary)."""

  def __init__(self, complete: Complete, temperature: float = 0.8, max_tokens: int = 256,
               summaries: bool = True, summary_max_chars: int = 600):
    self.complete, self.temperature, self.max_tokens = complete, temperature, max_tokens
    self.write_summaries, self.summary_max_chars = summaries, summary_max_chars

  def intents(self, context, num, seed):
    prompt = llm_prompts.intents_prompt(context.text(), num)
    text = self.complete([prompt], 1, self.temperature, self.max_tokens, "intents")[0][0]
    return [Intent(context.id, i, "llm", t, (), {})
            for i, t in enumerate(llm_prompts.parse_intents(text, num))]

  def codes(self, context, intents, n, seed):
    ctx = context.text()
    prompts = [llm_prompts.code_prompt(ctx, i.text) for i in intents]
    outs = self.complete(prompts, n, self.temperature, self.max_tokens, "code") if prompts else []
    return [[llm_prompts.parse_code(c) for c in row] for row in outs]

  def summaries(self, items, seed):
    if not self.write_summaries or not items:
      return [None] * len(items)
    prompts = [llm_prompts.summary_prompt(i.code, i.typedesc, i.io_examples) for i in items]
    outs = self.complete(prompts, 1, 0.0, self.max_tokens, "summary")
    return [llm_prompts.parse_summary(row[0], self.summary_max_chars) or None for row in outs]


class GiftBackend(LLMBackend):
  """A gift checkpoint as generalist and coder, sampled with `gift.sample.Sampler`; with
  `chat_template`, prompts are user turns of its tokenizer's chat template (instruct models)."""
  name = "gift"

  def __init__(self, checkpoint: str, temperature: float = 0.8, max_tokens: int = 256,
               seed: int = 0, sampler: Any = None, chat_template: bool = False, **kw):
    if sampler is None:
      from gift.sample import Sampler  # JAX is imported only when this backend is used
      sampler = Sampler.from_checkpoint(checkpoint)
    self.sampler, self.seed, self.chat_template = sampler, seed, chat_template
    super().__init__(self._complete, temperature, max_tokens, **kw)

  def _complete(self, prompts, n, temperature, max_tokens, role):
    stop = ("###",) if role != "code" else llm_prompts.prompts.STOP
    return self.sampler.generate(list(prompts), n=n, temperature=temperature,
                                 max_new_tokens=max_tokens, stop=stop, seed=self.seed,
                                 chat_template=self.chat_template)


class BackendError(RuntimeError):
  """An LLM endpoint failed; the message names the URL, the attempt count and the reply."""


class OpenAIClient:
  """A minimal OpenAI-compatible client (stdlib only).

  endpoint: "chat" (`/chat/completions`, prompts sent as the user message) or "completions".
  Transient failures (connection errors, timeouts, HTTP 429/5xx, malformed replies) are retried
  `max_retries` times with exponential backoff `backoff_s * 2**attempt`; other HTTP errors fail
  at once. At most `concurrency` requests are in flight.
  """

  def __init__(self, base_url: str, model: str, api_key: str = "", endpoint: str = "chat",
               timeout_s: float = 60.0, max_retries: int = 4, backoff_s: float = 1.0,
               concurrency: int = 8):
    if endpoint not in ("chat", "completions"):
      raise ValueError(f"openai endpoint {endpoint!r}; expected 'chat' or 'completions'")
    self.base_url, self.model, self.api_key = base_url.rstrip("/"), model, api_key
    self.endpoint, self.timeout_s = endpoint, timeout_s
    self.max_retries, self.backoff_s, self.concurrency = max_retries, backoff_s, concurrency

  @property
  def url(self) -> str:
    return f"{self.base_url}/{'chat/completions' if self.endpoint == 'chat' else 'completions'}"

  def _post(self, payload: dict) -> dict:
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    data = json.dumps(payload).encode()
    last = ""
    for attempt in range(self.max_retries + 1):
      if attempt:
        time.sleep(min(30.0, self.backoff_s * 2 ** (attempt - 1)))
      try:
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
          body = resp.read()
      except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace")
        last = f"HTTP {e.code}: {detail}"
        if e.code == 429 or e.code >= 500:
          continue
        raise BackendError(f"{self.url}: {last}") from e
      except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
        last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        continue
      try:
        reply = json.loads(body)
        self._choices(reply)
        return reply
      except (ValueError, KeyError, TypeError, IndexError) as e:
        last = f"malformed reply ({type(e).__name__}: {e}): {body[:200]!r}"
    raise BackendError(f"{self.url}: failed after {self.max_retries + 1} attempts; last: {last}")

  def _choices(self, reply: dict) -> list[str]:
    choices = reply["choices"]
    if not isinstance(choices, list) or not choices:
      raise ValueError("no choices")
    if self.endpoint == "chat":
      texts = [c["message"]["content"] for c in choices]
    else:
      texts = [c["text"] for c in choices]
    if not all(isinstance(t, str) for t in texts):
      raise TypeError("a choice's text is not a string")
    return texts

  def _one(self, prompt: str, n: int, temperature: float, max_tokens: int, role: str
           ) -> list[str]:
    if self.endpoint == "chat":
      payload = {"messages": [{"role": "system", "content": llm_prompts.SYSTEM[role]},
                              {"role": "user", "content": prompt}]}
    else:
      payload = {"prompt": prompt, "stop": ["###", "# In[ ]:"] if role == "code" else ["###"]}
    payload.update(model=self.model, temperature=temperature, max_tokens=max_tokens)
    texts: list[str] = []
    for _ in range(n):  # servers that ignore `n` return fewer choices: ask again
      texts += self._choices(self._post(dict(payload, n=n - len(texts))))
      if len(texts) >= n:
        break
    return texts[:n]

  def complete(self, prompts: list[str], n: int, temperature: float, max_tokens: int,
               role: str = "code") -> list[list[str]]:
    """Per prompt, n completions, requested concurrently (order kept)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency) as pool:
      futures = [pool.submit(self._one, p, n, temperature, max_tokens, role) for p in prompts]
      return [f.result() for f in futures]


class OpenAIBackend(LLMBackend):
  name = "openai"

  def __init__(self, client: OpenAIClient, temperature: float = 0.8, max_tokens: int = 256, **kw):
    self.client = client
    super().__init__(client.complete, temperature, max_tokens, **kw)


def make(synth_cfg: Any, seed: int = 0) -> Backend:
  """The backend named by `synth.backend` with its settings from the synth config section."""
  kind = synth_cfg.backend
  summary_chars = synth_cfg.spec_max_chars.io_summary
  if kind == "templates":
    return TemplatesBackend(tuple(synth_cfg.operations))
  if kind == "gift":
    if not synth_cfg.gift.checkpoint:
      raise ValueError("synth.backend='gift' needs synth.gift.checkpoint (a gift checkpoint dir)")
    return GiftBackend(synth_cfg.gift.checkpoint, synth_cfg.temperature,
                       synth_cfg.max_new_tokens, seed, summaries=synth_cfg.llm_summaries,
                       summary_max_chars=summary_chars,
                       chat_template=synth_cfg.gift.chat_template)
  if kind == "openai":
    o = synth_cfg.openai
    if not o.base_url or not o.model:
      raise ValueError("synth.backend='openai' needs synth.openai.base_url (e.g. "
                       "http://127.0.0.1:8000/v1) and synth.openai.model")
    client = OpenAIClient(o.base_url, o.model, os.environ.get(o.api_key_env, "") if
                          o.api_key_env else "", o.endpoint, o.timeout_s, o.max_retries,
                          o.backoff_s, o.concurrency)
    return OpenAIBackend(client, synth_cfg.temperature, synth_cfg.max_new_tokens,
                         summaries=synth_cfg.llm_summaries, summary_max_chars=summary_chars)
  raise ValueError(f"synth.backend={kind!r}; expected templates, gift or openai")
