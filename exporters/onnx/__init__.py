"""curmoe.exporters.onnx: the ONNX graph of a curmoe model (sparse/dense dispatch, fp16, fused MoE, KV cache).

Importing this package never imports onnx: :func:`export_onnx` loads the builder on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from curmoe.exporters.onnx._config import (
    DEFAULT_OPSET,
    EXTERNAL_DATA_BYTES,
    MAX_OPSET,
    OnnxExportConfig,
)
from curmoe.exporters.onnx.outputs import with_routing_outputs

__all__ = ["OnnxExportConfig", "DEFAULT_OPSET", "MAX_OPSET", "EXTERNAL_DATA_BYTES", "export_onnx",
           "with_routing_outputs", "layout_for"]

_LAZY = {"export_onnx": "curmoe.exporters.onnx._export", "layout_for": "curmoe.exporters.onnx._layouts"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'curmoe.exporters.onnx' has no attribute {name!r}")
