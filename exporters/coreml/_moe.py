"""MIL subgraphs for the FFN side of the Core ML export: the routers, dense-dispatch MoE, shared experts, dense FFN.

Every router gives, for the (B, T) tokens of the call (padding included, then masked out), a selection
``selected`` (B, T, E) bool and a combine matrix G (B, T, E) float32 (gate of each selected expert, 0 elsewhere),
computed in float32 in every export (routing stability: a near-tie must break as in the float64 reference). The
top-k slots become (B, T, E) through ``one_hot`` (Core ML has no scatter into a zero tensor that its Neural Engine
runs; ``one_hot`` + a sum over the k slots is the same matrix). The MoE output is ``sum_e G[..., e] * expert_e(x)``
over every token (dense dispatch: static shapes, E / k times the expert work), times the real-token mask.

Capacity-limited routers count per sequence over its real tokens, ``C = ceil(cf * n * k / E)`` evaluated exactly
in int32 as ``(p*n*k + q*E - 1) floor_div (q*E)`` with ``cf = p / q`` the decimal value of the capacity factor
(``curmoe.routing._capacity.expert_capacity``).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
from coremltools.converters.mil import Builder as mb

from curmoe.common.errors import InvalidInputError
from curmoe.exporters.coreml._attention import MilContext
from curmoe.exporters.coreml._ops import MilBuilder
from curmoe.reference import DenseLinear, Linear, ModelConfig, MoEConfig
from curmoe.routing import hash_experts

__all__ = ["router", "moe_layer", "dense_ffn"]

_INT32_MAX = 2**31 - 1


def _slots(idx: Any, vals: Any, E: int) -> tuple[Any, Any]:
    """(selected (B, T, E) bool, combine (B, T, E) float32) from slot experts idx (B, T, k) and gates (B, T, k)."""
    oh = mb.one_hot(indices=idx, one_hot_vector_size=E, axis=-1, on_value=np.float32(1), off_value=np.float32(0))
    comb = mb.reduce_sum(x=mb.mul(x=oh, y=mb.expand_dims(x=vals, axes=[-1])), axes=[-2], keep_dims=False)
    sel = mb.greater(x=mb.reduce_max(x=oh, axes=[-2], keep_dims=False), y=np.float32(0))
    return sel, comb


def _capacity(ctx: MilContext, cf: float, k: int, E: int, clip: bool, max_tokens: int) -> Any:
    """(B, 1, 1) int32 capacity per sequence ``ceil(cf * n_b * k / E)`` (``min(n_b, .)`` if clip)."""
    n_b = mb.reduce_sum(x=mb.cast(x=ctx.real_b, dtype="int32"), axes=[1], keep_dims=True)  # (B, 1, 1)
    if math.isinf(cf):
        return n_b
    fr = Fraction(repr(float(cf)))
    num, den = fr.numerator * k, fr.denominator * E
    if num * max_tokens + den > _INT32_MAX:
        raise InvalidInputError(
            f"capacity_factor={cf!r} has too many decimals for an exact int32 capacity at {max_tokens} tokens; "
            "round it (e.g. to 3 decimals) or lower max_seq_len"
        )
    cap = mb.floor_div(x=mb.add(x=mb.mul(x=n_b, y=np.int32(num)), y=np.int32(den - 1)), y=np.int32(den))
    return mb.minimum(x=cap, y=n_b) if clip else cap


def router(g: MilBuilder, ctx: MilContext, moe: MoEConfig, l: int, x: Any, t: dict[str, np.ndarray],
           vocab_size: int, max_tokens: int) -> tuple[Any, Any]:
    """Route normed x (B, T, d); returns (selected (B, T, E) bool, combine (B, T, E) float32)."""
    rc, E, k = moe.router, moe.n_experts, moe.router.top_k
    p = f"layers.{l}.router"
    z = mb.linear(x=g.to_f32(x), weight=g.weight(f"{p}.weight", t[f"{p}.weight"], np.float32))  # (B, T, E)
    kind = rc.kind
    if kind == "topk":
        vals, idx = mb.topk(x=mb.softmax(x=z, axis=-1), k=k, axis=-1, ascending=False)  # (B, T, k)
        if rc.normalize:
            vals = mb.real_div(x=vals, y=mb.reduce_sum(x=vals, axes=[-1], keep_dims=True))
        sel, comb = _slots(idx, vals, E)
    elif kind == "select":  # top-k by logit, every gate exactly 1 (curmoe.routing._score.route_select)
        _, idx = mb.topk(x=z, k=k, axis=-1, ascending=False)  # (B, T, k)
        oh = mb.one_hot(indices=idx, one_hot_vector_size=E, axis=-1, on_value=np.float32(1), off_value=np.float32(0))
        sel = mb.greater(x=mb.reduce_max(x=oh, axes=[-2], keep_dims=False), y=np.float32(0))  # (B, T, E)
        comb = mb.cast(x=sel, dtype="fp32")
    elif kind == "sigmoid_bias":
        s = mb.sigmoid(x=z)
        biased = mb.add(x=s, y=g.weight(f"{p}.bias", t[f"{p}.bias"], np.float32))
        _, idx = mb.topk(x=biased, k=k, axis=-1, ascending=False)
        vals = mb.gather_along_axis(x=s, indices=idx, axis=-1)  # gates from the unbiased scores
        if rc.normalize:
            tot = mb.reduce_sum(x=vals, axes=[-1], keep_dims=True)
            tot = mb.select(cond=mb.greater(x=tot, y=np.float32(0)), a=tot, b=np.float32(1))
            vals = mb.real_div(x=vals, y=tot)
        if rc.routed_scaling != 1.0:
            vals = mb.mul(x=vals, y=np.float32(rc.routed_scaling))
        sel, comb = _slots(idx, vals, E)
    elif kind == "hash":  # a (V, k) lookup table computed by the reference's own hash
        table = np.sort(hash_experts(np.arange(vocab_size), E, k, rc.seed), axis=1).astype(np.int32)
        idx = mb.gather(x=g.weight(f"{p}.hash_table", table, np.int32), indices=ctx.ids, axis=0)  # (B, T, k)
        oh = mb.one_hot(indices=idx, one_hot_vector_size=E, axis=-1, on_value=np.float32(1), off_value=np.float32(0))
        sel = mb.greater(x=mb.reduce_max(x=oh, axes=[-2], keep_dims=False), y=np.float32(0))
        comb = mb.mul(x=mb.cast(x=sel, dtype="fp32"), y=np.float32(1.0 / k))
    elif kind == "switch":
        probs = mb.softmax(x=z, axis=-1)
        choice = mb.reduce_argmax(x=probs, axis=-1, keep_dims=False)  # (B, T), first max
        gate = mb.reduce_max(x=probs, axes=[-1], keep_dims=True)  # (B, T, 1) = probs[choice]
        onehot = mb.mul(x=mb.one_hot(indices=choice, one_hot_vector_size=E, axis=-1, on_value=np.int32(1),
                                     off_value=np.int32(0)), y=mb.cast(x=ctx.real_b, dtype="int32"))  # (B, T, E)
        if math.isinf(rc.capacity_factor):
            sel = mb.cast(x=onehot, dtype="bool")
        else:  # place in its expert's queue, per sequence, in time order (first come, first served)
            queue = mb.cumsum(x=onehot, axis=1)  # (B, T, E)
            place = mb.sub(x=mb.reduce_sum(x=mb.mul(x=queue, y=onehot), axes=[-1], keep_dims=True), y=np.int32(1))
            keep = mb.less(x=place, y=_capacity(ctx, rc.capacity_factor, 1, E, False, max_tokens))  # (B, T, 1)
            sel = mb.logical_and(x=mb.cast(x=onehot, dtype="bool"), y=keep)
        comb = mb.mul(x=mb.cast(x=sel, dtype="fp32"), y=gate)
    elif kind == "expert_choice":  # each expert ranks the sequence's real tokens (padding last), takes C
        probs = mb.softmax(x=z, axis=-1)  # (B, T, E)
        pm = mb.select(cond=ctx.real_b, a=probs, b=np.float32(-1))
        order = mb.argsort(x=pm, axis=1, ascending=False)  # order[b, j, e]: token at rank j
        rank = mb.argsort(x=order, axis=1, ascending=True)  # inverse permutation: rank of token t
        cap = _capacity(ctx, rc.capacity_factor, k, E, True, max_tokens)  # (B, 1, 1)
        sel = mb.less(x=rank, y=cap)
        comb = mb.mul(x=mb.cast(x=mb.logical_and(x=sel, y=ctx.real_b), dtype="fp32"), y=probs)
    else:
        raise InvalidInputError(
            f"router kind={kind!r} has no Core ML export (its draws depend on NumPy's generator per routing group); "
            "export a model with a topk, switch, hash, sigmoid_bias or expert_choice router"
        )
    sel = mb.logical_and(x=sel, y=ctx.real_b)  # padding tokens go nowhere
    comb = mb.mul(x=comb, y=ctx.real_f32)
    return sel, comb


def _mats(experts: dict[str, Linear], key: str) -> dict[str, Linear]:
    return {n: experts[f"{key}.{n}"] for n in ("gate", "up", "down") if f"{key}.{n}" in experts}


def dense_ffn(g: MilBuilder, x: Any, l: int, t: dict[str, np.ndarray]) -> Any:
    """A dense SwiGLU FFN layer (layer_types "dense") on every token."""
    mats = {n: DenseLinear(t[f"layers.{l}.mlp.{n}.weight"]) for n in ("gate", "up", "down")}
    return g.expert(x, f"layers.{l}.mlp", mats, "swiglu")


def moe_layer(g: MilBuilder, ctx: MilContext, cfg: ModelConfig, l: int, x: Any, t: dict[str, np.ndarray],
              experts: dict[str, Linear], max_tokens: int) -> tuple[Any, Any]:
    """The MoE block on normed x (B, T, d); returns (output (B, T, d), selected (B, T, E) bool)."""
    moe, E = cfg.moe, cfg.moe.n_experts
    pre = f"layers.{l}"
    sel, comb = router(g, ctx, moe, l, x, t, cfg.vocab_size, max_tokens)
    gates = mb.split(x=g.to_act(comb), num_splits=E, axis=-1) if E > 1 else [g.to_act(comb)]  # E x (B, T, 1)
    y = None
    for e in range(E):
        key = f"{pre}.experts.{e}"
        ye = mb.mul(x=g.expert(x, key, _mats(experts, key), moe.activation), y=gates[e])  # (B, T, d)
        y = ye if y is None else mb.add(x=y, y=ye)
    if moe.n_shared:
        ys = None
        for s in range(moe.n_shared):
            key = f"{pre}.shared.{s}"
            o = g.expert(x, key, _mats(experts, key), moe.activation)
            ys = o if ys is None else mb.add(x=ys, y=o)
        if moe.shared_gate:
            sg = mb.sigmoid(x=g.linear(x, f"{pre}.shared_gate.weight", t[f"{pre}.shared_gate.weight"]))  # (B, T, 1)
            ys = mb.mul(x=sg, y=ys)
        y = mb.add(x=y, y=ys)
    return mb.mul(x=y, y=ctx.real_act), sel  # padding tokens: no MoE contribution
