"""Calibration statistics (curmoe.CalibStats)."""

from __future__ import annotations

import numpy as np
import pytest

import curmoe
from tests.decomp_cases import (
    anisotropic_activations,
    direct_output_error,
    random_matrix,
)


def test_gram_and_second_moment_accumulate_over_batches_in_float64():
    X = anisotropic_activations(50, 7).astype(np.float32)
    s = curmoe.CalibStats(7)
    for lo in range(0, 50, 13):
        s.update(X[lo : lo + 13])
    X64 = X.astype(np.float64)
    assert s.n_tokens == 50 and s.n_features == 7
    assert s.gram.dtype == np.float64 and s.gram.shape == (7, 7)
    np.testing.assert_allclose(s.gram, X64.T @ X64, rtol=1e-12)
    np.testing.assert_allclose(s.second_moment, (X64**2).mean(axis=0), rtol=1e-12)


def test_merge_equals_one_pass_and_empty_batch_is_a_noop():
    X = anisotropic_activations(40, 5)
    a = curmoe.CalibStats().update(X[:15])
    b = curmoe.CalibStats(5).update(X[15:]).update(np.zeros((0, 5)))
    a.merge(b).merge(curmoe.CalibStats(5))
    whole = curmoe.CalibStats.from_activations(X)
    assert a.n_tokens == whole.n_tokens == 40
    np.testing.assert_allclose(a.gram, whole.gram, rtol=1e-12)


@pytest.mark.parametrize("damping", [0.0, 1e-2, 0.5])
def test_whitening_is_the_cholesky_factor_of_the_damped_gram(damping):
    X = anisotropic_activations(30, 6)
    s = curmoe.CalibStats.from_activations(X)
    S = s.whitening(damping)
    G = X.T @ X
    np.testing.assert_array_equal(S, np.tril(S))
    np.testing.assert_allclose(S @ S.T, G + damping * np.mean(np.diag(G)) * np.eye(6), rtol=1e-10)


def test_output_error_from_gram_equals_direct():
    X = anisotropic_activations(25, 8)
    W, W_hat = random_matrix(5, 8, 0, np.float64), random_matrix(5, 8, 1, np.float64)
    s = curmoe.CalibStats.from_activations(X)
    assert s.output_error(W, W_hat) == pytest.approx(direct_output_error(W, W_hat, X), rel=1e-10)
    assert s.output_error(W, W) == 0.0


def test_bad_activations():
    s = curmoe.CalibStats(4)
    with pytest.raises(curmoe.InvalidInputError, match=r"activations must be 2-D .*got shape \(4,\)"):
        s.update(np.ones(4))
    with pytest.raises(curmoe.InvalidInputError, match=r"activations have 3 features but these statistics hold 4"):
        s.update(np.ones((2, 3)))
    bad = np.ones((2, 4))
    bad[1, 2] = np.nan
    with pytest.raises(curmoe.InvalidInputError, match=r"activations X contains 1 non-finite value\(s\).*\(1, 2\)"):
        s.update(bad)
    with pytest.raises(curmoe.InvalidInputError, match=r"activations have 3 features but these statistics hold 4"):
        s.merge(curmoe.CalibStats().update(np.ones((2, 3))))
    with pytest.raises(curmoe.InvalidInputError, match=r"n_features=0 must be a positive integer"):
        curmoe.CalibStats(0)


def test_empty_and_all_zero_statistics():
    with pytest.raises(curmoe.InvalidInputError, match=r"hold no tokens; call stats\.update\(X\)"):
        curmoe.CalibStats(3).gram
    zero = curmoe.CalibStats().update(np.zeros((5, 3)))
    with pytest.raises(curmoe.InvalidInputError, match=r"activations are all zero"):
        zero.whitening()
    with pytest.raises(curmoe.InvalidInputError, match=r"damping=-1 must be a finite number >= 0"):
        curmoe.CalibStats.from_activations(np.ones((3, 3))).whitening(-1)


@pytest.mark.parametrize("fn", ["cur", "svd"])
def test_calibration_width_mismatch(fn):
    s = curmoe.CalibStats.from_activations(np.ones((4, 8)))
    with pytest.raises(
        curmoe.InvalidInputError,
        match=r"calibration statistics have 8 features but W has n=6 columns \(in_features\); gather activations "
        r"of this matrix's input \(width 6\)",
    ):
        getattr(curmoe, fn)(random_matrix(5, 6, 0, np.float64), rank=2, calib=s)
    with pytest.raises(curmoe.InvalidInputError, match=r"calib must be a curmoe\.CalibStats, got ndarray"):
        getattr(curmoe, fn)(random_matrix(5, 6, 0, np.float64), rank=2, calib=np.eye(6))
