"""Torch twin of the gating zoo (``curmoe.routing._gating``): every router kind, with the reference's exact semantics.

Maths as in docs/gating.md: ``topk`` (Shazeer et al. 2017), ``switch`` with per-sequence capacity (Fedus et al.
2021), ``expert_choice`` (Zhou et al. 2022), ``hash`` (Roller et al. 2021), ``sigmoid_bias`` (DeepSeek-V3, Liu et
al. 2024: the bias steers selection only), ``random`` and ``select`` (unit gates, MoEfication). Probabilities are
computed in float64 like the reference (gates come back in the activations' dtype and carry gradients to the
router), and every selection is a stable sort of the negated scores, so ties break toward the lower expert (or token)
index, as ONNX ``TopK`` does.

A routing group is one sequence's real tokens (full forward) or its new tokens (decoding with a KV cache); the
capacity routers and ``random`` see one group at a time, the others are per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from curmoe.common.errors import DecodingNotSupportedError, InvalidInputError
from curmoe.routing import KNUTH_MULTIPLIER, RouterConfig, expert_capacity, route_random

__all__ = ["TorchRouting", "route_torch", "hash_experts_torch", "stable_topk", "order_slots"]

_SEED_STRIDE = 1_000_003  # as curmoe.routing._fixed.hash_experts
_SLOT_STRIDE = 7_919


@dataclass
class TorchRouting:
    """Routing of N tokens: experts (N, k) int64 (-1 = empty or dropped), gates (N, k) in the activations' dtype,
    probs (N, E) float64 (softmax, sigmoid scores, or uniform), dropped (N,) bool."""

    experts: torch.Tensor
    gates: torch.Tensor
    probs: torch.Tensor
    dropped: torch.Tensor


def stable_topk(scores: torch.Tensor, k: int, dim: int = 1) -> torch.Tensor:
    """Indices of the k largest entries along ``dim``, largest first, ties toward the lower index."""
    return torch.sort(-scores, dim=dim, stable=True).indices.narrow(dim, 0, k)


def order_slots(experts: torch.Tensor, gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder each row's slots by gate descending, ties toward the lower expert index, empty slots (-1) last."""
    if experts.numel() == 0:
        return experts, gates
    big = torch.iinfo(torch.int64).max
    o1 = torch.sort(torch.where(experts < 0, big, experts), dim=1, stable=True).indices  # by expert index
    experts, gates = experts.gather(1, o1), gates.gather(1, o1)
    key = torch.where(experts < 0, torch.inf, -gates.detach().to(torch.float64))
    o2 = torch.sort(key, dim=1, stable=True).indices  # then by gate, stable
    return experts.gather(1, o2), gates.gather(1, o2)


def hash_experts_torch(token_ids: torch.Tensor, n_experts: int, top_k: int, seed: int) -> torch.Tensor:
    """``curmoe.routing._fixed.hash_experts`` in int64 torch ops (bit-exact: intermediates stay below 2**63)."""
    t = token_ids.to(torch.int64)
    cols: list[torch.Tensor] = []
    for j in range(top_k):
        x = torch.remainder(t + _SEED_STRIDE * seed + _SLOT_STRIDE * j, 1 << 31)  # < 2**31
        h = torch.remainder(x * KNUTH_MULTIPLIER, 1 << 32)  # Knuth multiplicative hash
        e = torch.div(h * n_experts, 1 << 32, rounding_mode="floor")  # top bits scaled to [0, E)
        for _ in range(j):  # linear probing to a distinct expert
            clash = (torch.stack(cols, 1) == e[:, None]).any(dim=1)
            if not bool(clash.any()):
                break
            e = torch.where(clash, torch.remainder(e + 1, n_experts), e)
        cols.append(e)
    return torch.stack(cols, 1) if cols else t.new_zeros((t.shape[0], 0))


def _softmax64(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.to(torch.float64), dim=-1)


