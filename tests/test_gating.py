"""Routers of the gating zoo: config validation, each router's invariants, tie rules, decoding, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curmoe import DecodingNotSupportedError, InvalidInputError
from curmoe.routing._capacity import expert_capacity
from curmoe.routing._fixed import hash_experts
from curmoe.routing._gating import (
    ROUTER_KINDS,
    RouterConfig,
    Routing,
    route,
    update_bias,
)


def _logits(n: int, e: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, e))


def _softmax_rows(z: np.ndarray) -> list[list[float]]:
    out = []
    for row in z.tolist():
        m = max(row)
        ex = [math.exp(v - m) for v in row]
        out.append([v / sum(ex) for v in ex])
    return out


def _check_invariants(r: Routing, n: int, e: int) -> None:
    """Shapes, index range, distinct experts, gate 0 exactly on empty slots, order by gate desc then index."""
    assert r.probs.shape == r.logits.shape == (n, e)
    assert r.experts.shape == r.gates.shape and r.experts.shape[0] == n and r.dropped.shape == (n,)
    assert r.experts.dtype == np.int64 and r.dropped.dtype == bool
    assert ((r.experts >= -1) & (r.experts < e)).all()
    assert (r.gates[r.experts < 0] == 0).all()
    for row_e, row_g in zip(r.experts.tolist(), r.gates.tolist(), strict=True):
        used = [(g, x) for x, g in zip(row_e, row_g, strict=True) if x >= 0]
        assert len({x for _, x in used}) == len(used)
        assert used == sorted(used, key=lambda gx: (-gx[0], gx[1]))
        assert row_e[len(used):] == [-1] * (len(row_e) - len(used))  # empty slots come last


# --- config ---------------------------------------------------------------------------------------------------


def test_config_defaults_and_resolution() -> None:
    assert RouterConfig().kind == "topk" and RouterConfig().top_k == 2
    assert RouterConfig(kind="switch", top_k=4).top_k == 1
    assert RouterConfig(kind="switch").capacity_factor == 1.25
    assert RouterConfig(kind="expert_choice").capacity_factor == 1.0
    assert RouterConfig(kind="topk").capacity_factor is None
    assert RouterConfig(kind="switch") == RouterConfig(kind="switch", capacity_factor=1.25)


@pytest.mark.parametrize("kind", ROUTER_KINDS)
def test_every_listed_kind_routes(kind: str) -> None:
    n, e = 6, 4
    r = route(_logits(n, e), RouterConfig(kind=kind, top_k=1 if kind == "switch" else 2), token_ids=np.arange(n))
    _check_invariants(r, n, e)
    assert (r.experts[~r.dropped] >= 0).any(axis=1).all()  # every kept token reaches an expert


@pytest.mark.parametrize(
    "cfg",
    [
        RouterConfig(),
        RouterConfig(kind="switch", capacity_factor=math.inf),
        RouterConfig(kind="expert_choice", top_k=3, capacity_factor=2.0, decode_fallback="topk"),
        RouterConfig(kind="sigmoid_bias", top_k=8, normalize=False, routed_scaling=2.5),
        RouterConfig(kind="hash", top_k=1, seed=7),
    ],
)
def test_config_json_round_trip(cfg: RouterConfig) -> None:
    text = json.dumps(cfg.to_dict(), allow_nan=False)  # strict JSON, even for an infinite capacity factor
    assert RouterConfig.from_dict(json.loads(text)) == cfg
    assert RouterConfig.from_dict({**cfg.to_dict(), "future_field": 1}) == cfg


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "softmax"}, "kind='softmax' is unknown; pass one of topk, switch, expert_choice, hash"),
        ({"top_k": 0}, "top_k=0 must be an integer >= 1"),
        ({"top_k": 2.0}, "top_k=2.0 must be an integer"),
        ({"kind": "switch", "capacity_factor": 0.0}, "capacity_factor=0.0 must be a number > 0"),
        ({"kind": "expert_choice", "capacity_factor": -1}, "capacity_factor=-1 must be a number > 0"),
        ({"kind": "topk", "capacity_factor": 1.25}, "applies only to kind='switch' or 'expert_choice'"),
        ({"kind": "topk", "routed_scaling": 2.5}, "routed_scaling=2.5 applies only to kind='sigmoid_bias'"),
        ({"kind": "sigmoid_bias", "routed_scaling": 0}, "routed_scaling=0 must be a finite number > 0"),
        ({"kind": "expert_choice", "decode_fallback": "greedy"}, "decode_fallback='greedy' is unknown"),
        ({"kind": "topk", "decode_fallback": "topk"}, "applies only to kind='expert_choice'"),
        ({"seed": -1}, "seed=-1 must be an integer in [0, 2147483647]"),
        ({"normalize": "yes"}, "normalize='yes' must be True or False"),
    ],
)
def test_config_rejects(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        RouterConfig(**kwargs)
    assert message in str(info.value)


# --- input validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: route(np.zeros(4), RouterConfig()), "must be 2-D (tokens, experts) for one routing group"),
        (lambda: route(np.zeros((2, 3, 4)), RouterConfig()), "got shape (2, 3, 4)"),
        (lambda: route(np.array([[0.0, np.nan]]), RouterConfig(top_k=1)), "1 non-finite value(s) (NaN/Inf)"),
        (lambda: route(np.zeros((3, 2)), RouterConfig(top_k=3)), "top_k=3 is out of range for 2 experts"),
        (lambda: route(np.zeros((3, 4)), RouterConfig(kind="hash")), "needs the token ids: pass route("),
        (
            lambda: route(np.zeros((3, 4)), RouterConfig(kind="hash"), token_ids=np.arange(2)),
            "token_ids has shape (2,) but the logits have 3 rows",
        ),
        (
            lambda: route(np.zeros((3, 4)), RouterConfig(), token_ids=np.arange(4)),
            "token_ids has shape (4,) but the logits have 3 rows",
        ),
        (
            lambda: route(np.zeros((1, 4)), RouterConfig(kind="hash"), token_ids=np.array([-5])),
            "token_ids must lie in [0, 2**31)",
        ),
        (
            lambda: route(np.zeros((3, 4)), RouterConfig(kind="sigmoid_bias"), bias=np.zeros(3)),
            "bias must have shape (E,)=(4,)",
        ),
        (lambda: route(np.zeros((3, 4)), RouterConfig(), bias=np.zeros(4)), "bias is used only by kind='sigmoid_bias'"),
        (lambda: route(np.zeros((3, 4)), {"kind": "topk"}), "config must be a RouterConfig"),
    ],
)
def test_route_rejects(call, message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        call()
    assert message in str(info.value)


def test_nan_position_is_reported() -> None:
    z = np.zeros((3, 4))
    z[2, 1] = np.inf
    with pytest.raises(InvalidInputError, match=r"logits \(tokens, experts\) contains .* first at index \(2, 1\)"):
        route(z, RouterConfig())


# --- topk -----------------------------------------------------------------------------------------------------


@given(n=st.integers(0, 12), e=st.integers(1, 9), data=st.data(), normalize=st.booleans())
def test_topk_matches_naive(n: int, e: int, data: st.DataObject, normalize: bool) -> None:
    k = data.draw(st.integers(1, e))
    # few distinct values so exact ties are common
    z = np.array(data.draw(st.lists(st.sampled_from([-1.0, 0.0, 0.5, 2.0]), min_size=n * e, max_size=n * e)))
    z = z.reshape(n, e)
    r = route(z, RouterConfig(kind="topk", top_k=k, normalize=normalize))
    _check_invariants(r, n, e)
    for t, p in enumerate(_softmax_rows(z)):
        chosen = sorted(range(e), key=lambda i: (-p[i], i))[:k]
        assert r.experts[t].tolist() == chosen
        g = [p[i] for i in chosen]
        if normalize:
            g = [v / sum(g) for v in g]
            assert r.gates[t].sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(r.gates[t], g, rtol=1e-12)
    assert not r.dropped.any() and r.n_dropped == 0


def test_topk_ties_go_to_lower_index() -> None:
    r = route(np.zeros((1, 6)), RouterConfig(top_k=3))
    assert r.experts.tolist() == [[0, 1, 2]]
    r = route(np.array([[1.0, 3.0, 2.0, 3.0, 3.0]]), RouterConfig(top_k=2, normalize=False))
    assert r.experts.tolist() == [[1, 3]]
    assert r.gates[0, 0] == r.gates[0, 1]


def test_topk_dtype_and_float64_maths() -> None:
    z = _logits(5, 8).astype(np.float32)
    r32 = route(z, RouterConfig(top_k=2))
    r64 = route(z.astype(np.float64), RouterConfig(top_k=2))
    assert r32.gates.dtype == r32.probs.dtype == np.float32
    assert (r32.experts == r64.experts).all()
    assert (r32.gates == r64.gates.astype(np.float32)).all()  # float64 maths, cast once at the end


def test_topk_huge_logits_are_stable() -> None:
    r = route(np.array([[800.0, 799.0, -800.0], [1e4, -1e4, 0.0]]), RouterConfig(top_k=2))
    assert np.isfinite(r.gates).all() and r.experts[0].tolist() == [0, 1]
    # both runner-up probabilities underflow to exactly 0: a tie on probs, so the lower index wins, gate 0
    assert r.experts[1].tolist() == [0, 1] and r.gates[1].tolist() == [1.0, 0.0]


# --- switch ---------------------------------------------------------------------------------------------------


@given(n=st.integers(0, 30), e=st.integers(1, 6), cf=st.sampled_from([0.25, 0.5, 1.0, 1.25, 2.0]),
       seed=st.integers(0, 9))
def test_switch_capacity_first_come_first_served(n: int, e: int, cf: float, seed: int) -> None:
    z = _logits(n, e, seed) * 0.3 + np.linspace(0, 1, e)  # skewed: the last expert is popular
    r = route(z, RouterConfig(kind="switch", capacity_factor=cf))
    _check_invariants(r, n, e)
    cap = math.ceil(cf * n / e)
    assert r.capacity == cap and r.experts.shape == (n, 1)
    probs = _softmax_rows(z)
    seen = [0] * e
    for t in range(n):
        best = max(range(e), key=lambda i: (probs[t][i], -i))
        keep = seen[best] < cap
        seen[best] += keep
        assert r.dropped[t] == (not keep)
        assert r.experts[t, 0] == (best if keep else -1)
        assert r.gates[t, 0] == pytest.approx(probs[t][best] if keep else 0.0, rel=1e-12)
    assert np.bincount(r.experts[r.experts >= 0], minlength=e).max(initial=0) <= cap
    assert r.n_dropped == int(r.dropped.sum())


def test_switch_drops_overflow_in_sequence_order() -> None:
    z = np.tile([5.0, 0.0, 0.0, 0.0], (8, 1))  # every token wants expert 0; C = ceil(1.0 * 8 / 4) = 2
    r = route(z, RouterConfig(kind="switch", capacity_factor=1.0))
    assert r.experts[:, 0].tolist() == [0, 0, -1, -1, -1, -1, -1, -1]
    assert r.dropped.tolist() == [False] * 2 + [True] * 6 and r.n_dropped == 6
    assert (r.gates[2:] == 0).all() and (r.combine()[2:] == 0).all()


def test_switch_decoding_never_drops_and_inf_means_no_limit() -> None:
    for cf in (0.01, 1.0, 1.25):
        r = route(np.array([[9.0, 0.0, 0.0, 0.0]]), RouterConfig(kind="switch", capacity_factor=cf), decoding=True)
        assert r.capacity == 1 and not r.dropped.any()
    z = np.tile([5.0, 0.0], (50, 1))
    r = route(z, RouterConfig(kind="switch", capacity_factor=math.inf))
    assert r.capacity is None and not r.dropped.any() and (r.experts == 0).all()


def test_capacity_is_exact_on_the_decimal_factor() -> None:
    assert 1.1 * 100 / 2 > 55.0  # the float product is just above 55 ...
    assert expert_capacity(100, 2, 1.1) == 55  # ... but capacity uses 11/10 exactly
    assert expert_capacity(8, 4, 1.25) == 3 and expert_capacity(8, 4, 1.0) == 2
    assert expert_capacity(6, 4, 1.0, top_k=2) == 3 and expert_capacity(0, 4, 1.25) == 0
    assert expert_capacity(5, 4, math.inf) is None


# --- expert choice --------------------------------------------------------------------------------------------


@given(n=st.integers(1, 16), e=st.integers(1, 6), k=st.integers(1, 4), cf=st.sampled_from([0.5, 1.0, 2.0]),
       seed=st.integers(0, 9))
def test_expert_choice_each_expert_takes_its_top_tokens(n: int, e: int, k: int, cf: float, seed: int) -> None:
    z = np.round(_logits(n, e, seed), 1)  # rounding makes exact ties likely
    r = route(z, RouterConfig(kind="expert_choice", top_k=k, capacity_factor=cf))
    _check_invariants(r, n, e)
    cap = min(n, math.ceil(cf * n * k / e))
    assert r.capacity == cap
    probs = _softmax_rows(z)
    dense = r.combine()
    for i in range(e):
        want = sorted(range(n), key=lambda t: (-probs[t][i], t))[:cap]
        got = np.nonzero(dense[:, i])[0].tolist()
        assert got == sorted(want)
        np.testing.assert_allclose(dense[want, i], [probs[t][i] for t in want], rtol=1e-12)
    assert r.dropped.tolist() == (dense.sum(axis=1) == 0).tolist()
    assert r.experts.shape[1] == max(1, int((dense > 0).sum(axis=1).max()))


def test_expert_choice_ties_go_to_lower_token_and_drop_the_rest() -> None:
    r = route(np.zeros((8, 4)), RouterConfig(kind="expert_choice", top_k=1, capacity_factor=1.0))
    assert r.capacity == 2  # every expert takes tokens 0 and 1; tokens 2..7 are chosen by nobody
    assert r.experts.tolist()[:2] == [[0, 1, 2, 3]] * 2
    assert r.dropped.tolist() == [False, False] + [True] * 6
    assert (r.experts[2:] == -1).all()


def test_expert_choice_refuses_to_decode_unless_fallback() -> None:
    z = _logits(1, 4)
    with pytest.raises(DecodingNotSupportedError, match='decode_fallback="topk"'):
        route(z, RouterConfig(kind="expert_choice"), decoding=True)
    r = route(z, RouterConfig(kind="expert_choice", top_k=2, decode_fallback="topk"), decoding=True)
    ref = route(z, RouterConfig(kind="topk", top_k=2))
    assert (r.experts == ref.experts).all() and np.allclose(r.gates, ref.gates) and r.capacity is None
    full = route(z, RouterConfig(kind="expert_choice", top_k=2, decode_fallback="topk"))  # not decoding
    assert full.capacity == 1


# --- hash -----------------------------------------------------------------------------------------------------


def test_hash_mapping_is_stable() -> None:
    """The mapping is part of a trained hash-routed model: these values (ids up to 2**31 - 1, where an int64
    product would overflow without care) must never change. Slot 0 does not depend on top_k."""
    ids, e = np.array([0, 1, 2, 77, 50_000, 2**31 - 1]), 7
    assert hash_experts(ids, e, 3, seed=5).tolist() == [[1, 2, 4], [5, 0, 1], [3, 4, 6], [5, 0, 1], [6, 0, 2],
                                                        [4, 5, 0]]
    assert hash_experts(ids, e, 3, seed=0).tolist() == [[0, 1, 2], [4, 5, 0], [1, 3, 4], [4, 5, 0], [4, 6, 0],
                                                        [6, 4, 5]]
    np.testing.assert_array_equal(hash_experts(ids, e, 1, seed=5)[:, 0], hash_experts(ids, e, 3, seed=5)[:, 0])


@given(ids=st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=20), e=st.integers(1, 12), data=st.data())
def test_hash_depends_only_on_token_id(ids: list[int], e: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, e))
    cfg = RouterConfig(kind="hash", top_k=k, seed=data.draw(st.integers(0, 100)))
    t = np.array(ids)
    r = route(_logits(len(ids), e), cfg, token_ids=t)
    _check_invariants(r, len(ids), e)
    assert np.allclose(r.gates[r.experts >= 0], 1.0 / k) and (r.experts >= 0).all()
    perm = np.random.default_rng(len(ids)).permutation(len(ids))
    r2 = route(np.zeros((len(ids), e)), cfg, token_ids=t[perm])  # other logits, other order
    assert (r2.experts == r.experts[perm]).all()
    for i, tid in enumerate(ids):  # alone, as while decoding
        assert (route(np.zeros((1, e)), cfg, token_ids=np.array([tid]), decoding=True).experts[0] == r.experts[i]).all()
    np.testing.assert_allclose(r.probs, 1.0 / e)


def test_hash_spreads_a_vocabulary_and_seed_changes_mapping() -> None:
    ids = np.arange(10_000)
    for e in (4, 8, 60):
        counts = np.bincount(hash_experts(ids, e).ravel(), minlength=e)
        assert (counts.max() - counts.mean()) / counts.mean() < 0.05
    assert (hash_experts(ids, 8, seed=0) != hash_experts(ids, 8, seed=1)).mean() > 0.5


# --- sigmoid_bias ---------------------------------------------------------------------------------------------


@given(n=st.integers(1, 10), e=st.integers(1, 8), data=st.data(), scaling=st.sampled_from([1.0, 2.5]))
def test_sigmoid_bias_gates(n: int, e: int, data: st.DataObject, scaling: float) -> None:
    k = data.draw(st.integers(1, e))
    z = _logits(n, e, data.draw(st.integers(0, 99))) * 3
    bias = np.random.default_rng(1).standard_normal(e)
    scores = 1 / (1 + np.exp(-z))
    for normalize in (True, False):
        r = route(z, RouterConfig(kind="sigmoid_bias", top_k=k, normalize=normalize, routed_scaling=scaling), bias=bias)
        _check_invariants(r, n, e)
        np.testing.assert_allclose(r.probs, scores, rtol=1e-12)
        for t in range(n):
            chosen = sorted(range(e), key=lambda i: (-(scores[t, i] + bias[i]), i))[:k]
            assert sorted(r.experts[t].tolist()) == sorted(chosen)  # selection by biased scores
            g = scores[t, r.experts[t]]  # gates from the unbiased scores
            g = g / g.sum() * scaling if normalize else g * scaling
            np.testing.assert_allclose(r.gates[t], g, rtol=1e-12)
        if normalize:
            np.testing.assert_allclose(r.gates.sum(axis=1), scaling, rtol=1e-12)


def test_sigmoid_bias_changes_selection_not_gate_source() -> None:
    z = np.array([[2.0, 1.0, -3.0, 0.0]])
    cfg = RouterConfig(kind="sigmoid_bias", top_k=2, normalize=False)
    plain = route(z, cfg)
    assert plain.experts.tolist() == [[0, 1]]
    assert (route(z, cfg, bias=np.zeros(4)).experts == plain.experts).all()
    biased = route(z, cfg, bias=np.array([0.0, 0.0, 10.0, 0.0]))
    assert biased.experts.tolist() == [[0, 2]]  # expert 2 pulled in by its bias, ordered by its small gate
    assert biased.gates[0, 1] == pytest.approx(1 / (1 + math.exp(3.0)))  # sigmoid(-3), no trace of the bias


def test_update_bias_direction_and_balancing() -> None:
    b = np.zeros(4)
    new = update_bias(b, np.array([10, 2, 4, 4]), 0.5)  # mean 5
    assert new.tolist() == [-0.5, 0.5, 0.5, 0.5] and b.tolist() == [0.0] * 4
    assert update_bias(b, np.array([3, 3, 3, 3]), 0.5).tolist() == [0.0] * 4
    # the rule balances a skewed router: loads over fixed tokens even out as the bias adapts
    z = _logits(256, 8, 3) + np.linspace(0, 2, 8)
    cfg = RouterConfig(kind="sigmoid_bias", top_k=2)

    def vio(bias: np.ndarray) -> float:
        c = np.bincount(route(z, cfg, bias=bias).experts.ravel(), minlength=8)
        return (c.max() - c.mean()) / c.mean()

    bias = np.zeros(8)
    for _ in range(200):
        bias = update_bias(bias, np.bincount(route(z, cfg, bias=bias).experts.ravel(), minlength=8), 0.01)
    assert vio(bias) < 0.5 * vio(np.zeros(8))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros(3), np.zeros(4), 0.1), "bias and counts must both have shape (E,)"),
        ((np.zeros(3), np.array([1, -1, 0]), 0.1), "counts finite and >= 0"),
        ((np.zeros(3), np.ones(3), -0.1), "speed=-0.1 must be a finite number >= 0"),
    ],
)
def test_update_bias_rejects(args: tuple, message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        update_bias(*args)
    assert message in str(info.value)


# --- random ---------------------------------------------------------------------------------------------------


def test_random_router() -> None:
    cfg = RouterConfig(kind="random", top_k=3, seed=4)
    r = route(np.zeros((2000, 6)), cfg)
    _check_invariants(r, 2000, 6)
    assert np.allclose(r.gates, 1 / 3) and (r.experts >= 0).all()
    assert (route(np.ones((2000, 6)), cfg).experts == r.experts).all()  # seeded, logits ignored
    assert (route(np.zeros((2000, 6)), RouterConfig(kind="random", top_k=3, seed=5)).experts != r.experts).any()
    counts = np.bincount(r.experts.ravel(), minlength=6)  # expect 1000 each, std ~ 26
    assert np.abs(counts - 1000).max() < 150


# --- shared behaviour -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ROUTER_KINDS)
def test_every_kind_handles_empty_and_single_token_groups(kind: str) -> None:
    cfg = RouterConfig(kind=kind, top_k=2, decode_fallback="topk" if kind == "expert_choice" else None)
    for n in (0, 1):
        r = route(np.zeros((n, 4), dtype=np.float32), cfg, token_ids=np.arange(n), decoding=n == 1)
        _check_invariants(r, n, 4)
        assert r.gates.dtype == np.float32
        if n == 1:
            assert not r.dropped.any()


@given(kind=st.sampled_from(ROUTER_KINDS), n=st.integers(0, 20), e=st.integers(2, 8), data=st.data())
def test_combine_matches_slots(kind: str, n: int, e: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, e))
    r = route(_logits(n, e, data.draw(st.integers(0, 50))), RouterConfig(kind=kind, top_k=k), token_ids=np.arange(n))
    _check_invariants(r, n, e)
    dense = r.combine(e)
    assert dense.shape == (n, e)
    np.testing.assert_allclose(dense.sum(axis=1), r.gates.sum(axis=1), rtol=1e-12)
    for t in range(n):
        for x, g in zip(r.experts[t], r.gates[t], strict=True):
            if x >= 0:
                assert dense[t, x] == g
    assert (dense > 0).sum() == (r.experts >= 0).sum() or kind == "sigmoid_bias"  # sigmoid gates may underflow


def test_routing_checks_shapes_and_combine_width() -> None:
    r = route(_logits(3, 4), RouterConfig())
    with pytest.raises(InvalidInputError, match="n_experts=2 is too small"):
        r.combine(2)
    with pytest.raises(InvalidInputError, match="Routing arrays disagree"):
        Routing(r.experts, r.gates, r.probs, r.logits, r.dropped[:2])
