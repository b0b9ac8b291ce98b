"""``curmoe serve MODEL --runtime R``: the OpenAI-compatible server of :mod:`curmoe.runtimes.serve`."""

from __future__ import annotations

import argparse
import os

from curmoe.app.cli import command

__all__: list[str] = []


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a curmoe checkpoint folder (exported to ONNX on first use and cached in "
                                 "$CURMOE_CACHE_DIR) or an exported .onnx / .xml file")
    p.add_argument("--runtime", default="onnxruntime:cpu",
                   help="onnxruntime:cpu, openvino:cpu, reference, ... (curmoe runtimes) (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="bind address; localhost only unless changed "
                                                       "(default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="runtime intra-op threads (default: the runtime's)")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: MODEL's name)")
    p.add_argument("--api-key", default=os.environ.get("CURMOE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $CURMOE_API_KEY, else none)")
    p.add_argument("--max-batch", type=int, default=32, help="sequences decoded together (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for a slot; more get 429 (default: %(default)s)")
    p.add_argument("--queue-timeout", type=float, default=60.0,
                   help="seconds a request may wait for a slot before a 503 (default: %(default)s)")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may run in all before a 503 (default: %(default)s)")
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="longer prompts get 413 (default: the model's context minus 1)")
    p.add_argument("--max-tokens-limit", type=int, default=None,
                   help="larger max_tokens get 400 (default: the model's context)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger bodies get 413 (default: %(default)s)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGINT/SIGTERM, seconds in-flight requests may finish (default: %(default)s)")
    p.add_argument("--chat-template", default=None,
                   help="a Jinja chat template file (default: chat_template.jinja or tokenizer_config.json beside "
                        "the tokenizer; without one /v1/chat/completions answers 400)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the one beside the model)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default: %(default)s)")


@command("serve", "serve a model over an OpenAI-compatible HTTP API with continuous batching")
def _serve(args: argparse.Namespace) -> int:
    from curmoe.runtimes.serve import ServerOptions, run

    opts = {k: v for k, v in vars(args).items() if k in ServerOptions.__dataclass_fields__}
    run(ServerOptions(**opts))
    return 0


_serve.configure = _configure  # type: ignore[attr-defined]
