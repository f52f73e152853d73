"""`gift serve`: an OpenAI-compatible HTTP API for a gift checkpoint (FastAPI + uvicorn).

  pip install -e ".[serve]"
  gift serve --checkpoint CKPT [--host 127.0.0.1 --port 8000 --max_batch 32 --max_seq_len N
                                --api_key KEY --max_queue 256]

Endpoints: POST /v1/completions, POST /v1/chat/completions (the tokenizer's chat template),
GET /v1/models, GET /health. `stream: true` answers server-sent events in OpenAI's chunk format
ending with `data: [DONE]`. Sampling: n, max_tokens, temperature, top_p, top_k, stop, seed,
logprobs (completions: 0-5 alternatives; chat: logprobs + top_logprobs 0-5), echo
(completions, without logprobs), ignore_eos; usage counts. Errors are OpenAI's JSON
(`{"error": {"message", "type", "param", "code"}}`): 400 bad request (malformed JSON, a field of
the wrong type or out of range, a prompt longer than the context, an unsupported option), 401
wrong API key, 404 unknown model or route, 413 body too large, 429 queue full, 500 engine
failure. A client that disconnects frees its slots at the next step.

Requests run on gift/serve/engine.py's continuous-batching engine; this module only parses,
validates, tokenizes and formats.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import uuid
from typing import Any, Union

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

import gift
from gift import tokenizer as tokenizer_lib
from gift.serve import engine as engine_lib

log = logging.getLogger(__name__)
Number = Union[StrictInt, StrictFloat]


class ApiError(Exception):
  """An error answered as OpenAI's error JSON with `status`."""

  def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
               param: str | None = None, code: str | None = None):
    super().__init__(message)
    self.status, self.message, self.type = status, message, type_
    self.param, self.code = param, code

  def body(self) -> dict:
    return {"error": {"message": self.message, "type": self.type, "param": self.param,
                      "code": self.code}}

  def response(self) -> JSONResponse:
    return JSONResponse(self.body(), status_code=self.status)


# ------------------------------------------------------------------------------------------------
# Request schemas: strict types (a string is not a number); unknown fields are ignored, as
# OpenAI's own server does for fields it does not know.


class _Common(BaseModel):
  model_config = ConfigDict(extra="ignore")
  model: StrictStr | None = None
  n: StrictInt = 1
  stream: StrictBool = False
  stream_options: dict[str, Any] | None = None
  temperature: Number | None = None
  top_p: Number | None = None
  top_k: StrictInt | None = None
  stop: StrictStr | list[StrictStr] | None = None
  seed: StrictInt | None = None
  presence_penalty: Number | None = None
  frequency_penalty: Number | None = None
  logit_bias: dict[str, Any] | None = None
  user: StrictStr | None = None
  ignore_eos: StrictBool = False


class CompletionRequest(_Common):
  prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
  max_tokens: StrictInt | None = 16  # OpenAI's default for /v1/completions
  logprobs: StrictInt | None = None
  echo: StrictBool = False
  best_of: StrictInt | None = None
  suffix: StrictStr | None = None


class ChatMessage(BaseModel):
  model_config = ConfigDict(extra="ignore")
  role: StrictStr
  content: StrictStr | list[dict[str, Any]] | None = None


class ChatRequest(_Common):
  messages: list[ChatMessage] = Field(min_length=1)
  max_tokens: StrictInt | None = None  # None: the rest of the context
  max_completion_tokens: StrictInt | None = None
  logprobs: StrictBool = False
  top_logprobs: StrictInt | None = None
  tools: list[Any] | None = None
  response_format: dict[str, Any] | None = None


def _validation_error(e: pydantic.ValidationError | RequestValidationError) -> ApiError:
  """The first offending field, named, with what was wrong (a union field's members each
  report an error: then the field is named as having a wrong type or value)."""
  errors = e.errors()
  locs = [[str(x) for x in err.get("loc", ()) if x != "body"] for err in errors]
  field = locs[0][0] if locs[0] else "body"
  same = [err for err, loc in zip(errors, locs) if loc[:1] == [field]]
  if errors[0].get("type") == "missing":
    msg, code = "this field is required", "missing_field"
  elif len(same) > 1:
    msg, code = "wrong type or value for this field", "invalid_type"
  else:
    where = ".".join(locs[0])
    msg, code = f"{errors[0].get('msg', 'invalid value')} (at {where})", "invalid_value"
  return ApiError(400, f"'{field}': {msg}", param=field, code=code)


