"""The continuous-batching engine: one thread steps every running sequence together over a runtime Session.

Requests wait in a bounded FIFO queue for one of ``max_batch`` slots. Between two decode steps the engine admits
waiting requests into free slots (each prompt is prefilled alone, batch 1, empty cache: exactly the first step of
:func:`curmoe.runtimes.generate`), drops the sequences that finished, were cancelled (a client that went away)
or ran past their deadline, and then runs one decode step for all remaining sequences at once
(:class:`~curmoe.runtimes.serve.batch.KVBatch`: one KV row and position per sequence, padding masked). Tokens
are picked by :func:`curmoe.runtimes.generate.sample_next` with a generator per request seeded by its seed, so
greedy and seeded output is the one ``curmoe generate`` prints for the same prompt.

Every submitted request receives exactly one final event (:class:`Done` or :class:`Failed`), whatever happens
(finished, cancelled, timed out, runtime error, shutdown): no request is left without an answer.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from curmoe.common.checks import check_int, check_number
from curmoe.common.errors import CurmoeError, InvalidInputError
from curmoe.runtimes.base import Session
from curmoe.runtimes.generate import cache_layout, empty_cache, sample_next
from curmoe.runtimes.serve.batch import KVBatch
from curmoe.runtimes.serve.metrics import Metrics

__all__ = ["Engine", "EngineConfig", "GenRequest", "Token", "Done", "Failed", "Event", "EngineBusyError"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Limits of the engine.

    Attributes:
        max_batch: sequences decoded together (slots); more requests wait in the queue.
        max_queue: requests that may wait for a slot; one more is refused (HTTP 429).
        queue_timeout: seconds a request may wait for a slot before it is refused (HTTP 503).
        request_timeout: seconds a request may take from submission to its last token (HTTP 503 after).
    """

    max_batch: int = 32
    max_queue: int = 64
    queue_timeout: float = 60.0
    request_timeout: float = 600.0

    def __post_init__(self) -> None:
        check_int(self.max_batch, "max_batch", lo=1)
        check_int(self.max_queue, "max_queue", lo=0)
        check_number(self.queue_timeout, "queue_timeout", lo=0, lo_open=True)
        check_number(self.request_timeout, "request_timeout", lo=0, lo_open=True)


@dataclass(frozen=True)
class GenRequest:
    """One sequence to generate: token ids in, up to ``max_tokens`` ids out (ending after any of
    ``stop_token_ids``, e.g. the model's end-of-sequence id and a chat template's end-of-turn id)."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's logprob and the k most likely

    def __post_init__(self) -> None:
        if len(self.prompt_ids) < 1:
            raise InvalidInputError("prompt_ids is empty; pass at least one token id")
        check_int(self.max_tokens, "max_tokens", lo=1)
        check_number(self.temperature, "temperature", lo=0, fix="0 = greedy")
        check_number(self.top_p, "top_p", lo=0, lo_open=True, hi=1)


@dataclass(frozen=True)
class Token:
    """A generated token; ``logprob``/``top`` only when the request asked for logprobs (natural log, raw logits)."""

    id: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Done:
    """The sequence ended: ``reason`` is "stop" (end-of-sequence token), "length" (max_tokens) or "cancelled"."""

    reason: str
    n_tokens: int


@dataclass(frozen=True)
class Failed:
    """The request ended without finishing: HTTP ``status`` (503 timeout/shutdown, 500 runtime error)."""

    status: int
    code: str
    message: str


Event = Token | Done | Failed


class EngineBusyError(CurmoeError, RuntimeError):
    """The request was refused on submission: the queue is full (429) or the engine is stopping (503)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(eq=False)
