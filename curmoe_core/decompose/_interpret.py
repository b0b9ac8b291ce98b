"""Interpretability helpers: which input features (columns) and output neurons (rows) a CUR keeps.

Because C and R are real columns and rows of W, ``cols`` names input features and ``rows`` names output neurons
of the layer. The Jaccard index ``|A & B| / |A | B|`` measures how much two index sets agree (e.g. the columns
kept by two selection rules, or by two experts).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from curmoe.common.errors import InvalidInputError
from curmoe.decompose._cur import CURResult

__all__ = ["kept_columns", "kept_rows", "jaccard", "jaccard_matrix", "jaccard_chance", "energy_share"]


def _check_cur(result: object, what: str) -> CURResult:
    if not isinstance(result, CURResult):
        raise InvalidInputError(
            f"{what} needs a CURResult (from curmoe.cur), got {type(result).__name__}; "
            f"SVD factors mix all columns and rows, so they keep none"
        )
    return result


def kept_columns(result: CURResult) -> np.ndarray:
    """Sorted int64 indices of the input features (columns of W) the CUR keeps."""
    return np.sort(_check_cur(result, "kept_columns").cols).astype(np.int64)


def kept_rows(result: CURResult) -> np.ndarray:
    """Sorted int64 indices of the output neurons (rows of W) the CUR keeps."""
    return np.sort(_check_cur(result, "kept_rows").rows).astype(np.int64)


def _as_index_set(x: object, name: str) -> set[int]:
    a = np.asarray(list(x) if not isinstance(x, np.ndarray) and isinstance(x, Iterable) else x)
    if a.ndim != 1:
        raise InvalidInputError(f"{name} must be a 1-D collection of indices, got shape {a.shape}")
    if a.size and (a.dtype.kind not in "iu" or a.min() < 0):
        raise InvalidInputError(f"{name} must hold non-negative integer indices, got dtype {a.dtype}: {a[:5]}...")
    return set(a.tolist())


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    """Jaccard index ``|A & B| / |A | B|`` of two index collections (duplicates ignored; 1.0 if both are empty)."""
    sa, sb = _as_index_set(a, "a"), _as_index_set(b, "b")
    union = len(sa | sb)
    return 1.0 if union == 0 else len(sa & sb) / union


def jaccard_matrix(sets: list[Iterable[int]]) -> np.ndarray:
    """(E, E) float64 matrix of :func:`jaccard` between every pair of index sets (ones on the diagonal)."""
    ss = [_as_index_set(x, f"sets[{i}]") for i, x in enumerate(sets)]
    J = np.ones((len(ss), len(ss)))
    for i in range(len(ss)):
        for j in range(i + 1, len(ss)):
            union = len(ss[i] | ss[j])
            J[i, j] = J[j, i] = 1.0 if union == 0 else len(ss[i] & ss[j]) / union
    return J


def jaccard_chance(a: int, b: int, n: int) -> float:
    """The Jaccard index two random subsets of sizes ``a`` and ``b`` of ``n`` items have, as the ratio of the
    expectations ``E|A & B| / E|A | B|`` with ``E|A & B| = a b / n``: the level an overlap must beat to mean
    anything."""
    if not (0 <= a <= n and 0 <= b <= n and n >= 1):
        raise InvalidInputError(f"need 0 <= a, b <= n and n >= 1, got a={a}, b={b}, n={n}")
    inter = a * b / n
    union = a + b - inter
    return 1.0 if union == 0 else inter / union


def energy_share(energy: object, kept: Iterable[int]) -> float:
    """Share ``sum_{j in kept} e_j / sum_j e_j`` of a non-negative energy vector (n,) held by the kept indices
    (a random choice of k indices holds ``k / n`` on average)."""
    e = np.asarray(energy, np.float64)
    idx = np.asarray(sorted(_as_index_set(kept, "kept")), np.int64)
    if e.ndim != 1 or np.any(e < 0) or (idx.size and idx.max() >= e.size):
        raise InvalidInputError(f"energy must be a non-negative 1-D vector covering every kept index; got shape "
                                f"{e.shape}, largest index {idx.max() if idx.size else None}")
    total = float(e.sum())
    return 0.0 if total == 0 else float(e[idx].sum() / total)
