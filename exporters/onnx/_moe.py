"""ONNX subgraphs for the FFN side: expert matrices (dense, CUR, SVD), the two MoE dispatch forms, shared experts,
dense FFN layers, and ONNX Runtime's fused ``com.microsoft.MoE``.

Factorised experts never rebuild W (Mahoney & Drineas 2009, "CUR matrix decompositions for improved data
analysis"): a CUR matrix W ~ C U R is the MatMul chain ``x -> R.T -> U.T -> C.T`` on initializers
``{key}.R`` (r, n), ``{key}.U`` (c, r), ``{key}.C`` (m, c) (``fold_u``: ``{key}.C`` holds C @ U, (m, r), and there is
no ``.U``); an SVD matrix W ~ A B is ``x -> B.T -> A.T`` on ``{key}.B`` (r, n), ``{key}.A`` (m, r); a dense one
``{key}.weight`` (m, n). Keys are the checkpoint's, e.g. ``layers.0.experts.3.up``.

Dispatch (same outputs):
- ``sparse``: per expert e, ``idx = NonZero(selected[:, e])``, ``y_e = G[idx, e] * expert_e(x[idx])``; all
  (idx, y_e) are concatenated, written to distinct cells (token, slot) of zeros (N, S, d) by one ScatterND
  (no reduction: no index repeats) and summed over the slots. Only routed tokens are computed.
- ``dense``: ``y = sum_e G[:, e] * expert_e(x)`` over all tokens: static shapes, E times the expert work.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from curmoe.exporters.onnx._attention import Context
from curmoe.exporters.onnx._graph import GraphBuilder
from curmoe.exporters.onnx._routers import router
from curmoe.reference import CURLinear, DenseLinear, Linear, ModelConfig, SVDLinear
from curmoe.reference.names import expert_key, routing_logits

__all__ = ["linear_map", "expert", "moe_layer", "dense_ffn"]


def linear_map(g: GraphBuilder, x: str, key: str, lin: Linear, fold_u: bool) -> str:
    """y = x @ W'.T for an expert matrix in its stored form; x (n_tok, n) -> (n_tok, m), 2-D MatMuls only."""
    if isinstance(lin, DenseLinear):
        return g.op("MatMul", [x, g.weight_t(f"{key}.weight", lin.W)], key)  # (N, n) @ (n, m)
    if isinstance(lin, SVDLinear):
        h = g.op("MatMul", [x, g.weight_t(f"{key}.B", lin.B)], f"{key}.xB")  # (N, n) @ (n, r)
        return g.op("MatMul", [h, g.weight_t(f"{key}.A", lin.A)], key)  # (N, r) @ (r, m)
    if isinstance(lin, CURLinear):
        h = g.op("MatMul", [x, g.weight_t(f"{key}.R", lin.R)], f"{key}.xR")  # (N, n) @ (n, r)
        C = lin.C
        if lin.U is not None and fold_u:
            C = lin.C.astype(np.float64) @ lin.U.astype(np.float64)  # (m, c) @ (c, r), folded in float64
        elif lin.U is not None:
            h = g.op("MatMul", [h, g.weight_t(f"{key}.U", lin.U)], f"{key}.xRU")  # (N, r) @ (r, c)
        return g.op("MatMul", [h, g.weight_t(f"{key}.C", C)], key)  # (N, c) @ (c, m)
    raise TypeError(f"expert matrix {key!r} has unsupported type {type(lin).__name__}")


def _silu(g: GraphBuilder, a: str, hint: str) -> str:
    return g.op("Mul", [a, g.op("Sigmoid", [a], f"{hint}.sig")], hint)


def _gelu(g: GraphBuilder, a: str, hint: str) -> str:
    """Exact (erf) GELU in the Div -> Erf -> Add -> Mul -> Mul pattern ONNX Runtime fuses into Gelu."""
    e = g.op("Erf", [g.op("Div", [a, g.fconst(np.sqrt(2.0))], f"{hint}.scaled")], f"{hint}.erf")
    return g.op("Mul", [g.op("Mul", [a, g.op("Add", [e, g.fconst(1.0)], f"{hint}.erf1")], f"{hint}.xe"),
                        g.fconst(0.5)], hint)


