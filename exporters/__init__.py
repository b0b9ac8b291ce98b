"""curmoe.exporters: write a curmoe model in a runtime format (ONNX today).

One verb, :func:`export`, dispatching on the type of the config. Importing this package never imports onnx; the
exporter module is imported on the first call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from curmoe._errors import InvalidInputError, require
from curmoe.exporters._onnx_config import DEFAULT_OPSET, MAX_OPSET, OnnxExportConfig

__all__ = ["export", "OnnxExportConfig", "DEFAULT_OPSET", "MAX_OPSET"]


def export(model: Any, config: OnnxExportConfig, path: str | os.PathLike[str]) -> Path:
    """Export ``model`` (a :class:`curmoe.Model`) as described by ``config`` to ``path``; returns the path.

    Args:
        model: a dense or compressed :class:`curmoe.Model`.
        config: an :class:`OnnxExportConfig` (ONNX is the only format so far).
        path: the output file (``.onnx``); with external data a ``<name>.onnx.data`` file is written next to it.

    Raises:
        curmoe.InvalidInputError: bad config, path or a model the exporter cannot express.
        curmoe.DecodingNotSupportedError: a KV-cache graph was asked for a non-causal (expert_choice) router.
        curmoe.MissingExtraError: onnx is not installed (``pip install 'curmoe[onnx]'``).
    """
    if isinstance(config, OnnxExportConfig):
        require("onnx", "onnx")
        from curmoe.exporters.onnx_export import export_onnx

        return export_onnx(model, config, path)
    raise InvalidInputError(
        f"config must be an OnnxExportConfig (the only export format so far), got {type(config).__name__}"
    )
