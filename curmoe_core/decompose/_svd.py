"""Truncated SVD, exact (LAPACK) or randomized (Halko-Martinsson-Tropp), and SVD-LLM whitening.

Eckart-Young: the rank-r truncation ``W_r = U_r diag(s_r) V_r^T`` minimises ``||W - W'||_F`` over rank-r W', with
``||W - W_r||_F^2 = sum_{i > r} s_i^2``. We store it as ``W_r = A @ B`` with ``A = U_r diag(s_r)`` (m, r) and
``B = V_r^T`` (r, n).

SVD-LLM (Wang et al. 2024, "SVD-LLM: Truncation-aware Singular Value Decomposition for LLM Compression"): with
calibration activations X and the Cholesky factor S of the (damped) Gram, ``S S^T = X^T X + lambda I``, truncate
the SVD of ``W S`` instead. Then ``||(W - W') S||_F^2`` equals the sum of the discarded squared singular values of
``W S``, i.e. truncation loss maps one-to-one onto output loss. Map back with ``B = V_r^T S^{-1}`` (a triangular
solve, never an explicit inverse).

Precision: singular vectors are computed in the input dtype (float32 weights -> float32 LAPACK, twice as fast;
backward-stable to float32 rounding, which the weights carry anyway), and so is SVD-LLM's product ``W S``; its
Cholesky factor (cached per calibration set) and the triangular map-back run in float64 (S can be
ill-conditioned); errors are computed in float64. Factors come back in W's dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from curmoe.common.checks import as_matrix, check_rank, exactly_one
from curmoe.common.errors import InvalidInputError
from curmoe.decompose._calib import DEFAULT_DAMPING, CalibStats
from curmoe.decompose._params import achieved_ratio, n_params, rank_for_ratio

__all__ = ["SVDResult", "svd", "truncated_svd", "exact_svd", "gram_side_svd", "check_sketch", "relative_error"]

log = logging.getLogger(__name__)


def exact_svd(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD by LAPACK gesdd, falling back to the slower but more robust gesvd if it does not converge."""
    try:
        return scipy.linalg.svd(A, full_matrices=False, check_finite=False, lapack_driver="gesdd")
    except np.linalg.LinAlgError:
        log.warning("gesdd did not converge on a %dx%d matrix; retrying with gesvd", *A.shape)
        return scipy.linalg.svd(A, full_matrices=False, check_finite=False, lapack_driver="gesvd")


def _orth(Y: np.ndarray) -> np.ndarray:
    """Orthonormal basis of range(Y) (thin Householder QR)."""
    return scipy.linalg.qr(Y, mode="economic", overwrite_a=True, check_finite=False)[0]


def _lu_basis(Y: np.ndarray) -> np.ndarray:
    """A well-conditioned basis of range(Y) (a, l), a >= l: the row-permuted unit-lower L of ``Y = P L U``."""
    return scipy.linalg.lu(Y, permute_l=True, overwrite_a=True, check_finite=False)[0]


def _syrk(alpha: float, a: np.ndarray, trans: int, lower: int) -> np.ndarray:
    (syrk,) = scipy.linalg.get_blas_funcs(("syrk",), (a,))
    return syrk(alpha, a, trans=trans, lower=lower)


# The Gram route squares condition numbers: accept it only if every kept s_i^2 >= GRAM_MIN_RATIO * s_1^2, i.e.
# cond <= 1e4, where float64 normal equations still give ~1e-8 relative accuracy; otherwise callers use LAPACK.
GRAM_MIN_RATIO = 1e-8


def gram_side_svd(M: np.ndarray, *, k: int | None = None, cut: float = 0.0) -> tuple[np.ndarray, np.ndarray] | None:
    """Leading singular values s and the singular vectors E of M's smaller side, via ``eigh`` of the smaller Gram.

    For M (a, b): if a >= b, E are right singular vectors (b, k) from ``M^T M``; else left ones (a, k) from
    ``M M^T``. The Gram is formed in float64 (one syrk, O(a b min(a, b)) flops, about 10x cheaper than LAPACK's
    bidiagonalisation of a long thin matrix). Keeps at most ``k`` values with ``s_i > cut * s_1``.

    Returns:
        (E, s) in float64, or None if some kept ``s_i^2 < GRAM_MIN_RATIO * s_1^2`` or M is 0 (use LAPACK then).
    """
    M64 = M.astype(np.float64, copy=False)
    # syrk forms only the lower triangle (half the flops of a GEMM), which is all eigh reads. M64.T is the
    # Fortran-ordered view BLAS wants: (M^T)(M^T)^T = M^T M (b, b), or (M^T)^T (M^T) = M M^T (a, a).
    K = _syrk(1.0, M64.T, trans=0 if M.shape[0] >= M.shape[1] else 1, lower=1)
    lam, E = scipy.linalg.eigh(K, lower=True, check_finite=False, overwrite_a=True)
    lam, E = lam[::-1], E[:, ::-1]
    if not lam[0] > 0:
        return None
    keep = int(np.count_nonzero(lam > cut**2 * lam[0]))
    keep = keep if k is None else min(keep, k)
    if keep == 0 or lam[keep - 1] < GRAM_MIN_RATIO * lam[0]:
        return None
    return np.ascontiguousarray(E[:, :keep]), np.sqrt(lam[:keep])