def _topk(logits: torch.Tensor, k: int, normalize: bool) -> TorchRouting:
    probs = _softmax64(logits)  # (N, E)
    experts = stable_topk(probs.detach(), k)  # (N, k)
    gates = probs.gather(1, experts)
    if normalize and gates.numel():
        gates = gates / gates.sum(dim=1, keepdim=True)
    return TorchRouting(experts, gates, probs, torch.zeros(len(probs), dtype=torch.bool, device=probs.device))


def _select(logits: torch.Tensor, k: int) -> TorchRouting:
    """``select``: top-k by logit, every gate exactly 1 in the forward pass. The gates are a straight-through
    estimator ``1 + (s - stop_grad(s))`` with ``s = sigmoid(z)``, so the value is exactly 1 (``s - s`` is 0 in
    floating point) while the gradient reaches the router: d gate_i / d z_i = s_i (1 - s_i)."""
    z = logits.to(torch.float64)
    experts = torch.sort(stable_topk(z.detach(), k), dim=1).values  # (N, k) chosen by logit, in index order
    s = torch.sigmoid(z).gather(1, experts)  # (N, k)
    gates = 1.0 + (s - s.detach())
    return TorchRouting(experts, gates, _softmax64(logits), torch.zeros(len(z), dtype=torch.bool, device=z.device))


def _sigmoid_bias(logits: torch.Tensor, cfg: RouterConfig, bias: torch.Tensor | None) -> TorchRouting:
    scores = torch.sigmoid(logits.to(torch.float64))  # (N, E)
    b = torch.zeros_like(scores[0]) if bias is None else bias.detach().to(torch.float64)
    experts = stable_topk(scores.detach() + b, cfg.top_k)  # selection by the biased scores
    gates = scores.gather(1, experts)  # gates from the unbiased scores
    if cfg.normalize and gates.numel():
        total = gates.sum(dim=1, keepdim=True)
        gates = gates / torch.where(total > 0, total, torch.ones_like(total))
    experts, gates = order_slots(experts, gates * cfg.routed_scaling)
    return TorchRouting(experts, gates, scores, torch.zeros(len(scores), dtype=torch.bool, device=scores.device))


def _switch(logits: torch.Tensor, cf: float) -> TorchRouting:
    n, e = logits.shape
    probs = _softmax64(logits)
    choice = torch.argmax(probs.detach(), dim=1)  # (N,) first maximum on ties
    gate = probs.gather(1, choice[:, None])[:, 0]
    cap = expert_capacity(n, e, cf, 1)
    if cap is None:
        keep = torch.ones(n, dtype=torch.bool, device=probs.device)
    else:
        onehot = torch.nn.functional.one_hot(choice, e)  # (N, E)
        position = onehot.cumsum(0).gather(1, choice[:, None])[:, 0] - 1  # place in its expert's queue
        keep = position < cap
    experts = torch.where(keep, choice, -1)[:, None]
    gates = torch.where(keep, gate, torch.zeros_like(gate))[:, None]
    return TorchRouting(experts, gates, probs, ~keep)


def _expert_choice(logits: torch.Tensor, top_k: int, cf: float) -> TorchRouting:
    n, e = logits.shape
    probs = _softmax64(logits)
    cap = expert_capacity(n, e, cf, top_k)
    cap = n if cap is None else min(n, cap)
    chosen = stable_topk(probs.detach(), cap, dim=0)  # (C, E) token indices per expert
    taken = torch.zeros((n, e), dtype=torch.bool, device=probs.device)
    taken[chosen, torch.arange(e, device=probs.device)[None, :]] = True
    per_token = taken.sum(dim=1)
    k = max(1, int(per_token.max())) if n else 1
    key = torch.where(taken, -probs.detach(), torch.inf)
    order = torch.sort(key, dim=1, stable=True).indices[:, :k]  # a token's experts by gate, untaken last
    valid = taken.gather(1, order)
    experts = torch.where(valid, order, -1)
    gates = torch.where(valid, probs.gather(1, order), torch.zeros((), dtype=probs.dtype))
    return TorchRouting(experts, gates, probs, per_token == 0)


