"""The ONNX export configuration: a frozen, validated dataclass (importing it never imports onnx)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from curmoe.common.checks import check_bool, check_int
from curmoe.common.errors import InvalidInputError

__all__ = ["OnnxExportConfig", "DEFAULT_OPSET", "MAX_OPSET", "EXTERNAL_DATA_BYTES"]

#: Default opset. 18 is the oldest opset holding everything the graph uses (ScatterND/ScatterElements with
#: reduction="add" from 16, ReduceMean/ReduceMax with ``axes`` as an input from 18, Split ``num_outputs`` from 18)
#: and it is read by every runtime curmoe targets: ONNX Runtime >= 1.14, OpenVINO >= 2023.0, TensorRT >= 8.6,
#: onnx2coreml/coremltools. The opset 23 fused operators (RMSNormalization, RotaryEmbedding, Attention) are not
#: needed: the graph composes them from primitives in the patterns ONNX Runtime and OpenVINO fuse themselves.
DEFAULT_OPSET = 18
#: Highest opset accepted: none of the operators used changed meaning up to 23.
MAX_OPSET = 23
#: Weights above this many bytes go to an external data file (protobuf messages are limited to 2 GiB).
EXTERNAL_DATA_BYTES = 1_800_000_000

_DISPATCH = ("sparse", "dense")
_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class OnnxExportConfig:
    """How to export a curmoe model to ONNX.

    Attributes:
        dispatch: ``"sparse"`` runs each expert on the tokens routed to it only (NonZero -> Gather -> expert ->
            one ScatterND add); ``"dense"`` runs every expert on every token and masks by the combine weights
            (static shapes: for static-shape compilers and OpenVINO's MoE fusion). Same outputs.
        dtype: ``"float32"`` or ``"float16"`` weights and activations. In float16 the router (MatMul, softmax /
            sigmoid, TopK, capacity) runs in float32 so that near-ties route as in the reference; RMSNorm statistics,
            RoPE angles and the attention softmax are float32 too; logits are always float32.
        opset: ONNX opset of the default domain, 18 <= opset <= 23 (default 18, see :data:`DEFAULT_OPSET`).
        fold_u: export CUR experts as x -> R -> (C @ U) (two MatMuls, C @ U computed in float64 at export) instead
            of x -> R -> U -> C. Default True (docs/runtime_scale.md): it reads fewer bytes (m r + r n instead of
            m c + c r + r n) and runs one MatMul less per matrix; measured 1.4-1.8x faster batch-1 decode in
            unpaired tables (OLMoE 50%, Mixtral 70%) and within the noise in paired OLMoE 70% runs. The
            checkpoint is untouched (C keeps real columns there) and the graph metadata keeps the row/column
            indices; pass False to see C, U, R as stored.
        with_cache: inputs ``past.{l}.key/value`` and outputs ``present.{l}.key/value`` for KV-cache decoding.
            Must be False for the (non-causal) ``expert_choice`` router.
        fused_moe: for dense (uncompressed) SwiGLU experts with the ``topk`` router, use ONNX Runtime's
            ``com.microsoft.MoE`` contrib op (ONNX Runtime >= 1.28; interleaved gate/up layout, the only one
            its CPU kernel accepts). The file then runs on ONNX Runtime only.
        external_data: True/False forces weights into/out of a ``<file>.data`` side file; None decides by size
            (> 1.8 GB, the protobuf limit being 2 GiB).
        routing_outputs: add graph outputs ``routing.{l}.selected`` (tokens B*T, E) bool (the experts each token
            was routed to) and ``routing.{l}.logits`` (B*T, E) float32 (router logits): a validation build.
    """

    dispatch: str = "sparse"
    dtype: str = "float32"
    opset: int = DEFAULT_OPSET
    fold_u: bool = True
    with_cache: bool = True
    fused_moe: bool = False
    external_data: bool | None = None
    routing_outputs: bool = False

    def __post_init__(self) -> None:
        if self.dispatch not in _DISPATCH:
            raise InvalidInputError(f"dispatch={self.dispatch!r} is unknown; pass one of {_DISPATCH}")
        if self.dtype not in _DTYPES:
            raise InvalidInputError(f"dtype={self.dtype!r} is not exportable; pass one of {_DTYPES}")
        object.__setattr__(self, "opset", check_int(self.opset, "opset", lo=DEFAULT_OPSET, hi=MAX_OPSET))
        for name in ("fold_u", "with_cache", "fused_moe", "routing_outputs"):
            object.__setattr__(self, name, check_bool(getattr(self, name), name))
        if self.external_data is not None:
            object.__setattr__(self, "external_data", check_bool(self.external_data, "external_data",
                                                                     fix="or None to decide by size"))
        if self.fused_moe and self.dispatch != "sparse":
            raise InvalidInputError(
                "fused_moe=True replaces the expert dispatch by com.microsoft.MoE; leave dispatch='sparse' (the default)"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
