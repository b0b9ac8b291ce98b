"""Parameter accounting for factorised matrices and the rank solver.

For an (m, n) matrix W (m*n parameters) the factorisations keep:

- SVD, ``W' = A @ B`` with A (m, r), B (r, n): ``r * (m + n)`` parameters;
- CUR, ``W' = C @ U @ R`` with C (m, c), U (c, r), R (r, n): ``m*c + c*r + r*n`` (U is counted);
- folded CUR, ``W' = (C @ U) @ R``: ``m*r + r*n`` (U is folded into C, which then holds no real columns).

The compression ``ratio`` is the fraction of parameters removed, ``1 - kept / (m * n)``. Since every count grows
with the rank, the largest rank meeting a target ratio is found by bisection on exact integer counts.
"""

from __future__ import annotations

import math
from typing import Literal

from curmoe.common.checks import check_ratio
from curmoe.common.errors import InvalidInputError

__all__ = ["KINDS", "Kind", "n_cols_for", "n_params", "achieved_ratio", "rank_for_ratio"]

Kind = Literal["svd", "cur", "cur_folded"]
KINDS: tuple[str, ...] = ("svd", "cur", "cur_folded")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InvalidInputError(f"kind={kind!r} is not a factorisation kind; choose one of {KINDS}")


def _check_oversample(oversample: float) -> float:
    if isinstance(oversample, bool) or not isinstance(oversample, (int, float)) or not (
        math.isfinite(oversample) and oversample >= 1.0
    ):
        raise InvalidInputError(
            f"oversample={oversample!r} must be a number >= 1 (columns per row of the CUR; 1 keeps c == r)"
        )
    return float(oversample)


def n_cols_for(rank: int, m: int, n: int, oversample: float = 1.0) -> int:
    """CUR columns ``c = min(m, n, ceil(oversample * rank))`` for ``rank`` rows (never below ``rank``).

    The cap min(m, n) is the largest rank of a singular basis to select columns from.
    """
    oversample = _check_oversample(oversample)
    return int(max(rank, min(m, n, math.ceil(oversample * rank - 1e-9))))


def n_params(m: int, n: int, rank: int, kind: Kind = "cur", *, n_cols: int | None = None) -> int:
    """Parameters kept by a rank-``rank`` factorisation of an (m, n) matrix.

    Args:
        m: rows of W (out_features).
        n: columns of W (in_features).
        rank: r, the inner dimension (rows of R for CUR).
        kind: "svd" (r(m+n)), "cur" (mc + cr + rn) or "cur_folded" (mr + rn).
        n_cols: c, the number of CUR columns (default ``rank``); ignored for "svd" and "cur_folded".
    """
    _check_kind(kind)
    if kind == "svd":
        return rank * (m + n)
    if kind == "cur_folded":
        return m * rank + rank * n
    c = rank if n_cols is None else n_cols
    return m * c + c * rank + rank * n


def achieved_ratio(m: int, n: int, kept: int) -> float:
    """Fraction of the m*n parameters removed when ``kept`` remain (negative when the factors are larger)."""
    return 1.0 - kept / (m * n)


def rank_for_ratio(m: int, n: int, ratio: float, kind: Kind = "cur", *, oversample: float = 1.0) -> int:
    """Largest rank r in [1, min(m, n)] whose factors keep at most ``(1 - ratio) * m * n`` parameters.

    With ``oversample`` > 1 (kind "cur" only) the CUR has ``c = n_cols_for(r, m, n, oversample)`` columns.

    Raises:
        InvalidInputError: if even rank 1 keeps too many parameters; the message gives the largest ratio
            that is feasible for this shape and kind.
    """
    _check_kind(kind)
    ratio = check_ratio(ratio)
    oversample = _check_oversample(oversample)
    budget = (1.0 - ratio) * m * n

    def kept(r: int) -> int:
        return n_params(m, n, r, kind, n_cols=n_cols_for(r, m, n, oversample))

    if kept(1) > budget:
        best = achieved_ratio(m, n, kept(1))
        hint = f"pass ratio <= {best:.4g}" if best > 0 else "this matrix is too small to compress"
        raise InvalidInputError(
            f"ratio={ratio:g} is impossible for a {m}x{n} {kind!r} factorisation: even rank 1 keeps "
            f"{kept(1)} of {m * n} parameters (largest feasible ratio {best:.4g}); {hint}"
        )
    lo, hi = 1, min(m, n)  # invariant: kept(lo) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if kept(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo
