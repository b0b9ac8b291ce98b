"""The OpenAI-compatible HTTP API (FastAPI/Starlette) over an :class:`~curmoe.runtimes.serve.engine.Engine`.

Endpoints: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/completions``, ``POST /v1/chat/completions``
(when the tokenizer has a chat template), ``GET /health``, ``GET /metrics`` (Prometheus text). Streaming answers
are server-sent events (``data: {...}`` chunks, then ``data: [DONE]``) as the OpenAI API sends them.

Limits, each answered with an OpenAI error object naming the limit and its value: request body size (413), prompt
tokens (413), max_tokens (400), prompt + max_tokens past the model's context (400), queue full (429, with
Retry-After), queue wait and request time (503), shutting down (503). A client that goes away (mid-stream or
while waiting for a non-streamed answer) cancels its sequence, which frees its slot at the next decode step.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from curmoe.common.errors import InvalidInputError
from curmoe.runtimes.serve.engine import Done, Engine, EngineBusyError, Failed, GenRequest, Token
from curmoe.runtimes.serve.metrics import CONTENT_TYPE
from curmoe.runtimes.serve.protocol import APIError, ChatRequest, CompletionRequest, error_body, parse_body
from curmoe.runtimes.serve.text import NoChatTemplateError, StreamDecoder, TextCodec

__all__ = ["ServeSettings", "create_app"]

log = logging.getLogger(__name__)
_ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")


@dataclass(frozen=True)
class ServeSettings:
    """What the HTTP layer enforces.

    Attributes:
        model_name: the id clients pass as ``model`` (``GET /v1/models`` lists it).
        context: the model's context length (max_seq_len): prompt + max_tokens must fit.
        max_prompt_tokens: longest prompt accepted (413 beyond).
        max_tokens_limit: largest max_tokens accepted (400 beyond).
        default_max_tokens: max_tokens when a request gives none (the OpenAI default 16, cut to the context left).
        max_body_bytes: largest request body (413 beyond).
        api_key: when set, /v1/* needs ``Authorization: Bearer <key>`` (compared in constant time).
        stop_token_ids: ids that end a sequence (the model's end-of-sequence id).
    """

    model_name: str
    context: int
    max_prompt_tokens: int
    max_tokens_limit: int
    default_max_tokens: int = 16
    max_body_bytes: int = 1 << 20
    api_key: str | None = None
    stop_token_ids: tuple[int, ...] = ()
    vocab_size: int = 0


@dataclass
class _Prepared:
    """A validated request: the engine request plus what the response needs."""

    gen: GenRequest
    prompt_text: str
    stop: list[str]
    stream: bool
    include_usage: bool
    echo: bool
    chat: bool
    top_logprobs: int | None


def create_app(engine: Engine, codec: TextCodec, settings: ServeSettings) -> FastAPI:
    """The FastAPI application; its lifespan starts ``engine`` (if not running) and stops it on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine._thread is None:  # noqa: SLF001 - the engine is ours to start
            engine.start()
        yield
        # uvicorn has let in-flight requests finish (or cancelled them after --shutdown-timeout); anything left
        # in the engine now is answered 503 and the thread stops.
        await asyncio.to_thread(engine.stop)

    app = FastAPI(title="curmoe serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    metrics = engine.metrics

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            msg += f"; the endpoints are {', '.join(_ENDPOINTS)}"
        return JSONResponse(error_body(exc.status_code, msg, code=str(exc.status_code)),
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:  # a bug: answer, log, keep serving
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error"),
                            status_code=500)

    app.add_middleware(_CountRequests, metrics=metrics)

    def _auth(request: Request) -> None:
        if settings.api_key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' with the key the "
                                "server was started with (--api-key)", code="invalid_api_key")

    async def _body(request: Request) -> bytes:
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        too_big = APIError(413, f"the request body is larger than the limit of {limit} bytes (--max-body-bytes "
                                f"{limit})", code="body_too_large")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, n = [], 0
        async for c in request.stream():
            n += len(c)
            if n > limit:
                raise too_big
            chunks.append(c)
        return b"".join(chunks)

    def _model_entry() -> dict[str, Any]:
        return {"id": settings.model_name, "object": "model", "created": created, "owned_by": "curmoe"}

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "model": settings.model_name, "active_sequences": engine.active,
                             "queue_depth": engine.queue_depth})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        _auth(request)
        return JSONResponse({"object": "list", "data": [_model_entry()]})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> JSONResponse:
        _auth(request)
        _check_model(model_id)
        return JSONResponse(_model_entry())

    def _check_model(name: str) -> None:
        if name != settings.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {settings.model_name!r} "
                                "(GET /v1/models)", code="model_not_found", param="model")

    def _prepare(req: CompletionRequest | ChatRequest, chat: bool) -> _Prepared:
        _check_model(req.model)
        if req.n != 1:
            raise APIError(400, f"n={req.n}: this server returns one choice per request; pass n=1", param="n",
                           code="invalid_value")
        if chat:
            assert isinstance(req, ChatRequest)
            try:
                text = codec.render_chat([m.as_template_message() for m in req.messages])
            except NoChatTemplateError as e:
                raise APIError(400, str(e), code="no_chat_template", param="messages") from None
            except InvalidInputError as e:
                raise APIError(400, str(e), param="messages", code="invalid_value") from None
            ids = codec.encode(text)
            max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
            top = (req.top_logprobs or 0) if req.logprobs else None
            if req.top_logprobs is not None and not req.logprobs:
                raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs", code="invalid_value")
            echo, stop_ids = False, settings.stop_token_ids + codec.end_of_turn_ids()
        else:
            assert isinstance(req, CompletionRequest)
            text, ids = _prompt(req.prompt)
            max_tokens, top, echo, stop_ids = req.max_tokens, req.logprobs, req.echo, settings.stop_token_ids
        if not ids:  # as curmoe generate: an empty prompt starts from the end-of-sequence token
            ids = [settings.stop_token_ids[0] if settings.stop_token_ids else 0]
        n, C = len(ids), settings.context
        if n > settings.max_prompt_tokens:
            raise APIError(413, f"the prompt has {n} tokens; the limit is {settings.max_prompt_tokens} prompt tokens "
                                f"(--max-prompt-tokens {settings.max_prompt_tokens}; the model's context is {C})",
                           code="context_length_exceeded", param="prompt" if not chat else "messages")
        if max_tokens is None:
            max_tokens = max(1, min(settings.default_max_tokens, C - n))
        if max_tokens > settings.max_tokens_limit:
            raise APIError(400, f"max_tokens={max_tokens} exceeds the limit of {settings.max_tokens_limit} "
                                f"(--max-tokens-limit {settings.max_tokens_limit})",
                           code="max_tokens_exceeded", param="max_tokens")
        if n + max_tokens > C:
            raise APIError(400, f"the prompt ({n} tokens) plus max_tokens ({max_tokens}) exceed the model's context "
                                f"of {C} tokens; pass max_tokens <= {C - n}",
                           code="context_length_exceeded", param="max_tokens")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4:
            raise APIError(400, f"stop has {len(stop)} strings; the limit is 4", param="stop", code="invalid_value")
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        gen = GenRequest(tuple(ids), int(max_tokens), temperature=float(req.temperature), top_p=float(req.top_p),
                         seed=int(seed), stop_token_ids=() if req.ignore_eos else tuple(stop_ids), logprobs=top)
        opts = req.stream_options
        return _Prepared(gen, text, stop, req.stream, bool(opts and opts.include_usage), echo, chat, top)

    def _prompt(prompt: Any) -> tuple[str, list[int]]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise APIError(400, f"prompt is a list of {len(prompt)} prompts; this server takes one prompt per "
                                    "request", param="prompt", code="invalid_value")
            prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt, codec.encode(prompt)
        ids = [int(i) for i in prompt]
        bad = [i for i in ids if not 0 <= i < settings.vocab_size]
        if bad:
            raise APIError(400, f"prompt token id {bad[0]} is outside the vocabulary [0, {settings.vocab_size})",
                           param="prompt", code="invalid_value")
        return codec.decode(ids), ids

    async def _submit(p: _Prepared) -> _Run:
        try:  # a non-streamed answer without stop strings needs no event before the last one
            run = _Run(engine, p.gen, every_event=p.stream or bool(p.stop))
        except EngineBusyError as e:
            raise APIError(e.status, str(e), code=e.code, headers={"Retry-After": "1"}) from None
        metrics.tokens_in.inc(len(p.gen.prompt_ids))
        return run

    async def _handle(request: Request, chat: bool) -> Response:
        _auth(request)
        req = parse_body(await _body(request), ChatRequest if chat else CompletionRequest)
        p = _prepare(req, chat)
        run = await _submit(p)
        resp = _Response(p, codec, settings.model_name, chat)
        if not p.stream:
            try:
                body = await _or_disconnect(request, _collect(run, resp))
            finally:
                run.handle.cancel()  # a no-op when finished; frees the slot of a client that left
            return Response(status_code=499) if body is None else JSONResponse(body)
        try:  # the first event decides the HTTP status (a queue timeout is a 503, not a 200 stream)
            first = await _or_disconnect(request, run.next())
        except BaseException:
            run.handle.cancel()
            raise
        if first is None:  # the client went away while the request waited
            run.handle.cancel()
            return Response(status_code=499)
        if isinstance(first, Failed):
            raise APIError(first.status, first.message, code=first.code, headers={"Retry-After": "1"})
        return StreamingResponse(_stream(run, first, resp), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _handle(request, chat=True)

    return app


class _Run:
    """A submitted request seen from the event loop: engine events arrive on an asyncio queue."""

    def __init__(self, engine: Engine, gen: GenRequest, every_event: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self.every_event = every_event  # else the loop is woken by the final event only
        self.events: collections.deque[Any] = collections.deque()
        self.ready = asyncio.Event()
        self.pending = False  # a wake-up is scheduled on the loop
        self.submitted = time.monotonic()
        self.metrics = engine.metrics
        self.handle = engine.submit(gen, self._sink)

    def _sink(self, ev: Any) -> None:  # engine thread: wake the loop once per batch of events, not per token
        self.events.append(ev)
        if not self.pending and (self.every_event or isinstance(ev, (Done, Failed))):
            self.pending = True
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:  # loop thread
        self.pending = False
        self.ready.set()

    async def next(self) -> Any:
        while not self.events:
            self.ready.clear()
            await self.ready.wait()
        ev = self.events.popleft()
        if isinstance(ev, Done) and ev.reason != "cancelled":
            self.metrics.latency.observe(time.monotonic() - self.submitted)
        return ev


async def _or_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work``, or return None as soon as the client disconnects (``work`` is then cancelled)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return None


class _Response:
    """Builds the OpenAI response objects (whole or streamed chunks) for one request."""

    def __init__(self, p: _Prepared, codec: TextCodec, model: str, chat: bool) -> None:
        self.p, self.codec, self.model, self.chat = p, codec, model, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.decoder = StreamDecoder(codec, p.stop, incremental=p.stream or bool(p.stop))
        self.n_out = 0
        self.lp_tokens: list[Token] = []
        self.finish: str | None = None
        self.error: Failed | None = None

    def take(self, ev: Any) -> str:
        """Consume an engine event; returns the new text. Sets ``finish`` (or ``error``) at the end."""
        if isinstance(ev, Token):
            self.n_out += 1
            if ev.logprob is not None:
                self.lp_tokens.append(ev)
            delta = self.decoder.push(ev.id)
            if self.decoder.stopped:
                self.finish = "stop"
            return delta
        if isinstance(ev, Done):
            self.finish = "stop" if ev.reason == "stop" else "length"
            return self.decoder.flush()
        self.error = ev
        return ""

    @property
    def ended(self) -> bool:
        return self.finish is not None or self.error is not None

    def usage(self) -> dict[str, int]:
        n_in = len(self.p.gen.prompt_ids)
        return {"prompt_tokens": n_in, "completion_tokens": self.n_out, "total_tokens": n_in + self.n_out}

    def logprobs(self, tokens: list[Token], offset: int = 0) -> dict[str, Any] | None:
        if self.p.top_logprobs is None:
            return None
        t = self.codec.token_text
        if self.chat:
            def entry(i: int, lp: float) -> dict[str, Any]:
                s = t(i)
                return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

            return {"content": [entry(x.id, x.logprob) | {"top_logprobs": [entry(i, lp) for i, lp in x.top]}
                                for x in tokens]}
        offsets, pos = [], offset
        for x in tokens:
            offsets.append(pos)
            pos += len(t(x.id))
        return {"tokens": [t(x.id) for x in tokens], "token_logprobs": [x.logprob for x in tokens],
                "top_logprobs": [{t(i): lp for i, lp in x.top} for x in tokens] if self.p.top_logprobs else None,
                "text_offset": offsets}

    def whole(self, text: str) -> dict[str, Any]:
        lp = self.logprobs(self.lp_tokens, len(self.p.prompt_text) if self.p.echo else 0)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": lp,
                      "finish_reason": self.finish}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": (self.p.prompt_text + text) if self.p.echo else text, "logprobs": lp,
                      "finish_reason": self.finish}
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice],
                "usage": self.usage(), "system_fingerprint": None}

    def chunk(self, delta: str | None, finish: str | None, tokens: list[Token], role: bool = False) -> str:
        lp = self.logprobs(tokens) if tokens else None
        if self.chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if delta:
                d["content"] = delta
            choice = {"index": 0, "delta": d, "logprobs": lp, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": lp, "finish_reason": finish}
            obj = "text_completion"
        body = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]}
        if self.p.include_usage:
            body["usage"] = None
        return _sse(body)

    def usage_chunk(self) -> str:
        return _sse({"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                     "created": self.created, "model": self.model, "choices": [], "usage": self.usage()})


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _collect(run: _Run, resp: _Response) -> dict[str, Any]:
    """A non-streamed answer: every event until the end."""
    parts: list[str] = []
    while not resp.ended:
        parts.append(resp.take(await run.next()))
    if resp.error is not None:
        e = resp.error
        raise APIError(e.status, e.message, code=e.code, headers={"Retry-After": "1"} if e.status == 503 else None)
    return resp.whole("".join(parts))


async def _stream(run: _Run, first: Any, resp: _Response) -> AsyncIterator[str]:
    """Server-sent events; the slot is freed (``cancel``) whenever this generator ends, a disconnect included."""
    try:
        if resp.chat:
            yield resp.chunk(None, None, [], role=True)
        if resp.p.echo:
            yield resp.chunk(resp.p.prompt_text, None, [])
        ev = first
        while True:
            n_lp = len(resp.lp_tokens)
            delta = resp.take(ev)
            new_lp = resp.lp_tokens[n_lp:]
            if resp.error is not None:
                e = resp.error
                yield _sse(error_body(e.status, e.message, code=e.code))
                break
            if delta or new_lp:
                yield resp.chunk(delta, None, new_lp)
            if resp.ended:
                yield resp.chunk(None, resp.finish, [])
                if resp.p.include_usage:
                    yield resp.usage_chunk()
                break
            ev = await run.next()
        yield "data: [DONE]\n\n"
    finally:
        run.handle.cancel()


class _CountRequests:
    """ASGI middleware: counts every answered HTTP request by endpoint and status (streams included)."""

    def __init__(self, app: Any, metrics: Any) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_status(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            ep = next((e for e in _ENDPOINTS if path == e or path.startswith(e + "/")), "other")
            self.metrics.requests.inc(endpoint=ep, status=str(status[0]))
