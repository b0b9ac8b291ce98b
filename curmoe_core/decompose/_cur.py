"""CUR decomposition ``W ~ C U R`` with C = W[:, cols] (real columns) and R = W[rows, :] (real rows).

Columns/rows are chosen by a rule of :mod:`curmoe.decompose._selection` (DEIM by default) from a rank-k singular basis of
W, exact (LAPACK) or randomized (Halko-Martinsson-Tropp). Then the middle matrix U:

- ``optimal``: ``U = C^+ W R^+`` minimises ``||W - C U R||_F`` for the chosen C and R (Mahoney & Drineas 2009;
  Sorensen & Embree 2016, Sec. 4). An exactly rank-r matrix is recovered exactly once C and R span its column and
  row spaces.
- ``intersection``: ``U = pinv(W[rows, cols])`` (the classical skeleton / pseudoskeleton, and the poster's choice),
  with singular values below ``rcond * s_max`` cut (default ``rcond = max(r, c) * eps(dtype)``, the numerical-rank
  tolerance of ``numpy.linalg.matrix_rank``).

Activation-aware mode (``calib``): with input Gram ``G = X^T X`` and ``S S^T = G_d = G + lambda mean(diag G) I``,
selection runs on ``W diag(sqrt(E[x^2]))`` (scaling columns by input RMS, so indices still name columns/rows of W;
C and R stay exact slices of W) and U minimises the damped output error ``||(W - C U R) S||_F``:
``U = C^+ (W S)(R S)^+``. With the thin SVD ``R = U_R Sigma V_R^T`` and ``H = V_R^T G_d V_R`` (k, k),
``(W S)(R S)^+ = W G_d V_R H^{-1} Sigma^{-1} U_R^T`` (pinv of a product with a full-column-rank left and a
full-row-rank right factor): no n x n factor S is formed, the ill-conditioning of R is handled by its SVD (rcond
cut) and H is well conditioned (eigenvalues in [lambda mean(diag G), ||G_d||] for orthonormal V_R). The plain
optimal U is the case G_d = I. Cost: O((m + n) n r) for the products ``G_d V_R`` and ``W (G_d V_R)``.

Speed and precision: the SVDs of C, R and of the randomized sketch are computed from their small Gram matrices
(``eigh`` of ``C^T C``, ``R R^T``, ``B B^T`` in float64; about 10x faster than LAPACK's bidiagonalisation of a
long thin matrix), falling back to LAPACK when a kept singular value is below 1e-4 of the largest (squaring
would then cost accuracy). Bases and the big products (with W and G) run in W's dtype (float32 for float32 weights:
2x faster; checked against a float64 run to 1e-11 in output error), the small solves in float64. The seed rule
always uses the exact full SVD. Factors come back in W's dtype. The randomized basis defaults to one power
iteration: selection tolerates a rough basis (U is optimal for whatever C, R are chosen), and on power-law spectra
q = 1 stayed within 1% of the exact basis' output error (``benchmarks/decompose.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import scipy.linalg

from curmoe.common.checks import as_matrix, check_rank, exactly_one
from curmoe.common.errors import InvalidInputError
from curmoe.decompose._calib import DEFAULT_DAMPING, CalibStats, check_damping
from curmoe.decompose._params import (
    achieved_ratio,
    n_cols_for,
    n_params,
    rank_for_ratio,
)
from curmoe.decompose._selection import (
    SEED_EXTRA,
    check_seed,
    check_selection,
    deim_indices,
    leverage_indices,
    qdeim_indices,
    sampled_leverage_indices,
)
from curmoe.decompose._svd import (
    check_sketch,
    exact_svd,
    gram_side_svd,
    truncated_svd,
)

__all__ = ["CURResult", "U_METHODS", "cur"]

log = logging.getLogger(__name__)

U_METHODS: tuple[str, ...] = ("optimal", "intersection")


@dataclass(frozen=True, eq=False)
class CURResult:
    """``W' = C @ U @ R`` for an (m, n) matrix W.

    Attributes:
        C: (m, c) columns ``W[:, cols]``; after :meth:`folded_u`, (m, r) ``C @ U`` (no longer real columns).
        U: (c, r) middle matrix, None once folded.
        R: (r, n) rows ``W[rows, :]``.
        rows: (r,) int64 kept rows (output neurons), in selection order.
        cols: (c,) int64 kept columns (input features), in selection order.
        rank: r, the number of rows.
        ratio: parameter ratio achieved, ``1 - (m c + c r + r n) / (m n)`` (``1 - (m r + r n) / (m n)`` folded).
        shape: (m, n).
        selection: rule that chose rows/cols ("deim", "qdeim", "leverage", "seed").
        u_method: "optimal" or "intersection".
        activation_aware: selection and U used calibration statistics.
        exact_factors: True iff ``C == W[:, cols]`` and ``R == W[rows, :]`` exactly (False once folded).
        folded: U has been multiplied into C.
        weight_error: ``||W - W'||_F / ||W||_F`` (None if ``errors=False``).
        output_error: ``||(W - W') X^T||_F / ||W X^T||_F`` from the calibration Gram (None without calib).
    """

    C: np.ndarray
    U: np.ndarray | None
    R: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    rank: int
    ratio: float
    shape: tuple[int, int]
    selection: str
    u_method: str
    activation_aware: bool
    exact_factors: bool
    folded: bool = False
    weight_error: float | None = None
    output_error: float | None = None

    def __post_init__(self) -> None:
        m, n = self.shape
        r, c = self.rank, len(self.cols)
        ok = self.R.shape == (r, n) and self.rows.shape == (r,)
        if self.folded:
            ok = ok and self.U is None and self.C.shape == (m, r)
        else:
            ok = ok and self.U is not None and self.U.shape == (c, r) and self.C.shape == (m, c)
        if not ok:
            raise InvalidInputError(
                f"inconsistent CUR factors for shape {self.shape}, rank {r}, {c} columns, folded={self.folded}: "
                f"C {self.C.shape}, U {None if self.U is None else self.U.shape}, R {self.R.shape}, "
                f"rows {self.rows.shape}; expected C (m, c), U (c, r), R (r, n) (C (m, r), U None when folded)"
            )

    @property
    def n_params(self) -> int:
        """Parameters kept: ``m c + c r + r n`` (U counted), or ``m r + r n`` when folded."""
        return int(self.C.size + (0 if self.U is None else self.U.size) + self.R.size)

    def reconstruct(self) -> np.ndarray:
        """The dense approximation ``W' = C @ U @ R`` (m, n)."""
        CU = self.C if self.U is None else self.C @ self.U  # (m, c) @ (c, r)
        return CU @ self.R  # (m, r) @ (r, n)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``x @ W'^T = ((x @ R^T) @ U^T) @ C^T``: x (..., n) -> (..., m), never forming W'."""
        x = np.asarray(x)
        if x.shape[-1:] != (self.shape[1],):
            raise InvalidInputError(f"x has shape {x.shape}; its last axis must be in_features={self.shape[1]}")
        h = x @ self.R.T  # (N, n) @ (n, r)
        if self.U is not None:
            h = h @ self.U.T  # (N, r) @ (r, c)
        return h @ self.C.T  # (N, c) @ (c, m)

    def folded_u(self) -> CURResult:
        """The same approximation with U folded into C: ``C := C @ U`` (m, r), ``U = None``.

        Saves the ``c r`` parameters of U (and one matmul at inference), but C then no longer holds real
        columns of W: ``exact_factors`` becomes False (``cols`` still names the columns C was built from).
        """
        if self.folded:
            return self
        CU = (self.C.astype(np.float64) @ self.U.astype(np.float64)).astype(self.C.dtype)  # (m, c) @ (c, r)
        m, n = self.shape
        ratio = achieved_ratio(m, n, n_params(m, n, self.rank, "cur_folded"))
        return replace(self, C=CU, U=None, folded=True, exact_factors=False, ratio=ratio)


def _check_u(u: object) -> str:
    if u not in U_METHODS:
        raise InvalidInputError(f"u={u!r} is not a middle-matrix method; choose one of {U_METHODS}")
    return u  # type: ignore[return-value]


def _check_rcond(rcond: object) -> float | None:
    if rcond is None:
        return None
    if isinstance(rcond, bool) or not isinstance(rcond, (int, float, np.floating)) or not 0 <= float(rcond) < 1:
        raise InvalidInputError(f"rcond={rcond!r} must be None (automatic) or a number in [0, 1), e.g. 1e-6")
    return float(rcond)


def _kept_svd(M: np.ndarray, cut: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin LAPACK SVD of M in float64, keeping singular values ``> cut * s_max``."""
    U, s, Vt = exact_svd(M.astype(np.float64))
    k = int(np.count_nonzero(s > cut * (s[0] if s.size else 0.0)))
    return U[:, :k], s[:k], Vt[:k]


def _row_factor(R: np.ndarray, cut: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``R = U_R diag(s_R) V_R^T`` for the kept singular values.

    Returns U_R (r, k) and s_R (k,) in float64, V_R^T (k, n) in R's dtype. Via the (r, r) Gram ``R R^T`` when
    well conditioned (``V_R^T = s_R^{-1} U_R^T R``), else LAPACK.
    """
    es = gram_side_svd(R, cut=cut)
    if es is None:
        U, s, Vt = _kept_svd(R, cut)
        return U, s, Vt.astype(R.dtype)
    U, s = es
    return U, s, (U.T.astype(R.dtype) @ R) / s[:, None].astype(R.dtype)  # (k, r) @ (r, n)


def _col_pinv_apply(C: np.ndarray, P: np.ndarray, cut: float) -> np.ndarray:
    """``C^+ P`` (c, k) in float64 for C (m, c) tall, P (m, k): normal equations with an eigen cut, or LAPACK."""
    es = gram_side_svd(C, cut=cut)
    if es is None:
        Uc, sc, Vtc = _kept_svd(C, cut)
        return (Vtc.T / sc) @ (Uc.T @ P)  # (c, kc) @ ((kc, m) @ (m, k))
    V, s = es  # C^T C = V diag(s^2) V^T
    CtP = C.astype(np.float64).T @ P  # (c, m) @ (m, k)
    return (V / s**2) @ (V.T @ CtP)  # (c, kc) @ ((kc, c) @ (c, k))


def _middle(
    W: np.ndarray,
    C: np.ndarray,
    R: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    u: str,
    calib: CalibStats | None,
    damping: float,
    rcond: float | None,
) -> np.ndarray:
    """The middle matrix U (c, r) in float64 (see the module docstring for the maths)."""
    eps = float(np.finfo(W.dtype).eps)
    if u == "intersection":
        M = W[np.ix_(rows, cols)]  # (r, c)
        Ui, si, Vti = _kept_svd(M, max(M.shape) * eps if rcond is None else rcond)
        return (Vti.T / si) @ Ui.T  # pinv: (c, k) @ (k, r)
    Ur, sr, Vtr = _row_factor(R, max(R.shape) * eps if rcond is None else rcond)  # R = Ur diag(sr) Vtr
    Vr = Vtr.T  # (n, k), W's dtype
    if calib is None:
        P = (W @ Vr).astype(np.float64)  # (m, n) @ (n, k) = W V_R
    else:
        GV = calib.gram_as(W.dtype) @ Vr  # (n, n) @ (n, k)
        GV += calib.damping_value(damping) * Vr  # G_d V_R
        H = (Vtr @ GV).astype(np.float64)  # (k, n) @ (n, k) = V_R^T G_d V_R
        H = (H + H.T) / 2
        P = (W @ GV).astype(np.float64)  # (m, n) @ (n, k) = W G_d V_R
        try:
            P = scipy.linalg.cho_solve(scipy.linalg.cho_factor(H, check_finite=False), P.T).T  # W G_d V_R H^{-1}
        except np.linalg.LinAlgError as e:
            raise InvalidInputError(
                f"V_R^T G_d V_R is singular with damping={damping!r}: the calibration inputs miss the row space "
                f"of R; pass damping > 0, e.g. damping={DEFAULT_DAMPING}"
            ) from e
    CpP = _col_pinv_apply(C, P, max(C.shape) * eps if rcond is None else rcond)  # C^+ P (c, k)
    return (CpP / sr) @ Ur.T  # (c, k) @ (k, r): times diag(s_R)^{-1} U_R^T


_ERROR_BLOCK = 1 << 22  # elements of W per row block of the error computation (32 MiB in float64)


def _errors(W: np.ndarray, C: np.ndarray, U: np.ndarray, R: np.ndarray, calib: CalibStats | None
            ) -> tuple[float, float | None]:
    """(weight error, output error or None) of ``W' = C U R``, the float64 maths of ``relative_error`` and
    ``CalibStats.output_error``, summed over row blocks so that no (m, n) float64 copy of W or W' is formed
    (streamed compression holds one matrix at a time; this keeps its peak near the matrix itself)."""
    m, n = W.shape
    CU = C.astype(np.float64) @ U.astype(np.float64)  # (m, c) @ (c, r)
    R64 = R.astype(np.float64)  # (r, n)
    G = None if calib is None else calib.gram  # (n, n) float64
    step = max(1, _ERROR_BLOCK // max(n, 1))
    e2 = w2 = oe = ow = 0.0
    for s in range(0, m, step):
        Wb = W[s : s + step].astype(np.float64)  # (b, n)
        Eb = Wb - CU[s : s + step] @ R64  # (b, r) @ (r, n)
        e2 += float(np.einsum("ij,ij->", Eb, Eb))
        w2 += float(np.einsum("ij,ij->", Wb, Wb))
        if G is not None:  # trace(E G E^T) and trace(W G W^T), row block by row block
            oe += float(np.einsum("ij,ij->", Eb @ G, Eb))
            ow += float(np.einsum("ij,ij->", Wb @ G, Wb))

    def rel(num_sq: float, den_sq: float) -> float:
        num_sq = max(num_sq, 0.0)
        if den_sq <= 0.0:
            return 0.0 if num_sq == 0.0 else float("inf")
        return float(np.sqrt(num_sq / den_sq))

    return rel(e2, w2), (None if G is None else rel(oe, ow))


def cur(
    W: np.ndarray,
    *,
    rank: int | None = None,
    ratio: float | None = None,
    selection: str = "deim",
    u: str = "optimal",
    calib: CalibStats | None = None,
    randomized: bool = True,
    seed: int = 0,
    oversample: float = 1.0,
    damping: float = DEFAULT_DAMPING,
    n_oversamples: int = 10,
    n_power_iter: int = 1,
    rcond: float | None = None,
    errors: bool = True,
    whiten: bool = False,
) -> CURResult:
    """CUR decomposition of W (m, n) = (out_features, in_features) with real columns and rows.

    Args:
        W: weight matrix, float32 or float64 (kept as the factors' dtype).
        rank: r rows (and ``c = ceil(oversample r)`` columns); for ``selection="seed"`` the leverage rank k, with
            ``min(k + 10, m, n)`` rows kept. Exactly one of ``rank`` / ``ratio``.
        ratio: fraction of parameters to remove in (0, 1), counting U: the largest r with
            ``m c + c r + r n <= (1 - ratio) m n`` (for "seed", k = r - 10).
        selection: "deim" (Sorensen-Embree), "qdeim" (pivoted QR), "leverage" (top leverage scores) or "seed"
            (the poster's baseline: full SVD, leverage-proportional sampling; pair it with u="intersection").
        u: "optimal" (``C^+ W R^+``, or the output-optimal U with calib) or "intersection" (``pinv(W[rows, cols])``).
        calib: input statistics of W (width n): activation-aware selection and U.
        randomized: randomized basis (Halko-Martinsson-Tropp) instead of the exact SVD (ignored by "seed").
        seed: seeds the randomized sketch and the "seed" rule's sampling.
        oversample: columns per row, c = min(m, n, ceil(oversample r)) >= r (the basis then has rank c).
        damping: relative damping lambda of the Gram in the activation-aware U.
        n_oversamples: extra sketch columns p of the randomized basis.
        n_power_iter: power iterations q of the randomized basis (1; 0 is ~25% faster, slightly rougher).
        rcond: singular-value cut-off (relative to the largest) for the pseudo-inverses of C, R and the
            intersection; None uses ``max(shape) * eps(W.dtype)``.
        errors: compute ``weight_error`` / ``output_error`` (float64; the output error costs O(m n^2)).
        whiten: with ``calib``, select on the whitened matrix ``W S`` (S S^T the damped input Gram, the SVD-LLM
            whitening) instead of ``W diag(sqrt(E[x^2]))``: rows by the rule on the left singular vectors of W S;
            columns by the rule on its right singular vectors taken back to W's input coordinates
            (``W S = U diag(s) V^T`` gives ``W = U diag(s) (S^{-T} V)^T``: the basis is ``S^{-T} V``,
            orthonormalised). C and R stay real columns and rows of W.

    Returns:
        CURResult with ``C == W[:, cols]`` and ``R == W[rows, :]`` exactly.
    """
    W = as_matrix(W, "W")
    m, n = W.shape
    exactly_one(rank, ratio)
    selection = check_selection(selection)
    u = _check_u(u)
    seed = check_seed(seed)
    damping = check_damping(damping)
    rcond = _check_rcond(rcond)
    n_oversamples, n_power_iter = check_sketch(n_oversamples, n_power_iter)
    if calib is not None:
        if not isinstance(calib, CalibStats):
            raise InvalidInputError(f"calib must be a curmoe.CalibStats, got {type(calib).__name__}")
        calib.check_width(n, "W")

    if rank is not None:
        k = check_rank(rank, m, n)
        r = min(k + SEED_EXTRA, m, n) if selection == "seed" else k
    else:
        r = rank_for_ratio(m, n, ratio, "cur", oversample=oversample)  # type: ignore[arg-type]
        k = max(1, r - SEED_EXTRA) if selection == "seed" else r
    c = n_cols_for(r, m, n, oversample)

    if whiten and calib is None:
        raise InvalidInputError("whiten=True needs calib= (input statistics of W) to whiten with")
    if whiten and selection == "seed":
        raise InvalidInputError("whiten=True is not offered with the poster's 'seed' rule; use deim, qdeim or leverage")
    Ws = W
    S = None
    if calib is not None and whiten:
        S = calib.whitening(damping)  # (n, n) lower, float64: S S^T = G_d
        Ws = (W.astype(np.float64) @ S).astype(W.dtype)  # (m, n) @ (n, n)
    elif calib is not None:
        Ws = W * np.sqrt(calib.second_moment).astype(W.dtype)  # (m, n) * (n,): column i scaled by RMS(x_i)

    if selection == "seed":
        rng = np.random.default_rng(seed)
        Uf, _, Vtf = exact_svd(Ws)  # the poster's full SVD; top-k singular vectors give the leverage scores
        rows = sampled_leverage_indices(Uf[:, :k], r, rng)
        cols = sampled_leverage_indices(Vtf[:k].T, c, rng)
    else:
        Ub, _, Vtb = truncated_svd(Ws, c, randomized=randomized, n_oversamples=n_oversamples,
                                   n_power_iter=n_power_iter, seed=seed)  # (m, c), (c,), (c, n)
        if S is not None:  # right vectors back in W's input coordinates: V' = S^{-T} V (n, c), orthonormalised
            Vw = scipy.linalg.solve_triangular(S, Vtb.T.astype(np.float64), lower=True, trans="T", check_finite=False)
            Vtb = np.linalg.qr(Vw)[0].T.astype(Vtb.dtype)  # (c, n)
        pick = {"deim": deim_indices, "qdeim": qdeim_indices}.get(selection)
        if pick is not None:
            rows, cols = pick(Ub[:, :r]), pick(Vtb.T)
        else:
            rows, cols = leverage_indices(Ub[:, :r], r), leverage_indices(Vtb.T, c)

    C = W[:, cols]  # (m, c): exact copies of columns
    R = W[rows, :]  # (r, n): exact copies of rows
    U = _middle(W, C, R, rows, cols, u, calib, damping, rcond).astype(W.dtype)  # (c, r)

    w_err = o_err = None
    if errors:
        w_err, o_err = _errors(W, C, U, R, calib)
    log.debug("cur %dx%d %s/%s r=%d c=%d aware=%s weight error %s", m, n, selection, u, r, c, calib is not None,
              w_err)
    return CURResult(
        C=C, U=U, R=R, rows=rows, cols=cols, rank=r,
        ratio=achieved_ratio(m, n, n_params(m, n, r, "cur", n_cols=c)), shape=(m, n), selection=selection,
        u_method=u, activation_aware=calib is not None, exact_factors=True, weight_error=w_err, output_error=o_err,
    )
