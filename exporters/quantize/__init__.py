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

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from curmoe.common.checks import check_bool, check_choice, check_int
from curmoe.common.errors import InvalidInputError, require

__all__ = ["QuantizeConfig", "QuantizeResult", "quantize", "weight_group", "BITS", "RUNTIMES", "WHAT",
           "METADATA_KEY", "quantization_metadata"]

BITS = (8, 4)
RUNTIMES = ("onnxruntime", "openvino")
WHAT = ("experts", "all")
#: metadata key (ONNX ``metadata_props``; IR ``rt_info["curmoe"]``) holding the record of how a file was quantised
METADATA_KEY = "curmoe.quantization"

_EXPERT = re.compile(r"^layers\.\d+\.(experts|shared)\.\d+\.(gate|up|down)\.(weight|A|B|C|U|R)$")
_NEVER = re.compile(r"^layers\.\d+\.(router|shared_gate)\.weight$")


def weight_group(name: str) -> str:
    """The group of a MatMul weight, by its checkpoint name (an export's ``.T`` suffix dropped): ``"expert"``,
    ``"never"`` (router, shared gate) or ``"other"`` (attention, dense FFN, LM head: quantised with what="all").

    The tied LM head multiplies by ``embed.weight.T``: it is "other" (the Gather of ``embed.weight`` is no MatMul).
    """
    base = name[:-2] if name.endswith(".T") else name
    if _EXPERT.match(base):
        return "expert"
    if _NEVER.match(base):
        return "never"
    return "other"


def selected(name: str, what: str) -> bool:
    """Whether a MatMul weight ``name`` is quantised under ``what``."""
    g = weight_group(name)
    return g == "expert" or (what == "all" and g == "other")


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantise.

    Attributes:
        bits: 8 or 4.
        runtime: ``"onnxruntime"`` (MatMulNBits) or ``"openvino"`` (NNCF weight compression).
        block_size: the block (ORT) / group (NNCF int4) along the input dimension K, a power of two in [16, 4096]
            (default 128). Per matrix the block actually used is the largest power of two <= block_size that pads
            K least (a small factor of rank 40 gets 16 or 32 rather than being padded to 128); NNCF int8 is per
            output channel and ignores it.
        what: ``"experts"`` or ``"all"`` (see the module docstring).
        symmetric: symmetric quantisation (no zero points); default asymmetric.
    """

    bits: int = 8
    runtime: str = "onnxruntime"
    block_size: int = 128
    what: str = "experts"
    symmetric: bool = False
    version: int = 1

    def __post_init__(self) -> None:
        if self.bits not in BITS or isinstance(self.bits, bool):
            raise InvalidInputError(f"bits={self.bits!r} is not supported; pass --bits 8 or --bits 4")
        check_choice(self.runtime, "runtime", RUNTIMES)
        check_choice(self.what, "what", WHAT)
        b = check_int(self.block_size, "block_size", lo=16, hi=4096)
        if b & (b - 1):
            raise InvalidInputError(f"block_size={b} is not a power of two; pass 16, 32, 64, 128, ...")
        object.__setattr__(self, "block_size", b)
        object.__setattr__(self, "symmetric", check_bool(self.symmetric, "symmetric"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize` wrote: the file, the matrices quantised (name -> bits, block), and the bytes."""

    path: str
    config: dict[str, Any]
    tool: str
    quantized: dict[str, dict[str, int]]
    kept_float: list[str]
    bytes_on_disk: int
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def block_for(K: int, block_size: int) -> int:
    """The block used for a matrix with input dimension K: the largest power of two b in [16, block_size] whose
    padded length ceil(K / b) * b is smallest (ORT pads K up to a whole number of blocks)."""
    best, best_pad = 16, -(-K // 16) * 16
    b = 32
    while b <= block_size:
        pad = -(-K // b) * b
        if pad <= best_pad:
            best, best_pad = b, pad
        b *= 2
    return best


def quantization_metadata(result_config: dict[str, Any], tool: str, n: int) -> str:
    """The JSON stored under :data:`METADATA_KEY`."""
    return json.dumps({"config": result_config, "tool": tool, "n_quantized": n}, sort_keys=True)


def _files(path: Path) -> list[Path]:
    if path.suffix == ".xml":
        return [path, path.with_suffix(".bin")]
    return [path, path.with_name(path.name + ".data")]


def disk_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of an exported model: the file plus its ``.data`` (ONNX) or ``.bin`` (IR)."""
    return sum(p.stat().st_size for p in _files(Path(path)) if p.is_file())


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