def expert(g: GraphBuilder, x: str, key: str, mats: dict[str, Linear], activation: str, fold_u: bool) -> str:
    """down(silu(gate x) * up x) (SwiGLU) or down(gelu(up x)) on x (n_tok, d) -> (n_tok, d)."""
    if activation == "swiglu":
        a = _silu(g, linear_map(g, x, f"{key}.gate", mats["gate"], fold_u), f"{key}.act")
        h = g.op("Mul", [a, linear_map(g, x, f"{key}.up", mats["up"], fold_u)], f"{key}.h")  # (n_tok, d_ff)
    else:
        h = _gelu(g, linear_map(g, x, f"{key}.up", mats["up"], fold_u), f"{key}.h")
    return linear_map(g, h, f"{key}.down", mats["down"], fold_u)


def _mats(experts: dict[str, Linear], key: str) -> dict[str, Linear]:
    return {n: experts[f"{key}.{n}"] for n in ("gate", "up", "down") if f"{key}.{n}" in experts}


def dense_ffn(g: GraphBuilder, x: str, l: int, t: dict[str, np.ndarray]) -> str:
    """A dense SwiGLU FFN layer (layer_types "dense") on every token."""
    mats = {n: DenseLinear(t[f"layers.{l}.mlp.{n}.weight"]) for n in ("gate", "up", "down")}
    return expert(g, x, f"layers.{l}.mlp", mats, "swiglu", False)


def _fused(g: GraphBuilder, x: str, z: str, cfg: ModelConfig, l: int, experts: dict[str, Linear]) -> str:
    """ONNX Runtime's com.microsoft.MoE: softmax top-k routing and SwiGLU experts in one kernel.

    fc1 (E, 2 f, d) holds gate and up rows interleaved ([g0, u0, g1, u1, ...], swiglu_fusion=1, the layout the
    CPU kernel requires); fc2 (E, d, f) the down matrices; activation ``G * sigmoid(alpha G) * (L + beta)`` with
    alpha = 1, beta = 0 and no clamp is silu(gate x) * up x.
    """
    moe, E, d = cfg.moe, cfg.moe.n_experts, cfg.d_model
    # Neuron-CUR experts keep f_e <= d_ff neurons each: zero-pad them to the largest f, which is exact
    # (a zero gate row and zero up row give silu(0) * 0 = 0, times a zero column of down).
    f = max(experts[expert_key(l, e, "down")].shape[1] for e in range(E))

    def fc1_part(e: int) -> np.ndarray:  # (2 f, d): rows g0, u0, g1, u1, ..., zero rows past 2 f_e
        gate, up = experts[expert_key(l, e, "gate")].dense(), experts[expert_key(l, e, "up")].dense()  # (f_e, d)
        out = np.zeros((2 * f, d), g.act)
        out[0:2 * gate.shape[0]:2], out[1:2 * up.shape[0]:2] = gate, up
        return out

    def fc2_part(e: int) -> np.ndarray:  # (d, f): down, zero columns past f_e
        down = experts[expert_key(l, e, "down")].dense()  # (d, f_e)
        out = np.zeros((d, f), g.act)
        out[:, :down.shape[1]] = down
        return out

    # one expert's slice at a time: a stacked copy of every expert never sits in memory beside the model
    fc1 = g.stacked_weight(f"layers.{l}.experts.fc1_interleaved", (E, 2 * f, d), fc1_part)
    fc2 = g.stacked_weight(f"layers.{l}.experts.fc2", (E, d, f), fc2_part)
    return g.op("MoE", [x, g.to_act(z), fc1, "", fc2], f"layers.{l}.fused_moe", domain="com.microsoft",
                k=moe.router.top_k, activation_type="swiglu", swiglu_fusion=1, activation_alpha=1.0,
                activation_beta=0.0, normalize_routing_weights=int(moe.router.normalize))


