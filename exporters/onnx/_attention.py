"""ONNX subgraphs for the non-MoE parts of the model: inputs, masks, RoPE positions, RMSNorm and GQA attention.

They reproduce ``curmoe.reference._attention`` (HF "rotate half" RoPE, q/k RMSNorm per head or over the full width, GQA,
keys cached after RoPE) with the same positions: the count of real tokens before each token,
``pos = cumsum(attention_mask)[:, P:] - 1`` (0 at padding), so left padding does not shift positions and a
cached decode continues where the prompt stopped. A query with no allowed key (a left-padding token) gets a zero
attention output, as in the reference: ``w = Softmax(Where(allowed, s, -big)) * allowed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from curmoe.exporters.onnx._graph import GraphBuilder
from curmoe.reference import ModelConfig

__all__ = ["Context", "prologue", "rms_norm", "attention"]

_NEG = float(np.finfo(np.float32).min)  # masked score: exp(_NEG - max) == 0 exactly in float32


@dataclass
class Context:
    """Names of tensors every layer needs, built once by :func:`prologue`."""

    ids_flat: str  # (N,) int64, N = B*T
    B1: str  # (1,) int64 batch size
    T1: str  # (1,) int64 new tokens
    mask_new: str  # (B, T) int64 attention mask of the new tokens
    real_b: str  # (N, 1) bool: real (non-padding) token
    real_f32: str  # (N, 1) float32
    real_act: str  # (N, 1) activation dtype
    cos4: str  # (B, 1, T, hd) RoPE cos for keys
    sin4: str
    cos5: str  # (B, 1, 1, T, hd) RoPE cos for queries grouped (B, KV, G, T, hd)
    sin5: str
    allowed: str  # (B, 1, 1, T, S) bool: causal & key mask
    allowed_f: str  # (B, 1, 1, T, S) float32
    shape_q: str  # [B, T, KV, G, hd]
    shape_kv: str  # [B, T, KV, hd]
    shape_btv: str  # [B, T, V]
    shape_bt: str  # [B, T]


def prologue(g: GraphBuilder, cfg: ModelConfig, with_cache: bool) -> Context:
    """Declare input_ids / attention_mask / past inputs and build masks, positions and RoPE tables."""
    hd, KV, H = cfg.head_dim_, cfg.kv_heads, cfg.n_heads
    ids = g.add_input("input_ids", TensorProto.INT64, ["batch", "seq"])
    am = g.add_input("attention_mask", TensorProto.INT64, ["batch", "total_seq" if with_cache else "seq"])
    if with_cache:
        for l in range(cfg.n_layers):
            for kv in ("key", "value"):
                g.add_input(f"past.{l}.{kv}", g.act_onnx, ["batch", KV, "past_seq", hd])
    ids_shape = g.op("Shape", [ids], "ids_shape")
    B1 = g.op("Slice", [ids_shape, g.const([0]), g.const([1])], "B")
    T1 = g.op("Slice", [ids_shape, g.const([1]), g.const([2])], "T")
    S1 = g.op("Slice", [g.op("Shape", [am], "mask_shape"), g.const([1]), g.const([2])], "S")
    P1 = g.op("Sub", [S1, T1], "P")  # past length
    ids_flat = g.op("Reshape", [ids, g.const([-1])], "ids_flat")

    mask_new = g.op("Slice", [am, P1, S1, g.const([1])], "mask_new")  # (B, T)
    real_flat = g.op("Reshape", [mask_new, g.const([-1, 1])], "real_flat")  # (N, 1) int64
    real_b = g.op("Cast", [real_flat], "real_b", to=TensorProto.BOOL)
    real_f32 = g.op("Cast", [real_flat], "real_f32", to=TensorProto.FLOAT)
    real_act = g.to_act(real_f32)

    # RoPE positions: real tokens before each token (past ones included); 0 at padding, as the reference.
    csum = g.op("CumSum", [am, g.const(1)], "mask_cumsum")  # (B, S)
    pos = g.op("Sub", [g.op("Slice", [csum, P1, S1, g.const([1])], "cumsum_new"), g.const(1)], "pos")
    pos = g.op("Where", [g.op("Cast", [mask_new], "mask_new_b", to=TensorProto.BOOL), pos, g.const(0)], "positions")
    inv_freq = cfg.rope_theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # (hd/2,)
    inv_freq = g.const(np.concatenate([inv_freq, inv_freq]), np.float32)  # (hd,) "rotate half" layout
    ang = g.op("Mul", [g.op("Unsqueeze", [g.cast(pos, np.float32), g.const([-1])], "pos_f"), inv_freq], "rope_angle")
    cos = g.to_act(g.op("Cos", [ang], "rope_cos"))  # (B, T, hd)
    sin = g.to_act(g.op("Sin", [ang], "rope_sin"))
    cos4, sin4 = (g.op("Unsqueeze", [t, g.const([1])], f"{n}4") for t, n in ((cos, "cos"), (sin, "sin")))
    cos5, sin5 = (g.op("Unsqueeze", [t, g.const([1, 2])], f"{n}5") for t, n in ((cos, "cos"), (sin, "sin")))

    # allowed[b, t, s] = (s <= P + t) & mask[b, s], laid out (B, 1, 1, T, S) for scores (B, KV, G, T, S).
    S0 = g.op("Squeeze", [S1, g.const([0])], "S_scalar")
    P0 = g.op("Squeeze", [P1, g.const([0])], "P_scalar")
    key_idx = g.op("Range", [g.const(0), S0, g.const(1)], "key_idx")  # (S,)
    qry_idx = g.op("Unsqueeze", [g.op("Range", [P0, S0, g.const(1)], "qry_idx"), g.const([1])], "qry_col")  # (T, 1)
    causal = g.op("LessOrEqual", [key_idx, qry_idx], "causal")  # (T, S)
    key_mask = g.op("Unsqueeze", [g.op("Cast", [am], "am_b", to=TensorProto.BOOL), g.const([1, 2, 3])], "key_mask")
    allowed = g.op("And", [causal, key_mask], "allowed")  # (B, 1, 1, T, S)
    allowed_f = g.op("Cast", [allowed], "allowed_f", to=TensorProto.FLOAT)

    G = H // KV
    shape_q = g.op("Concat", [B1, T1, g.const([KV, G, hd])], "shape_q", axis=0)
    shape_kv = g.op("Concat", [B1, T1, g.const([KV, hd])], "shape_kv", axis=0)
    shape_btv = g.op("Concat", [B1, T1, g.const([cfg.vocab_size])], "shape_btv", axis=0)
    shape_bt = g.op("Concat", [B1, T1], "shape_bt", axis=0)
    return Context(ids_flat, B1, T1, mask_new, real_b, real_f32, real_act, cos4, sin4, cos5, sin5, allowed,
                   allowed_f, shape_q, shape_kv, shape_btv, shape_bt)


def rms_norm(g: GraphBuilder, x: str, weight: str, eps: float, hint: str) -> str:
    """RMSNorm (Zhang & Sennrich 2019): ``x / sqrt(mean(x^2) + eps) * w`` over the last axis.

    Statistics in float32 (a float16 export casts up and back, as Hugging Face does); the Pow -> ReduceMean ->
    Add -> Sqrt -> Div -> Mul pattern is the one ONNX Runtime fuses into SimplifiedLayerNormalization.
    """
    xf = g.to_float32(x)
    ms = g.op("ReduceMean", [g.op("Pow", [xf, g.const(2.0, np.float32)], f"{hint}.sq"), g.const([-1])],
              f"{hint}.ms", keepdims=1)
    rms = g.op("Sqrt", [g.op("Add", [ms, g.const(eps, np.float32)], f"{hint}.ms_eps")], f"{hint}.rms")
    y = g.to_act(g.op("Div", [xf, rms], f"{hint}.normed"))
    return g.op("Mul", [y, weight], hint)


def _rope(g: GraphBuilder, x: str, cos: str, sin: str, hint: str) -> str:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1] (halves of the last axis)."""
    x1, x2 = g.op("Split", [x], f"{hint}.half", outputs=2, axis=-1, num_outputs=2)
    rot = g.op("Concat", [g.op("Neg", [x2], f"{hint}.neg"), x1], f"{hint}.rot", axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos], f"{hint}.xc"), g.op("Mul", [rot, sin], f"{hint}.rs")], hint)


