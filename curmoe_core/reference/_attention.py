"""Causal grouped-query self-attention with RoPE, optional q/k RMSNorm, padding masks and a KV cache.

Conventions match Hugging Face Llama/Mixtral/Qwen: RoPE in the "rotate half" layout (the two halves of each head
are the real/imaginary parts), keys cached after RoPE, positions counted over the real (non-padding) tokens of each
sequence so that left padding does not shift positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from curmoe.reference._config import ModelConfig
from curmoe.reference._ops import rms_norm

__all__ = ["KVCache", "apply_rope", "attention", "rope_angles"]


@dataclass
class KVCache:
    """Keys/values of every layer for the tokens seen so far (mutable: each forward appends).

    keys[l], values[l]: (B, KV, S, head_dim), after RoPE. ``mask`` (B, S) marks real tokens (False = padding);
    ``n_real`` (B,) counts real tokens per sequence, which gives the next RoPE position.
    """

    keys: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    mask: np.ndarray | None = None  # (B, S) bool
    n_real: np.ndarray | None = None  # (B,) int64

    @property
    def length(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])


def rope_angles(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape (B, T, head_dim) for integer positions (B, T): angle_i = pos * theta^(-2i/head_dim)."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (hd/2,)
    ang = positions[..., None].astype(np.float64) * inv_freq  # (B, T, hd/2)
    ang = np.concatenate([ang, ang], axis=-1)  # (B, T, hd)
    return np.cos(ang), np.sin(ang)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x (B, heads, T, hd) rotated: x*cos + rotate_half(x)*sin, rotate_half(x) = [-x2, x1]."""
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    c = cos[:, None].astype(x.dtype)  # (B, 1, T, hd)
    s = sin[:, None].astype(x.dtype)
    return x * c + rot * s


def attention(
    x: np.ndarray,  # (B, T, d_model), already normed
    p: dict[str, np.ndarray],  # this layer's tensors, keys "q.weight", "q.bias", ..., "q_norm.weight"
    cfg: ModelConfig,
    positions: np.ndarray,  # (B, T) RoPE positions
    key_mask: np.ndarray,  # (B, S_total) bool: real keys (past + new)
    past_k: np.ndarray | None,  # (B, KV, S_past, hd)
    past_v: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (output (B, T, d_model), keys (B, KV, S_total, hd), values (B, KV, S_total, hd))."""
    B, T, _ = x.shape
    H, KV, hd = cfg.n_heads, cfg.kv_heads, cfg.head_dim_
    q = x @ p["q.weight"].T  # (B, T, H*hd)
    k = x @ p["k.weight"].T  # (B, T, KV*hd)
    v = x @ p["v.weight"].T
    if cfg.attn_bias:
        q, k, v = q + p["q.bias"], k + p["k.bias"], v + p["v.bias"]
    if cfg.qk_norm == "full":  # OLMoE: RMSNorm over the full projected width
        q = rms_norm(q, p["q_norm.weight"], cfg.norm_eps)
        k = rms_norm(k, p["k_norm.weight"], cfg.norm_eps)
    q = q.reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
    k = k.reshape(B, T, KV, hd).transpose(0, 2, 1, 3)  # (B, KV, T, hd)
    v = v.reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
    if cfg.qk_norm == "head":  # Qwen3-MoE: RMSNorm over each head's dimensions
        q = rms_norm(q, p["q_norm.weight"], cfg.norm_eps)
        k = rms_norm(k, p["k_norm.weight"], cfg.norm_eps)
    cos, sin = rope_angles(positions, hd, cfg.rope_theta)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if past_k is not None:
        k = np.concatenate([past_k, k], axis=2)  # (B, KV, S, hd)
        v = np.concatenate([past_v, v], axis=2)
    S = k.shape[2]
    past = S - T
    # Grouped-query attention: the G = H / KV query heads of a group share one key/value head.
    G = H // KV
    qg = q.reshape(B, KV, G, T, hd)
    scores = (qg @ k[:, :, None].swapaxes(-1, -2)) / np.sqrt(hd).astype(x.dtype)  # (B, KV, G, T, S)
    causal = np.arange(S)[None, :] <= (past + np.arange(T))[:, None]  # (T, S)
    allowed = causal[None] & key_mask[:, None, :]  # (B, T, S)
    allowed = allowed[:, None, None]  # (B, 1, 1, T, S)
    scores = np.where(allowed, scores, -np.inf)
    m = np.max(scores, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # rows with no allowed key (a padding query) stay finite
    w = np.exp(scores - m)
    denom = np.sum(w, axis=-1, keepdims=True)
    w = w / np.where(denom > 0, denom, 1.0)
    out = (w.astype(x.dtype) @ v[:, :, None]).reshape(B, H, T, hd)  # (B, KV, G, T, hd) -> (B, H, T, hd)
    out = out.transpose(0, 2, 1, 3).reshape(B, T, H * hd)
    return out @ p["o.weight"].T, k, v