def fused_applies(cfg: ModelConfig) -> str | None:
    """None when com.microsoft.MoE reproduces every MoE layer, else the reason it does not."""
    moe = cfg.moe
    if moe.router.kind != "topk":
        return f"router kind={moe.router.kind!r} (com.microsoft.MoE only does softmax top-k routing)"
    if moe.activation != "swiglu":
        return f"activation={moe.activation!r} (only SwiGLU experts are fused)"
    if any(".experts." in k and spec["kind"] != "neuron" for k, spec in cfg.factors.items()):
        return "the experts are factorised (com.microsoft.MoE takes dense expert matrices; neuron-CUR experts are)"
    return None


def _sparse(g: GraphBuilder, x: str, sel: str, comb: str, pre: str, E: int, experts: dict[str, Linear],
            activation: str, fold_u: bool) -> str:
    """Sparse dispatch: every routed (expert, token) pair computed once, grouped by expert.

    ``NonZero(selected.T)`` lists the M pairs sorted by expert then token; one Gather builds their inputs (M, d),
    one Split with the per-expert counts hands each expert its rows (possibly none), the expert outputs are
    concatenated back in the same order and scaled by their gates. Pair (e, t) goes to slot
    ``s = #{e' <= e selected by t} - 1`` of token t: one ScatterND without reduction writes the M rows into
    distinct cells of zeros (N, S, d), S = the most experts any token has, and ReduceSum over the slots adds each
    token's terms in expert order, as the reference. Not ``ScatterND(reduction="add")`` on the repeated token
    indices: ONNX Runtime's CPU kernel splits the updates over threads and adds non-atomically, so two threads
    adding into one token's row lose a term (issue 19). The node count per expert is that of its MatMul chain only.
    """
    pairs = g.op("NonZero", [g.op("Transpose", [sel], f"{pre}.selected_t", perm=[1, 0])], f"{pre}.pairs")  # (2, M)
    tokens = g.op("Gather", [pairs, g.const(1)], f"{pre}.pair_tokens", axis=0)  # (M,) token of each pair
    sel_i = g.cast(sel, np.int64, f"{pre}.selected_i")  # (N, E)
    counts = g.op("ReduceSum", [sel_i, g.const([0])], f"{pre}.counts", keepdims=0)  # (E,) tokens per expert
    xs = g.op("Split", [g.op("Gather", [x, tokens], f"{pre}.pair_x", axis=0), counts], f"{pre}.expert_x",
              outputs=E, axis=0) if E > 1 else [g.op("Gather", [x, tokens], f"{pre}.pair_x", axis=0)]
    ys = []
    for e in range(E):
        key = f"{pre}.experts.{e}"
        ys.append(expert(g, xs[e], key, _mats(experts, key), activation, fold_u))  # (n_e, d)
    y = ys[0] if E == 1 else g.op("Concat", ys, f"{pre}.pair_y", axis=0)  # (M, d)
    pairs_t = g.op("Transpose", [pairs], f"{pre}.pairs_t", perm=[1, 0])  # (M, 2): (expert, token)
    gates = g.op("GatherND", [g.op("Transpose", [comb], f"{pre}.combine_t", perm=[1, 0]), pairs_t],
                 f"{pre}.pair_gates")  # (M,)
    y = g.op("Mul", [g.to_float32(y), g.op("Unsqueeze", [gates, g.const([1])], f"{pre}.pair_gates1")], f"{pre}.pair_yg")
    # slot of each pair: rank of its expert among the token's selected ones, so (token, slot) never repeats
    slot_table = g.op("Sub", [g.op("CumSum", [sel_i, g.const(1)], f"{pre}.slot_cumsum"), g.const(1)], f"{pre}.slot_table")
    slots = g.op("GatherND", [g.op("Transpose", [slot_table], f"{pre}.slot_table_t", perm=[1, 0]), pairs_t],
                 f"{pre}.pair_slots")  # (M,)
    cells = g.op("Concat", [g.op("Unsqueeze", [tokens, g.const([1])], f"{pre}.pair_tokens1"),
                            g.op("Unsqueeze", [slots, g.const([1])], f"{pre}.pair_slots1")], f"{pre}.pair_cells", axis=1)
    S = g.op("Max", [g.op("ReduceMax", [g.op("ReduceSum", [sel_i, g.const([1])], f"{pre}.experts_per_token",
                                              keepdims=0), g.const([0])], f"{pre}.max_slots", keepdims=1),
                     g.const([1])], f"{pre}.n_slots")  # (1,) >= 1, so the buffer is never empty
    shape_nd = g.op("Shape", [x], f"{pre}.shape_nd")  # [N, d]
    shape_nsd = g.op("Concat", [g.op("Slice", [shape_nd, g.const([0]), g.const([1])], f"{pre}.shape_n"), S,
                                g.op("Slice", [shape_nd, g.const([1]), g.const([2])], f"{pre}.shape_d")],
                     f"{pre}.shape_nsd", axis=0)
    # accumulated in float32 (a float16 export too): the k-term sum is more accurate
    zeros = g.op("ConstantOfShape", [shape_nsd], f"{pre}.moe_zeros",
                 value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))
    slotted = g.op("ScatterND", [zeros, cells, y], f"{pre}.routed_slots")  # (N, S, d), distinct cells
    return g.to_act(g.op("ReduceSum", [slotted, g.const([1])], f"{pre}.routed", keepdims=0))


