"""curmoe.runtimes.serve: an OpenAI-compatible HTTP server with continuous batching over any curmoe runtime.

- :class:`Engine` steps every running sequence together on a runtime Session (one KV-cache row, position and
  attention-mask row per sequence; sequences join and leave between decode steps).
- :func:`build` / :func:`run` (``curmoe serve``) put the FastAPI app of :mod:`curmoe.runtimes.serve.app` in front
  of it under uvicorn.

Importing this package imports neither FastAPI nor a runtime SDK; :mod:`~curmoe.runtimes.serve.app` does (extra
``serve``). May import the core, ``curmoe.runtimes``, ``curmoe.exporters`` and ``curmoe.models.tokenizer``;
never ``curmoe.app``.
"""

from __future__ import annotations

from curmoe.runtimes.serve.engine import Done, Engine, EngineBusyError, EngineConfig, Failed, GenRequest, Token
from curmoe.runtimes.serve.metrics import Metrics
from curmoe.runtimes.serve.server import ServerOptions, build, run

__all__ = ["run", "build", "ServerOptions", "Engine", "EngineConfig", "GenRequest", "Token", "Done", "Failed",
           "EngineBusyError", "Metrics"]
