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

__all__ = ["kept_columns", "kept_rows", "jaccard"]


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
