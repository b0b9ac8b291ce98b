"""Routers with an expert capacity: ``switch`` (token choice, drops overflow) and ``expert_choice``.

Capacity is always computed per routing group, i.e. per sequence in a full forward and per new token while
decoding (see :func:`curmoe.route`).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from curmoe.routing._score import RouterOutput, softmax64

__all__ = ["expert_capacity", "route_switch", "route_expert_choice"]


def expert_capacity(n_tokens: int, n_experts: int, capacity_factor: float, top_k: int = 1) -> int | None:
    """Tokens one expert may take in a group: ``C = ceil(capacity_factor * n_tokens * top_k / n_experts)``.

    The product is evaluated exactly on the decimal value of ``capacity_factor`` (``1.1`` means 11/10, not the
    binary double just above it), so e.g. ``capacity_factor=1.1, n_tokens=100, n_experts=2`` gives 55, not the 56
    that ``math.ceil(1.1 * 100 / 2)`` returns. Every other implementation (torch, exporters) should compute the
    capacity in Python the same way.

    Args:
        n_tokens: N, tokens in the routing group (>= 0).
        n_experts: E (>= 1).
        capacity_factor: > 0; ``math.inf`` means no limit.
        top_k: average number of experts per token (1 for switch; ``top_k`` for expert choice).

    Returns:
        C (>= 1 whenever ``n_tokens >= 1``), or None for an infinite factor.
    """
    if math.isinf(capacity_factor):
        return None
    exact = Fraction(repr(float(capacity_factor))) * n_tokens * top_k / n_experts
    return math.ceil(exact)


def route_switch(logits: np.ndarray, capacity_factor: float) -> RouterOutput:
    """Switch routing (Fedus et al. 2021): top-1 of the softmax with a per-expert capacity.

    ``p = softmax(z)``, ``e_t = argmax_i p_ti`` (ties to the lower index), gate ``g_t = p_{t, e_t}`` (not
    renormalised, as in the paper). Each expert accepts at most ``C = ceil(capacity_factor * N / E)`` tokens in
    sequence order (first come, first served, which is causal: a token's fate depends only on earlier tokens);
    a token over capacity is dropped: its slot is -1, its gate 0, ``dropped`` is True, and the MoE block passes it
    through the residual connection only.

    Args:
        logits: (N, E) float64 finite logits.
        capacity_factor: > 0, ``math.inf`` for no limit.

    Returns:
        ``(experts (N, 1), gates (N, 1), probs, dropped, C)``.
    """
    n, e = logits.shape
    probs = softmax64(logits)  # (N, E)
    choice = np.argmax(probs, axis=1) if n else np.zeros(0, dtype=np.int64)  # (N,), argmax keeps the first max
    gate = probs[np.arange(n), choice]  # (N,)
    cap = expert_capacity(n, e, capacity_factor, 1)
    if cap is None:
        keep = np.ones(n, dtype=bool)
    else:
        onehot = choice[:, None] == np.arange(e)[None, :]  # (N, E)
        position = np.cumsum(onehot, axis=0)[np.arange(n), choice] - 1  # (N,) place in its expert's queue
        keep = position < cap
    experts = np.where(keep, choice, -1).astype(np.int64)[:, None]  # (N, 1)
    gates = np.where(keep, gate, 0.0)[:, None]  # (N, 1)
    return experts, gates, probs, ~keep, cap


def route_expert_choice(logits: np.ndarray, top_k: int, capacity_factor: float) -> RouterOutput:
    """Expert-choice routing (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing").

    ``p = softmax(z)`` over experts for each token; each expert i takes the ``C`` tokens with the largest
    ``p_ti`` (ties to the lower token index), ``C = min(N, ceil(capacity_factor * N * top_k / E))``, and token t's
    gate for expert i is ``p_ti``. A token can be taken by 0..E experts; one taken by none is ``dropped``. It is
    non-causal: the choice for token t depends on later tokens, so it cannot run in incremental decoding.

    Args:
        logits: (N, E) float64 finite logits.
        top_k: average experts per token that sizes the capacity.
        capacity_factor: > 0 (``math.inf`` means every expert takes every token).

    Returns:
        ``(experts (N, k), gates (N, k), probs, dropped, C)`` with k the most experts any token got (at least 1);
        slots are ordered by gate descending, ties to the lower expert index, and padded with -1.
    """
    n, e = logits.shape
    probs = softmax64(logits)  # (N, E)
    cap = expert_capacity(n, e, capacity_factor, top_k)
    cap = n if cap is None else min(n, cap)
    chosen = np.argsort(-probs, axis=0, kind="stable")[:cap, :]  # (C, E) token indices per expert
    taken = np.zeros((n, e), dtype=bool)  # (N, E)
    taken[chosen, np.arange(e)[None, :]] = True
    per_token = taken.sum(axis=1)  # (N,)
    k = max(1, int(per_token.max(initial=0)))
    # (N, k): a token's experts by gate descending, ties to the lower expert index, untaken ones last
    order = np.argsort(np.where(taken, -probs, np.inf), axis=1, kind="stable")[:, :k]
    valid = np.take_along_axis(taken, order, 1)
    experts = np.where(valid, order, -1).astype(np.int64)
    gates = np.where(valid, np.take_along_axis(probs, order, 1), 0.0)
    return experts, gates, probs, per_token == 0, cap
