"""ONNX Runtime: MatMul -> com.microsoft.MatMulNBits with ONNX Runtime's own ``MatMulNBitsQuantizer``.

MatMulNBits (ONNX Runtime contrib op; 2/4/8 bits, CPU kernels for 4 and 8 in ORT >= 1.20) stores B (K, N) as
N x ceil(K / block) blocks of ``block`` weights, each block one float32 scale and (asymmetric) one zero point; the
quantiser rounds to nearest (RTN). It takes one block size per call, so the chosen MatMuls are grouped by the
block :func:`curmoe.exporters.quantize.block_for` picks for their K and the quantiser runs once per group.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from curmoe.common.errors import CheckpointError, InvalidInputError
from curmoe.exporters.onnx import EXTERNAL_DATA_BYTES
from curmoe.exporters.quantize._config import (
    METADATA_KEY,
    QuantizeConfig,
    QuantizeResult,
    block_for,
    disk_bytes,
    quantization_metadata,
    selected,
)
from curmoe.exporters.quantize._fold import curmoe_meta, fold_weights

__all__ = ["load_checked", "quantize_ort"]

log = logging.getLogger(__name__)


def load_checked(src: Path) -> onnx.ModelProto:
    """The ONNX model at ``src`` with its weights, or CheckpointError naming the file."""
    try:
        return onnx.load(str(src))
    except Exception as e:  # noqa: BLE001 (google.protobuf DecodeError, a missing .data file)
        raise CheckpointError(f"{str(src)!r} is not a readable ONNX model ({type(e).__name__}); pass a file written "
                              "by curmoe export") from None


def quantize_ort(src: Path, config: QuantizeConfig, dst: Path) -> QuantizeResult:
    import onnxruntime
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # the quantiser logs every node at INFO (and calls logging.basicConfig on import)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    proto = load_checked(src)
    curmoe_meta(proto, str(src))
    shapes = fold_weights(proto, lambda name: selected(name, config.what))
    if not shapes:
        raise InvalidInputError(f"{str(src)!r} has no {config.what} MatMul with a constant 2-D weight to quantise "
                                "(a stacked-expert layout?); export with the default layout")
    all_matmuls = [n.name for n in proto.graph.node if n.op_type == "MatMul"]
    groups: dict[int, list[str]] = {}
    for name, (K, _) in shapes.items():
        groups.setdefault(block_for(K, config.block_size), []).append(name)
    weight_of = {n.name: n.input[1] for n in proto.graph.node if n.name in shapes}
    for block, names in sorted(groups.items()):
        chosen = set(names)
        q = MatMulNBitsQuantizer(proto, bits=config.bits, block_size=block, is_symmetric=config.symmetric,
                                 nodes_to_exclude=[n for n in all_matmuls if n not in chosen],
                                 op_types_to_quantize=("MatMul",))
        q.process()
        proto = q.model.model
    left = {n.name for n in proto.graph.node if n.op_type == "MatMul"} & set(shapes)
    if left:
        raise InvalidInputError(f"ONNX Runtime's quantiser left {len(left)} chosen MatMul(s) unquantised, e.g. "
                                f"{min(left)!r}")
    quantized = {weight_of[n].removesuffix(".T"): {"bits": config.bits, "block": block, "K": shapes[n][0],
                                                   "N": shapes[n][1]}
                 for block, names in groups.items() for n in names}
    kept = sorted(n.input[1] for n in proto.graph.node if n.op_type == "MatMul" and n.input[1].endswith(".T"))
    tool = f"onnxruntime {onnxruntime.__version__} MatMulNBitsQuantizer (RTN)"
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, quantization_metadata(config.to_dict(), tool, len(quantized))
    _save(proto, dst)
    log.info("quantised %d MatMul weights of %s to %d bits -> %s", len(quantized), src, config.bits, dst)
    return QuantizeResult(path=str(dst), config=config.to_dict(), tool=tool, quantized=quantized,
                          kept_float=[k.removesuffix(".T") for k in kept], bytes_on_disk=disk_bytes(dst))


def _save(proto: onnx.ModelProto, dst: Path) -> None:
    """Write ``dst`` (and ``dst.data`` when the weights pass the protobuf limit) atomically: a temporary folder
    beside it, then ``os.replace`` (the data file first, the graph last); a stale ``dst.data`` is removed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    data = dst.with_name(dst.name + ".data")
    try:
        external = proto.ByteSize() > EXTERNAL_DATA_BYTES
        onnx.save(proto, str(tmp / dst.name), save_as_external_data=external, all_tensors_to_one_file=True,
                  location=data.name, size_threshold=1024)
        if external:
            os.replace(tmp / data.name, data)
        else:
            data.unlink(missing_ok=True)
        os.replace(tmp / dst.name, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