# ------------------------------------------------------------------------------------------------
# The app.


class Server:
  """What the routes share: the engine, the tokenizer, the limits."""

  def __init__(self, engine: engine_lib.Engine, model_name: str, api_key: str | None = None,
               max_n: int = 64, max_body_bytes: int = 8 << 20, max_stop: int = 16):
    self.engine, self.tokenizer = engine, engine.tokenizer
    self.model_name, self.api_key = model_name, api_key or None
    self.max_n, self.max_body_bytes, self.max_stop = max_n, max_body_bytes, max_stop
    self.created = int(time.time())

  # -- request parsing -----------------------------------------------------------------------
  async def parse(self, request: Request, schema: type[BaseModel]) -> Any:
    self.authorize(request)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
      raise ApiError(413, f"request body of {length} bytes exceeds this server's limit of "
                     f"{self.max_body_bytes} bytes", code="request_too_large")
    raw = await request.body()
    if len(raw) > self.max_body_bytes:
      raise ApiError(413, f"request body of {len(raw)} bytes exceeds this server's limit of "
                     f"{self.max_body_bytes} bytes", code="request_too_large")
    try:
      body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
      raise ApiError(400, f"the request body is not valid JSON: {e}",
                     code="invalid_json") from None
    if not isinstance(body, dict):
      raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}",
                     code="invalid_json")
    try:
      req = schema.model_validate(body)
    except pydantic.ValidationError as e:
      raise _validation_error(e) from None
    if req.model is not None and req.model != self.model_name:
      raise ApiError(404, f"the model '{req.model}' does not exist; this server serves "
                     f"'{self.model_name}'", param="model", code="model_not_found")
    return req

  def authorize(self, request: Request) -> None:
    if self.api_key is None:
      return
    auth = request.headers.get("authorization", "")
    if auth != f"Bearer {self.api_key}":
      raise ApiError(401, "Incorrect API key provided: send 'Authorization: Bearer KEY' with "
                     "the key given to `gift serve --api_key`", type_="authentication_error",
                     code="invalid_api_key")

  def sampling(self, req: _Common, max_tokens: int | None, logprobs: int | None
               ) -> engine_lib.SamplingParams:
    if not 1 <= req.n <= self.max_n:
      raise ApiError(400, f"n={req.n}; expected 1 to {self.max_n}", param="n")
    for name in ("presence_penalty", "frequency_penalty"):
      if getattr(req, name):
        raise ApiError(400, f"'{name}' is not supported by gift serve (send 0 or omit it)",
                       param=name, code="unsupported")
    if req.logit_bias:
      raise ApiError(400, "'logit_bias' is not supported by gift serve", param="logit_bias",
                     code="unsupported")
    temperature = 1.0 if req.temperature is None else float(req.temperature)
    if not 0.0 <= temperature <= 2.0:
      raise ApiError(400, f"temperature={temperature}; expected 0 to 2", param="temperature")
    top_p = 1.0 if req.top_p is None else float(req.top_p)
    if not 0.0 < top_p <= 1.0:
      raise ApiError(400, f"top_p={top_p}; expected 0 < top_p <= 1", param="top_p")
    top_k = 0 if req.top_k in (None, -1) else req.top_k
    if not 0 <= top_k <= engine_lib.CANDIDATES:
      raise ApiError(400, f"top_k={req.top_k}; expected -1 or 0 (off) or 1 to "
                     f"{engine_lib.CANDIDATES}", param="top_k")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > self.max_stop or any(not s for s in stop):
      raise ApiError(400, f"'stop': expected at most {self.max_stop} non-empty strings",
                     param="stop")
    if max_tokens is not None and max_tokens < 1:
      raise ApiError(400, f"max_tokens={max_tokens}; expected >= 1", param="max_tokens")
    if logprobs is not None and not 0 <= logprobs <= engine_lib.TOP_LOGPROBS:
      raise ApiError(400, f"logprobs={logprobs}; expected 0 to {engine_lib.TOP_LOGPROBS}",
                     param="logprobs")
    return engine_lib.SamplingParams(max_tokens=max_tokens or 1, temperature=temperature,
                                     top_p=top_p, top_k=top_k, stop=stop, seed=req.seed,
                                     logprobs=logprobs, ignore_eos=req.ignore_eos)

  def encode(self, text: str) -> list[int]:
    """The prompt's ids as `gift sample` feeds them: BOS (if the tokenizer adds one) + text."""
    return tokenizer_lib.prompt_ids(self.tokenizer, text)

  # -- running --------------------------------------------------------------------------------
  def submit(self, items: list[tuple[list[int], engine_lib.SamplingParams]], n: int,
             queue: asyncio.Queue) -> list[engine_lib.Choice]:
    """Queues every prompt's n choices; engine events go to `queue` as (choice index, delta,
    token infos, finish reason)."""
    loop = asyncio.get_running_loop()
    index: dict[int, int] = {}

    def on_event(seq, delta, infos, finish):
      loop.call_soon_threadsafe(queue.put_nowait, (index[id(seq)], delta, infos, finish))

    try:
      seqs = self.engine.submit_many([(ids, p, n) for ids, p in items], on_event)
    except engine_lib.ContextTooLong as e:
      raise ApiError(400, str(e), param="max_tokens" if "max_tokens" in str(e) else "prompt",
                     code="context_length_exceeded") from None
    except ValueError as e:
      raise ApiError(400, str(e)) from None
    except engine_lib.QueueFull as e:
      raise ApiError(429, f"the server is busy: {e}; retry later", type_="rate_limit_error",
                     code="queue_full") from None
    except engine_lib.EngineDead as e:
      raise ApiError(500, str(e), type_="server_error", code="engine_failed") from None
    for i, s in enumerate(seqs):
      index[id(s)] = i
    return seqs

  async def events(self, request: Request, seqs: list[engine_lib.Choice], queue: asyncio.Queue):
    """Yields engine events until every choice finished; cancels them when the client goes
    away (checked while waiting, so a queued request is dropped too)."""
    left, checked = len(seqs), time.monotonic()
    try:
      while left:
        try:
          event = await asyncio.wait_for(queue.get(), timeout=0.25)
        except asyncio.TimeoutError:
          event = None
        if time.monotonic() - checked >= 0.25:  # also while tokens keep coming
          checked = time.monotonic()
          if await request.is_disconnected():
            return
        if event is None:
          continue
        if event[3] is not None:
          left -= 1
          if event[3].startswith("error"):
            raise ApiError(500, f"generation failed: {event[3]}", type_="server_error",
                           code="engine_failed")
        yield event
    finally:
      if left:
        self.engine.cancel(seqs)


