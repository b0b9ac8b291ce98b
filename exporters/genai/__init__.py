"""curmoe.exporters.genai: folders the vendors' own LLM stacks load and run.

- :func:`export_ort_genai`: ONNX Runtime GenAI (``onnxruntime_genai.Model(folder)``): model.onnx with GenAI
  names, genai_config.json, tokenizer files.
- :func:`export_ov_genai`: OpenVINO GenAI (``openvino_genai.LLMPipeline(folder, "CPU")``): stateful IR,
  tokenizer/detokenizer IRs, config.json / generation_config.json.
- :func:`make_stateful_ir`: the KV cache of an OpenVINO model as internal state (reusable by any OpenVINO
  runner; see :mod:`curmoe.exporters.genai.stateful`).

Importing this package imports neither onnx nor openvino: each function loads its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["export_ort_genai", "export_ov_genai", "genai_tokenizer", "make_stateful_ir"]

_LAZY = {
    "export_ort_genai": "curmoe.exporters.genai.ort_genai",
    "export_ov_genai": "curmoe.exporters.genai.ov_genai",
    "make_stateful_ir": "curmoe.exporters.genai.stateful",
    "genai_tokenizer": "curmoe.exporters.genai._tokenizer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'curmoe.exporters.genai' has no attribute {name!r}")
