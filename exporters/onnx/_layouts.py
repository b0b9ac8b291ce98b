"""The export layout measured fastest per runtime (issue 15 item 2; numbers in docs/runtime_scale.md).

Measured on ONNX Runtime CPU and OpenVINO CPU at OLMoE's and Mixtral's layer shapes (benchmarks/runtime_scale.py,
benchmarks/onnx_layouts.py):

- **U folded into C** (``fold_u=True``, every runtime): the graph reads m r + r n weights per CUR matrix instead of
  m c + c r + r n and runs one MatMul less. It is the :class:`OnnxExportConfig` default; the checkpoint keeps C, U,
  R and the file's metadata keeps the row/column indices.
- **fused ``com.microsoft.MoE``** (ONNX Runtime only) for dense SwiGLU top-k experts and for neuron-pruned ones
  whose experts all keep the same number of neurons (uniform budget): faster than the sparse dispatch at batch-1
  decode (dense 1.37x in the OLMoE-shaped table; neuron CUR 70% 1.16x in the paired OLMoE measurement, 2.1x in
  the Mixtral-shaped table). With a global budget the widths differ and the fused kernel reads every expert
  zero-padded to the widest (not measured), so those keep the sparse dispatch. Not for OpenVINO (it has no such
  operator), so it is not the ONNX default: the default file runs everywhere.
- **MatMul** on the transposed initializer, not ``Gemm(transB=1)`` (the same speed, measured), and **per-expert
  MatMul chains**, not factors stacked (E, ...) with a Gather of the active experts (the Gather copies the
  weights a decode step reads: 0.5-0.8x).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from curmoe.exporters.onnx._config import OnnxExportConfig
from curmoe.reference import Model

__all__ = ["layout_for"]


def layout_for(model: Model, runtime: str = "onnxruntime:cpu", **options: Any) -> OnnxExportConfig:
    """The fastest measured :class:`OnnxExportConfig` for running ``model`` on ``runtime`` (a registry name such as
    ``"onnxruntime:cpu"`` or ``"openvino:cpu"``); ``options`` (dispatch, dtype, with_cache, ...) are kept as given.

    ONNX Runtime gets the fused ``com.microsoft.MoE`` when every MoE layer has SwiGLU experts, dense or
    neuron-pruned to one common width, and a softmax top-k router (the only case it reproduces); every runtime gets
    U folded into C.
    """
    from curmoe.exporters.onnx._moe import fused_applies

    cfg = OnnxExportConfig(**options)
    if "fused_moe" in options:
        return cfg
    cfg_m = model.config
    has_moe = any(cfg_m.layer_type(l) == "moe" for l in range(cfg_m.n_layers))
    # dense experts, or neuron-pruned ones all of one width (no zero padding in the fused weights)
    widths = {spec.get("n_neurons") for k, spec in cfg_m.factors.items() if ".experts." in k}
    one_width = all(spec["kind"] == "neuron" for k, spec in cfg_m.factors.items() if ".experts." in k) and len(widths) <= 1
    if (runtime.startswith("onnxruntime") and has_moe and one_width and cfg.dispatch == "sparse"
            and fused_applies(cfg_m) is None):
        return replace(cfg, fused_moe=True)
    return cfg