class Handle:
    """A submitted request as the engine tracks it; ``cancel()`` (any thread) frees its slot at the next step."""

    request: GenRequest
    sink: Callable[[Event], None]
    submitted: float = field(default_factory=time.monotonic)
    rng: np.random.Generator | None = None
    n_out: int = 0
    last: int = 0
    last_time: float = 0.0
    closed: bool = False
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    """Continuous batching over ``session`` (a KV-cache graph) in a background thread; see the module docstring."""

    def __init__(self, session: Session, config: EngineConfig | None = None, metrics: Metrics | None = None) -> None:
        self.session, self.config = session, config or EngineConfig()
        self.metrics = metrics or Metrics()
        layout = cache_layout(session)
        if not layout:
            raise InvalidInputError(f"{getattr(session, 'path', 'the model')} has no KV-cache inputs (past.*); "
                                    "serving needs a cached graph: export without --no-cache")
        self._names = [n for n, _, _ in layout]
        self._batch = KVBatch(self._names)
        self._waiting: collections.deque[Handle] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._admitting = 0  # popped from the queue, being prefilled, not yet in the batch
        self._thread: threading.Thread | None = None

    # -- public ---------------------------------------------------------------------------------------------
    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="curmoe-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop stepping; every request still waiting or running ends with ``Failed(503, "shutting_down")``."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, request: GenRequest, sink: Callable[[Event], None]) -> Handle:
        """Queue ``request``; its events go to ``sink`` (called from the engine thread, must not block).

        Raises:
            EngineBusyError: 429 when ``max_queue`` requests already wait, 503 when the engine is stopping.
        """
        h = Handle(request, sink)
        h.rng = np.random.default_rng(request.seed)
        with self._cv:
            if self._stopping or self._thread is None or not self._thread.is_alive():
                raise EngineBusyError(503, "shutting_down", "the server is shutting down; retry on another server")
            # requests that would have to wait for a slot once every free slot (less those being prefilled) is
            # taken: the queue proper, which max_queue bounds
            free = self.config.max_batch - len(self._batch) - self._admitting
            if len(self._waiting) - max(free, 0) >= self.config.max_queue:
                raise EngineBusyError(
                    429, "queue_full",
                    f"{len(self._waiting)} requests already wait for one of {self.config.max_batch} slots; the queue "
                    f"limit is {self.config.max_queue} (--max-queue {self.config.max_queue}); retry later")
            self._waiting.append(h)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cv.notify_all()
        return h

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._batch)

    # -- the loop -------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._stopping and not self._waiting and not len(self._batch):
                        self._cv.wait()
                    if self._stopping:
                        break
                    admitted = self._admit()
                    self._admitting = len(admitted)
                for h in admitted:
                    self._prefill(h)
                    self._admitting -= 1
                self._reap()
                if len(self._batch):
                    self._decode()
        except BaseException:  # pragma: no cover - a bug: answer everyone rather than leave them hanging
            log.exception("the engine loop failed")
            self._fail_all(500, "engine_error", "the serving engine failed; see the server log")
            raise
        self._fail_all(503, "shutting_down", "the server is shutting down; the request was cancelled")

    def _admit(self) -> list[Handle]:
        """Pop waiting requests into free slots; refuse those that waited too long (called under the lock)."""
        now = time.monotonic()
        admitted: list[Handle] = []
        kept: collections.deque[Handle] = collections.deque()
        free = self.config.max_batch - len(self._batch)
        for h in self._waiting:
            if h.cancelled:
                self._close(h, Done("cancelled", 0))
            elif len(admitted) < free:
                admitted.append(h)
            elif now - h.submitted > self.config.queue_timeout:
                t = self.config.queue_timeout
                self._close(h, Failed(503, "queue_timeout", f"no slot came free within {t:g} s (the queue timeout, "
                                                            f"--queue-timeout {t:g}); retry later"))
            else:
                kept.append(h)
        self._waiting = kept
        self.metrics.queue_depth.set(len(kept))
        return admitted

    def _prefill(self, h: Handle) -> None:
        ids = np.asarray(h.request.prompt_ids, np.int64)[None]  # (1, T)
        mask = np.ones_like(ids)
        try:
            res = self.session.run({"input_ids": ids, "attention_mask": mask} | empty_cache(self.session, 1))
        except Exception as e:  # a runtime error answers this request, the server keeps serving
            log.exception("prefill failed")
            self._close(h, Failed(500, "runtime_error", f"the runtime failed on this prompt: {e}"))
            return
        if not self._pick(h, res["logits"][:, -1]):
            self._batch.join(h, res, mask)
            self.metrics.active.set(len(self._batch))

    def _decode(self) -> None:
        rows: list[Handle] = self._batch.rows
        t0 = time.perf_counter()
        try:
            res = self.session.run(self._batch.feeds(np.array([h.last for h in rows])))
        except Exception as e:
            log.exception("decode step failed")
            for h in rows:
                self._close(h, Failed(500, "runtime_error", f"the runtime failed in a decode step: {e}"))
            self._batch.leave(list(range(len(rows))))
            self.metrics.active.set(0)
            return
        self._batch.advance(res)
        self.metrics.steps.inc()
        self.metrics.batch_size.observe(len(rows))
        self.metrics.step_seconds.observe(time.perf_counter() - t0)
        logits = res["logits"][:, -1]  # (B, V)
        done = [i for i, h in enumerate(rows) if self._pick(h, logits[i:i + 1])]
        self._batch.leave(done)
        self.metrics.active.set(len(self._batch))

    def _pick(self, h: Handle, logits: np.ndarray) -> bool:
        """Choose, send and count the next token of ``h`` from its logits (1, V); True when ``h`` is finished."""
        r = h.request
        tok = int(sample_next(logits, r.temperature, r.top_p, h.rng)[0])  # type: ignore[arg-type]
        lp, top = None, ()
        if r.logprobs is not None:
            z = logits[0].astype(np.float64)
            logp = z - z.max() - np.log(np.exp(z - z.max()).sum())  # log-softmax (V,)
            lp = float(logp[tok])
            if r.logprobs > 0:
                k = min(r.logprobs, logp.size)
                best = np.argsort(-logp, kind="stable")[:k]
                top = tuple((int(i), float(logp[i])) for i in best)
        now = time.monotonic()
        if h.n_out == 0:
            self.metrics.ttft.observe(now - h.submitted)
        else:
            self.metrics.itl.observe(now - h.last_time)
        h.n_out += 1
        h.last, h.last_time = tok, now
        self.metrics.tokens_out.inc()
        self._send(h, Token(tok, lp, top))
        if tok in r.stop_token_ids:
            self._close(h, Done("stop", h.n_out))
        elif h.n_out >= r.max_tokens:
            self._close(h, Done("length", h.n_out))
        return h.closed

    def _reap(self) -> None:
        """Drop running sequences that were cancelled or ran past the request timeout."""
        now = time.monotonic()
        gone = []
        t = self.config.request_timeout
        for i, h in enumerate(self._batch.rows):
            if h.cancelled:
                self._close(h, Done("cancelled", h.n_out))
                gone.append(i)
            elif now - h.submitted > t:
                self._close(h, Failed(503, "request_timeout", f"the request ran past the request timeout of {t:g} s "
                                                              f"(--request-timeout {t:g}) and was stopped"))
                gone.append(i)
        if gone:
            self._batch.leave(gone)
            self.metrics.active.set(len(self._batch))

    def _fail_all(self, status: int, code: str, message: str) -> None:
        with self._cv:
            pending = list(self._waiting) + list(self._batch.rows)
            self._waiting.clear()
            self._batch.leave(list(range(len(self._batch))))
            self.metrics.queue_depth.set(0)
            self.metrics.active.set(0)
        for h in pending:
            self._close(h, Failed(status, code, message))

    def _close(self, h: Handle, ev: Done | Failed) -> None:
        if h.closed:
            return
        h.closed = True
        self._send(h, ev)

    def _send(self, h: Handle, ev: Event) -> None:
        try:
            h.sink(ev)
        except Exception:  # a consumer that is gone (its event loop closed): the request is dropped quietly
            log.debug("event sink failed", exc_info=True)
            h.cancelled = True
