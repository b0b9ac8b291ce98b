"""OpenVINO: weight compression of the IR with NNCF (``nncf.compress_weights``), OpenVINO's own tool.

NNCF replaces a MatMul's constant weight by a low-bit constant and a decompression subgraph (Convert, Subtract
zero point, Multiply scale) that the CPU plugin fuses into its MatMul kernel. ``INT8_ASYM``: one scale and zero
point per output channel. ``INT4_ASYM`` / ``INT4_SYM``: per group of ``block_size`` weights along K; a weight whose
K is not divisible by it gets the largest power of two >= 16 that divides K (``GroupSizeFallbackMode.ADJUST``), or,
if none does, NNCF's backup precision (int8 per channel), reported in ``info["int8_backup"]``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import openvino

from curmoe.common.errors import CheckpointError, InvalidInputError
from curmoe.exporters.quantize._config import (
    METADATA_KEY,
    QuantizeConfig,
    QuantizeResult,
    disk_bytes,
    quantization_metadata,
    selected,
)

__all__ = ["quantize_ov"]

log = logging.getLogger(__name__)

_LOW_BITS = {"u8": 8, "i8": 8, "u4": 4, "i4": 4}


def _to_ir(src: Path, tmp: Path, config: QuantizeConfig) -> Path:
    """An IR of the ONNX export ``src`` whose chosen MatMuls read constant (K, N) weights (the form NNCF matches)."""
    import onnx

    from curmoe.exporters import export_openvino_ir
    from curmoe.exporters.quantize._fold import curmoe_meta, fold_weights
    from curmoe.exporters.quantize._ort import load_checked

    proto = load_checked(src)
    curmoe_meta(proto, str(src))
    fold_weights(proto, lambda name: selected(name, config.what))
    folded = tmp / "folded.onnx"
    onnx.save(proto, str(folded), save_as_external_data=True, all_tensors_to_one_file=True,
              location="folded.onnx.data", size_threshold=1024)
    del proto
    return export_openvino_ir(folded, tmp / "folded.xml", routing_outputs=True)


def _weight_source(op: Any, depth: int = 8) -> tuple[str, str] | None:
    """(friendly name, element type) of the Constant feeding a MatMul's weight input, through the decompression
    ops (Convert, Subtract, Multiply, Reshape, Transpose); the low-bit constant is preferred when there is one."""
    frontier, found = [op.input_value(1).get_node()], []
    for _ in range(depth):
        nxt = []
        for node in frontier:
            t = node.get_type_name()
            if t == "Constant":
                shape = list(node.get_output_shape(0))
                et = node.get_element_type().get_type_name()
                if et in _LOW_BITS or (len(shape) == 2 and min(shape) > 1):  # a weight, not a shape or a scale
                    found.append((node.get_friendly_name(), et))
            elif t in ("Convert", "Reshape", "Transpose"):  # data input only (the others are shapes / perms)
                nxt.append(node.input_value(0).get_node())
            elif t in ("Subtract", "Multiply"):  # (weight - zero point) * scale
                nxt += [v.get_node() for v in node.input_values()]
        frontier = nxt
    low = [f for f in found if f[1] in _LOW_BITS]
    return (low or found or [None])[0]


def _fold_ir(model: Any, config: QuantizeConfig) -> None:
    """An IR as exported multiplies by Transpose(W): give each chosen MatMul a constant (K, N) weight instead (the
    form NNCF matches; only the chosen ones, so a tied LM head does not get a float copy of the embedding)."""
    import numpy as np
    from openvino import opset13

    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        t = op.input_value(1).get_node()
        if t.get_type_name() != "Transpose" or t.input_value(0).get_node().get_type_name() != "Constant":
            continue
        w, perm = t.input_value(0).get_node(), t.input_value(1).get_node()
        if not selected(w.get_friendly_name(), config.what) or perm.get_type_name() != "Constant":
            continue
        if list(perm.get_data()) != [1, 0]:
            continue
        folded = opset13.constant(np.ascontiguousarray(w.get_data().T))  # (K, N)
        folded.set_friendly_name(w.get_friendly_name() + ".T")
        op.input(1).replace_source_output(folded.output(0))
    model.validate_nodes_and_infer_types()


def _base(name: str) -> str:
    """The checkpoint name of a weight constant: "layers.0.experts.1.up.weight.T/Transpose" -> "...up.weight"."""
    return name.split("/")[0].removesuffix(".T")


def _matmuls(model: Any) -> list[tuple[Any, str, str]]:
    """(MatMul op, weight constant name, element type) for every MatMul with a constant weight."""
    out = []
    for op in model.get_ops():
        if op.get_type_name() == "MatMul":
            src = _weight_source(op)
            if src is not None:
                out.append((op, src[0], src[1]))
    return out


def quantize_ov(src: Path, config: QuantizeConfig, dst: Path) -> QuantizeResult:
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-call bit-width table goes to the log at INFO
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        if src.suffix == ".onnx":
            ir = _to_ir(src, tmp, config)
        else:
            if b"<net" not in src.read_bytes()[:4096]:
                raise CheckpointError(f"{str(src)!r} is not OpenVINO IR (no <net> element); pass an .xml written by "
                                      "curmoe export --format openvino")
            ir = src
        model = openvino.Core().read_model(str(ir))
        if src.suffix == ".xml":
            _fold_ir(model, config)
        if not model.has_rt_info(["curmoe", "curmoe.config"]):
            raise InvalidInputError(f"{str(src)!r} has no curmoe metadata: it is not a curmoe export; export one "
                                    "with curmoe export MODEL --format openvino")
        if model.has_rt_info(["curmoe", METADATA_KEY]):
            raise InvalidInputError(f"{str(src)!r} is quantised already; quantise the float export instead")
        mms = _matmuls(model)
        chosen = [(op, w) for op, w, _ in mms if selected(w, config.what)]
        if not chosen:
            raise InvalidInputError(f"{str(src)!r} has no {config.what} MatMul with a constant weight to quantise "
                                    "(a stacked-expert layout?); export with the default layout")
        keep = {op.get_friendly_name() for op, w, _ in mms if not selected(w, config.what)}
        keep |= {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "Gather"}  # embedding
        mode = {8: "INT8", 4: "INT4"}[config.bits] + ("_SYM" if config.symmetric else "_ASYM")
        kw: dict[str, Any] = {"mode": getattr(nncf.CompressWeightsMode, mode),
                              "ignored_scope": nncf.IgnoredScope(names=sorted(keep), validate=False)}
        if config.bits == 4:
            kw |= {"group_size": config.block_size, "ratio": 1.0, "all_layers": True,
                   "advanced_parameters": AdvancedCompressionParameters(
                       group_size_fallback_mode=GroupSizeFallbackMode.ADJUST, min_adjusted_group_size=16)}
        model = nncf.compress_weights(model, **kw)
        got = {w: et for _, w, et in _matmuls(model)}
        quantized = {_base(w): {"bits": _LOW_BITS[et]} for w, et in got.items() if et in _LOW_BITS}
        missed = [w for _, w in chosen if _base(w) not in quantized]
        if missed:
            raise InvalidInputError(f"NNCF left {len(missed)} chosen weight(s) in float, e.g. {missed[0]!r}")
        backup = sorted(w for w, q in quantized.items() if q["bits"] != config.bits)
        tool = f"openvino {openvino.get_version().split('-')[0]} + nncf {nncf.__version__} compress_weights ({mode})"
        model.set_rt_info(quantization_metadata(config.to_dict(), tool, len(quantized)), ["curmoe", METADATA_KEY])
        out = tmp / "out" / dst.name
        out.parent.mkdir()
        openvino.save_model(model, str(out), compress_to_fp16=False)
        del model
        os.replace(out.with_suffix(".bin"), dst.with_suffix(".bin"))
        os.replace(out, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("quantised %d MatMul weights of %s with NNCF (%s) -> %s", len(quantized), src, mode, dst)
    kept = sorted(_base(w) for w, et in got.items() if et not in _LOW_BITS)
    return QuantizeResult(path=str(dst), config=config.to_dict(), tool=tool, quantized=quantized, kept_float=kept,
                          bytes_on_disk=disk_bytes(dst), info={"int8_backup": backup,
                                                               "metadata": json.loads(quantization_metadata(
                                                                   config.to_dict(), tool, len(quantized)))})
