"""curmoe.exporters.quantize: weight-only 8/4-bit quantisation of an exported model with the runtime's own tool.

One verb, :func:`quantize` (``src`` file, :class:`QuantizeConfig`, ``dst`` file):

- ``runtime="onnxruntime"``: ONNX Runtime's ``MatMulNBitsQuantizer`` (``onnxruntime.quantization``) replaces each
  chosen ``MatMul`` by ``com.microsoft.MatMulNBits`` (8 or 4 bits, blockwise along the input dimension K, one
  float32 scale and one packed zero point per block of ``block_size`` weights); ``src`` is a curmoe ONNX export,
  ``dst`` an ``.onnx`` file (it runs on ONNX Runtime only).
- ``runtime="openvino"``: OpenVINO's NNCF ``nncf.compress_weights`` on the IR (``INT8_ASYM``: per output channel;
  ``INT4_ASYM`` / ``INT4_SYM``: groups of ``block_size`` along K, a weight whose K no power of two >= 16 and <=
  ``block_size`` divides falls back to int8 per channel); ``src`` is an ONNX export (converted to IR first) or an IR
  ``.xml``, ``dst`` an IR ``.xml`` (+ ``.bin``).

Which MatMul weights (``what``; :func:`weight_group` names each weight's group from its checkpoint name):

- ``"experts"`` (default): the expert matrices only, in their stored form: dense ``W``, neuron-CUR ``W`` (k, n) /
  ``W_down'`` (m, k), CUR ``C``, ``U``, ``R``, SVD ``A``, ``B``; routed and shared experts.
- ``"all"``: also attention (q, k, v, o), dense FFN layers and the LM head.
- never: the router (``layers.{l}.router.weight``, ``shared_gate``: its top-k is a discrete decision on logits,
  and it is E x d, a negligible share of the bytes), the token embedding (a Gather, not a MatMul), norms.

Importing this package never imports onnx, onnxruntime, openvino or nncf.
"""

from __future__ import annotations

import os
from pathlib import Path

from curmoe.common.errors import InvalidInputError, require
from curmoe.exporters.quantize._config import (
    BITS,
    METADATA_KEY,
    RUNTIMES,
    WHAT,
    QuantizeConfig,
    QuantizeResult,
    block_for,
    disk_bytes,
    quantization_metadata,
    selected,
    weight_group,
)

__all__ = [
    "BITS",
    "METADATA_KEY",
    "RUNTIMES",
    "WHAT",
    "QuantizeConfig",
    "QuantizeResult",
    "block_for",
    "disk_bytes",
    "quantization_metadata",
    "quantize",
    "selected",
    "weight_group",
]


def quantize(src: str | os.PathLike[str], config: QuantizeConfig, dst: str | os.PathLike[str]) -> QuantizeResult:
    """Quantise the weights of the exported model ``src`` into ``dst``, written atomically.

    Args:
        src: a curmoe ONNX export (``.onnx``), or for ``runtime="openvino"`` also an IR ``.xml``.
        config: a :class:`QuantizeConfig`.
        dst: ``.onnx`` (onnxruntime) or ``.xml`` (openvino); an existing file is replaced.

    Raises:
        curmoe.InvalidInputError: a missing or wrong kind of input, a wrong output suffix, no weight to quantise.
        curmoe.CheckpointError: an input that does not parse as ONNX / IR.
        curmoe.MissingExtraError: onnxruntime (``curmoe[onnx]``), openvino or nncf (``curmoe[quant]``) missing.
    """
    if not isinstance(config, QuantizeConfig):
        raise InvalidInputError(f"config must be a QuantizeConfig, got {type(config).__name__}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise InvalidInputError(f"input {str(src)!r} does not exist; pass an ONNX file or IR .xml written by "
                                "curmoe export")
    want = {"onnxruntime": (".onnx",), "openvino": (".onnx", ".xml")}[config.runtime]
    if src.suffix not in want:
        hint = (" (ONNX Runtime cannot run OpenVINO IR: quantise the .onnx export, or pass --runtime openvino)"
                if src.suffix == ".xml" else "")
        raise InvalidInputError(f"input {str(src)!r} is not {' or '.join(want)}{hint}; pass a file written by "
                                "curmoe export")
    out_suffix = ".onnx" if config.runtime == "onnxruntime" else ".xml"
    if dst.suffix != out_suffix:
        raise InvalidInputError(f"output {str(dst)!r} must end in {out_suffix} for runtime={config.runtime}")
    if dst.resolve() == src.resolve():
        raise InvalidInputError(f"output {str(dst)!r} is the input; choose another -o")
    require("onnx", "onnx")
    if config.runtime == "onnxruntime":
        require("onnxruntime", "onnx")
        require("onnx_ir", "quant")
        from curmoe.exporters.quantize._ort import quantize_ort

        return quantize_ort(src, config, dst)
    require("openvino", "openvino")
    require("nncf", "quant")
    from curmoe.exporters.quantize._ov import quantize_ov

    return quantize_ov(src, config, dst)
