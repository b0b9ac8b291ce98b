"""Torch twin of ``curmoe.reference._attention``: RMSNorm, HF "rotate half" RoPE, grouped-query attention and a KV cache.

Same maths as the NumPy reference (Zhang & Sennrich 2019 for RMSNorm; Su et al. 2021 for RoPE; Ainslie et al. 2023
for GQA): positions count the real tokens before each token (left padding safe), keys are cached after RoPE, and a
query with no allowed key (a left-padding query) outputs zeros instead of NaN. The attention itself runs through
``torch.nn.functional.scaled_dot_product_attention`` (its fused CPU kernel when there is no mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from curmoe.reference import ModelConfig

__all__ = ["RMSNorm", "TorchAttention", "TorchKVCache", "rope_cos_sin", "apply_rope"]


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): ``x / sqrt(mean(x^2) + eps) * weight`` over the last axis."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ms = x.square().mean(dim=-1, keepdim=True)  # (..., 1)
        return x / torch.sqrt(ms + self.eps) * self.weight


@dataclass
class TorchKVCache:
    """Keys/values of every layer for the tokens seen so far (each forward appends in place).

    keys[l], values[l]: (B, KV, S, head_dim), after RoPE. ``mask`` (B, S) marks real tokens; ``n_real`` (B,)
    counts real tokens per sequence (the next RoPE position).
    """

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    mask: torch.Tensor | None = None  # (B, S) bool
    n_real: torch.Tensor | None = None  # (B,) int64

    @property
    def length(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (B, T, head_dim) for integer positions (B, T): ``angle_i = pos * theta^(-2i/head_dim)``.

    Angles are computed in float64 (as the reference does) and cast to ``dtype``.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    ang = positions.to(torch.float64)[..., None] * inv_freq  # (B, T, hd/2)
    ang = torch.cat([ang, ang], dim=-1)  # (B, T, hd)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, hd) rotated: ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = [-x2, x1]``."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rot * sin[:, None]  # cos (B, 1, T, hd)


class TorchAttention(nn.Module):
    """Causal GQA self-attention; submodule names match the checkpoint ("q", "k", "v", "o", "q_norm", "k_norm")."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, H, KV, hd = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim_
        self.n_heads, self.n_kv, self.head_dim = H, KV, hd
        self.qk_norm = cfg.qk_norm
        self.q = nn.Linear(d, H * hd, bias=cfg.attn_bias)
        self.k = nn.Linear(d, KV * hd, bias=cfg.attn_bias)
        self.v = nn.Linear(d, KV * hd, bias=cfg.attn_bias)
        self.o = nn.Linear(H * hd, d, bias=False)
        if cfg.qk_norm == "head":  # Qwen3-MoE: per head over head_dim
            self.q_norm, self.k_norm = RMSNorm(hd, cfg.norm_eps), RMSNorm(hd, cfg.norm_eps)
        elif cfg.qk_norm == "full":  # OLMoE: over the full projected width, before splitting heads
            self.q_norm, self.k_norm = RMSNorm(H * hd, cfg.norm_eps), RMSNorm(KV * hd, cfg.norm_eps)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, d_model), already normed
        cos: torch.Tensor,  # (B or 1, T, hd)
        sin: torch.Tensor,
        allowed: torch.Tensor | None,  # (B, T, S) bool; None = plain causal with no past
        past_k: torch.Tensor | None = None,  # (B, KV, S_past, hd)
        past_v: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (output (B, T, d_model), keys (B, KV, S, hd), values (B, KV, S, hd))."""
        B, T, _ = x.shape
        H, KV, hd = self.n_heads, self.n_kv, self.head_dim
        q, k, v = self.q(x), self.k(x), self.v(x)  # (B, T, H*hd), (B, T, KV*hd) x2
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, KV, hd).transpose(1, 2)  # (B, KV, T, hd)
        v = v.view(B, T, KV, hd).transpose(1, 2)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)  # (B, KV, S, hd)
            v = torch.cat([past_v, v], dim=2)
        gqa = H != KV
        scale = 1.0 / math.sqrt(hd)
        if allowed is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        else:
            empty = ~allowed.any(dim=-1)  # (B, T): queries with no real key before them (left padding)
            mask = (allowed | empty[..., None])[:, None]  # (B, 1, T, S); empty rows get a dummy key, zeroed below
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
            out = out.masked_fill(empty[:, None, :, None], 0.0)
        out = out.transpose(1, 2).reshape(B, T, H * hd)  # (B, T, H*hd)
        return self.o(out), k, v
