"""The pieces of benchmarks/ scripts that compute numbers (not the long runs themselves)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.gating import ROUTER_FLAGS, ROUTERS, _load_stats, train_command
from curmoe.eval._perplexity import perplexity, perplexity_windows
from tests.babies import baby_model


def test_load_stats_count_every_fed_token_once() -> None:
    model = baby_model()  # top-2 of 4 experts, 2 MoE layers
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, size=203)
    fn, stats = _load_stats(model)
    perplexity(fn, ids, n_words=100, context=16, batch_size=3)
    fed = sum(b - a for a, b, _ in perplexity_windows(ids.size, 16))  # non-overlapping windows
    assert fed == ids.size - 1
    for s in stats:
        assert s.n_tokens == fed
        assert s.counts.sum() == 2 * fed


def test_every_router_trains_with_the_same_flags_but_its_own() -> None:
    assert set(ROUTER_FLAGS) == set(ROUTERS)
    bases = set()
    for r in ROUTERS:
        c = train_command(r, Path("out"), None, 600, 1)
        assert c[-len(ROUTER_FLAGS[r]):] == ROUTER_FLAGS[r]  # the router's own flags come last
        base = c[: -len(ROUTER_FLAGS[r])]
        assert base[base.index("--router") + 1] == r
        base[base.index("--router") + 1] = "ROUTER"
        bases.add(tuple(base))
    assert len(bases) == 1  # everything else (steps, seed, tokenizer, preset) is identical
