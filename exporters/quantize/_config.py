"""The quantisation config, result record, weight groups and block choice (importing it imports no SDK)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from curmoe.common.checks import check_bool, check_choice, check_int
from curmoe.common.errors import InvalidInputError

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
    "selected",
    "weight_group",
]

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
    base = name.split("/")[0].removesuffix(".T")  # OpenVINO names a folded constant "<name>.T/Transpose"
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