def _usage(prompt_tokens: int, seqs: list[engine_lib.Choice]) -> dict:
  completion = sum(len(s.ids) for s in seqs)
  return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
          "total_tokens": prompt_tokens + completion}


def _finish_reason(finish: str | None) -> str | None:
  return finish if finish in ("stop", "length") else None


def _completion_logprobs(infos: list[engine_lib.TokenInfo], tokenizer, offset: int) -> dict:
  """The legacy completions `logprobs` object for these tokens, text offsets from `offset`."""
  out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
  for info in infos:
    out["tokens"].append(info.text)
    out["token_logprobs"].append(info.logprob)
    out["top_logprobs"].append({tokenizer.decode([i]): lp for i, lp in info.top or []})
    out["text_offset"].append(offset)
    offset += len(info.text)
  return out


def _chat_logprobs(infos: list[engine_lib.TokenInfo], tokenizer) -> dict:
  def entry(text, lp):
    return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}
  return {"content": [dict(entry(i.text, i.logprob), top_logprobs=[
      entry(tokenizer.decode([t]), lp) for t, lp in i.top or []]) for i in infos]}


def _sse(obj: Any) -> str:
  return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _chunker(rid: str, obj: str, created: int, model: str):
  """`chunk(choices, usage=None)`: one response body (or stream chunk) of request `rid`."""

  def chunk(choices: list, usage: dict | None = None) -> dict:
    out = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices}
    if usage is not None:
      out["usage"] = usage
    return out

  return chunk


