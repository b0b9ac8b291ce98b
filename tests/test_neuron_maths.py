"""Tests of neuron.py (neuron CUR of MoE experts): exactness, monotonicity, optimality, determinism, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curmoe.decompose import _neuron as neuron


def _problem(seed: int, I: int = 24, d: int = 10, N: int = 200, rank: int | None = None):
    rng = np.random.default_rng(seed)
    if rank is None:
        X = rng.standard_normal((N, I)) * np.exp(rng.standard_normal(I))  # (N, I), uneven neuron scales
    else:
        X = rng.standard_normal((N, rank)) @ rng.standard_normal((rank, I))  # rank-deficient activations
    g = rng.uniform(0.1, 1.0, N)  # gate values
    H = (X * (g * g)[:, None]).T @ X  # (I, I)
    W = rng.standard_normal((d, I))  # (d, I)
    return H, W, X, g


def _schur_error(H: np.ndarray, W: np.ndarray, J: np.ndarray) -> float:
    S = H - H[:, J] @ np.linalg.pinv(H[np.ix_(J, J)]) @ H[J, :]
    return float(np.trace(W @ S @ W.T))


@pytest.mark.parametrize("rule", neuron.RULES)
def test_returns_k_distinct_indices(rule: str) -> None:
    H, W, _, _ = _problem(0)
    J = neuron.select_neurons(H, W, 7, rule)
    assert J.dtype == np.int64 and J.shape == (7,) and np.unique(J).size == 7
    assert J.min() >= 0 and J.max() < H.shape[0]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), rank=st.integers(1, 8), extra=st.integers(0, 4))
def test_exact_recovery_when_rank_at_most_k(seed: int, rank: int, extra: int) -> None:
    """rank(H) <= k: greedy and qdeim find J with err 0 and the refit reproduces the expert exactly."""
    H, W, X, g = _problem(seed, I=16, d=6, N=80, rank=rank)
    k = rank + extra
    for rule in ("greedy", "qdeim"):
        J = neuron.select_neurons(H, W, k, rule)
        scale = np.trace(W @ H @ W.T)
        assert neuron.output_error(H, W, J) <= 1e-8 * scale
        Wn = neuron.refit_down(H, W, J, ridge=1e-12)
        Y, Yn = X @ W.T, X[:, J] @ Wn.T  # (N, d)
        assert np.linalg.norm(Y - Yn) <= 1e-5 * np.linalg.norm(Y)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_greedy_curve_non_increasing_and_exact(seed: int) -> None:
    H, W, _, _ = _problem(seed)
    order, err = neuron.greedy_order(H, W, H.shape[0])
    assert np.all(np.diff(err) <= 1e-9 * err[0])
    assert err[-1] <= 1e-8 * np.trace(W @ H @ W.T)
    for t in (1, 5, 12):
        assert err[t - 1] == pytest.approx(_schur_error(H, W, order[:t]), rel=1e-7, abs=1e-9 * err[0])
    curve = neuron.error_curve(H, W, order)
    np.testing.assert_allclose(curve, err, rtol=1e-9, atol=1e-12 * err[0])


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 23))
def test_error_curve_any_order_non_increasing(seed: int, k: int) -> None:
    H, W, _, _ = _problem(seed)
    order = np.random.default_rng(seed).permutation(H.shape[0])[:k]
    c = neuron.error_curve(H, W, order)
    assert c.shape == (k,) and np.all(np.diff(c) <= 1e-9 * (c[0] + 1))
    assert c[-1] == pytest.approx(_schur_error(H, W, order), rel=1e-7, abs=1e-9 * c[0])


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 23))
def test_greedy_first_pick_and_not_worse_than_energy_first_step(seed: int, k: int) -> None:
    """Greedy's first step is optimal among single neurons, so for k = 1 it beats every rule; in general it is
    checked against energy at every k on these problems (it is a heuristic, so on ties a tiny slack)."""
    H, W, _, _ = _problem(seed)
    e_g = neuron.output_error(H, W, neuron.select_neurons(H, W, k, "greedy"))
    e_e = neuron.output_error(H, W, neuron.select_neurons(H, W, k, "energy"))
    assert e_g <= e_e * (1 + 1e-9) + 1e-9
    if k == 1:
        best = min(_schur_error(H, W, np.array([j])) for j in range(H.shape[0]))
        assert e_g == pytest.approx(best, rel=1e-9)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 20))
def test_refit_is_least_squares_optimum(seed: int, k: int) -> None:
    H, W, _, _ = _problem(seed)
    J = neuron.select_neurons(H, W, k, "greedy")
    Wn = neuron.refit_down(H, W, J, ridge=0.0)
    e0 = neuron.output_error(H, W, J, Wn)
    assert e0 == pytest.approx(neuron.output_error(H, W, J), rel=1e-7, abs=1e-9)
    rng = np.random.default_rng(seed + 1)
    for _ in range(5):
        D = rng.standard_normal(Wn.shape) * 1e-3 * np.abs(Wn).max()
        assert neuron.output_error(H, W, J, Wn + D) >= e0 * (1 - 1e-9)


def test_ridge_is_relative_and_shrinks() -> None:
    H, W, _, _ = _problem(3)
    J = neuron.select_neurons(H, W, 5, "greedy")
    a = neuron.refit_down(H, W, J, ridge=1e-1)
    b = neuron.refit_down(H * 1e6, W, J, ridge=1e-1)  # relative ridge: scale-free
    np.testing.assert_allclose(a, b, rtol=1e-9)
    assert np.linalg.norm(neuron.refit_down(H, W, J, ridge=10.0)) < np.linalg.norm(neuron.refit_down(H, W, J, ridge=0))


def test_cross_refit_equals_plain_when_target_is_same() -> None:
    H, W, _, _ = _problem(4)
    J = np.array([3, 1, 7])
    np.testing.assert_allclose(neuron.refit_down(H, W, J, cross=H[:, J]), neuron.refit_down(H, W, J), rtol=1e-12)


@pytest.mark.parametrize("rule", neuron.RULES)
def test_selection_deterministic(rule: str) -> None:
    H, W, _, _ = _problem(5)
    a = neuron.select_neurons(H, W, 9, rule)
    b = neuron.select_neurons(H.copy(), W.copy(), 9, rule)
    np.testing.assert_array_equal(a, b)


def test_thin_target_for_tall_w() -> None:
    """d > I takes the QR shortcut; errors must not change."""
    rng = np.random.default_rng(6)
    X = rng.standard_normal((100, 8))
    H, W = X.T @ X, rng.standard_normal((30, 8))
    o, e = neuron.greedy_order(H, W, 8)
    assert e[2] == pytest.approx(_schur_error(H, W, o[:3]), rel=1e-9)


# --- allocation -----------------------------------------------------------------------------------------------
def test_allocate_budget_floors_and_preference() -> None:
    steep = np.array([10.0, 5.0, 2.0, 1.0, 0.5, 0.0])  # error for k = 1..6
    flat = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    k = neuron.allocate([steep, flat], [1.0, 1.0], budget=6, floors=1)
    assert sum(k) <= 6 and min(k) >= 1
    assert k[0] >= 4  # steep curve gets the budget first
    k2 = neuron.allocate([steep, flat], [1.0, 2.0], budget=3, floors=[1, 1])
    assert k2 == [1, 1]  # exactly the floors' cost


def test_allocate_nonconvex_buys_whole_segment() -> None:
    # one neuron alone helps nothing, two together remove everything: the hull buys 1 -> 3 as one segment
    jump = np.array([10.0, 10.0, 0.0])
    lin = np.array([10.0, 9.0, 8.0])
    assert neuron.allocate([jump, lin], [1.0, 1.0], budget=4, floors=1) == [3, 1]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), frac=st.floats(0.0, 1.0))
def test_allocate_respects_budget(seed: int, n: int, frac: float) -> None:
    rng = np.random.default_rng(seed)
    curves = [np.sort(rng.uniform(0, 1, rng.integers(1, 10)))[::-1] for _ in range(n)]
    costs = rng.uniform(0.5, 2.0, n)
    lo, hi = float(np.sum(costs)), float(sum(c * len(v) for c, v in zip(costs, curves)))
    budget = lo + frac * (hi - lo)
    k = neuron.allocate(curves, costs, budget, floors=1)
    assert all(1 <= ki <= len(v) for ki, v in zip(k, curves))
    assert float(np.dot(costs, k)) <= budget * (1 + 1e-9)


# --- bad input ------------------------------------------------------------------------------------------------
def test_bad_inputs() -> None:
    H, W, _, _ = _problem(7, I=6, d=3)
    with pytest.raises(ValueError, match="1 <= k <= 6"):
        neuron.select_neurons(H, W, 7, "greedy")
    with pytest.raises(ValueError, match="empty the expert"):
        neuron.select_neurons(H, W, 0, "energy")
    Hn = H.copy()
    Hn[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        neuron.select_neurons(Hn, W, 2, "greedy")
    with pytest.raises(ValueError, match="known rules: energy, leverage, qdeim, greedy"):
        neuron.select_neurons(H, W, 2, "deim")
    with pytest.raises(ValueError, match=r"\(d, I\)"):
        neuron.select_neurons(H, W.T, 2, "greedy")
    with pytest.raises(ValueError, match="square"):
        neuron.select_neurons(H[:, :3], W, 2, "greedy")
    with pytest.raises(ValueError, match="ridge"):
        neuron.refit_down(H, W, [0, 1], ridge=-1.0)
    with pytest.raises(ValueError, match="repeated"):
        neuron.refit_down(H, W, [0, 0])
    with pytest.raises(ValueError, match="outside"):
        neuron.error_curve(H, W, [0, 9])
    with pytest.raises(ValueError, match="floors' cost"):
        neuron.allocate([np.ones(3), np.ones(3)], [1.0, 1.0], budget=1, floors=1)
    with pytest.raises(ValueError, match="emptied"):
        neuron.allocate([np.ones(3)], [1.0], budget=3, floors=0)
    with pytest.raises(ValueError, match="ratio"):
        neuron.keep_for_ratio(256, 1.0)
    assert neuron.keep_for_ratio(256, 0.5) == 128 and neuron.keep_for_ratio(256, 0.7) == 76