def _linear(g: GraphBuilder, x: str, t: dict[str, np.ndarray], name: str, hint: str) -> str:
    y = g.op("MatMul", [x, g.weight_t(name, t[name])], hint)  # (N, in) @ (in, out)
    bias = name.removesuffix(".weight") + ".bias"
    if bias in t:
        y = g.op("Add", [y, g.weight(bias, t[bias])], f"{hint}.biased")
    return y


def attention(g: GraphBuilder, ctx: Context, cfg: ModelConfig, l: int, x: str, t: dict[str, np.ndarray],
              with_cache: bool) -> str:
    """Self-attention of layer ``l`` on normed x (N, d); returns (N, d) and emits present.{l}.key/value."""
    H, KV, hd = cfg.n_heads, cfg.kv_heads, cfg.head_dim_
    p = f"layers.{l}.attn"
    q = _linear(g, x, t, f"{p}.q.weight", f"{p}.q")  # (N, H*hd)
    k = _linear(g, x, t, f"{p}.k.weight", f"{p}.k")  # (N, KV*hd)
    v = _linear(g, x, t, f"{p}.v.weight", f"{p}.v")
    if cfg.qk_norm == "full":  # OLMoE: over the projected width
        q = rms_norm(g, q, g.weight(f"{p}.q_norm.weight", t[f"{p}.q_norm.weight"]), cfg.norm_eps, f"{p}.q_norm")
        k = rms_norm(g, k, g.weight(f"{p}.k_norm.weight", t[f"{p}.k_norm.weight"]), cfg.norm_eps, f"{p}.k_norm")
    q = g.op("Reshape", [q, ctx.shape_q], f"{p}.q5")  # (B, T, KV, G, hd)
    k = g.op("Reshape", [k, ctx.shape_kv], f"{p}.k4")  # (B, T, KV, hd)
    v = g.op("Reshape", [v, ctx.shape_kv], f"{p}.v4")
    if cfg.qk_norm == "head":  # Qwen3-MoE: per head over head_dim
        q = rms_norm(g, q, g.weight(f"{p}.q_norm.weight", t[f"{p}.q_norm.weight"]), cfg.norm_eps, f"{p}.q_norm")
        k = rms_norm(g, k, g.weight(f"{p}.k_norm.weight", t[f"{p}.k_norm.weight"]), cfg.norm_eps, f"{p}.k_norm")
    q = g.op("Transpose", [q], f"{p}.q_t", perm=[0, 2, 3, 1, 4])  # (B, KV, G, T, hd)
    k = g.op("Transpose", [k], f"{p}.k_t", perm=[0, 2, 1, 3])  # (B, KV, T, hd)
    v = g.op("Transpose", [v], f"{p}.v_t", perm=[0, 2, 1, 3])
    q = _rope(g, q, ctx.cos5, ctx.sin5, f"{p}.q_rope")
    if with_cache:
        k = _rope(g, k, ctx.cos4, ctx.sin4, f"{p}.k_rope")
        k = g.op("Concat", [f"past.{l}.key", k], outputs=[f"present.{l}.key"], axis=2)
        v = g.op("Concat", [f"past.{l}.value", v], outputs=[f"present.{l}.value"], axis=2)  # (B, KV, S, hd)
    else:
        k = _rope(g, k, ctx.cos4, ctx.sin4, f"{p}.k_rope")
    kT = g.op("Transpose", [g.op("Unsqueeze", [k, g.const([2])], f"{p}.k5")], f"{p}.kT", perm=[0, 1, 2, 4, 3])
    s = g.to_float32(g.op("MatMul", [q, kT], f"{p}.qk"))  # (B, KV, G, T, hd) @ (B, KV, 1, hd, S)
    s = g.op("Div", [s, g.const(np.sqrt(hd), np.float32)], f"{p}.scores")
    s = g.op("Where", [ctx.allowed, s, g.const(_NEG, np.float32)], f"{p}.masked")
    w = g.op("Mul", [g.op("Softmax", [s], f"{p}.softmax", axis=-1), ctx.allowed_f], f"{p}.probs")
    v5 = g.op("Unsqueeze", [v, g.const([2])], f"{p}.v5")  # (B, KV, 1, S, hd)
    o = g.op("MatMul", [g.to_act(w), v5], f"{p}.ctx")  # (B, KV, G, T, S) @ (B, KV, 1, S, hd)
    o = g.op("Transpose", [o], f"{p}.ctx_t", perm=[0, 3, 1, 2, 4])  # (B, T, KV, G, hd)
    o = g.op("Reshape", [o, g.const([-1, H * hd])], f"{p}.ctx_flat")  # (N, H*hd)
    return g.op("MatMul", [o, g.weight_t(f"{p}.o.weight", t[f"{p}.o.weight"])], f"{p}.out")
