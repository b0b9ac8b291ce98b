"""curmoe.exporters: write a curmoe model in a runtime format: ``onnx/`` (graph builder), ``coreml/`` (MIL
builder), ``openvino.py`` (IR from the ONNX file).

One verb, :func:`export`, dispatching on the type of the config. Importing this package never imports onnx; the
exporter module is imported on the first call. May import the core (``curmoe``'s public names); never
``curmoe.runtimes``, ``curmoe.models`` or ``curmoe.app`` (tests/test_architecture.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from curmoe.common.errors import InvalidInputError, require
from curmoe.exporters.onnx import DEFAULT_OPSET, MAX_OPSET, OnnxExportConfig

__all__ = ["export", "OnnxExportConfig", "DEFAULT_OPSET", "MAX_OPSET"]


def export(model: Any, config: OnnxExportConfig, path: str | os.PathLike[str]) -> Path:
    """Export ``model`` (a :class:`curmoe.Model`) as described by ``config`` to ``path``; returns the path.

    Args:
        model: a dense or compressed :class:`curmoe.Model`.
        config: an :class:`OnnxExportConfig` (ONNX) or a :class:`CoreMLExportConfig` (Core ML ML Program).
        path: the output file (``.onnx``; with external data a ``<name>.onnx.data`` file is written next to it),
            or the ``.mlpackage`` directory for Core ML.

    Raises:
        curmoe.InvalidInputError: bad config, path or a model the exporter cannot express.
        curmoe.DecodingNotSupportedError: a KV-cache graph was asked for a non-causal (expert_choice) router.
        curmoe.MissingExtraError: onnx is not installed (``pip install 'curmoe[onnx]'``), or coremltools for
            Core ML (``pip install 'curmoe[coreml]'``).
    """
    if isinstance(config, OnnxExportConfig):
        require("onnx", "onnx")
        from curmoe.exporters.onnx import export_onnx

        return export_onnx(model, config, path)
    if isinstance(config, CoreMLExportConfig):  # issue 6: Core ML ML Program (.mlpackage)
        require("coremltools", "coreml")
        from curmoe.exporters.coreml import export_coreml

        return export_coreml(model, config, path)
    raise InvalidInputError(
        f"config must be an OnnxExportConfig or a CoreMLExportConfig, got {type(config).__name__}"
    )


# --- OpenVINO IR and Core ML (issue 6) ---
from curmoe.exporters.coreml import CoreMLExportConfig  # noqa: E402

__all__ += ["CoreMLExportConfig", "export_openvino_ir"]


def export_openvino_ir(onnx_path: str | os.PathLike[str], out_xml: str | os.PathLike[str], **options: Any) -> Path:
    """Convert a curmoe ONNX export to OpenVINO IR (.xml + .bin); see
    :func:`curmoe.exporters.openvino.export_openvino_ir` (options: compress_to_fp16, routing_outputs).

    Raises:
        curmoe.MissingExtraError: openvino is not installed (``pip install 'curmoe[openvino]'``).
    """
    require("openvino", "openvino")
    from curmoe.exporters.openvino import export_openvino_ir as _export_ir

    return _export_ir(onnx_path, out_xml, **options)
