"""Input checks shared by the decompositions and the model: each failure names the value and the fix."""

from __future__ import annotations

import numpy as np

from curmoe.common.errors import InvalidInputError

__all__ = ["as_matrix", "check_bool", "check_choice", "check_finite", "check_int", "check_number", "check_rank", "check_ratio",
           "exactly_one"]

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


def check_finite(A: np.ndarray, name: str, *,
                 fix: str = "clean or re-export the weights before compressing") -> None:
    """Raise if ``A`` holds NaN or Inf, saying how many, where the first one is and ``fix``."""
    bad = ~np.isfinite(A)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidInputError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN/Inf), first at index {first}; {fix}"
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


def _span(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    """``">= 1"``, ``"<= 9"`` or ``"in [0, 9]"`` (``"in (0, 9]"`` with ``lo_open``); ``""`` without bounds."""
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f"<= {hi}"
    return f"in {'(' if lo_open else '['}{lo}, {hi}]"


def _fail(name: str, value: object, must: str, fix: str) -> InvalidInputError:
    return InvalidInputError(f"{name}={value!r} must be {must}{'; ' + fix if fix else ''}")


def check_int(value: object, name: str, *, lo: int | None = None, hi: int | None = None, fix: str = "") -> int:
    """An integer (not a bool) in ``[lo, hi]``; the error names the value, the range and ``fix``, e.g.
    ``n_experts=0 must be an integer >= 1``."""
    must = f"an integer {_span(lo, hi)}".rstrip()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _fail(name, value, must, fix)
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _fail(name, value, must, fix)
    return v


def check_number(value: object, name: str, *, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, fix: str = "") -> float:
    """A finite real number (not a bool) in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); the error reads e.g.
    ``speed=-1 must be a finite number >= 0``."""
    must = f"a finite number {_span(lo, hi, lo_open)}".rstrip()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _fail(name, value, must, fix)
    v = float(value)
    bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
    if not np.isfinite(v) or bad_lo or (hi is not None and v > hi):
        raise _fail(name, value, must, fix)
    return v


def check_bool(value: object, name: str, *, fix: str = "") -> bool:
    """A real bool (1 and "yes" are refused: a config that says ``True`` means it)."""
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(name, value, "True or False", fix)
    return bool(value)


def check_choice(value: object, name: str, choices: tuple[str, ...] | list[str]) -> str:
    """One of ``choices``; the error lists them."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidInputError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")
    return value
