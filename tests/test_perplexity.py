"""The perplexity harness: window plan, exact identities, invariances and errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curmoe import InvalidInputError, perplexity, perplexity_windows
from curmoe.eval import token_nll


def uniform(V: int):
    def fn(ids: np.ndarray) -> np.ndarray:
        return np.zeros((*ids.shape, V), dtype=np.float32)
    return fn


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T", [1, 5, 40])  # below, at and above the 16-row chunk
def test_token_nll_is_float64_log_softmax(dtype, T: int) -> None:
    rng = np.random.default_rng(T)
    z = (rng.standard_normal((T, 11)) * 30).astype(dtype)  # large logits: a naive exp would overflow in float32
    t = rng.integers(0, 11, size=T)
    z64 = z.astype(np.float64)
    expected = np.array([math.log(sum(math.exp(v - z64[i].max()) for v in z64[i])) + z64[i].max() - z64[i, t[i]]
                         for i in range(T)])
    got = token_nll(z, t)
    assert got.dtype == np.float64 and got.shape == (T,)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def position_model(V: int, c: np.ndarray):
    """Stream x_t = t: input id j puts logit c[j] on token j + 1, 0 elsewhere; NLL of target j+1 is known."""
    def fn(ids: np.ndarray) -> np.ndarray:
        out = np.zeros((*ids.shape, V))
        b, t = np.indices(ids.shape)
        out[b, t, ids + 1] = c[ids]
        return out
    return fn


def expected_position_nll(V: int, c: np.ndarray) -> float:
    return float(np.sum(np.log(V - 1 + np.exp(c)) - c))


def context_model(V: int, nxt: np.ndarray):
    """Knows the next token and is more confident the more context it has: logit = position in window."""
    def fn(ids: np.ndarray) -> np.ndarray:
        B, T = ids.shape
        out = np.zeros((B, T, V))
        b, t = np.indices(ids.shape)
        out[b, t, nxt[ids]] = t * 0.5
        return out
    return fn


# --- window plan ----------------------------------------------------------------------------------------------------

@given(n=st.integers(2, 300), C=st.integers(1, 40), data=st.data())
def test_window_plan_scores_every_target_once(n: int, C: int, data: st.DataObject) -> None:
    stride = data.draw(st.none() | st.integers(1, C))
    wins = perplexity_windows(n, C, stride)
    scored = []
    for i, (a, b, k) in enumerate(wins):
        assert 0 <= a < b <= n - 1 and b - a <= C and 1 <= k <= b - a
        scored.extend(range(b - k + 1, b + 1))  # targets of the last k predictions
        if i > 0 and stride is not None:
            assert b - a - k >= C - stride  # every scored token after the first window sees >= C - s tokens before
        if stride is None or stride == C:
            assert k == b - a  # non-overlapping: every prediction of a window is scored
    assert scored == list(range(1, n))
    if stride is None:
        assert len(wins) == math.ceil((n - 1) / C)
        assert all(w[0] == i * C for i, w in enumerate(wins))  # inputs x[kC : kC + C] do not overlap
    else:
        assert all(w[0] == i * stride for i, w in enumerate(wins))


def test_window_plan_errors() -> None:
    with pytest.raises(InvalidInputError, match="stride=9 is larger than context=8"):
        perplexity_windows(100, 8, 9)
    with pytest.raises(InvalidInputError, match="context=0 must be an integer >= 1"):
        perplexity_windows(100, 0)
    with pytest.raises(InvalidInputError, match="n_tokens=1 must be an integer >= 2"):
        perplexity_windows(1, 8)
    with pytest.raises(InvalidInputError, match="stride=True must be an integer"):
        perplexity_windows(100, 8, True)


# --- identities -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [None, 3, 16])
def test_uniform_model_gives_vocab_size(stride: int | None) -> None:
    V, N = 37, 203
    ids = np.random.default_rng(0).integers(0, V, N)
    r = perplexity(uniform(V), ids, n_words=N, context=16, stride=stride)
    assert r.ppl_token == pytest.approx(V, rel=1e-12)
    assert r.ppl_word == pytest.approx(V, rel=1e-12)  # word-level "tokenizer": one token per word
    assert r.tokens == N - 1 and r.nll_total == pytest.approx((N - 1) * math.log(V), rel=1e-12)


def test_word_perplexity_uses_words() -> None:
    V, N, words = 11, 121, 80  # 1.5 tokens per word
    r = perplexity(uniform(V), np.zeros(N, dtype=np.int32), n_words=words, context=10)
    assert r.n_words == words and r.n_words_scored == pytest.approx(words * (N - 1) / N)
    assert r.ppl_word == pytest.approx(math.exp((N - 1) * math.log(V) / (words * (N - 1) / N)), rel=1e-12)
    assert r.ppl_word > r.ppl_token


def test_cheating_bigram_is_near_one() -> None:
    V, N = 50, 500
    perm = np.random.default_rng(1).permutation(V)  # next(j) = perm[j]: the stream follows it
    ids = np.empty(N, dtype=np.int64)
    ids[0] = 0
    for t in range(1, N):
        ids[t] = perm[ids[t - 1]]

    def fn(x: np.ndarray) -> np.ndarray:
        out = np.zeros((*x.shape, V), dtype=np.float32)
        b, t = np.indices(x.shape)
        out[b, t, perm[x]] = 30.0
        return out

    r = perplexity(fn, ids, n_words=N, context=32, stride=8)
    assert 1.0 <= r.ppl_token < 1.0 + V * math.exp(-30) * 1.01
    assert perplexity(uniform(V), ids, n_words=N, context=32).ppl_token > 10 * r.ppl_token


@given(n=st.integers(2, 120), C=st.integers(1, 20), data=st.data())
def test_total_nll_decomposes_over_targets(n: int, C: int, data: st.DataObject) -> None:
    """Each target t contributes its own known NLL exactly once, whatever the windows."""
    stride = data.draw(st.none() | st.integers(1, C))
    V = n + 1
    c = np.random.default_rng(n * 1000 + C).normal(0, 3, n)  # a distinct logit per target
    r = perplexity(position_model(V, c), np.arange(n), n_words=n, context=C, stride=stride, batch_size=3)
    assert r.nll_total == pytest.approx(expected_position_nll(V, c[:n - 1]), rel=1e-12)
    assert r.tokens == n - 1 and r.protocol["windows"] == len(perplexity_windows(n, C, stride))


def test_stride_equal_to_context_is_non_overlapping() -> None:
    V, N, C = 23, 301, 16  # (N - 1) % C != 0: a partial last window
    nxt = np.random.default_rng(2).integers(0, V, V)
    ids = np.random.default_rng(3).integers(0, V, N)
    a = perplexity(context_model(V, nxt), ids, n_words=N, context=C)
    b = perplexity(context_model(V, nxt), ids, n_words=N, context=C, stride=C)
    assert a.nll_total == b.nll_total and a.protocol["windows"] == b.protocol["windows"] == math.ceil((N - 1) / C)
    assert (a.protocol["mode"], b.protocol["mode"]) == ("non-overlapping", "sliding-window")


def test_sliding_window_gives_more_context() -> None:
    V, N, C = 23, 301, 16
    nxt = np.arange(1, V + 1) % V
    ids = np.arange(N) % V  # the stream follows nxt, so more context (higher logit) always helps
    non = perplexity(context_model(V, nxt), ids, n_words=N, context=C)
    sl = perplexity(context_model(V, nxt), ids, n_words=N, context=C, stride=4)
    assert sl.ppl_token < non.ppl_token and sl.protocol["windows"] > non.protocol["windows"]


@given(batch_size=st.integers(1, 12))
def test_batch_size_does_not_change_the_result(batch_size: int) -> None:
    N = 257
    c = np.random.default_rng(4).normal(0, 2, N)
    ref = perplexity(position_model(N + 1, c), np.arange(N), n_words=N, context=10, stride=7, batch_size=1)
    r = perplexity(position_model(N + 1, c), np.arange(N), n_words=N, context=10, stride=7, batch_size=batch_size)
    assert r.nll_total == ref.nll_total and r.to_dict() == ref.to_dict()


def test_model_sees_int64_windows_of_at_most_context() -> None:
    shapes: list[tuple[int, ...]] = []

    def fn(x: np.ndarray) -> np.ndarray:
        assert x.dtype == np.int64
        shapes.append(x.shape)
        return np.zeros((*x.shape, 5))

    perplexity(fn, np.zeros(50, dtype=np.uint8), n_words=50, context=8, batch_size=4)
    assert shapes == [(4, 8), (2, 8), (1, 1)]  # 49 targets: 6 full windows, then one window of 1 (never dropped)


def test_float32_logits_are_accepted() -> None:
    N = 200
    c = np.random.default_rng(5).normal(0, 2, N)
    m64 = position_model(N + 1, c)

    def m32(x: np.ndarray) -> np.ndarray:
        return m64(x).astype(np.float32)

    a = perplexity(m64, np.arange(N), n_words=N, context=16)
    b = perplexity(m32, np.arange(N), n_words=N, context=16)
    assert b.ppl_token == pytest.approx(a.ppl_token, rel=1e-5)


def test_max_tokens_truncates_and_prorates_words() -> None:
    V, N = 13, 1000
    ids = np.zeros(N, dtype=np.int64)
    r = perplexity(uniform(V), ids, n_words=500, context=20, max_tokens=101, split="valid")
    assert r.tokens == 100 and r.protocol["truncated"] is True and r.protocol["tokens_in_stream"] == N
    assert r.n_words_scored == pytest.approx(500 * 100 / N)
    assert "truncated to its first 101 of 1000 tokens" in r.protocol["word_count_rule"]
    assert r.ppl_word == pytest.approx(perplexity(uniform(V), ids, n_words=500, context=20).ppl_word, rel=1e-12)
    full = perplexity(uniform(V), ids, n_words=500, context=20, max_tokens=5000)
    assert full.protocol["truncated"] is False and full.tokens == N - 1


def test_protocol_and_json() -> None:
    r = perplexity(uniform(7), np.arange(30) % 7, n_words=25, context=8, stride=4, split="test",
                   joined="lines joined with '\\n'", progress=True)
    d = json.loads(json.dumps(r.to_dict()))
    p = d["protocol"]
    assert (p["split"], p["joined"], p["context"], p["stride"], p["tokens_scored"]) == (
        "test", "lines joined with '\\n'", 8, 4, 29)
    assert p["windows"] == len(perplexity_windows(30, 8, 4)) and p["first_token_scored"] is False
    assert d["ppl_token"] == pytest.approx(7) and "test: ppl_token=7.000" in r.summary()


# --- errors ---------------------------------------------------------------------------------------------------------

def test_non_finite_loss_names_the_window() -> None:
    V = 9

    def fn(x: np.ndarray) -> np.ndarray:
        out = np.zeros((*x.shape, V))
        out[x == 5] = np.nan
        return out

    ids = np.zeros(100, dtype=np.int64)
    ids[42] = 5  # input position 42 is in window 42 // 10 = 4, predicting target 43
    with pytest.raises(InvalidInputError, match=r"non-finite loss in window 4 .*stream position 43"):
        perplexity(fn, ids, n_words=100, context=10, batch_size=3)


def test_minus_inf_on_other_tokens_is_fine() -> None:
    V = 9

    def fn(x: np.ndarray) -> np.ndarray:
        out = np.full((*x.shape, V), -np.inf)
        out[..., 0] = 0.0  # all mass on token 0 (a masked vocabulary)
        return out

    r = perplexity(fn, np.zeros(40, dtype=np.int64), n_words=40, context=8)
    assert r.ppl_token == 1.0
    with pytest.raises(InvalidInputError, match="non-finite loss in window 0"):
        perplexity(fn, np.ones(40, dtype=np.int64), n_words=40, context=8)  # the target has probability 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(token_ids=np.zeros((2, 5), dtype=np.int64)), "must be a 1-D integer array"),
    (dict(token_ids=np.zeros(5)), "must be a 1-D integer array"),
    (dict(token_ids=np.zeros(1, dtype=np.int64)), "at least 2 are needed"),
    (dict(token_ids=np.array([0, -1, 2])), "negative id"),
    (dict(n_words=0), "n_words=0 must be an integer >= 1"),
    (dict(batch_size=0), "batch_size=0 must be an integer >= 1"),
    (dict(stride=20), "stride=20 is larger than context=10"),
    (dict(max_tokens=1), "max_tokens=1 must be an integer >= 2"),
])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = dict(token_ids=np.zeros(30, dtype=np.int64), n_words=30, context=10)
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=match):
        perplexity(uniform(4), **args)


def test_bad_model_output() -> None:
    with pytest.raises(InvalidInputError, match=r"must return float logits of shape \(B, T, V\) = \(2, 10, V\)"):
        perplexity(lambda x: np.zeros((*x.shape,)), np.zeros(30, dtype=np.int64), n_words=30, context=10,
                   batch_size=2)
    with pytest.raises(InvalidInputError, match="token id 7 in window 0 is outside the model's vocabulary of 4"):
        perplexity(uniform(4), np.full(30, 7), n_words=30, context=10)
