"""Truncated SVD and SVD-LLM (curmoe.svd), plus the bad-input contract shared with curmoe.cur."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import curmoe
from tests.decomp_cases import (
    DTYPES,
    TOL,
    anisotropic_activations,
    decaying,
    direct_output_error,
    random_matrix,
    shapes_and_rank,
    stats_of,
)


@given(shape=shapes_and_rank(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_eckart_young_identity(shape, dtype, seed):
    """||W - W_r||_F^2 equals the sum of the discarded squared singular values; factors keep the dtype."""
    m, n, r = shape
    W = random_matrix(m, n, seed, dtype)
    res = curmoe.svd(W, rank=r)
    assert res.A.shape == (m, r) and res.B.shape == (r, n) and res.s.shape == (r,)
    assert res.A.dtype == res.B.dtype == dtype and res.method == "svd" and not res.randomized
    s_all = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    W64 = W.astype(np.float64)
    err_sq = np.linalg.norm(W64 - res.A.astype(np.float64) @ res.B.astype(np.float64)) ** 2
    norm_sq = np.linalg.norm(W64) ** 2
    assert err_sq == pytest.approx(np.sum(s_all[r:] ** 2), abs=TOL[dtype] * norm_sq)
    np.testing.assert_allclose(res.s, s_all[:r], rtol=TOL[dtype], atol=TOL[dtype] * s_all[0])
    assert res.weight_error == pytest.approx(np.sqrt(err_sq / norm_sq), rel=1e-6, abs=1e-12)
    assert res.ratio == 1 - r * (m + n) / (m * n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_randomized_is_near_optimal_and_deterministic(dtype):
    W = decaying(120, 200, seed=3, dtype=dtype, alpha=1.5)
    exact = curmoe.svd(W, rank=20)
    a = curmoe.svd(W, rank=20, randomized=True, seed=7)
    b = curmoe.svd(W, rank=20, randomized=True, seed=7)
    assert a.randomized and a.weight_error <= exact.weight_error * 1.01
    np.testing.assert_array_equal(a.A, b.A)
    np.testing.assert_array_equal(a.B, b.B)
    with pytest.raises(curmoe.InvalidInputError, match=r"n_power_iter=-1 must be an integer >= 0"):
        curmoe.svd(W, rank=5, randomized=True, n_power_iter=-1)


def test_svd_llm_identity_and_map_back():
    """SVD-LLM: ||(W - W') S||_F^2 is the sum of discarded squared singular values of W S (damped S)."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((15, 12))
    X = anisotropic_activations(40, 12)
    stats = stats_of(X)
    res = curmoe.svd(W, rank=4, calib=stats)
    assert res.method == "svd-llm"
    S = stats.whitening()
    s_ws = np.linalg.svd(W @ S, compute_uv=False)
    np.testing.assert_allclose(res.s, s_ws[:4], rtol=1e-10)
    assert np.linalg.norm((W - res.reconstruct()) @ S) ** 2 == pytest.approx(np.sum(s_ws[4:] ** 2), rel=1e-9)
    assert res.output_error == pytest.approx(direct_output_error(W, res.reconstruct(), X), rel=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("randomized", [False, True])
def test_svd_llm_beats_plain_svd_on_output_error(dtype, randomized):
    W = decaying(48, 64, seed=1, dtype=dtype, alpha=0.5) + 0.01 * random_matrix(48, 64, 2, dtype)
    X = anisotropic_activations(256, 64)
    stats = stats_of(X)
    plain = curmoe.svd(W, rank=12, randomized=randomized)
    llm = curmoe.svd(W, rank=12, calib=stats, randomized=randomized)
    e_plain = direct_output_error(W, plain.reconstruct().astype(np.float64), X)
    assert llm.output_error < 0.8 * e_plain, (llm.output_error, e_plain)
    assert plain.output_error is None
    assert llm.weight_error >= plain.weight_error  # plain SVD is weight-optimal


@given(shape=shapes_and_rank(), dtype=st.sampled_from(DTYPES), randomized=st.booleans())
def test_apply_matches_reconstruct(shape, dtype, randomized):
    m, n, r = shape
    res = curmoe.svd(random_matrix(m, n, 0, dtype), rank=r, randomized=randomized, n_oversamples=2)
    x = random_matrix(5, n, 1, dtype)
    y = res.apply(x)
    assert y.shape == (5, m) and y.dtype == dtype
    np.testing.assert_allclose(y, x @ res.reconstruct().T, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(y).max())


def test_errors_false_skips_error_metrics():
    res = curmoe.svd(random_matrix(6, 7, 0, np.float64), rank=2, errors=False)
    assert res.weight_error is None and res.output_error is None


def _nan():
    W = np.ones((4, 6))
    W[2, 3] = np.nan
    return W


def _inf():
    W = np.ones((4, 6))
    W[0, 1] = np.inf
    return W


BAD_INPUTS = [
    (dict(W=_nan(), rank=2), r"W contains 1 non-finite value\(s\) \(NaN/Inf\), first at index \(2, 3\)"),
    (dict(W=_inf(), rank=2), r"W contains 1 non-finite value\(s\) \(NaN/Inf\), first at index \(0, 1\)"),
    (dict(W=np.ones(6), rank=1), r"W must be 2-D \(a weight matrix\), got shape \(6,\); reshape it to \(m, n\)"),
    (dict(W=np.ones((2, 3, 4)), rank=1), r"W must be 2-D \(a weight matrix\), got shape \(2, 3, 4\)"),
    (dict(W=np.ones((0, 5)), rank=1), r"W is empty \(shape \(0, 5\)\)"),
    (dict(W=np.ones((4, 6)), rank=0), r"rank=0 is out of range for a 4x6 matrix; pass 1 <= rank <= min\(m, n\)=4"),
    (dict(W=np.ones((4, 6)), rank=5), r"rank=5 is out of range for a 4x6 matrix; pass 1 <= rank <= min\(m, n\)=4"),
    (dict(W=np.ones((4, 6)), rank=2.5), r"rank=2\.5 must be an integer in \[1, 4\]"),
    (dict(W=np.ones((4, 6)), ratio=0.0), r"ratio=0\.0 is outside \(0, 1\)"),
    (dict(W=np.ones((4, 6)), ratio=1.0), r"ratio=1\.0 is outside \(0, 1\)"),
    (dict(W=np.ones((4, 6)), ratio=-0.5), r"ratio=-0\.5 is outside \(0, 1\)"),
    (dict(W=np.ones((4, 6)), ratio=0.95), r"ratio=0\.95 is impossible for a 4x6 .*largest feasible ratio"),
    (dict(W=np.ones((4, 6)), rank=2, ratio=0.5), r"pass exactly one of rank= or ratio= \(got rank=2, ratio=0\.5\)"),
    (dict(W=np.ones((4, 6))), r"pass exactly one of rank= or ratio= \(got rank=None, ratio=None\)"),
    (dict(W=np.ones((4, 6), dtype=complex), rank=1), r"W has dtype complex128; pass float32 or float64"),
]


@pytest.mark.parametrize("fn", ["svd", "cur"])
@pytest.mark.parametrize(("kwargs", "message"), BAD_INPUTS)
def test_bad_inputs(fn, kwargs, message):
    kwargs = dict(kwargs)
    W = kwargs.pop("W")
    with pytest.raises(curmoe.InvalidInputError, match=message):
        getattr(curmoe, fn)(W, **kwargs)


@pytest.mark.parametrize("shape", [(30, 8), (8, 30)])
def test_gram_route_matches_lapack_and_refuses_ill_conditioned(shape):
    from curmoe.decompose._svd import gram_side_svd

    M = random_matrix(*shape, 0, np.float64)
    E, s = gram_side_svd(M)
    U, s_ref, Vt = np.linalg.svd(M, full_matrices=False)
    np.testing.assert_allclose(s, s_ref, rtol=1e-10)
    ref = Vt.T if shape[0] >= shape[1] else U  # singular vectors of the smaller side, up to sign
    np.testing.assert_allclose(np.abs(np.sum(E * ref, axis=0)), 1.0, rtol=1e-8)
    assert gram_side_svd(M, k=3)[1].size == 3
    assert gram_side_svd(M, cut=s_ref[2] / s_ref[0] * 0.999)[1].size == 3  # s_i > cut * s_1
    bad = (U * np.array([1.0] * 7 + [1e-6])) @ Vt  # cond 1e6: squaring would lose accuracy
    assert gram_side_svd(bad) is None and gram_side_svd(np.zeros(shape)) is None
