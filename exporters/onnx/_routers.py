"""ONNX subgraphs for the routers of ``curmoe.routing._gating``: each gives the selection and combine matrices.

Every router produces, for the N = B*T tokens of the call (padding included, then masked out):

- ``routing.{l}.logits`` (N, E) float32: ``z = x @ W_r.T`` (float32 even in a float16 export: routing stability, a
  near-tie must break as in the float64 reference, and float16 softmax probabilities have ~3 significant digits);
- ``routing.{l}.selected`` (N, E) bool: token t is routed to expert e (False for every expert on padding tokens
  and on tokens a capacity limit dropped);
- the combine matrix G (N, E) float32, ``G[t, e]`` = gate of expert e for token t (0 where not selected), so the
  MoE output is ``sum_e G[:, e] * expert_e(x)``.

Ties break toward the lower index everywhere, which is what ONNX ``TopK`` and ``ArgMax(select_last_index=0)`` do,
as the reference does. Capacity-limited routers (switch, expert_choice) count per sequence over its real tokens
of this call, with ``C = ceil(cf * n * k / E)`` evaluated exactly in int64 as ``(p*n*k + q*E - 1) div (q*E)`` where
``cf = p / q`` is the decimal value of the capacity factor (``curmoe.routing._capacity.expert_capacity``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnx
from onnx import TensorProto, helper

from curmoe.common.errors import InvalidInputError
from curmoe.exporters.onnx._attention import Context
from curmoe.exporters.onnx._graph import GraphBuilder
from curmoe.reference import MoEConfig
from curmoe.reference.names import routing_logits, routing_selected
from curmoe.routing import hash_experts

__all__ = ["router"]


def _scatter(g: GraphBuilder, idx: str, vals: str, like: str, p: str) -> tuple[str, str]:
    """(selected bool (N, E), combine float32 (N, E)) from slot indices idx (N, k) and gates vals (N, k)."""
    zeros = g.op("ConstantOfShape", [g.op("Shape", [like], f"{p}.shape_ne")], f"{p}.zeros",
                 value=_tensor(0.0))
    ones = g.op("ConstantOfShape", [g.op("Shape", [idx], f"{p}.shape_nk")], f"{p}.ones", value=_tensor(1.0))
    sel = g.op("Cast", [g.op("ScatterElements", [zeros, idx, ones], f"{p}.sel_f", axis=1)], f"{p}.sel_any",
               to=TensorProto.BOOL)
    comb = g.op("ScatterElements", [zeros, idx, vals], f"{p}.gates_scattered", axis=1)
    return sel, comb


def _tensor(v: float, dtype: int = TensorProto.FLOAT) -> onnx.TensorProto:
    """The 1-element ``value`` attribute of ConstantOfShape."""
    return helper.make_tensor("value", dtype, [1], [v])


def _capacity(g: GraphBuilder, ctx: Context, cf: float, k: int, E: int, p: str, clip: bool) -> str:
    """(B, 1) int64 capacity per sequence ``ceil(cf * n_b * k / E)`` (``min(n_b, .)`` if clip), n_b real tokens."""
    n_b = g.op("ReduceSum", [ctx.mask_new, g.const([1])], f"{p}.n_real", keepdims=1)  # (B, 1)
    if math.isinf(cf):
        return n_b
    fr = Fraction(repr(float(cf)))
    num, den = fr.numerator * k, fr.denominator * E
    x = g.op("Add", [g.op("Mul", [n_b, g.const(num)], f"{p}.cap_num"), g.const(den - 1)], f"{p}.cap_ceil")
    # Divide the exact multiple x - x mod den, so the quotient is exact whatever rounding a runtime's integer
    # Div uses (OpenVINO's CPU plugin fuses Add -> Div into the ReduceSum and rounds: 27 div 4 gave 7, not 6).
    x = g.op("Sub", [x, g.op("Mod", [x, g.const(den)], f"{p}.cap_rem")], f"{p}.cap_exact")
    cap = g.op("Div", [x, g.const(den)], f"{p}.capacity")
    return g.op("Min", [cap, n_b], f"{p}.capacity_clipped") if clip else cap


def router(g: GraphBuilder, ctx: Context, moe: MoEConfig, l: int, x: str, t: dict[str, np.ndarray],
           vocab_size: int) -> tuple[str, str, str]:
    """Route x (N, d); returns (selected (N, E) bool, combine (N, E) float32, logits (N, E) float32)."""
    rc, E, k = moe.router, moe.n_experts, moe.router.top_k
    p = f"layers.{l}.router"
    wr = g.weight_t(f"{p}.weight", t[f"{p}.weight"], np.float32)
    z = g.op("MatMul", [g.to_float32(x), wr], outputs=[routing_logits(l)])  # (N, d) @ (d, E)
    kind = rc.kind
    if kind == "topk":
        probs = g.op("Softmax", [z], f"{p}.probs", axis=-1)
        vals, idx = g.op("TopK", [probs, g.const([k])], f"{p}.topk", outputs=2, axis=-1, largest=1, sorted=1)
        if rc.normalize:
            vals = g.op("Div", [vals, g.op("ReduceSum", [vals, g.const([-1])], f"{p}.gsum", keepdims=1)], f"{p}.gnorm")
        sel, comb = _scatter(g, idx, vals, z, p)
    elif kind == "select":  # top-k by logit, every gate exactly 1 (as curmoe.routing._score.route_select)
        _, idx = g.op("TopK", [z, g.const([k])], f"{p}.topk", outputs=2, axis=-1, largest=1, sorted=1)
        vals = g.op("ConstantOfShape", [g.op("Shape", [idx], f"{p}.shape_nk_s")], f"{p}.select_gates",
                    value=_tensor(1.0))
        sel, comb = _scatter(g, idx, vals, z, p)
    elif kind == "sigmoid_bias":
        s = g.op("Sigmoid", [z], f"{p}.scores")
        biased = g.op("Add", [s, g.weight(f"{p}.bias", t[f"{p}.bias"], np.float32)], f"{p}.biased")
        _, idx = g.op("TopK", [biased, g.const([k])], f"{p}.topk", outputs=2, axis=-1, largest=1, sorted=1)
        vals = g.op("GatherElements", [s, idx], f"{p}.gates", axis=1)
        if rc.normalize:
            tot = g.op("ReduceSum", [vals, g.const([-1])], f"{p}.gsum", keepdims=1)
            tot = g.op("Where", [g.op("Greater", [tot, g.const(0.0, np.float32)], f"{p}.gpos"), tot,
                                 g.const(1.0, np.float32)], f"{p}.gsum_safe")
            vals = g.op("Div", [vals, tot], f"{p}.gnorm")
        if rc.routed_scaling != 1.0:
            vals = g.op("Mul", [vals, g.const(rc.routed_scaling, np.float32)], f"{p}.gscaled")
        sel, comb = _scatter(g, idx, vals, z, p)
    elif kind == "hash":
        # The experts depend on the token id only: a (V, k) lookup table computed by the reference hash itself.
        table = np.sort(hash_experts(np.arange(vocab_size), E, k, rc.seed), axis=1).astype(np.int64)
        idx = g.op("Gather", [g.init(f"{p}.hash_table", table), ctx.ids_flat], f"{p}.hash_experts", axis=0)
        vals = g.op("ConstantOfShape", [g.op("Shape", [idx], f"{p}.shape_nk_h")], f"{p}.hash_gates",
                    value=_tensor(1.0 / k))
        sel, comb = _scatter(g, idx, vals, z, p)
    elif kind == "switch":
        probs = g.op("Softmax", [z], f"{p}.probs", axis=-1)
        choice = g.op("ArgMax", [probs], f"{p}.choice", axis=1, keepdims=1, select_last_index=0)  # (N, 1)
        gate = g.op("GatherElements", [probs, choice], f"{p}.gate", axis=1)  # (N, 1)
        onehot = g.op("And", [g.op("Equal", [choice, g.const(np.arange(E))], f"{p}.onehot"), ctx.real_b],
                      f"{p}.onehot_real")  # (N, E)
        if math.isinf(rc.capacity_factor):
            sel = onehot
        else:
            # place of each token in its expert's queue, per sequence, in time order (first come, first served)
            oh3 = g.op("Reshape", [g.cast(onehot, np.int64), g.op("Concat", [ctx.shape_bt, g.const([E])],
                                                                     f"{p}.shape_bte", axis=0)], f"{p}.onehot3")
            queue = g.op("Reshape", [g.op("CumSum", [oh3, g.const(1)], f"{p}.queue3"), g.const([-1, E])], f"{p}.queue")
            place = g.op("Sub", [g.op("GatherElements", [queue, choice], f"{p}.place1", axis=1), g.const(1)], f"{p}.place")
            cap = _capacity(g, ctx, rc.capacity_factor, 1, E, p, clip=False)  # (B, 1)
            cap_tok = g.op("Reshape", [g.op("Expand", [cap, ctx.shape_bt], f"{p}.cap_bt"), g.const([-1, 1])], f"{p}.cap_tok")
            keep = g.op("Less", [place, cap_tok], f"{p}.keep")  # (N, 1)
            sel = g.op("And", [onehot, keep], f"{p}.sel_kept")
        comb = g.op("Mul", [g.cast(sel, np.float32), gate], f"{p}.gates_kept")
    elif kind == "expert_choice":
        # Each expert ranks the sequence's real tokens by probability (padding last) and takes the first C.
        probs = g.op("Softmax", [z], f"{p}.probs", axis=-1)
        shape_bte = g.op("Concat", [ctx.shape_bt, g.const([E])], f"{p}.shape_bte", axis=0)
        p3 = g.op("Reshape", [probs, shape_bte], f"{p}.probs3")  # (B, T, E)
        real3 = g.op("Reshape", [ctx.real_b, g.op("Concat", [ctx.shape_bt, g.const([1])], f"{p}.shape_bt1", axis=0)],
                     f"{p}.real3")
        pm = g.op("Where", [real3, p3, g.const(-1.0, np.float32)], f"{p}.probs_masked")
        _, order = g.op("TopK", [pm, ctx.T1], f"{p}.rank_sort", outputs=2, axis=1, largest=1, sorted=1)
        T0 = g.op("Squeeze", [ctx.T1, g.const([0])], f"{p}.T0")
        slots = g.op("Reshape", [g.op("Range", [g.const(0), T0, g.const(1)], f"{p}.slot_range"), g.const([1, -1, 1])],
                     f"{p}.slot_col")
        slots = g.op("Expand", [slots, shape_bte], f"{p}.slots")  # (B, T, E): slot j
        zeros = g.op("ConstantOfShape", [shape_bte], f"{p}.rank0", value=_tensor(0, TensorProto.INT64))
        rank = g.op("ScatterElements", [zeros, order, slots], f"{p}.rank", axis=1)  # rank[b, order[b,j,e], e] = j
        cap = _capacity(g, ctx, rc.capacity_factor, k, E, p, clip=True)  # (B, 1)
        cap3 = g.op("Unsqueeze", [cap, g.const([2])], f"{p}.cap3")  # (B, 1, 1)
        taken = g.op("Reshape", [g.op("Less", [rank, cap3], f"{p}.taken3"), g.const([-1, E])], f"{p}.taken")
        sel = g.op("And", [taken, ctx.real_b], f"{p}.taken_real")
        comb = g.op("Mul", [g.cast(sel, np.float32), probs], f"{p}.gates_taken")
    else:
        raise InvalidInputError(
            f"router kind={kind!r} has no ONNX export (its draws depend on NumPy's generator per routing group); "
            "export a model with a topk, select, switch, hash, sigmoid_bias or expert_choice router"
        )
    sel = g.op("And", [sel, ctx.real_b], outputs=[routing_selected(l)])  # padding tokens go nowhere
    comb = g.op("Mul", [comb, ctx.real_f32], f"{p}.combine")
    return sel, comb, z
