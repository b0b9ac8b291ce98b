"""Input checks shared by the decompositions and the model: each failure names the value and the fix."""

from __future__ import annotations

import numpy as np

from curmoe._errors import InvalidInputError

__all__ = ["as_matrix", "check_finite", "check_rank", "check_ratio", "exactly_one"]

_FLOATS = (np.float32, np.float64)


def as_matrix(W: object, name: str = "W") -> np.ndarray:
    """Return ``W`` as a 2-D float32/float64 array, or raise a clear error.

    Integer and float16 inputs are promoted to float64 / float32 respectively; anything non-2-D, empty or
    non-finite is rejected.
    """
    try:
        A = np.asarray(W)
    except Exception as e:  # ragged lists and the like
        raise InvalidInputError(f"{name} could not be read as an array ({e}); pass a 2-D numpy array") from e
    if A.ndim != 2:
        raise InvalidInputError(f"{name} must be 2-D (a weight matrix), got shape {A.shape}; reshape it to (m, n)")
    if A.size == 0:
        raise InvalidInputError(f"{name} is empty (shape {A.shape}); pass a matrix with at least one row and column")
    if A.dtype == np.float16:
        A = A.astype(np.float32)
    elif A.dtype.kind in "biu":
        A = A.astype(np.float64)
    elif A.dtype.type not in _FLOATS:
        raise InvalidInputError(f"{name} has dtype {A.dtype}; pass float32 or float64")
    check_finite(A, name)
    return A


def check_finite(A: np.ndarray, name: str) -> None:
    """Raise if ``A`` holds NaN or Inf, saying how many and where the first one is."""
    bad = ~np.isfinite(A)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidInputError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN/Inf), first at index {first}; "
            f"clean or re-export the weights before compressing"
        )


def check_rank(rank: object, m: int, n: int, name: str = "rank") -> int:
    """Validate an integer rank in ``[1, min(m, n)]``."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise InvalidInputError(f"{name}={rank!r} must be an integer in [1, {min(m, n)}]")
    rank = int(rank)
    if not 1 <= rank <= min(m, n):
        raise InvalidInputError(
            f"{name}={rank} is out of range for a {m}x{n} matrix; pass 1 <= {name} <= min(m, n)={min(m, n)}"
        )
    return rank


def check_ratio(ratio: object, name: str = "ratio") -> float:
    """Validate a compression ratio strictly inside (0, 1)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating, np.integer)):
        raise InvalidInputError(f"{name}={ratio!r} must be a number in (0, 1), e.g. 0.5 removes half the parameters")
    r = float(ratio)
    if not (0.0 < r < 1.0) or not np.isfinite(r):
        raise InvalidInputError(
            f"{name}={ratio!r} is outside (0, 1); it is the fraction of parameters removed, e.g. 0.5 or 0.7"
        )
    return r


def exactly_one(rank: object, ratio: object) -> None:
    """Exactly one of ``rank`` / ``ratio`` must be given."""
    if (rank is None) == (ratio is None):
        raise InvalidInputError(
            f"pass exactly one of rank= or ratio= (got rank={rank!r}, ratio={ratio!r})"
        )
