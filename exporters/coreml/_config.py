"""The Core ML export configuration: a frozen, validated dataclass (importing it never imports coremltools)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from curmoe.common.checks import check_bool, check_int
from curmoe.common.errors import InvalidInputError

__all__ = ["CoreMLExportConfig", "COREML_TARGETS"]

#: Accepted minimum deployment targets. iOS17 / macOS14 is the oldest whose opset has every op the program uses
#: in the versions the builder emits (iOS17 ``cast``/``reshape``/``linear``/``gather`` ...); the macOS names are
#: the same opsets (iOS17 = macOS14, iOS18 = macOS15).
COREML_TARGETS = ("iOS17", "iOS18", "macOS14", "macOS15")
_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class CoreMLExportConfig:
    """How to export a curmoe model to a Core ML ML Program (``.mlpackage``).

    The program is the full-sequence graph (no KV cache): inputs ``input_ids`` and ``attention_mask`` (B, T)
    int32, output ``logits`` (B, T, V) float32, with B and T flexible (``RangeDim``). The MoE block uses dense
    dispatch (every expert on every token, masked by the combine weights): static shapes, which Core ML needs.

    Attributes:
        dtype: ``"float32"`` or ``"float16"`` weights and activations. In float16 the router (logits, softmax /
            sigmoid, top-k), RMSNorm statistics, RoPE angles and the attention softmax run in float32, as in
            the ONNX float16 export; logits are float32.
        max_batch: upper bound of the flexible batch dimension (>= 1).
        max_seq_len: upper bound of the flexible sequence dimension; None = the model's ``max_seq_len``.
        routing_outputs: add outputs ``routing.{l}.selected`` (B*T, E) int32 (1 where a token is routed to an
            expert): what :func:`curmoe.runtimes.adapters.coreml.validate_coreml` compares with the reference's routing.
        minimum_deployment_target: one of :data:`COREML_TARGETS`.
    """

    dtype: str = "float32"
    max_batch: int = 8
    max_seq_len: int | None = None
    routing_outputs: bool = True
    minimum_deployment_target: str = "iOS17"

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise InvalidInputError(f"dtype={self.dtype!r} is not exportable to Core ML; pass one of {_DTYPES}")
        for name in ("max_batch", "max_seq_len"):
            v = getattr(self, name)
            if v is None and name == "max_seq_len":
                continue
            object.__setattr__(self, name, check_int(v, name, lo=1))
        object.__setattr__(self, "routing_outputs", check_bool(self.routing_outputs, "routing_outputs"))
        if self.minimum_deployment_target not in COREML_TARGETS:
            raise InvalidInputError(
                f"minimum_deployment_target={self.minimum_deployment_target!r} is not supported; pass one of "
                f"{COREML_TARGETS}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
