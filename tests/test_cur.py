"""CUR decomposition (curmoe.cur): selection rules, middle matrix, activation-aware mode, folding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import curmoe
from curmoe.decompose._selection import deim_indices, leverage_scores, qdeim_indices
from tests.decomp_cases import (
    DTYPES,
    TOL,
    anisotropic_activations,
    decaying,
    direct_output_error,
    low_rank,
    random_matrix,
    shapes_and_rank,
    stats_of,
)

RULES = ["deim", "qdeim", "leverage", "seed"]


def _deim_loop(V: np.ndarray) -> np.ndarray:
    """Sorensen & Embree 2016, Algorithm 1, written as the paper states it."""
    p = [int(np.argmax(np.abs(V[:, 0])))]
    for j in range(1, V.shape[1]):
        c = np.linalg.solve(V[p, :j], V[p, j])
        p.append(int(np.argmax(np.abs(V[:, j] - V[:, :j] @ c))))
    return np.array(p)


@given(n=st.integers(1, 40), data=st.data())
def test_deim_equals_the_greedy_loop(n, data):
    k = data.draw(st.integers(1, n))
    V = np.linalg.qr(np.random.default_rng(n * 100 + k).standard_normal((n, k)))[0]
    np.testing.assert_array_equal(deim_indices(V), _deim_loop(V))


def test_qdeim_and_leverage_rules():
    V = np.linalg.qr(np.random.default_rng(0).standard_normal((30, 6)))[0]
    p = qdeim_indices(V)
    assert len(set(p.tolist())) == 6
    # Drmac-Gugercin: the selected rows of V are well conditioned (far below the worst case sqrt(n) 2^k bound).
    assert np.linalg.norm(np.linalg.inv(V[p]), 2) < np.sqrt(30) * 2**6
    lev = leverage_scores(V)
    assert lev.sum() == pytest.approx(6)
    top = curmoe.cur(V @ V.T, rank=6, selection="leverage", randomized=False).rows
    assert lev[top].min() >= np.delete(lev, top).max()


@pytest.mark.parametrize("selection", RULES)
@pytest.mark.parametrize("randomized", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_recovery_of_rank_r_matrices(selection, randomized, dtype):
    W = low_rank(40, 60, 5, seed=2, dtype=dtype)
    res = curmoe.cur(W, rank=5, selection=selection, u="optimal", randomized=randomized, seed=3)
    assert res.weight_error < {np.float32: 1e-4, np.float64: 1e-10}[dtype], res.weight_error


def test_exact_recovery_with_intersection_u():
    W = low_rank(30, 50, 4, seed=5)
    res = curmoe.cur(W, rank=4, u="intersection", randomized=False)
    assert res.u_method == "intersection" and res.weight_error < 1e-10
    # More rows than the true rank: pinv with the rcond cut-off still recovers W.
    res8 = curmoe.cur(W, rank=8, u="intersection", randomized=False)
    assert res8.weight_error < 1e-8
    with pytest.raises(curmoe.InvalidInputError, match=r"rcond=2 must be None \(automatic\) or a number in \[0, 1\)"):
        curmoe.cur(W, rank=3, rcond=2)


@given(
    shape=shapes_and_rank(),
    dtype=st.sampled_from(DTYPES),
    selection=st.sampled_from(RULES),
    u=st.sampled_from(["optimal", "intersection"]),
    randomized=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_cur_invariants(shape, dtype, selection, u, randomized, seed):
    """Real columns/rows, distinct valid indices, parameter count, error >= SVD error, apply == reconstruct."""
    m, n, r = shape
    W = random_matrix(m, n, seed, dtype)
    res = curmoe.cur(W, rank=r, selection=selection, u=u, randomized=randomized, seed=seed, n_oversamples=2)
    c = len(res.cols)
    assert res.rank == len(res.rows) == (min(r + 10, m, n) if selection == "seed" else r)
    assert res.rows.dtype == res.cols.dtype == np.int64
    assert len(set(res.rows.tolist())) == res.rank and len(set(res.cols.tolist())) == c
    assert 0 <= res.rows.min() and res.rows.max() < m and 0 <= res.cols.min() and res.cols.max() < n
    np.testing.assert_array_equal(res.C, W[:, res.cols])
    np.testing.assert_array_equal(res.R, W[res.rows, :])
    assert res.exact_factors and not res.folded and not res.activation_aware
    assert res.C.dtype == res.U.dtype == res.R.dtype == dtype and res.U.shape == (c, res.rank)
    assert res.n_params == res.C.size + res.U.size + res.R.size  # what is stored, not a formula
    assert res.ratio == pytest.approx(1 - res.n_params / W.size, rel=1e-12)
    # Eckart-Young: no rank-k approximation beats the truncated SVD, and rank(C U R) <= res.rank.
    s = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    svd_err = np.sqrt(np.sum(s[res.rank :] ** 2) / np.sum(s**2))
    assert res.weight_error >= svd_err - 10 * TOL[dtype]
    x = random_matrix(3, n, seed + 1, dtype)
    y = res.apply(x)
    assert y.shape == (3, m) and y.dtype == dtype
    np.testing.assert_allclose(y, x @ res.reconstruct().T, rtol=TOL[dtype], atol=TOL[dtype] * (1 + np.abs(y).max()))


@pytest.mark.parametrize("selection", RULES)
def test_cur_error_at_least_svd_error_on_decaying_spectra(selection):
    W = decaying(60, 90, seed=4, alpha=0.7)
    for r in (3, 10, 25):
        cur = curmoe.cur(W, rank=r, selection=selection)
        svd = curmoe.svd(W, rank=cur.rank)
        assert cur.weight_error >= svd.weight_error * (1 - 1e-12)


@pytest.mark.parametrize("selection", RULES)
@pytest.mark.parametrize("randomized", [False, True])
def test_same_seed_same_indices(selection, randomized):
    W = random_matrix(50, 70, 0, np.float32)
    a = curmoe.cur(W, rank=8, selection=selection, randomized=randomized, seed=11)
    b = curmoe.cur(W, rank=8, selection=selection, randomized=randomized, seed=11)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.cols, b.cols)
    np.testing.assert_array_equal(a.U, b.U)
    if selection == "seed":  # sampling: another seed draws other indices
        other = curmoe.cur(W, rank=8, selection=selection, seed=12)
        assert not np.array_equal(np.sort(a.cols), np.sort(other.cols))


@pytest.mark.parametrize("selection", ["deim", "qdeim", "leverage"])
@pytest.mark.parametrize("randomized", [False, True])
def test_activation_aware_cur_beats_plain_on_output_error(selection, randomized):
    W = decaying(48, 64, seed=1, alpha=0.5) + 0.01 * random_matrix(48, 64, 2, np.float64)
    X = anisotropic_activations(256, 64)
    stats = stats_of(X)
    plain = curmoe.cur(W, rank=12, selection=selection, randomized=randomized)
    aware = curmoe.cur(W, rank=12, selection=selection, randomized=randomized, calib=stats)
    e_plain = direct_output_error(W, plain.reconstruct(), X)
    assert aware.output_error == pytest.approx(direct_output_error(W, aware.reconstruct(), X), rel=1e-8)
    assert aware.output_error < 0.8 * e_plain, (aware.output_error, e_plain)
    assert aware.activation_aware and aware.exact_factors
    np.testing.assert_array_equal(aware.C, W[:, aware.cols])
    np.testing.assert_array_equal(aware.R, W[aware.rows, :])


def test_activation_aware_u_is_output_optimal_for_its_columns_and_rows():
    """U = C^+ (W S)(R S)^+: the damped objective ||(W - C U R) S||_F has zero gradient in U."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((20, 16))
    stats = stats_of(anisotropic_activations(60, 16))
    res = curmoe.cur(W, rank=5, oversample=1.4, calib=stats, randomized=False, damping=0.1)
    Gd = stats.damped_gram(0.1)
    grad = res.C.T @ (W - res.reconstruct()) @ Gd @ res.R.T  # d/dU of the objective / -2
    assert np.abs(grad).max() < 1e-9 * np.abs(res.C.T @ W @ Gd @ res.R.T).max()


