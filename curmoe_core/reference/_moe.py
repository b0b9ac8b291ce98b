"""The MoE block of the reference model: route each sequence's tokens, run each expert on its tokens only.

y = sum over chosen experts e of gate_e(x) * expert_e(x)  [+ shared experts, optionally sigmoid-gated]
expert(x) = down(silu(gate(x)) * up(x))   (SwiGLU)   or   down(gelu(up(x)))   (GELU)

Tokens a capacity-limited router drops get no routed contribution: they pass through the residual unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from curmoe.reference._config import MoEConfig
from curmoe.reference._linear import Linear
from curmoe.reference._ops import gelu, sigmoid, silu
from curmoe.reference.names import expert_prefix, shared_prefix
from curmoe.routing import Routing, route

__all__ = ["Observer", "expert_forward", "moe_block"]

# observer(key, X): called with the input X (N, in) of every expert matrix, key "layers.{l}.experts.{e}.{name}"
# (or ".shared.{s}."), with key "layers.{l}.moe_input" for all real tokens entering the block, and with key
# "layers.{l}.experts.{e}.routing_weights" for the (N_e,) gate values of the tokens routed to expert e.
Observer = Callable[[str, np.ndarray], None]


def expert_forward(
    x: np.ndarray,  # (N, d_model)
    mats: Mapping[str, Linear],  # "gate", "up", "down" (no "gate" for GELU)
    activation: str,
    key: str = "",
    observer: Observer | None = None,
) -> np.ndarray:
    """One expert's FFN on its tokens: (N, d_model) -> (N, d_model)."""
    if observer is not None:
        if activation == "swiglu":
            observer(f"{key}.gate", x)
        observer(f"{key}.up", x)
    if activation == "swiglu":
        h = silu(mats["gate"](x)) * mats["up"](x)  # (N, d_ff)
    else:
        h = gelu(mats["up"](x))
    if observer is not None:
        observer(f"{key}.down", h)
    return mats["down"](h)  # (N, d_ff) -> (N, d_model)


def moe_block(
    x: np.ndarray,  # (B, T, d_model), already normed
    token_ids: np.ndarray,  # (B, T) int, for the hash router
    mask: np.ndarray,  # (B, T) bool, real tokens
    layer: int,
    cfg: MoEConfig,
    router_w: np.ndarray,  # (E, d_model)
    router_bias: np.ndarray | None,  # (E,) selection bias (sigmoid_bias router)
    experts: Mapping[str, Linear],  # "layers.{l}.experts.{e}.{name}" and "layers.{l}.shared.{s}.{name}"
    shared_gate_w: np.ndarray | None,  # (1, d_model)
    decoding: bool,
    observer: Observer | None = None,
) -> tuple[np.ndarray, list[Routing]]:
    """Returns (output (B, T, d_model), one Routing per sequence, over its real tokens)."""
    B, T, d = x.shape
    E = cfg.n_experts
    out = np.zeros_like(x)
    b_idx, t_idx = np.nonzero(mask)  # real tokens, row-major: sequence by sequence, in time order
    xf = x[b_idx, t_idx]  # (N, d)
    if observer is not None:
        observer(f"layers.{layer}.moe_input", xf)
    logits = xf @ router_w.T  # (N, E)
    # Route each sequence as its own group: capacity-limited routers then do not depend on batching.
    routings: list[Routing] = []
    k_max = 0
    starts = np.searchsorted(b_idx, np.arange(B + 1))
    for b in range(B):
        s, e = starts[b], starts[b + 1]
        if s == e:
            continue
        r = route(logits[s:e], cfg.router, token_ids=token_ids[b, t_idx[s:e]], bias=router_bias, decoding=decoding)
        routings.append(r)
        k_max = max(k_max, r.experts.shape[1])
    N = xf.shape[0]
    chosen = np.full((N, max(k_max, 1)), -1, dtype=np.int64)
    gates = np.zeros((N, max(k_max, 1)), dtype=x.dtype)
    pos = 0
    for r in routings:
        n, k = r.experts.shape
        chosen[pos : pos + n, :k] = r.experts
        gates[pos : pos + n, :k] = r.gates
        pos += n
    yf = np.zeros_like(xf)
    for ex in range(E):
        tok, slot = np.nonzero(chosen == ex)  # each token picks an expert at most once
        if tok.size == 0:
            continue
        key = expert_prefix(layer, ex)
        mats = {n: experts[f"{key}.{n}"] for n in ("gate", "up", "down") if f"{key}.{n}" in experts}
        if observer is not None:
            observer(f"{key}.routing_weights", gates[tok, slot])  # (n_e,) the gate value each token gives e
        y = expert_forward(xf[tok], mats, cfg.activation, key, observer)  # (n_e, d)
        yf[tok] += gates[tok, slot, None] * y
    if cfg.n_shared:
        ys = np.zeros_like(xf)
        for s in range(cfg.n_shared):
            key = shared_prefix(layer, s)
            mats = {n: experts[f"{key}.{n}"] for n in ("gate", "up", "down") if f"{key}.{n}" in experts}
            ys += expert_forward(xf, mats, cfg.activation, key, observer)
        if cfg.shared_gate:
            ys = sigmoid(xf @ shared_gate_w.T) * ys  # (N, 1) * (N, d)
        yf += ys
    out[b_idx, t_idx] = yf
    return out, routings