def _uniform(experts: torch.Tensor, n_experts: int, k: int, device: torch.device) -> TorchRouting:
    n = experts.shape[0]
    gates = torch.full(experts.shape, 1.0 / k, dtype=torch.float64, device=device)
    probs = torch.full((n, n_experts), 1.0 / n_experts, dtype=torch.float64, device=device)
    return TorchRouting(experts, gates, probs, torch.zeros(n, dtype=torch.bool, device=device))


def _pad_cat(parts: Sequence[TorchRouting]) -> TorchRouting:
    """Concatenate group routings, padding the slot axis with -1 / 0 to the widest group."""
    k = max(p.experts.shape[1] for p in parts)
    ex, ga = [], []
    for p in parts:
        pad = k - p.experts.shape[1]
        ex.append(torch.nn.functional.pad(p.experts, (0, pad), value=-1))
        ga.append(torch.nn.functional.pad(p.gates, (0, pad), value=0.0))
    return TorchRouting(torch.cat(ex), torch.cat(ga), torch.cat([p.probs for p in parts]),
                        torch.cat([p.dropped for p in parts]))


def route_torch(
    logits: torch.Tensor,  # (N, E) router logits of all real tokens, group after group
    cfg: RouterConfig,
    *,
    group_sizes: Sequence[int],  # tokens per routing group (one sequence's real tokens), summing to N
    token_ids: torch.Tensor | None = None,  # (N,) for hash
    bias: torch.Tensor | None = None,  # (E,) selection bias for sigmoid_bias
    decoding: bool = False,
) -> TorchRouting:
    """Route N tokens over E experts exactly as ``curmoe.route`` does, one call per group where it matters.

    Returns a :class:`TorchRouting` whose gates have ``logits.dtype``.
    """
    n, e = logits.shape
    if sum(group_sizes) != n:
        raise InvalidInputError(f"group_sizes sum to {sum(group_sizes)} but there are {n} router rows")
    kind, k = cfg.kind, cfg.top_k
    if kind == "expert_choice" and decoding:
        if cfg.decode_fallback is None:
            raise DecodingNotSupportedError(
                "router kind='expert_choice' is non-causal (each expert ranks the whole sequence), so it cannot "
                "route tokens one at a time with a KV cache; run the full forward instead, or set "
                'decode_fallback="topk" in RouterConfig to route each decoded token to its top_k experts'
            )
        kind = cfg.decode_fallback
    if k > e and kind != "expert_choice":
        raise InvalidInputError(f"top_k={k} is out of range for {e} experts; pass 1 <= top_k <= {e}")
    if kind == "topk":
        r = _topk(logits, k, cfg.normalize)
    elif kind == "select":
        r = _select(logits, k)
    elif kind == "sigmoid_bias":
        r = _sigmoid_bias(logits, cfg, bias)
    elif kind == "hash":
        if token_ids is None:
            raise InvalidInputError("router kind='hash' needs the token ids of the routed tokens")
        ex = torch.sort(hash_experts_torch(token_ids, e, k, cfg.seed), dim=1).values
        r = _uniform(ex, e, k, logits.device)
    else:  # per-group routers: switch, expert_choice, random
        parts: list[TorchRouting] = []
        for z in torch.split(logits, list(group_sizes)):
            if kind == "switch":
                parts.append(_switch(z, cfg.capacity_factor))
            elif kind == "expert_choice":
                parts.append(_expert_choice(z, k, cfg.capacity_factor))
            else:  # random: the reference's NumPy generator keyed by (seed, group size)
                ex, _ = route_random(z.shape[0], e, k, cfg.seed)
                parts.append(_uniform(torch.from_numpy(np.ascontiguousarray(ex)).to(z.device), e, k, z.device))
        if not parts:
            w = 1 if kind != "random" else k
            return TorchRouting(logits.new_full((0, w), -1, dtype=torch.int64), logits.new_zeros((0, w)),
                                logits.new_zeros((0, e), dtype=torch.float64), logits.new_zeros(0, dtype=torch.bool))
        r = _pad_cat(parts)
    r.gates = r.gates.to(logits.dtype)
    return r
