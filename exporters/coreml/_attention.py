"""MIL subgraphs for the Core ML export: masks, RoPE positions and GQA attention (full sequence, no KV cache).

They reproduce ``curmoe.reference._attention`` as the ONNX export does (HF "rotate half" RoPE, q/k RMSNorm per head or over
the full width, grouped-query attention): positions are the count of real tokens before each token,
``pos = cumsum(attention_mask) - 1`` (0 at padding), so left padding does not shift them; a query with no allowed
key (a left-padding token) gets a zero attention output, ``w = softmax(select(allowed, s, -3e4)) * allowed``.
The masked score is -3e4 rather than -inf or float32's minimum so that it stays finite when Core ML runs the
graph in float16 on the GPU or Neural Engine (an all-masked row must not become inf - inf = NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from coremltools.converters.mil import Builder as mb

from curmoe.exporters.coreml._ops import MilBuilder
from curmoe.reference import ModelConfig

__all__ = ["MilContext", "prologue", "attention"]

_NEG = -3.0e4


@dataclass
class MilContext:
    """Tensors every layer needs, built once by :func:`prologue`."""

    ids: Any  # (B, T) int32
    shape_bt: Any  # (2,) int32: [B, T]
    real_b: Any  # (B, T, 1) bool: real (non-padding) token
    real_f32: Any  # (B, T, 1) float32
    real_act: Any  # (B, T, 1) activation dtype
    cos: Any  # (B, 1, T, hd) activation dtype
    sin: Any
    allowed: Any  # (B, 1, T, S) bool: causal & key mask
    allowed_f: Any  # (B, 1, T, S) float32


def prologue(g: MilBuilder, cfg: ModelConfig, ids: Any, mask: Any) -> MilContext:
    """Masks, RoPE tables and shapes from ``input_ids`` and ``attention_mask`` (B, T) int32."""
    hd = cfg.head_dim_
    shape_bt = mb.shape(x=ids)  # (2,)
    T = mb.squeeze(x=mb.slice_by_index(x=shape_bt, begin=[1], end=[2]))  # scalar
    mask_b = mb.cast(x=mask, dtype="bool")  # (B, T)
    real_b = mb.expand_dims(x=mask_b, axes=[-1])  # (B, T, 1)
    real_f32 = mb.cast(x=real_b, dtype="fp32")
    real_act = g.to_act(real_f32)

    # RoPE positions: real tokens before each token; 0 at padding, as the reference.
    pos = mb.sub(x=mb.cumsum(x=mask, axis=1), y=np.int32(1))  # (B, T)
    pos = mb.select(cond=mask_b, a=pos, b=np.int32(0))
    inv_freq = cfg.rope_theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # (hd/2,)
    inv_freq = np.concatenate([inv_freq, inv_freq]).astype(np.float32)  # (hd,) "rotate half" layout
    ang = mb.mul(x=mb.expand_dims(x=mb.cast(x=pos, dtype="fp32"), axes=[-1]), y=inv_freq)  # (B, T, hd)
    cos = mb.expand_dims(x=g.to_act(mb.cos(x=ang)), axes=[1])  # (B, 1, T, hd)
    sin = mb.expand_dims(x=g.to_act(mb.sin(x=ang)), axes=[1])

    # allowed[b, 0, t, s] = (s <= t) & mask[b, s]
    idx = mb.range_1d(start=np.int32(0), end=T, step=np.int32(1))  # (T,)
    causal = mb.less_equal(x=mb.expand_dims(x=idx, axes=[0]), y=mb.expand_dims(x=idx, axes=[1]))  # (T, S)
    key_mask = mb.expand_dims(x=mask_b, axes=[1, 2])  # (B, 1, 1, S)
    allowed = mb.logical_and(x=causal, y=key_mask)  # (B, 1, T, S)
    allowed_f = mb.cast(x=allowed, dtype="fp32")
    return MilContext(ids, shape_bt, real_b, real_f32, real_act, cos, sin, allowed, allowed_f)


def _rope(x: Any, cos: Any, sin: Any, neg1: np.ndarray) -> Any:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1] (halves of the last axis)."""
    x1, x2 = mb.split(x=x, num_splits=2, axis=-1)
    rot = mb.concat(values=[mb.mul(x=x2, y=neg1), x1], axis=-1)
    return mb.add(x=mb.mul(x=x, y=cos), y=mb.mul(x=rot, y=sin))


