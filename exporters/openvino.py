"""Save a curmoe ONNX export as OpenVINO IR (``.xml`` graph + ``.bin`` weights), what ``curmoe export --format
openvino`` writes.

OpenVINO reads the ONNX file directly as well (``curmoe.runtimes.load(path, "openvino:cpu")``); IR skips the ONNX
frontend at load time and is the format OpenVINO's tools (benchmark_app, NNCF weight compression, OVMS) take.
The ONNX ``metadata_props`` (curmoe.config, curmoe.export, ...) are kept in the IR's ``rt_info`` under
``curmoe``. Weights are stored as exported (``compress_to_fp16=False`` by default: ``openvino.save_model``'s own
default halves float32 weights, which would not be the validated model). The pair is written atomically: a
temporary directory next to the target, then ``os.replace`` (``.bin`` first, ``.xml`` last).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import openvino

from curmoe.common.checks import check_bool
from curmoe.common.errors import InvalidInputError

__all__ = ["export_openvino_ir"]

log = logging.getLogger(__name__)


def export_openvino_ir(onnx_path: str | os.PathLike[str], out_xml: str | os.PathLike[str], *,
                       compress_to_fp16: bool = False, routing_outputs: bool = False) -> Path:
    """Convert an exported curmoe ONNX file to OpenVINO IR; returns the ``.xml`` path (``.bin`` next to it).

    Args:
        onnx_path: a curmoe ONNX export.
        out_xml: the IR file to write, ending in ``.xml``.
        compress_to_fp16: store float32 weights as float16 (half the size; OpenVINO decompresses at load time).
        routing_outputs: also output ``routing.{l}.selected`` / ``routing.{l}.logits`` when the ONNX file computes
            them but does not output them (what ``curmoe.runtimes.adapters.ov`` validation reads; dense-dispatch exports
            compute the selection but OpenVINO drops it unless it is an output).

    Raises:
        curmoe.InvalidInputError: a missing input file or wrong suffixes.
    """
    src, dst = Path(onnx_path), Path(out_xml)
    if not src.is_file() or src.suffix != ".onnx":
        raise InvalidInputError(f"{str(src)!r} is not an ONNX file; export one with curmoe.exporters.export")
    if dst.suffix != ".xml":
        raise InvalidInputError(f"OpenVINO IR output path {str(dst)!r} must end in .xml (the .bin goes next to it)")
    compress_to_fp16 = check_bool(compress_to_fp16, "compress_to_fp16")
    routing_outputs = check_bool(routing_outputs, "routing_outputs")
    meta: dict[str, str] = {}
    read_from, tmp_onnx = src, None
    try:
        import onnx

        proto = onnx.load(str(src), load_external_data=False)
        meta = {p.key: p.value for p in proto.metadata_props}
        if routing_outputs:
            tmp_onnx = _with_routing(src, proto)
            read_from = tmp_onnx or src
        del proto
    except ImportError:
        if routing_outputs:
            raise
        log.warning("onnx is not installed: the IR will not carry the curmoe metadata of %s", src)
    try:
        model = openvino.Core().read_model(str(read_from))
    finally:
        if tmp_onnx is not None:
            tmp_onnx.unlink(missing_ok=True)
    for k, v in meta.items():
        model.set_rt_info(v, ["curmoe", k])
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        openvino.save_model(model, str(tmpdir / dst.name), compress_to_fp16=compress_to_fp16)
        os.replace(tmpdir / dst.with_suffix(".bin").name, dst.with_suffix(".bin"))
        os.replace(tmpdir / dst.name, dst)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    log.info("wrote OpenVINO IR %s (+ .bin) from %s", dst, src)
    return dst


def _with_routing(src: Path, proto: object) -> Path | None:
    """A sibling copy of the ONNX file that outputs its routing tensors (None if it has none to add)."""
    import json

    from curmoe.exporters.onnx import with_routing_outputs
    from curmoe.reference import ModelConfig

    meta = {p.key: p.value for p in proto.metadata_props}  # type: ignore[attr-defined]
    if "curmoe.config" not in meta:
        raise InvalidInputError(f"{str(src)!r} has no curmoe.config metadata; routing_outputs needs a curmoe export")
    cfg = ModelConfig.from_dict(json.loads(meta["curmoe.config"]))
    return with_routing_outputs(src, proto, cfg)
