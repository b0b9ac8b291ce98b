"""Per-matrix CUR selected on the whitened matrix W S (issue 12, item 4): still real columns and rows, and the
selection sees the input correlations that the diagonal scaling cannot."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import curmoe


def _correlated(seed: int, m: int, n: int, N: int = 600):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((m, n))
    mix = rng.standard_normal((n, n)) * np.exp(rng.standard_normal(n))  # correlated inputs of uneven scale
    X = rng.standard_normal((N, n)) @ mix
    return W, curmoe.CalibStats(n).update(X)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), m=st.integers(8, 24), n=st.integers(8, 24), ratio=st.sampled_from([0.3, 0.5]))
def test_whitened_cur_keeps_real_columns_and_rows(seed, m, n, ratio):
    W, stats = _correlated(seed, m, n)
    res = curmoe.cur(W, ratio=ratio, calib=stats, whiten=True, randomized=False)
    np.testing.assert_array_equal(res.C, W[:, res.cols])
    np.testing.assert_array_equal(res.R, W[res.rows, :])
    assert len(set(res.cols.tolist())) == len(res.cols) and res.ratio >= ratio
    again = curmoe.cur(W, ratio=ratio, calib=stats, whiten=True, randomized=False)
    np.testing.assert_array_equal(again.cols, res.cols)


def test_whitened_selection_differs_from_diagonal_scaling_on_correlated_inputs():
    W, stats = _correlated(0, 32, 48)
    a = curmoe.cur(W, ratio=0.5, calib=stats, randomized=False)
    b = curmoe.cur(W, ratio=0.5, calib=stats, whiten=True, randomized=False)
    assert set(a.cols.tolist()) != set(b.cols.tolist())


def test_whiten_needs_calibration():
    W, _ = _correlated(0, 8, 8)
    with pytest.raises(curmoe.InvalidInputError, match="whiten=True needs calib"):
        curmoe.cur(W, ratio=0.5, whiten=True)
    with pytest.raises(curmoe.InvalidInputError, match="needs activation_aware=True"):
        curmoe.CURConfig(ratio=0.5, whiten=True)
