"""MIL building blocks for the Core ML export: named weights, dtype casts, RMSNorm, expert matrices, SwiGLU / GELU.

Every function appends ops to the MIL function being built (``coremltools.converters.mil.Builder``); hidden states
are (B, T, d) tensors and every linear map is a MIL ``linear`` whose weight is stored in torch orientation
(out, in), which is also ``linear``'s own convention: ``y = x @ W.T``. Factorised experts never rebuild W
(Mahoney & Drineas 2009, "CUR matrix decompositions for improved data analysis"): CUR is the chain
``x -> R -> U -> C`` (``fold_u``/folded: ``x -> R -> (C U)``), SVD ``x -> B -> A``, on weights named by the
checkpoint keys with dots as underscores (``layers_0_experts_3_up_C`` for ``layers.0.experts.3.up.C``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from coremltools.converters.mil import Builder as mb

from curmoe.reference import CURLinear, DenseLinear, Linear, SVDLinear

__all__ = ["MilBuilder"]

_MIL_DTYPE = {np.dtype(np.float32): "fp32", np.dtype(np.float16): "fp16"}


class MilBuilder:
    """Helpers bound to the activation dtype of one export (np.float32 or np.float16).

    Weights are added once each as named ``const`` ops (tied weights reuse theirs), so the saved program keeps
    the checkpoint's names (dots become underscores) and shapes.
    """

    def __init__(self, act: np.dtype) -> None:
        self.act = np.dtype(act)
        self.act_mil = _MIL_DTYPE[self.act]
        self._weights: dict[str, Any] = {}

    # Weights and casts -------------------------------------------------------------------------------------------
    def weight(self, name: str, array: np.ndarray, dtype: Any = None) -> Any:
        """A named constant in ``dtype`` (default: the activation dtype), created once per name."""
        if name not in self._weights:
            arr = np.ascontiguousarray(np.asarray(array).astype(dtype or self.act))
            self._weights[name] = mb.const(val=arr, name=name.replace(".", "_"))  # MIL names cannot hold dots
        return self._weights[name]

    def fconst(self, value: float, dtype: Any = None) -> np.ndarray:
        """A float scalar in ``dtype`` (default: the activation dtype), as MIL wants equal operand dtypes."""
        return np.array(value, dtype=dtype or self.act)

    def to_f32(self, x: Any) -> Any:
        return x if self.act == np.float32 else mb.cast(x=x, dtype="fp32")

    def to_act(self, x: Any) -> Any:
        return x if self.act == np.float32 else mb.cast(x=x, dtype=self.act_mil)

    # Layers ------------------------------------------------------------------------------------------------------
    def rms_norm(self, x: Any, w: Any, eps: float) -> Any:
        """RMSNorm (Zhang & Sennrich 2019) over the last axis, ``x / sqrt(mean(x^2) + eps) * w``; statistics in
        float32 (a float16 export casts up and back)."""
        xf = self.to_f32(x)
        ms = mb.reduce_mean(x=mb.mul(x=xf, y=xf), axes=[-1], keep_dims=True)  # (..., 1)
        y = mb.real_div(x=xf, y=mb.sqrt(x=mb.add(x=ms, y=np.float32(eps))))
        return mb.mul(x=self.to_act(y), y=w)

    def linear(self, x: Any, name: str, W: np.ndarray, bias: np.ndarray | None = None,
               bias_name: str | None = None) -> Any:
        """y = x @ W.T (+ b) with W (out, in) stored as ``name``."""
        b = None if bias is None else self.weight(bias_name or name + ".bias", bias)
        w = self.weight(name, W)
        return mb.linear(x=x, weight=w) if b is None else mb.linear(x=x, weight=w, bias=b)

    def linear_map(self, x: Any, key: str, lin: Linear, fold_u: bool = False) -> Any:
        """An expert matrix in its stored form: dense ``W``, CUR ``R -> U -> C`` or SVD ``B -> A``."""
        if isinstance(lin, DenseLinear):
            return self.linear(x, f"{key}.weight", lin.W)  # (.., n) -> (.., m)
        if isinstance(lin, SVDLinear):
            h = self.linear(x, f"{key}.B", lin.B)  # (.., n) -> (.., r)
            return self.linear(h, f"{key}.A", lin.A)  # (.., r) -> (.., m)
        if isinstance(lin, CURLinear):
            h = self.linear(x, f"{key}.R", lin.R)  # (.., n) -> (.., r)
            C = lin.C
            if lin.U is not None and fold_u:
                C = lin.C.astype(np.float64) @ lin.U.astype(np.float64)  # (m, c) @ (c, r), folded in float64
            elif lin.U is not None:
                h = self.linear(h, f"{key}.U", lin.U)  # (.., r) -> (.., c)
            return self.linear(h, f"{key}.C", C)  # (.., c) -> (.., m)
        raise TypeError(f"expert matrix {key!r} has unsupported type {type(lin).__name__}")

    def expert(self, x: Any, key: str, mats: dict[str, Linear], activation: str, fold_u: bool = False) -> Any:
        """down(silu(gate x) * up x) (SwiGLU) or down(gelu(up x)) (exact erf GELU)."""
        if activation == "swiglu":
            a = mb.silu(x=self.linear_map(x, f"{key}.gate", mats["gate"], fold_u))
            h = mb.mul(x=a, y=self.linear_map(x, f"{key}.up", mats["up"], fold_u))  # (B, T, d_ff)
        else:
            h = mb.gelu(x=self.linear_map(x, f"{key}.up", mats["up"], fold_u), mode="EXACT")
        return self.linear_map(h, f"{key}.down", mats["down"], fold_u)
