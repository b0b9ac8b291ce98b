"""Load-balance metrics: hand-computed cases, bounds, accumulation identities and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curmoe import InvalidInputError
from curmoe.routing._gating import RouterConfig, Routing, route
from curmoe.routing._metrics import (
    LoadStats,
    coefficient_of_variation,
    dropped_fraction,
    load_counts,
    load_fractions,
    max_violation,
    router_z_loss,
    routing_entropy,
    switch_aux_loss,
)


def test_balanced_counts() -> None:
    c = np.array([2, 2, 2, 2])
    assert coefficient_of_variation(c) == 0.0 and max_violation(c) == 0.0
    assert routing_entropy(c) == pytest.approx(1.0, abs=1e-15)
    assert load_fractions(c).tolist() == [0.25] * 4


def test_one_expert_takes_everything() -> None:
    c = np.array([8, 0, 0, 0])  # mean 2; deviations 6, -2, -2, -2 -> population variance (36 + 3*4) / 4 = 12
    assert coefficient_of_variation(c) == pytest.approx(math.sqrt(12) / 2)  # = sqrt(3)
    assert max_violation(c) == pytest.approx(3.0)  # (8 - 2) / 2 = E - 1
    assert routing_entropy(c) == 0.0
    assert load_fractions(c).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_two_experts_three_to_one() -> None:
    c = np.array([3, 1])  # mean 2, std 1; f = (3/4, 1/4)
    assert coefficient_of_variation(c) == pytest.approx(0.5)
    assert max_violation(c) == pytest.approx(0.5)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert routing_entropy(c) == pytest.approx(h)
    assert routing_entropy(np.array([5])) == 1.0  # a single expert is trivially balanced


def test_load_counts_skip_empty_slots() -> None:
    experts = np.array([[0, 2], [2, -1], [-1, -1]])
    assert load_counts(experts, 4).tolist() == [1, 0, 2, 0]
    with pytest.raises(InvalidInputError, match=r"span \[-1, 4\], outside \[-1, 3\] for n_experts=4"):
        load_counts(np.array([[4, -1]]), 4)
    with pytest.raises(InvalidInputError, match="pass integer expert indices"):
        load_counts(np.array([[0.0]]), 4)


def test_aux_loss_hand_case_and_extremes() -> None:
    experts = np.array([[0], [0], [1]])
    probs = np.array([[0.5, 0.5], [0.7, 0.3], [0.2, 0.8]])
    # f = (2/3, 1/3), P = (1.4/3, 1.6/3): 2 * (2/3 * 1.4/3 + 1/3 * 1.6/3) = 8.8 / 9
    assert switch_aux_loss(experts, probs) == pytest.approx(8.8 / 9)
    e = 4
    uniform = np.full((8, e), 1 / e)
    assert switch_aux_loss(np.arange(8)[:, None] % e, uniform) == pytest.approx(1.0)
    onehot = np.zeros((8, e))
    onehot[:, 1] = 1.0
    assert switch_aux_loss(np.ones((8, 1), dtype=int), onehot) == pytest.approx(e)


def test_z_loss_hand_case() -> None:
    assert router_z_loss(np.array([[0.0, math.log(3.0)]])) == pytest.approx(math.log(4.0) ** 2)  # lse = log(1 + 3)
    assert router_z_loss(np.zeros((5, 8))) == pytest.approx(math.log(8) ** 2)
    assert router_z_loss(np.array([[1000.0, 1000.0]])) == pytest.approx((1000 + math.log(2)) ** 2)  # no overflow


def test_dropped_fraction() -> None:
    assert dropped_fraction(np.array([True, False, False, False])) == 0.25


@given(counts=st.lists(st.integers(0, 50), min_size=1, max_size=12).filter(lambda c: sum(c) > 0))
def test_metric_bounds(counts: list[int]) -> None:
    c = np.array(counts)
    e = len(counts)
    cv, vio, h = coefficient_of_variation(c), max_violation(c), routing_entropy(c)
    assert 0 <= cv <= math.sqrt(e - 1) + 1e-12  # sqrt(E - 1) when one expert takes everything
    assert 0 <= vio <= e - 1 + 1e-12
    assert -1e-12 <= h <= 1 + 1e-12
    balanced = len(set(counts)) == 1
    assert (cv < 1e-12) == balanced and (vio < 1e-12) == balanced
    if e > 1:
        assert (abs(h - 1) < 1e-12) == balanced
    np.testing.assert_allclose(load_fractions(c).sum(), 1.0)


def _corpus(kind: str, seed: int) -> list[Routing]:
    rng = np.random.default_rng(seed)
    cfg = RouterConfig(kind=kind, top_k=1 if kind == "switch" else 2)
    out = []
    for n in (5, 9, 1, 14):
        z = rng.standard_normal((n, 4)) + np.array([1.5, 0.0, 0.0, -1.0])
        out.append(route(z, cfg, token_ids=rng.integers(0, 100, n)))
    return out


@pytest.mark.parametrize("kind", ["topk", "switch", "expert_choice", "sigmoid_bias", "hash"])
def test_load_stats_equals_plain_functions_on_the_concatenation(kind: str) -> None:
    routings = _corpus(kind, 0)
    stats = LoadStats(4)
    for r in routings:
        stats.update(r)
    s = stats.summary()
    k = max(r.experts.shape[1] for r in routings)
    experts = np.concatenate([np.pad(r.experts, ((0, 0), (0, k - r.experts.shape[1])), constant_values=-1)
                              for r in routings])
    probs = np.concatenate([r.probs for r in routings])
    logits = np.concatenate([r.logits for r in routings])
    dropped = np.concatenate([r.dropped for r in routings])
    counts = load_counts(experts, 4)
    assert s["counts"].tolist() == counts.tolist() and s["n_tokens"] == 29
    assert s["n_assignments"] == counts.sum() and s["n_dropped"] == dropped.sum()
    np.testing.assert_allclose(s["fractions"], load_fractions(counts), rtol=1e-14)
    for key, value in [
        ("cv", coefficient_of_variation(counts)),
        ("max_vio", max_violation(counts)),
        ("entropy", routing_entropy(counts)),
        ("dropped_fraction", dropped_fraction(dropped)),
        ("aux_loss", switch_aux_loss(experts, probs)),
        ("z_loss", router_z_loss(logits)),
    ]:
        assert s[key] == pytest.approx(value, rel=1e-12), key


def test_switch_drops_show_in_stats() -> None:
    z = np.tile([5.0, 0.0, 0.0, 0.0], (8, 1))  # C = 2: six of eight tokens dropped
    s = LoadStats(4).update(route(z, RouterConfig(kind="switch", capacity_factor=1.0))).summary()
    assert s["dropped_fraction"] == 0.75 and s["counts"].tolist() == [2, 0, 0, 0]


def test_merge_equals_one_accumulator() -> None:
    routings = _corpus("topk", 1)
    whole = LoadStats(4)
    for r in routings:
        whole.update(r)
    a, b = LoadStats(4), LoadStats(4)
    a.update(routings[0]).update(routings[3])
    b.update(routings[2]).update(routings[1])
    merged = a.merge(b).summary()
    for key, value in whole.summary().items():
        np.testing.assert_allclose(merged[key], value, rtol=1e-13, err_msg=key)


def test_load_stats_errors() -> None:
    with pytest.raises(InvalidInputError, match="seen no routed token"):
        LoadStats(4).summary()
    with pytest.raises(InvalidInputError, match="routing has 3 experts but this LoadStats tracks 4"):
        LoadStats(4).update(route(np.zeros((2, 3)), RouterConfig()))
    with pytest.raises(InvalidInputError, match="merge needs a LoadStats over 4 experts"):
        LoadStats(4).merge(LoadStats(5))
    with pytest.raises(InvalidInputError, match="n_experts=0 must be an integer >= 1"):
        LoadStats(0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: coefficient_of_variation(np.zeros(4)), "counts sum to 0"),
        (lambda: max_violation(np.array([[1, 2]])), "counts must be a 1-D array"),
        (lambda: routing_entropy(np.array([1, -1])), "counts must be finite and >= 0"),
        (lambda: dropped_fraction(np.array([], dtype=bool)), "dropped must be a non-empty 1-D bool array"),
        (lambda: router_z_loss(np.zeros(3)), "logits must be (N, E) with N, E >= 1"),
        (lambda: switch_aux_loss(np.zeros((2, 1), dtype=int), np.zeros((3, 4))), "matching experts (N, k)"),
    ],
)
def test_metric_errors(call, message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        call()
    assert message in str(info.value)