def moe_layer(g: GraphBuilder, ctx: Context, cfg: ModelConfig, l: int, x: str, t: dict[str, np.ndarray],
              experts: dict[str, Linear], dispatch: str, fold_u: bool, fused: bool) -> str:
    """The MoE block on normed x (N, d) -> (N, d); padding tokens get 0 (they are not routed)."""
    moe, E = cfg.moe, cfg.moe.n_experts
    pre = f"layers.{l}"
    if fused:
        wr = g.weight_t(f"{pre}.router.weight", t[f"{pre}.router.weight"], np.float32)
        z = g.op("MatMul", [g.to_float32(x), wr], outputs=[routing_logits(l)])  # (N, d) @ (d, E)
        y = _fused(g, x, z, cfg, l, experts)
    else:
        sel, comb, _ = router(g, ctx, moe, l, x, t, cfg.vocab_size)  # (N, E) bool, (N, E) float32
        if dispatch == "dense":
            comb = g.to_act(comb)
            terms = []
            for e in range(E):
                key = f"{pre}.experts.{e}"
                ye = expert(g, x, key, _mats(experts, key), moe.activation, fold_u)  # (N, d)
                ge = g.op("Slice", [comb, g.const([e]), g.const([e + 1]), g.const([1])], f"{key}.gate_col")  # (N, 1)
                terms.append(g.op("Mul", [ye, ge], f"{key}.weighted"))
            y = terms[0] if E == 1 else g.op("Sum", terms, f"{pre}.routed")
        else:
            y = _sparse(g, x, sel, comb, pre, E, experts, moe.activation, fold_u)
    if moe.n_shared:
        ys = [expert(g, x, f"{pre}.shared.{s}", _mats(experts, f"{pre}.shared.{s}"), moe.activation, fold_u)
              for s in range(moe.n_shared)]
        ysum = ys[0] if len(ys) == 1 else g.op("Sum", ys, f"{pre}.shared_sum")
        if moe.shared_gate:
            w = g.weight_t(f"{pre}.shared_gate.weight", t[f"{pre}.shared_gate.weight"])
            sg = g.op("Sigmoid", [g.op("MatMul", [x, w], f"{pre}.shared_gate_logit")], f"{pre}.shared_gate")  # (N, 1)
            ysum = g.op("Mul", [sg, ysum], f"{pre}.shared_gated")
        y = g.op("Add", [y, ysum], f"{pre}.moe_sum")
    return g.op("Mul", [y, ctx.real_act], f"{pre}.moe_out")  # padding tokens: no MoE contribution