def _wide_svd(B: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leading k singular triplets of a wide B (l, n), l <= n: Gram route, LAPACK when ill-conditioned."""
    es = gram_side_svd(B, k=k)
    if es is None or es[1].size < k:
        Ub, s, Vt = exact_svd(B)
        return Ub[:, :k], s[:k], Vt[:k]
    Ub, s = es
    Vt = (Ub.T.astype(B.dtype) @ B) / s[:, None].astype(B.dtype)  # (k, l) @ (l, n): V^T = S^-1 U^T B
    return Ub, s, Vt


def check_sketch(n_oversamples: object, n_power_iter: object) -> tuple[int, int]:
    """Validate the randomized-SVD knobs (oversampling p >= 0, power iterations q >= 0)."""
    for name, v in (("n_oversamples", n_oversamples), ("n_power_iter", n_power_iter)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise InvalidInputError(f"{name}={v!r} must be an integer >= 0, e.g. n_oversamples=10, n_power_iter=1")
    return int(n_oversamples), int(n_power_iter)  # type: ignore[arg-type]


def truncated_svd(
    A: np.ndarray,
    k: int,
    *,
    randomized: bool = False,
    n_oversamples: int = 10,
    n_power_iter: int = 2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leading k singular triplets ``(U_k (m, k), s_k (k,), V_k^T (k, n))`` of A, in A's dtype.

    Randomized: Halko, Martinsson & Tropp 2011, "Finding structure with randomness", Alg. 4.4 (randomized
    subspace iteration): a Gaussian sketch ``Y = A Omega`` with ``l = k + p`` columns, ``q`` power iterations
    ``Q <- orth(A orth(A^T Q))`` (re-orthonormalised each half-step so small singular values survive rounding),
    then the SVD of the small ``B = Q^T A`` (via the eigen-decomposition of ``B B^T`` in float64 when that is
    accurate, see :func:`gram_side_svd`). Costs ``2q + 2`` passes over A; tall A is handled as ``A^T`` so QRs stay
    (min(m, n), l). Falls back to the exact SVD when ``l >= min(m, n)`` (no saving). ``seed`` fixes Omega.
    """
    m, n = A.shape
    ell = k + n_oversamples
    if not randomized or ell >= min(m, n):
        U, s, Vt = exact_svd(A)
        return U[:, :k], s[:k], Vt[:k]
    if m > n:  # sketch the smaller side, so every QR is (min(m, n), l)
        V, s, Ut = truncated_svd(A.T, k, randomized=True, n_oversamples=n_oversamples,
                                 n_power_iter=n_power_iter, seed=seed)
        return Ut.T, s, V.T
    rng = np.random.default_rng(seed)
    Omega = rng.standard_normal((n, ell), dtype=A.dtype)  # (n, l)
    # Intermediate bases need only be well conditioned, not orthonormal: the L factor of a partially pivoted LU
    # spans the same space at a quarter of the cost of a Householder QR with Q formed (HMT Sec. 4.5; the
    # normaliser scikit-learn's randomized_svd uses). Only the final basis is orthonormalised.
    Y = A @ Omega  # (m, n) @ (n, l)
    for _ in range(n_power_iter):
        Z = _lu_basis(A.T @ _lu_basis(Y))  # (n, m) @ (m, l)
        Y = A @ Z  # (m, n) @ (n, l)
    Q = _orth(Y)
    Ub, s, Vt = _wide_svd(Q.T @ A, k)  # (l, m) @ (m, n) -> SVD of an (l, n) matrix
    return (Q @ Ub.astype(A.dtype)), s.astype(A.dtype), Vt  # (m, l) @ (l, k)


def relative_error(W: np.ndarray, W_approx: np.ndarray) -> float:
    """``||W - W'||_F / ||W||_F`` in float64 (0 for W = W' = 0, inf if only W is 0)."""
    W64 = np.asarray(W, np.float64)
    num = float(np.linalg.norm(W64 - np.asarray(W_approx, np.float64)))
    den = float(np.linalg.norm(W64))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


@dataclass(frozen=True, eq=False)
class SVDResult:
    """A rank-r factorisation ``W' = A @ B`` of an (m, n) matrix W.

    Attributes:
        A: (m, r), ``U_r diag(s_r)``.
        B: (r, n), ``V_r^T`` (plain SVD) or ``V_r^T S^{-1}`` (SVD-LLM).
        s: (r,) singular values of W (plain) or of the whitened ``W S`` (SVD-LLM).
        rank: r.
        ratio: parameter ratio achieved, ``1 - r (m + n) / (m n)``.
        shape: (m, n).
        method: "svd" or "svd-llm".
        randomized: whether the singular vectors came from the randomized range finder.
        weight_error: ``||W - W'||_F / ||W||_F`` (None if ``errors=False``).
        output_error: ``||(W - W') X^T||_F / ||W X^T||_F`` from the calibration Gram (None without calib).
    """

    A: np.ndarray
    B: np.ndarray
    s: np.ndarray
    rank: int
    ratio: float
    shape: tuple[int, int]
    method: str
    randomized: bool
    weight_error: float | None = None
    output_error: float | None = None

    def __post_init__(self) -> None:
        m, n = self.shape
        r = self.rank
        if self.A.shape != (m, r) or self.B.shape != (r, n) or self.s.shape != (r,):
            raise InvalidInputError(
                f"inconsistent SVD factors for shape {self.shape} rank {r}: "
                f"A {self.A.shape}, B {self.B.shape}, s {self.s.shape}; expected (m, r), (r, n), (r,)"
            )
        if self.method not in ("svd", "svd-llm"):
            raise InvalidInputError(f"method={self.method!r} must be 'svd' or 'svd-llm'")

    @property
    def n_params(self) -> int:
        """Parameters kept: ``r (m + n)``."""
        return int(self.A.size + self.B.size)

    def reconstruct(self) -> np.ndarray:
        """The dense approximation ``W' = A @ B`` (m, n)."""
        return self.A @ self.B  # (m, r) @ (r, n)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``x @ W'^T`` through the factors: x (..., n) -> (..., m), never forming W'."""
        x = np.asarray(x)
        if x.shape[-1:] != (self.shape[1],):
            raise InvalidInputError(f"x has shape {x.shape}; its last axis must be in_features={self.shape[1]}")
        return (x @ self.B.T) @ self.A.T  # (N, n) @ (n, r) @ (r, m)


def svd(
    W: np.ndarray,
    *,
    rank: int | None = None,
    ratio: float | None = None,
    calib: CalibStats | None = None,
    randomized: bool = False,
    seed: int = 0,
    damping: float = DEFAULT_DAMPING,
    n_oversamples: int = 10,
    n_power_iter: int = 2,
    errors: bool = True,
) -> SVDResult:
    """Truncated SVD of W (m, n), or SVD-LLM when calibration statistics are given.

    Args:
        W: (out_features, in_features) weight matrix, float32 or float64 (kept as the output dtype).
        rank: r in [1, min(m, n)]; exactly one of ``rank`` / ``ratio``.
        ratio: fraction of parameters to remove, in (0, 1); the largest rank with ``r (m + n) <= (1 - ratio) m n``.
        calib: input statistics of W (``CalibStats`` of width n): switches to SVD-LLM whitening.
        randomized: randomized range finder instead of the exact LAPACK SVD.
        seed: seed of the randomized sketch.
        damping: relative damping lambda of the Gram for SVD-LLM (``S S^T = G + lambda mean(diag G) I``).
        n_oversamples: extra sketch columns p of the randomized SVD.
        n_power_iter: power iterations q of the randomized SVD.
        errors: compute ``weight_error`` / ``output_error`` (float64; the output error costs O(m n^2)).

    Returns:
        SVDResult with ``W' = A @ B``.
    """
    W = as_matrix(W, "W")
    m, n = W.shape
    exactly_one(rank, ratio)
    r = check_rank(rank, m, n) if rank is not None else rank_for_ratio(m, n, ratio, "svd")  # type: ignore[arg-type]
    n_oversamples, n_power_iter = check_sketch(n_oversamples, n_power_iter)
    if calib is not None:
        if not isinstance(calib, CalibStats):
            raise InvalidInputError(f"calib must be a curmoe.CalibStats, got {type(calib).__name__}")
        calib.check_width(n, "W")
    sketch = dict(randomized=bool(randomized), n_oversamples=n_oversamples, n_power_iter=n_power_iter, seed=seed)

    if calib is None:
        U, s, Vt = truncated_svd(W, r, **sketch)
        A, B, method = U * s, Vt, "svd"  # (m, r) * (r,)
    else:
        S = calib.whitening(damping)  # (n, n) lower, float64
        WS = W @ S.astype(W.dtype, copy=False)  # (m, n) @ (n, n), in W's dtype like the SVD that follows
        U, s, Vt = truncated_svd(WS, r, **sketch)
        # B = V_r^T S^{-1}  <=>  S^T B^T = V_r   (triangular solve in float64)
        Bt = scipy.linalg.solve_triangular(S, Vt.T.astype(np.float64), lower=True, trans="T", check_finite=False)
        A, B, method = U * s, Bt.T, "svd-llm"
    A = np.ascontiguousarray(A, dtype=W.dtype)
    B = np.ascontiguousarray(B, dtype=W.dtype)
    s = np.asarray(s, dtype=W.dtype)

    w_err = o_err = None
    if errors:
        W_hat = A.astype(np.float64) @ B.astype(np.float64)  # (m, r) @ (r, n)
        w_err = relative_error(W, W_hat)
        o_err = calib.output_error(W, W_hat) if calib is not None else None
    log.debug("svd %dx%d rank %d (%s, randomized=%s) weight error %s", m, n, r, method, randomized, w_err)
    return SVDResult(A=A, B=B, s=s, rank=r, ratio=achieved_ratio(m, n, n_params(m, n, r, "svd")), shape=(m, n),
                     method=method, randomized=bool(randomized), weight_error=w_err, output_error=o_err)
