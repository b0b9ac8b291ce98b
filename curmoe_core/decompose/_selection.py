"""Row/column selection rules for CUR, each applied to an orthonormal singular basis V (n, k).

- ``deim``: discrete empirical interpolation (Sorensen & Embree 2016, "A DEIM induced CUR factorization",
  SIAM J. Sci. Comput. 38(3)). Greedy: ``p_1 = argmax |v_1|``; for j >= 2 interpolate v_j on the points chosen so
  far, ``r = v_j - V_{:j} V_{p,:j}^{-1} v_{j,p}``, and take ``p_j = argmax |r|``. The residual r is exactly
  column j of the Schur complement in Gaussian elimination with partial pivoting, so the DEIM points are the first
  k row pivots of ``LU = P V`` (LAPACK getrf): O(n k^2) flops instead of a Python loop of solves.
- ``qdeim``: Drmac & Gugercin 2016, "A new selection operator for the discrete empirical interpolation method",
  SIAM J. Sci. Comput. 38(2): the first k column pivots of the column-pivoted QR of ``V^T`` (k, n) (LAPACK geqp3).
- ``leverage``: deterministic top-c leverage scores ``l_i = ||V_{i,:}||^2`` of the rank-k basis (ties -> lower
  index; Mahoney & Drineas 2009 sample by these, we take the largest).
- ``seed``: the poster's baseline, kept labelled: leverage scores of the top-k singular vectors of a *full* SVD,
  c = k + 10 indices *sampled* without replacement with probability ``l_i / k`` (seeded RNG).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from curmoe.common.errors import InvalidInputError

__all__ = [
    "SELECTIONS",
    "SEED_EXTRA",
    "check_seed",
    "check_selection",
    "deim_indices",
    "qdeim_indices",
    "leverage_scores",
    "leverage_indices",
    "sampled_leverage_indices",
]

SELECTIONS: tuple[str, ...] = ("deim", "qdeim", "leverage", "seed")
SEED_EXTRA = 10  # the poster samples rank + 10 rows and columns


def check_selection(selection: object) -> str:
    """Return ``selection`` if it names a rule, else raise listing the valid ones."""
    if selection not in SELECTIONS:
        raise InvalidInputError(f"selection={selection!r} is not a selection rule; choose one of {SELECTIONS}")
    return selection  # type: ignore[return-value]


def check_seed(seed: object) -> int:
    """A non-negative integer seed (NumPy ``default_rng`` rejects negative ones)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed={seed!r} must be a non-negative integer, e.g. seed=0")
    return int(seed)


def deim_indices(V: np.ndarray) -> np.ndarray:
    """DEIM points of the basis V (n, k), k <= n: k distinct int64 indices in selection order.

    Equal to the Sorensen-Embree greedy loop (see module docstring), computed as the row pivots of LU with
    partial pivoting. Ties go to the first maximum in LAPACK's current row order.
    """
    n, k = V.shape
    (getrf,) = scipy.linalg.get_lapack_funcs(("getrf",), (V,))
    _, piv, _info = getrf(V, overwrite_a=False)  # piv: 0-based row interchanges; info > 0 only flags a zero pivot
    perm = np.arange(n)
    for i, j in enumerate(piv[:k]):
        perm[i], perm[j] = perm[j], perm[i]
    return perm[:k].astype(np.int64)


def qdeim_indices(V: np.ndarray) -> np.ndarray:
    """Q-DEIM points of V (n, k): the first k column pivots of the pivoted QR of ``V^T`` (k, n)."""
    k = V.shape[1]
    _, P = scipy.linalg.qr(np.ascontiguousarray(V.T), pivoting=True, mode="r", check_finite=False)
    return np.asarray(P[:k], dtype=np.int64)


def leverage_scores(V: np.ndarray) -> np.ndarray:
    """Row leverage scores ``||V_{i,:}||^2`` (n,) of an orthonormal basis V (n, k), in float64; they sum to k."""
    V64 = V.astype(np.float64, copy=False)
    return np.einsum("ij,ij->i", V64, V64)


def leverage_indices(V: np.ndarray, c: int) -> np.ndarray:
    """The c indices with the largest leverage scores of V (n, k), largest first (stable: ties -> lower index)."""
    return np.argsort(-leverage_scores(V), kind="stable")[:c].astype(np.int64)


def sampled_leverage_indices(V: np.ndarray, c: int, rng: np.random.Generator) -> np.ndarray:
    """c distinct indices sampled without replacement with probability proportional to leverage (the poster's rule).

    When fewer than c indices have positive leverage (e.g. zero columns), a uniform floor of 1e-12 of the mass lets
    the zero-leverage indices complete the sample.
    """
    n = V.shape[0]
    lev = leverage_scores(V)
    total = lev.sum()
    p = lev / total if total > 0 else np.full(n, 1.0 / n)
    if np.count_nonzero(p) < c:
        p = (1.0 - 1e-12) * p + 1e-12 / n
    p = p / p.sum()
    return rng.choice(n, size=c, replace=False, p=p).astype(np.int64)
