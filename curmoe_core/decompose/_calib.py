"""Calibration statistics of a layer's input activations, accumulated in float64.

For activations X (N, n) (rows = tokens) the decompositions need the Gram matrix ``G = X^T X`` (n, n) and the
per-feature second moments ``E[x_j^2] = G_jj / N``. Both are sums over tokens, so batches (and statistics
gathered on different workers, via :meth:`CalibStats.merge`) simply add up.

The output error of an approximation W' of W (m, n) follows from the Gram alone:
``||(W - W') X^T||_F^2 = trace(E G E^T)`` with ``E = W - W'`` (undamped G).

Whitening (SVD-LLM, activation-aware CUR) uses a damped Gram ``G + lambda * mean(diag(G)) * I`` with
``lambda = 1e-2`` by default, the relative damping GPTQ uses for its Hessian (Frantar et al. 2023), so the
Cholesky factor S (``S S^T = G + damping``) exists even with fewer tokens than features.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg

from curmoe.common.checks import check_finite
from curmoe.common.errors import InvalidInputError

__all__ = ["CalibStats", "DEFAULT_DAMPING", "check_damping"]

log = logging.getLogger(__name__)

DEFAULT_DAMPING = 1e-2


def check_damping(damping: object) -> float:
    """Validate a relative damping ``lambda >= 0`` (0 needs a non-singular Gram)."""
    if isinstance(damping, bool) or not isinstance(damping, (int, float, np.floating, np.integer)):
        raise InvalidInputError(f"damping={damping!r} must be a number >= 0, e.g. {DEFAULT_DAMPING}")
    d = float(damping)
    if not (np.isfinite(d) and d >= 0):
        raise InvalidInputError(f"damping={damping!r} must be a finite number >= 0, e.g. {DEFAULT_DAMPING}")
    return d


class CalibStats:
    """Running float64 Gram matrix ``X^T X`` and token count of a layer's input activations X (N, n).

    Example:
        >>> stats = CalibStats(4)
        >>> stats.update(np.ones((3, 4))).n_tokens
        3
    """

    def __init__(self, n_features: int | None = None) -> None:
        """Start empty statistics; ``n_features`` (the layer's in_features) is fixed by the first batch if None."""
        if n_features is not None and (
            isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or n_features < 1
        ):
            raise InvalidInputError(f"n_features={n_features!r} must be a positive integer (the layer's in_features)")
        self._n_features = None if n_features is None else int(n_features)
        self._gram: np.ndarray | None = None
        self._n_tokens = 0
        self._cast: dict[np.dtype, np.ndarray] = {}  # gram_as() copies
        self._chol: tuple[float, np.ndarray] | None = None  # (damping, S) of the last whitening()

    @classmethod
    def from_activations(cls, X: object) -> CalibStats:
        """Statistics of one activation matrix X (N, n)."""
        return cls().update(X)

    @classmethod
    def from_gram(cls, gram: object, n_tokens: int) -> CalibStats:
        """Statistics restored from a stored Gram ``X^T X`` (n, n) of ``n_tokens`` tokens (e.g. a calibration
        cache): the same object :meth:`update` built, bit for bit (the Gram is kept as float64)."""
        G = np.asarray(gram)
        if G.ndim != 2 or G.shape[0] != G.shape[1] or G.shape[0] < 1 or G.dtype != np.float64:
            raise InvalidInputError(f"a stored Gram must be a square float64 (n, n) array, got shape {G.shape} "
                                    f"dtype {G.dtype}")
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) or n_tokens < 1:
            raise InvalidInputError(f"n_tokens={n_tokens!r} must be a positive integer (the tokens behind the Gram)")
        check_finite(G, "stored Gram")
        s = cls(G.shape[0])
        s._gram, s._n_tokens = np.array(G, np.float64, copy=True), int(n_tokens)
        return s

    # ---- accumulation -------------------------------------------------------------------------------------------
    def update(self, X: object) -> CalibStats:
        """Add a batch of activations X (N, n), rows = tokens; returns ``self``. A batch of 0 tokens is a no-op."""
        A = np.asarray(X)
        if A.ndim != 2:
            raise InvalidInputError(
                f"activations must be 2-D (tokens, features), got shape {A.shape}; reshape with X.reshape(-1, n)"
            )
        if A.dtype.kind not in "fiub":
            raise InvalidInputError(f"activations have dtype {A.dtype}; pass a float array")
        self._check_batch_width(A.shape[1])
        if A.shape[0] == 0:
            return self
        A = A.astype(np.float64, copy=False)
        check_finite(A, "activations X")
        G = A.T @ A  # (n, N) @ (N, n); NumPy runs this as a symmetric rank-k update (syrk)
        if self._gram is None:
            self._gram = G
        else:
            self._gram += G
        self._n_tokens += A.shape[0]
        self.clear_cache()
        return self

    def merge(self, other: CalibStats) -> CalibStats:
        """Add the statistics of ``other`` (same layer, other tokens) into ``self``; returns ``self``."""
        if not isinstance(other, CalibStats):
            raise InvalidInputError(f"can only merge another CalibStats, got {type(other).__name__}")
        if other._gram is None:
            return self
        self._check_batch_width(other.n_features)  # type: ignore[arg-type]
        self._gram = other._gram.copy() if self._gram is None else self._gram + other._gram
        self._n_tokens += other._n_tokens
        self.clear_cache()
        return self

    def _check_batch_width(self, n: int) -> None:
        if self._n_features is None:
            self._n_features = int(n)
        elif n != self._n_features:
            raise InvalidInputError(
                f"activations have {n} features but these statistics hold {self._n_features}; "
                f"feed every batch of the same layer input (or start a new CalibStats)"
            )

    # ---- read-out -----------------------------------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        """Number of tokens (rows of X) accumulated so far."""
        return self._n_tokens

    @property
    def n_features(self) -> int | None:
        """Width n of the activations (the layer's in_features), None before the first batch."""
        return self._n_features

    @property
    def gram(self) -> np.ndarray:
        """``X^T X`` (n, n), float64, summed over all tokens (not divided by N)."""
        self._require_tokens()
        return self._gram  # type: ignore[return-value]

    @property
    def second_moment(self) -> np.ndarray:
        """``E[x_j^2]`` (n,), float64: the Gram diagonal over the token count."""
        return np.diag(self.gram) / self._n_tokens

    def _require_tokens(self) -> None:
        if self._n_tokens == 0:
            raise InvalidInputError(
                "calibration statistics hold no tokens; call stats.update(X) with activations first"
            )

    def check_width(self, n: int, name: str = "W") -> None:
        """Raise unless the statistics describe inputs of width ``n`` (the columns of the matrix ``name``)."""
        self._require_tokens()
        if self._n_features != n:
            raise InvalidInputError(
                f"calibration statistics have {self._n_features} features but {name} has n={n} columns "
                f"(in_features); gather activations of this matrix's input (width {n})"
            )

    def gram_as(self, dtype: np.dtype | type) -> np.ndarray:
        """The Gram in ``dtype`` (float32 copies are cached for fast products; do not modify the result)."""
        dt = np.dtype(dtype)
        if dt == np.float64:
            return self.gram
        if dt not in self._cast:
            self._cast[dt] = self.gram.astype(dt)
        return self._cast[dt]

    def damping_value(self, damping: float = DEFAULT_DAMPING) -> float:
        """Absolute diagonal shift ``lambda * mean(diag(G))`` for the relative damping ``lambda``."""
        damping = check_damping(damping)
        mu = float(np.mean(np.diag(self.gram)))
        if mu == 0.0:
            raise InvalidInputError(
                "calibration activations are all zero, so they carry no weighting; drop calib= or feed real inputs"
            )
        return damping * mu

    def damped_gram(self, damping: float = DEFAULT_DAMPING) -> np.ndarray:
        """``G + lambda * mean(diag(G)) * I`` (n, n), float64 (a new array)."""
        shift = self.damping_value(damping)
        Gd = self.gram.copy()
        Gd[np.diag_indices_from(Gd)] += shift
        return Gd

    def whitening(self, damping: float = DEFAULT_DAMPING) -> np.ndarray:
        """Lower-triangular S (n, n), float64, with ``S S^T = G + lambda * mean(diag(G)) * I`` (Cholesky).

        The factor of the last damping asked for is cached (every matrix fed by this input reuses it; O(n^3 / 3)
        flops otherwise); do not modify the result. :meth:`clear_cache` frees it.
        """
        damping = check_damping(damping)
        if self._chol is not None and self._chol[0] == damping:
            return self._chol[1]
        try:
            S = scipy.linalg.cholesky(self.damped_gram(damping), lower=True, check_finite=False, overwrite_a=True)
        except np.linalg.LinAlgError as e:
            raise InvalidInputError(
                f"the damped Gram is not positive definite with damping={damping!r} ({e}); pass a larger damping, "
                f"e.g. damping={DEFAULT_DAMPING}"
            ) from e
        self._chol = (damping, S)
        return S

    def clear_cache(self) -> None:
        """Drop the cached dtype copies of the Gram and the cached whitening factor (they are rebuilt on demand)."""
        self._cast.clear()
        self._chol = None

    def output_error(self, W: np.ndarray, W_approx: np.ndarray) -> float:
        """Relative output error ``||(W - W') X^T||_F / ||W X^T||_F``, from the undamped Gram, in float64.

        Costs one (m, n) @ (n, n) product per term; 0 when both norms are 0, inf when only ``W X^T`` is 0.
        """
        W64 = np.asarray(W, np.float64)
        self.check_width(W64.shape[1])
        E = W64 - np.asarray(W_approx, np.float64)
        return _relative(trace_quad(E, self.gram), trace_quad(W64, self.gram))

    def __repr__(self) -> str:
        return f"CalibStats(n_features={self._n_features}, n_tokens={self._n_tokens})"


def trace_quad(E: np.ndarray, G: np.ndarray) -> float:
    """``trace(E G E^T)`` for E (m, n), G (n, n) symmetric PSD, clipped at 0 against rounding."""
    return max(float(np.einsum("ij,ij->", E @ G, E)), 0.0)  # (m, n) @ (n, n), then row-wise dot with E


def _relative(num_sq: float, den_sq: float) -> float:
    if den_sq == 0.0:
        return 0.0 if num_sq == 0.0 else float("inf")
    return float(np.sqrt(num_sq / den_sq))