def test_oversampled_columns_extend_deim_and_lower_the_error():
    W = decaying(40, 80, seed=6, alpha=0.6)
    base = curmoe.cur(W, rank=8, randomized=False)
    over = curmoe.cur(W, rank=8, oversample=2.0, randomized=False)
    assert len(over.cols) == 16 and over.rank == 8 and over.U.shape == (16, 8)
    np.testing.assert_array_equal(over.rows, base.rows)  # DEIM is greedy: the first 8 points do not change
    np.testing.assert_array_equal(over.cols[:8], base.cols)
    assert over.weight_error <= base.weight_error
    assert over.n_params == over.C.size + over.U.size + over.R.size > base.n_params  # 8 more columns stored
    assert over.ratio < base.ratio


@pytest.mark.parametrize("dtype", DTYPES)
def test_folded_u(dtype):
    W = random_matrix(20, 30, 0, dtype)
    res = curmoe.cur(W, rank=6, oversample=1.5)
    f = res.folded_u()
    assert f.folded and f.U is None and not f.exact_factors and f.C.shape == (20, 6) and f.C.dtype == dtype
    np.testing.assert_array_equal(f.cols, res.cols)
    np.testing.assert_allclose(f.reconstruct(), res.reconstruct(), rtol=TOL[dtype], atol=TOL[dtype])
    x = random_matrix(4, 30, 1, dtype)
    np.testing.assert_allclose(f.apply(x), res.apply(x), rtol=TOL[dtype], atol=10 * TOL[dtype])
    assert f.n_params == 20 * 6 + 6 * 30 and f.ratio > res.ratio
    assert f.folded_u() is f


def test_bad_cur_options_list_the_valid_ones():
    W = random_matrix(6, 8, 0, np.float64)
    with pytest.raises(curmoe.InvalidInputError,
                       match=r"selection='random' is not a selection rule; choose one of "
                             r"\('deim', 'qdeim', 'leverage', 'seed'\)"):
        curmoe.cur(W, rank=2, selection="random")
    with pytest.raises(curmoe.InvalidInputError,
                       match=r"u='pinv' is not a middle-matrix method; choose one of \('optimal', 'intersection'\)"):
        curmoe.cur(W, rank=2, u="pinv")
    with pytest.raises(curmoe.InvalidInputError, match=r"seed=-1 must be a non-negative integer"):
        curmoe.cur(W, rank=2, seed=-1)
    with pytest.raises(curmoe.InvalidInputError, match=r"oversample=0\.5 must be a number >= 1"):
        curmoe.cur(W, rank=2, oversample=0.5)
    with pytest.raises(curmoe.InvalidInputError, match=r"x has shape \(3, 7\); its last axis must be in_features=8"):
        curmoe.cur(W, rank=2).apply(np.ones((3, 7)))
