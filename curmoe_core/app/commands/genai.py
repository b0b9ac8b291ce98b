"""``curmoe export MODEL --format ort-genai|ov-genai -o OUT/``: folders ONNX Runtime GenAI and OpenVINO GenAI load.

The writers live in :mod:`curmoe.exporters.genai`; the export options (--dispatch, --dtype, --fold-u,
--fused-moe) are the ONNX export's. Heavy imports happen inside the writers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from curmoe.app.cli import folder_format


def _onnx_config(args: argparse.Namespace) -> Any:
    from curmoe.exporters import OnnxExportConfig

    return OnnxExportConfig(dispatch=args.dispatch, dtype=args.dtype, fold_u=args.fold_u is not False,
                            with_cache=not args.no_cache, fused_moe=args.fused_moe)


@folder_format("ort-genai", "folder for ONNX Runtime GenAI (model.onnx, genai_config.json, tokenizer)")
def write_ort_genai(model: Any, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    from curmoe.exporters.genai import export_ort_genai

    return export_ort_genai(model, folder, _onnx_config(args))


@folder_format("ov-genai", "folder for OpenVINO GenAI LLMPipeline (stateful IR, tokenizer IRs, configs)")
def write_ov_genai(model: Any, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    from curmoe.exporters.genai import export_ov_genai

    return export_ov_genai(model, folder, _onnx_config(args))
