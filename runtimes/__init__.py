"""curmoe.runtimes: run exported models on vendor runtimes, validate them against the reference, generate text.

- :func:`load` opens a model on a runtime by registry name ("onnxruntime:cpu", "onnxruntime:cuda", ...);
  :func:`available` lists the runtimes usable here with their devices.
- :func:`validate` compares a runtime with the float64 NumPy reference (logits, routing, perplexity).
- :func:`generate` decodes with a KV cache over any session.

Importing this package imports no vendor SDK: each adapter module (``adapters/``) is imported on first use. May
import the core, ``curmoe.exporters`` (ONNX helpers) and ``curmoe.models.tokenizer``; never ``curmoe.app``.
"""

from __future__ import annotations

from curmoe.runtimes._registry import (
    REGISTRY,
    RuntimeEntry,
    available,
    load,
    names,
    register,
)
from curmoe.runtimes.base import (
    IOSpec,
    RuntimeInfo,
    RuntimeNotAvailableError,
    Session,
    SessionOptions,
)
from curmoe.runtimes.generate import generate
from curmoe.runtimes.tolerances import TOLERANCES, Tolerance, tolerance_for
from curmoe.runtimes.validate import ValidationReport, validate, validate_seeds

__all__ = [
    "load",
    "available",
    "names",
    "register",
    "REGISTRY",
    "RuntimeEntry",
    "Session",
    "SessionOptions",
    "IOSpec",
    "RuntimeInfo",
    "RuntimeNotAvailableError",
    "generate",
    "validate",
    "validate_seeds",
    "ValidationReport",
    "Tolerance",
    "TOLERANCES",
    "tolerance_for",
]