def create_app(server: Server) -> FastAPI:
  """The FastAPI app over `server` (its engine must be started by the caller)."""
  app = FastAPI(title="gift serve", docs_url=None, redoc_url=None, openapi_url=None)
  tok = server.tokenizer

  @app.exception_handler(ApiError)
  async def _api_error(request, e: ApiError):
    return e.response()

  @app.exception_handler(RequestValidationError)
  async def _invalid(request, e: RequestValidationError):
    return _validation_error(e).response()

  @app.exception_handler(StarletteHTTPException)
  async def _http(request, e: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
    detail = e.detail if isinstance(e.detail, str) else str(e.detail)
    msg = (f"{request.method} {request.url.path}: {detail}; endpoints: POST /v1/completions, "
           "POST /v1/chat/completions, GET /v1/models, GET /health")
    return ApiError(e.status_code, msg, code=code).response()

  @app.exception_handler(Exception)
  async def _unexpected(request, e: Exception):
    log.exception("unexpected error")
    return ApiError(500, f"internal error: {type(e).__name__}: {e}", type_="server_error"
                    ).response()

  @app.get("/health")
  async def health():
    load = server.engine.load()
    if server.engine.error is not None:
      return JSONResponse({"status": "failed", "error": repr(server.engine.error), **load},
                          status_code=503)
    return {"status": "ok", "model": server.model_name, **load}

  @app.get("/v1/models")
  async def models(request: Request):
    server.authorize(request)
    return {"object": "list", "data": [{
        "id": server.model_name, "object": "model", "created": server.created,
        "owned_by": "gift", "max_model_len": server.engine.max_seq_len}]}

  @app.post("/v1/completions")
  async def completions(request: Request):
    req: CompletionRequest = await server.parse(request, CompletionRequest)
    if req.best_of is not None and req.best_of != req.n:
      raise ApiError(400, "'best_of' other than n is not supported by gift serve",
                     param="best_of", code="unsupported")
    if req.suffix:
      raise ApiError(400, "'suffix' (insertion) is not supported by gift serve", param="suffix",
                     code="unsupported")
    if req.echo and req.logprobs is not None:
      raise ApiError(400, "'echo' with 'logprobs' is not supported by gift serve (prompt "
                     "logprobs are not computed)", param="echo", code="unsupported")
    p = req.prompt
    if isinstance(p, str):
      prompts = [p]
    elif p and isinstance(p[0], int):
      prompts = [list(p)]
    else:
      prompts = list(p)
    if not prompts:
      raise ApiError(400, "'prompt' is empty", param="prompt")
    ids = [server.encode(x) if isinstance(x, str) else list(x) for x in prompts]
    params = server.sampling(req, req.max_tokens, req.logprobs)
    queue: asyncio.Queue = asyncio.Queue()
    seqs = server.submit([(x, params) for x in ids], req.n, queue)
    echo = ([x if isinstance(x, str) else tok.decode(x) for x in prompts] if req.echo
            else [""] * len(prompts))
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    prompt_tokens = sum(map(len, ids))

    chunk = _chunker(rid, "text_completion", created, server.model_name)

    if req.stream:
      include_usage = bool((req.stream_options or {}).get("include_usage"))

      async def stream():
        offsets = [len(echo[i // req.n]) for i in range(len(seqs))]
        try:
          for i in range(len(seqs)) if req.echo else ():
            yield _sse(chunk([{"index": i, "text": echo[i // req.n], "logprobs": None,
                               "finish_reason": None}]))
          async for i, delta, infos, finish in server.events(request, seqs, queue):
            lp = None
            if req.logprobs is not None and infos:
              lp = _completion_logprobs(infos, tok, offsets[i])
            offsets[i] += len(delta)
            if delta or infos or finish:  # a chunk per decode chunk, text or not
              yield _sse(chunk([{"index": i, "text": delta, "logprobs": lp,
                                 "finish_reason": _finish_reason(finish)}]))
          if include_usage:
            yield _sse(chunk([], _usage(prompt_tokens, seqs)))
        except ApiError as e:
          yield _sse(e.body())
        yield "data: [DONE]\n\n"

      return StreamingResponse(stream(), media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache"})

    async for _ in server.events(request, seqs, queue):
      pass
    choices = []
    for i, s in enumerate(seqs):
      lp = (_completion_logprobs(s.infos, tok, len(echo[i // req.n]))
            if req.logprobs is not None else None)
      choices.append({"index": i, "text": echo[i // req.n] + s.text, "logprobs": lp,
                      "finish_reason": _finish_reason(s.finish)})
    return chunk(choices, _usage(prompt_tokens, seqs))

  @app.post("/v1/chat/completions")
  async def chat_completions(request: Request):
    req: ChatRequest = await server.parse(request, ChatRequest)
    template = getattr(tok, "chat_template", None)
    if not template:
      raise ApiError(400, f"this checkpoint has no chat template (its tokenizer "
                     f"{getattr(tok, 'path', None) or 'bytes'} defines none): use "
                     "/v1/completions", param="messages", code="no_chat_template")
    if req.tools:
      raise ApiError(400, "'tools' is not supported by gift serve", param="tools",
                     code="unsupported")
    if req.response_format and req.response_format.get("type", "text") != "text":
      raise ApiError(400, "'response_format' other than text is not supported by gift serve",
                     param="response_format", code="unsupported")
    if req.top_logprobs is not None and not req.logprobs:
      raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    messages = []
    for m in req.messages:
      content = m.content
      if isinstance(content, list):  # content parts: text only
        if any(part.get("type") != "text" or not isinstance(part.get("text"), str)
               for part in content):
          raise ApiError(400, "message content parts must be {'type': 'text', 'text': str}",
                         param="messages", code="unsupported")
        content = "".join(part["text"] for part in content)
      messages.append({"role": m.role, "content": content or ""})
    try:  # the template's special tokens become ids; no BOS beyond what the template writes
      ids = tokenizer_lib.encode_chat(tok, messages, add_generation_prompt=True)
    except Exception as e:  # a template error names the problem (e.g. roles must alternate)
      raise ApiError(400, f"the chat template failed on these messages: {e}",
                     param="messages") from None
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is None:
      max_tokens = max(1, server.engine.max_seq_len - len(ids))
    params = server.sampling(req, max_tokens, (req.top_logprobs or 0) if req.logprobs
                             else None)
    queue: asyncio.Queue = asyncio.Queue()
    seqs = server.submit([(ids, params)], req.n, queue)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    chunk = _chunker(rid, "chat.completion.chunk", created, server.model_name)

    if req.stream:
      include_usage = bool((req.stream_options or {}).get("include_usage"))

      async def stream():
        try:
          for i in range(len(seqs)):
            yield _sse(chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                               "logprobs": None, "finish_reason": None}]))
          async for i, delta, infos, finish in server.events(request, seqs, queue):
            lp = _chat_logprobs(infos, tok) if req.logprobs and infos else None
            if delta or infos or finish:  # a chunk per decode chunk, text or not
              yield _sse(chunk([{"index": i, "delta": {"content": delta} if delta else {},
                                 "logprobs": lp, "finish_reason": _finish_reason(finish)}]))
          if include_usage:
            yield _sse(chunk([], _usage(len(ids), seqs)))
        except ApiError as e:
          yield _sse(e.body())
        yield "data: [DONE]\n\n"

      return StreamingResponse(stream(), media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache"})

    async for _ in server.events(request, seqs, queue):
      pass
    choices = [{"index": i, "message": {"role": "assistant", "content": s.text},
                "logprobs": _chat_logprobs(s.infos, tok) if req.logprobs else None,
                "finish_reason": _finish_reason(s.finish)} for i, s in enumerate(seqs)]
    out = chunk(choices, _usage(len(ids), seqs))
    out["object"] = "chat.completion"
    return out

  return app


# ------------------------------------------------------------------------------------------------
# Command line.


def _mesh(spec: str):
  """None for "none"/one device; else a mesh from "auto" (all local devices on fsdp) or
  "data=D,fsdp=F,tensor=T" (-1 fills)."""
  import jax

  from gift import sharding
  if spec == "none" or (spec == "auto" and jax.local_device_count() == 1):
    return None
  sizes = dict(data=1, fsdp=-1, tensor=1)
  if spec != "auto":
    try:
      for item in spec.split(","):
        k, v = item.split("=")
        if k.strip() not in sizes:
          raise ValueError(k)
        sizes[k.strip()] = int(v)
    except ValueError:
      raise SystemExit(f"gift serve: --mesh {spec!r}; expected auto, none or "
                       "data=D,fsdp=F,tensor=T (one may be -1)") from None
  return sharding.make_mesh(sizes, jax.local_devices())


def main(argv: list[str]) -> int:
  p = gift.ArgumentParser(prog="gift serve", description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", required=True, help="gift checkpoint dir")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--served_model_name", default=None,
                 help="the model id clients send (default: the checkpoint folder's name)")
  p.add_argument("--max_batch", type=int, default=32, help="KV-cache slots (sequences at once)")
  p.add_argument("--max_seq_len", type=int, default=None,
                 help="prompt + generated tokens per sequence (default: the model's)")
  p.add_argument("--max_queue", type=int, default=256,
                 help="sequences waiting for a slot before requests get 429")
  p.add_argument("--max_n", type=int, default=64, help="the largest `n` of one request")
  p.add_argument("--decode_steps", type=int, default=8,
                 help="decode steps per host sync while no request waits")
  p.add_argument("--join_steps", type=int, default=None,
                 help="decode steps of the chunk after one that freed slots, so the next "
                      "requests join sooner (default: decode_steps // 4)")
  p.add_argument("--max_prefill_tokens", type=int, default=4096,
                 help="padded prompt tokens per prefill call")
  p.add_argument("--overlap_prefill", action="store_true",
                 help="prefill on a thread of its own, overlapping the decode steps (no gain "
                      "measured on a 2-core CPU; see gift/serve/engine.py)")
  p.add_argument("--replicas", type=int, default=1,
                 help="engine processes, each on its own share of the cores with max_batch / "
                      "replicas slots (CPU data parallelism; see gift/serve/replicas.py)")
  p.add_argument("--api_key", default=os.environ.get("GIFT_SERVE_API_KEY"),
                 help="require 'Authorization: Bearer KEY' (default: $GIFT_SERVE_API_KEY; "
                      "none = open)")
  p.add_argument("--mesh", default="auto",
                 help="auto (all local devices, slots over fsdp), none, or data=D,fsdp=F,tensor=T")
  p.add_argument("--max_body_mb", type=float, default=8.0)
  p.add_argument("--log_level", default="warning")
  args = p.parse_args(argv)
  import uvicorn

  logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
  name = args.served_model_name or os.path.basename(os.path.normpath(args.checkpoint))
  t0 = time.perf_counter()
  kw = dict(step=args.step, max_batch=args.max_batch, max_seq_len=args.max_seq_len,
            max_queue=args.max_queue, decode_steps=args.decode_steps,
            join_steps=args.join_steps, max_prefill_tokens=args.max_prefill_tokens,
            overlap_prefill=args.overlap_prefill)
  if args.replicas > 1:
    if args.mesh not in ("auto", "none"):
      p.error(f"--mesh={args.mesh} with --replicas={args.replicas}: each replica runs on its "
              "own cores without a mesh; pass --mesh auto or none")
    from gift.serve import replicas as replicas_lib
    try:
      engine = replicas_lib.Replicas(args.checkpoint, args.replicas, **kw)
    except ValueError as e:
      p.error(f"--replicas={args.replicas}: {e}")
  else:
    engine = engine_lib.Engine.from_checkpoint(args.checkpoint, mesh=_mesh(args.mesh), **kw)
  engine.warmup()
  engine.start()
  server = Server(engine, name, args.api_key, max_n=args.max_n,
                  max_body_bytes=int(args.max_body_mb * (1 << 20)))
  app = create_app(server)
  print(f"gift serve: '{name}' ({engine.max_batch} slots, context {engine.max_seq_len} tokens, "
        f"cache extents {list(engine.extent_buckets)}, ready in {time.perf_counter() - t0:.1f}s)"
        f" on http://{args.host}:{args.port}/v1",
        file=sys.stderr, flush=True)
  try:
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=5)
  finally:
    engine.stop()
  return 0

