"""Shared matrices and activations for the decomposition tests (test_svd, test_cur, test_calib, test_params)."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

import curmoe

DTYPES = (np.float32, np.float64)
# Relative tolerance of identities that hold in exact arithmetic, per dtype.
TOL = {np.float32: 2e-4, np.float64: 1e-9}


def low_rank(m: int, n: int, r: int, seed: int = 0, dtype: Any = np.float64) -> np.ndarray:
    """An exactly rank-r (m, n) matrix (Gaussian factors)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, r)) @ rng.standard_normal((r, n))).astype(dtype)


def decaying(m: int, n: int, seed: int = 0, dtype: Any = np.float64, alpha: float = 1.0) -> np.ndarray:
    """(m, n) matrix with power-law singular values ``i^-alpha`` in random orthonormal bases."""
    rng = np.random.default_rng(seed)
    k = min(m, n)
    U = np.linalg.qr(rng.standard_normal((m, k)))[0]
    V = np.linalg.qr(rng.standard_normal((n, k)))[0]
    return ((U * np.arange(1, k + 1) ** -alpha) @ V.T).astype(dtype)


def anisotropic_activations(N: int, n: int, seed: int = 1) -> np.ndarray:
    """X (N, n) with strongly unequal feature scales (lognormal, sigma 1.5) and some correlation."""
    rng = np.random.default_rng(seed)
    scales = np.exp(1.5 * rng.standard_normal(n))
    mix = np.eye(n) + 0.3 * rng.standard_normal((n, n)) / np.sqrt(n)
    return (rng.standard_normal((N, n)) @ mix) * scales


def stats_of(X: np.ndarray) -> curmoe.CalibStats:
    return curmoe.CalibStats(X.shape[1]).update(X)


def direct_output_error(W: np.ndarray, W_hat: np.ndarray, X: np.ndarray) -> float:
    """``||(W - W') X^T||_F / ||W X^T||_F`` computed from X itself."""
    W64 = W.astype(np.float64)
    return float(np.linalg.norm((W64 - W_hat) @ X.T) / np.linalg.norm(W64 @ X.T))


@st.composite
def shapes_and_rank(draw: st.DrawFn, max_dim: int = 24) -> tuple[int, int, int]:
    """(m, n, rank) including 1xN, Nx1, tall and wide shapes."""
    kind = draw(st.sampled_from(["row", "col", "tall", "wide", "any"]))
    a, b = draw(st.integers(1, max_dim)), draw(st.integers(1, max_dim))
    m, n = {"row": (1, b), "col": (a, 1), "tall": (max(a, b), min(a, b)), "wide": (min(a, b), max(a, b))}.get(
        kind, (a, b)
    )
    rank = draw(st.integers(1, min(m, n)))
    return m, n, rank


def random_matrix(m: int, n: int, seed: int, dtype: Any) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((m, n)).astype(dtype)
