"""Linear maps in the forms an expert matrix can take: dense, CUR factors, SVD factors, kept neurons.

All store weights in torch orientation, W of shape (out, in), and compute ``y = x @ W.T``. Factorised maps never
rebuild W: a CUR map computes ``((x @ R.T) @ U.T) @ C.T`` (x -> R -> U -> C), an SVD map ``(x @ B.T) @ A.T``, so
compression saves real multiply-adds: r*(m+n) (+ c*r for U) instead of m*n per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CURLinear", "DenseLinear", "Linear", "NeuronLinear", "SVDLinear"]


def _contiguous(obj: object, *names: str) -> None:
    """Store the named arrays C-contiguous: BLAS sums in a layout-dependent order, so a model must hold the same
    layout in memory as after a save/load round trip for the two to compute bit-identical outputs."""
    for n in names:
        a = getattr(obj, n)
        if a is not None and not a.flags.c_contiguous:
            object.__setattr__(obj, n, np.ascontiguousarray(a))


@dataclass(frozen=True, eq=False)
class DenseLinear:
    """y = x @ W.T with W (out, in)."""

    W: np.ndarray  # (m, n)

    kind = "dense"

    def __post_init__(self) -> None:
        _contiguous(self, "W")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.W.shape)  # type: ignore[return-value]

    @property
    def n_params(self) -> int:
        return int(self.W.size)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.W.T  # (N, n) @ (n, m)

    def dense(self) -> np.ndarray:
        return self.W

    def tensors(self) -> dict[str, np.ndarray]:
        return {"weight": self.W}

    def astype(self, dtype: np.dtype) -> DenseLinear:
        return DenseLinear(self.W.astype(dtype))


@dataclass(frozen=True, eq=False)
class CURLinear:
    """W' = C @ U @ R, with C = W[:, cols] and R = W[rows, :] (real columns and rows) unless ``U`` was folded.

    ``U`` is None when it was folded into C for inference (C then holds C @ U, no longer real columns).
    """

    C: np.ndarray  # (m, c)
    U: np.ndarray | None  # (c, r) or None when folded
    R: np.ndarray  # (r, n)
    rows: np.ndarray  # (r,) int64, indices of kept output neurons
    cols: np.ndarray  # (c,) int64, indices of kept input features

    kind = "cur"

    def __post_init__(self) -> None:
        _contiguous(self, "C", "U", "R")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.C.shape[0], self.R.shape[1])

    @property
    def rank(self) -> int:
        return int(self.R.shape[0])

    @property
    def n_params(self) -> int:
        # Index vectors are metadata (they say which columns/rows were kept), not weights.
        return int(self.C.size + (0 if self.U is None else self.U.size) + self.R.size)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = x @ self.R.T  # (N, n) @ (n, r)
        if self.U is not None:
            h = h @ self.U.T  # (N, r) @ (r, c)
        return h @ self.C.T  # (N, c) @ (c, m)

    def dense(self) -> np.ndarray:
        return (self.C if self.U is None else self.C @ self.U) @ self.R

    def tensors(self) -> dict[str, np.ndarray]:
        t = {"C": self.C, "R": self.R, "rows": self.rows, "cols": self.cols}
        if self.U is not None:
            t["U"] = self.U
        return t

    def astype(self, dtype: np.dtype) -> CURLinear:
        U = None if self.U is None else self.U.astype(dtype)
        return CURLinear(self.C.astype(dtype), U, self.R.astype(dtype), self.rows, self.cols)


@dataclass(frozen=True, eq=False)
class SVDLinear:
    """W' = A @ B with A (m, r) and B (r, n)."""

    A: np.ndarray  # (m, r)
    B: np.ndarray  # (r, n)

    kind = "svd"

    def __post_init__(self) -> None:
        _contiguous(self, "A", "B")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.A.shape[0], self.B.shape[1])

    @property
    def rank(self) -> int:
        return int(self.B.shape[0])

    @property
    def n_params(self) -> int:
        return int(self.A.size + self.B.size)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x @ self.B.T) @ self.A.T  # (N, n) @ (n, r) @ (r, m)

    def dense(self) -> np.ndarray:
        return self.A @ self.B

    def tensors(self) -> dict[str, np.ndarray]:
        return {"A": self.A, "B": self.B}

    def astype(self, dtype: np.dtype) -> SVDLinear:
        return SVDLinear(self.A.astype(dtype), self.B.astype(dtype))


@dataclass(frozen=True, eq=False)
class NeuronLinear(DenseLinear):
    """One matrix of a neuron-CUR expert: a smaller dense map plus the indices J of the neurons it keeps.

    ``role="rows"`` (gate, up): W = W_orig[J] (k, n), real rows, bit-identical to the original.
    ``role="refit"`` (down): W = W_down M (m, k), refit by least squares to read only the kept neurons J.
    Being a :class:`DenseLinear`, it runs (and exports) as a plain smaller expert: no extra op anywhere.
    """

    neurons: np.ndarray = None  # type: ignore[assignment]  # (k,) int64, indices into the original d_ff
    role: str = "rows"

    kind = "neuron"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "neurons", np.asarray(self.neurons, np.int64))
        k = self.W.shape[0] if self.role == "rows" else self.W.shape[1]
        if self.role not in ("rows", "refit") or self.neurons.shape != (k,):
            raise ValueError(f"NeuronLinear(role={self.role!r}) needs W with {k} kept neurons and neurons of shape "
                             f"({k},), got W {self.W.shape} and neurons {self.neurons.shape}")

    def tensors(self) -> dict[str, np.ndarray]:
        return {"weight": self.W, "neurons": self.neurons}

    def astype(self, dtype: np.dtype) -> NeuronLinear:
        return NeuronLinear(self.W.astype(dtype), self.neurons, self.role)


Linear = DenseLinear | CURLinear | SVDLinear | NeuronLinear
