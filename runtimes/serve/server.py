"""Build the server for a model and runtime, and run it under uvicorn.

Shutdown (SIGINT / SIGTERM) is graceful: uvicorn stops accepting connections and lets in-flight requests (streams
included) finish for up to ``shutdown_timeout`` seconds, then cancels what is left (each cancelled request frees
its slot); the engine then answers anything still queued with 503 and stops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curmoe.common.errors import require
from curmoe.runtimes.serve.engine import Engine, EngineConfig

__all__ = ["ServerOptions", "build", "run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerOptions:
    """Everything ``curmoe serve`` takes (see its --help)."""

    model: str
    runtime: str = "onnxruntime:cpu"
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int | None = None
    served_model_name: str | None = None
    api_key: str | None = None
    max_batch: int = 32
    max_queue: int = 64
    queue_timeout: float = 60.0
    request_timeout: float = 600.0
    max_prompt_tokens: int | None = None
    max_tokens_limit: int | None = None
    max_body_bytes: int = 1 << 20
    shutdown_timeout: float = 30.0
    chat_template: str | None = None
    tokenizer: str | None = None
    log_level: str = "info"


def build(opts: ServerOptions) -> tuple[Any, Engine, dict[str, Any]]:
    """(ASGI app, its engine, a description) for ``opts``; the engine starts with the app's lifespan."""
    require("fastapi", "serve")
    from curmoe.runtimes import load
    from curmoe.runtimes.evaluate import session_config
    from curmoe.runtimes.serve.app import ServeSettings, create_app
    from curmoe.runtimes.serve.model import resolve_model
    from curmoe.runtimes.serve.text import TextCodec

    path, folder = resolve_model(opts.model, opts.runtime)
    session = load(path, opts.runtime, threads=opts.threads)
    cfg = session_config(session)
    tok = Path(opts.tokenizer) if opts.tokenizer else folder / "tokenizer.json"
    template = Path(opts.chat_template).read_text(encoding="utf-8") if opts.chat_template else None
    codec = TextCodec(tok, chat_template=template)
    C = int(cfg.max_seq_len)
    max_prompt = opts.max_prompt_tokens or C - 1
    max_tokens = opts.max_tokens_limit or C
    settings = ServeSettings(
        model_name=opts.served_model_name or Path(str(opts.model).rstrip("/")).name,
        context=C, max_prompt_tokens=max_prompt, max_tokens_limit=max_tokens, max_body_bytes=opts.max_body_bytes,
        api_key=opts.api_key, stop_token_ids=() if cfg.eos_token_id is None else (int(cfg.eos_token_id),),
        vocab_size=int(cfg.vocab_size))
    engine = Engine(session, EngineConfig(max_batch=opts.max_batch, max_queue=opts.max_queue,
                                          queue_timeout=opts.queue_timeout, request_timeout=opts.request_timeout))
    app = create_app(engine, codec, settings)
    info = {"model": settings.model_name, "path": str(path), "runtime": session.info().name, "context": C,
            "max_batch": opts.max_batch, "max_queue": opts.max_queue, "chat": codec.has_chat_template,
            "url": f"http://{opts.host}:{opts.port}/v1", "api_key": opts.api_key is not None}
    return app, engine, info


def run(opts: ServerOptions) -> None:
    """Serve until SIGINT/SIGTERM (blocks)."""
    require("uvicorn", "serve")
    import uvicorn

    app, _, info = build(opts)
    log.info("serving %s on %s with %s", info["model"], info["url"], info["runtime"])
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level=opts.log_level,
                            timeout_graceful_shutdown=opts.shutdown_timeout, access_log=False,
                            server_header=False, lifespan="on")
    uvicorn.Server(config).run()