def _heads(x: Any, ctx: MilContext, n: int, hd: int) -> Any:
    """(B, T, n*hd) -> (B, T, n, hd)."""
    return mb.reshape(x=x, shape=mb.concat(values=[ctx.shape_bt, np.array([n, hd], np.int32)], axis=0))


def attention(g: MilBuilder, ctx: MilContext, cfg: ModelConfig, l: int, x: Any, t: dict[str, np.ndarray]) -> Any:
    """Self-attention of layer ``l`` on normed x (B, T, d) -> (B, T, d)."""
    H, KV, hd = cfg.n_heads, cfg.kv_heads, cfg.head_dim_
    p = f"layers.{l}.attn"
    q, k, v = (g.linear(x, f"{p}.{n}.weight", t[f"{p}.{n}.weight"], t.get(f"{p}.{n}.bias"), f"{p}.{n}.bias")
               for n in ("q", "k", "v"))  # (B, T, H*hd), (B, T, KV*hd) x2
    if cfg.qk_norm == "full":  # OLMoE: over the projected width
        q = g.rms_norm(q, g.weight(f"{p}.q_norm.weight", t[f"{p}.q_norm.weight"]), cfg.norm_eps)
        k = g.rms_norm(k, g.weight(f"{p}.k_norm.weight", t[f"{p}.k_norm.weight"]), cfg.norm_eps)
    q, k, v = _heads(q, ctx, H, hd), _heads(k, ctx, KV, hd), _heads(v, ctx, KV, hd)  # (B, T, n, hd)
    if cfg.qk_norm == "head":  # Qwen3-MoE: per head over head_dim
        q = g.rms_norm(q, g.weight(f"{p}.q_norm.weight", t[f"{p}.q_norm.weight"]), cfg.norm_eps)
        k = g.rms_norm(k, g.weight(f"{p}.k_norm.weight", t[f"{p}.k_norm.weight"]), cfg.norm_eps)
    q, k, v = (mb.transpose(x=z, perm=[0, 2, 1, 3]) for z in (q, k, v))  # (B, n, T, hd)
    q, k = _rope(q, ctx.cos, ctx.sin, g.fconst(-1.0)), _rope(k, ctx.cos, ctx.sin, g.fconst(-1.0))
    if H != KV:  # GQA: each KV head serves G = H / KV consecutive query heads
        heads = np.repeat(np.arange(KV, dtype=np.int32), H // KV)  # (H,)
        k = mb.gather(x=k, indices=heads, axis=1)  # (B, H, S, hd)
        v = mb.gather(x=v, indices=heads, axis=1)
    s = g.to_f32(mb.matmul(x=q, y=k, transpose_y=True))  # (B, H, T, hd) @ (B, H, hd, S)
    s = mb.real_div(x=s, y=np.float32(np.sqrt(hd)))
    s = mb.select(cond=ctx.allowed, a=s, b=np.float32(_NEG))
    w = mb.mul(x=mb.softmax(x=s, axis=-1), y=ctx.allowed_f)  # (B, H, T, S)
    o = mb.matmul(x=g.to_act(w), y=v)  # (B, H, T, S) @ (B, H, S, hd)
    o = mb.transpose(x=o, perm=[0, 2, 1, 3])  # (B, T, H, hd)
    o = mb.reshape(x=o, shape=mb.concat(values=[ctx.shape_bt, np.array([H * hd], np.int32)], axis=0))
    return g.linear(o, f"{p}.o.weight", t[f"{p}.o.weight"])  # (B, T, d)
