"""Score-based routers (``topk``, ``select``, ``sigmoid_bias``) and the helpers every router shares.

The router functions here and in ``_routers_capacity`` / ``_routers_fixed`` take validated float64 logits and
return a plain tuple ``(experts, gates, probs, dropped, capacity)``; :func:`curmoe.route` wraps it in a
:class:`curmoe.Routing` and casts it back to the caller's dtype. Ties always break toward the LOWER expert index,
as ONNX ``TopK`` does, by a stable sort on the negated scores.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

__all__ = [
    "RouterOutput",
    "softmax64",
    "stable_topk",
    "order_slots",
    "route_topk",
    "route_select",
    "route_sigmoid_bias",
]

# (experts (N, k) int64, gates (N, k) float64, probs (N, E) float64, dropped (N,) bool, capacity or None)
RouterOutput = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, "int | None"]


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float64: ``p_ij = exp(z_ij - max_j z_ij) / sum_j exp(z_ij - max_j z_ij)``.

    Args:
        logits: (N, E) finite router logits, any float dtype.

    Returns:
        (N, E) float64 probabilities; each row sums to 1. Exactly equal logits give exactly equal probabilities.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.shape[0] == 0:
        return np.zeros(z.shape, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))  # (N, E), max entry of each row is exp(0) = 1
    return e / e.sum(axis=1, keepdims=True)


def stable_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of each row, largest first, ties toward the lower index.

    Implemented as a stable sort of ``-scores`` (the ONNX ``TopK`` tie rule), so for equal scores the
    lower column index comes first and is the one kept when the tie straddles the cut.

    Args:
        scores: (N, E) float array.
        k: 1 <= k <= E.

    Returns:
        (N, k) int64 column indices.
    """
    return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)


def order_slots(experts: np.ndarray, gates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder each row's slots by gate descending, ties toward the lower expert index, empty slots (-1) last.

    Args:
        experts: (N, k) int64, -1 marks an empty slot.
        gates: (N, k) float, ignored where ``experts == -1``.

    Returns:
        The reordered ``(experts, gates)``.
    """
    if experts.size == 0:
        return experts, gates
    big = np.iinfo(np.int64).max
    o1 = np.argsort(np.where(experts < 0, big, experts), axis=1, kind="stable")  # by expert index
    experts, gates = np.take_along_axis(experts, o1, 1), np.take_along_axis(gates, o1, 1)
    o2 = np.argsort(np.where(experts < 0, np.inf, -gates), axis=1, kind="stable")  # then by gate, stable
    return np.take_along_axis(experts, o2, 1), np.take_along_axis(gates, o2, 1)


def route_topk(logits: np.ndarray, top_k: int, normalize: bool) -> RouterOutput:
    """Softmax top-k routing (Shazeer et al. 2017; Mixtral, Qwen-MoE, OLMoE).

    ``p = softmax(z)`` over the E experts, ``S = TopK(p, k)`` (ties to the lower index), gate
    ``g_i = p_i`` for i in S, renormalised to ``g_i = p_i / sum_{j in S} p_j`` iff ``normalize``
    (Mixtral and Qwen3-MoE renormalise; Qwen2-MoE and OLMoE do not).

    Args:
        logits: (N, E) float64 finite logits.
        top_k: experts per token, 1 <= top_k <= E.
        normalize: renormalise the k gates to sum to 1.

    Returns:
        ``(experts, gates, probs, dropped, None)``; nothing is ever dropped.
    """
    probs = softmax64(logits)  # (N, E)
    experts = stable_topk(probs, top_k)  # (N, k)
    gates = np.take_along_axis(probs, experts, 1)  # (N, k)
    if normalize and gates.size:
        gates = gates / gates.sum(axis=1, keepdims=True)  # the top prob is >= 1/E > 0, so the sum is > 0
    return experts, gates, probs, np.zeros(len(probs), dtype=bool), None


def route_select(logits: np.ndarray, top_k: int) -> RouterOutput:
    """Top-k selection with unit gates (MoEfication, Zhang et al. 2022; LLaMA-MoE, Zhu et al. 2024).

    ``S = TopK(z, k)`` on the raw logits (ties to the lower index) and ``g_i = 1`` for i in S: the layer's output
    is the plain sum of the selected experts. An FFN split into E experts by its neurons is therefore reproduced
    exactly at ``k = E`` (every gate is exactly 1, whatever the router weights), and at ``k < E`` the router only
    chooses which neuron groups run. ``probs`` is ``softmax(z)`` (for the balance metrics only).

    Args:
        logits: (N, E) float64 finite logits.
        top_k: experts per token, 1 <= top_k <= E.

    Returns:
        ``(experts, gates = 1, probs, dropped, None)``; nothing is ever dropped.
    """
    experts = np.sort(stable_topk(logits, top_k), axis=1)  # (N, k), chosen by the logits; equal gates: index order
    gates = np.ones(experts.shape, dtype=np.float64)  # (N, k), exactly 1
    return experts, gates, softmax64(logits), np.zeros(len(logits), dtype=bool), None


def route_sigmoid_bias(
    logits: np.ndarray, top_k: int, normalize: bool, routed_scaling: float, bias: np.ndarray
) -> RouterOutput:
    """Auxiliary-loss-free sigmoid routing with a selection-only bias (DeepSeek-V3, Liu et al. 2024, sec. 2.1.2).

    ``s = sigmoid(z)``; the experts are ``S = TopK(s + b, k)`` where the per-expert bias ``b`` only steers the
    selection; the gates come from the unbiased scores, ``g_i = s_i / sum_{j in S} s_j`` (iff ``normalize``)
    times ``routed_scaling``. Slots are then ordered by gate descending, ties to the lower expert index.

    Args:
        logits: (N, E) float64 finite logits.
        top_k: experts per token.
        normalize: divide the selected scores by their sum.
        routed_scaling: the factor applied to the gates after normalising.
        bias: (E,) float64 selection bias.

    Returns:
        ``(experts, gates, probs=s, dropped, None)``; ``probs`` holds the sigmoid scores (rows do not sum to 1).
    """
    scores = expit(logits)  # (N, E) in (0, 1); expit never overflows
    experts = stable_topk(scores + bias[None, :], top_k)  # selection uses the biased scores
    gates = np.take_along_axis(scores, experts, 1)  # (N, k) unbiased
    if normalize and gates.size:
        total = gates.sum(axis=1, keepdims=True)  # 0 only if every chosen score underflowed (logits < -745)
        gates = gates / np.where(total > 0, total, 1.0)
    gates = gates * routed_scaling
    experts, gates = order_slots(experts, gates)
    return experts, gates, scores, np.zeros(len(scores), dtype=bool), None
