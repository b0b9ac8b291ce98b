"""Hugging Face modeling code of a curmoe model (remote code: copied into every ``curmoe export --format hf`` folder).

Self-contained on purpose: it imports only torch, transformers (and NumPy, a transformers dependency, for the
``random`` router), never curmoe, so the exported folder loads on any machine with
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``. It is curmoe's torch twin
(``curmoe.models.twin``) in one file, checked against curmoe's NumPy float64 reference by curmoe's tests.

Block l:  h = x + Attn(RMSNorm(x));  x' = h + FFN_l(RMSNorm(h)),  FFN_l = MoE block or dense SwiGLU.
Logits = RMSNorm(x_L) @ lm_head.T (lm_head = the embedding when tied).

Attention: grouped-query, RoPE in the "rotate half" layout at positions counted over each sequence's real tokens
(left padding does not shift positions), optional q/k/v biases and q/k RMSNorm (per head: Qwen3-MoE; over the full
width: OLMoE); keys are cached after RoPE in a transformers ``DynamicCache``.

MoE: y = sum over chosen experts e of g_e(x) * expert_e(x) [+ shared experts, optionally times sigmoid(x . w)].
expert(x) = down(silu(gate x) * up x) (SwiGLU) or down(gelu(up x)) (GELU). Routers: ``topk`` (Shazeer et al.
2017), ``switch`` with per-sequence capacity (Fedus et al. 2021), ``expert_choice`` (Zhou et al. 2022; full
sequences only unless ``decode_fallback``), ``hash`` (Roller et al. 2021), ``sigmoid_bias`` (DeepSeek-V3) and
``random``. Probabilities in float64, ties to the lower index. A routing group is one sequence's real tokens in a
full forward, one new token per sequence while decoding with a cache.

Expert matrices keep the form compression gave them, so the folder is as small as the compressed model and what CUR
kept stays visible in ``model.safetensors``:
- dense: ``weight`` (out, in);
- CUR: ``C`` (out, c) = real columns W[:, cols], ``U`` (c, r), ``R`` (r, in) = real rows W[rows, :], and the index
  vectors ``rows``, ``cols``; y = ((x R^T) U^T) C^T (``U`` absent when folded into C);
- SVD: ``A`` (out, r), ``B`` (r, in); y = (x B^T) A^T;
- neuron CUR: ``weight`` (kept rows W[J] of gate/up, or the refit down (out, k)) and ``neurons`` J.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_curmoe import CurmoeConfig

_KNUTH = 2654435761  # floor(2**32 / golden ratio): curmoe.routing.KNUTH_MULTIPLIER
_SEED_STRIDE = 1_000_003
_SLOT_STRIDE = 7_919


# Linear maps --------------------------------------------------------------------------------------------------
class CURLinear(nn.Module):
    """y = x @ (C U R).T computed as x -> R -> U -> C; C, R real columns/rows of W (indices in cols, rows)."""

    def __init__(self, m: int, n: int, rank: int, n_cols: int, folded: bool) -> None:
        super().__init__()
        self.C = nn.Parameter(torch.empty(m, rank if folded else n_cols))
        self.U = None if folded else nn.Parameter(torch.empty(n_cols, rank))
        self.R = nn.Parameter(torch.empty(rank, n))
        self.register_buffer("rows", torch.zeros(rank, dtype=torch.int64))
        self.register_buffer("cols", torch.zeros(n_cols, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.R)  # (N, n) @ (n, r)
        if self.U is not None:
            h = F.linear(h, self.U)  # (N, r) @ (r, c)
        return F.linear(h, self.C)  # (N, c) @ (c, m)


class SVDLinear(nn.Module):
    """y = x @ (A B).T computed as (x B^T) A^T."""

    def __init__(self, m: int, n: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(m, rank))
        self.B = nn.Parameter(torch.empty(rank, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.B), self.A)  # (N, n) @ (n, r) @ (r, m)


class NeuronLinear(nn.Module):
    """One neuron-CUR matrix: kept rows W[J] (k, in) of gate/up, or the refit down (out, k); ``neurons`` = J."""

    def __init__(self, m: int, n: int, k: int, role: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*((k, n) if role == "rows" else (m, k))))
        self.register_buffer("neurons", torch.zeros(k, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def make_linear(m: int, n: int, spec: dict[str, Any] | None) -> nn.Module:
    """The module of one (out=m, in=n) expert matrix in the form ``spec`` (an entry of curmoe's config.factors)."""
    if spec is None:
        return nn.Linear(n, m, bias=False)
    kind = spec["kind"]
    if kind == "svd":
        return SVDLinear(m, n, int(spec["rank"]))
    if kind == "cur":
        r = int(spec["rank"])
        return CURLinear(m, n, r, int(spec.get("n_cols", r)), bool(spec.get("folded")))
    if kind == "neuron":
        return NeuronLinear(m, n, int(spec["n_neurons"]), spec["role"])
    raise ValueError(f"factor kind {kind!r} is unknown to this modeling code; expected 'cur', 'svd' or 'neuron'")


class Expert(nn.Module):
    """One FFN: SwiGLU down(silu(gate x) * up x) or GELU down(gelu(up x))."""

    def __init__(self, d: int, f: int, activation: str, factors: dict[str, Any], prefix: str) -> None:
        super().__init__()
        self.activation = activation
        if activation == "swiglu":
            self.gate = make_linear(f, d, factors.get(f"{prefix}.gate"))
        self.up = make_linear(f, d, factors.get(f"{prefix}.up"))
        self.down = make_linear(d, f, factors.get(f"{prefix}.down"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)  # (N, f)
        else:
            h = F.gelu(self.up(x))  # exact (erf) GELU, as the reference
        return self.down(h)  # (N, f) -> (N, d)


# Routers ------------------------------------------------------------------------------------------------------
def _capacity(n: int, e: int, cf: Any, k: int) -> int | None:
    """ceil(cf * n * k / e) on the decimal value of cf (curmoe.routing.expert_capacity); None = no limit."""
    if cf is None or (isinstance(cf, str) and cf.lower() in ("inf", "infinity")) or math.isinf(float(cf)):
        return None
    return math.ceil(Fraction(repr(float(cf))) * n * k / e)


def _stable_topk(scores: torch.Tensor, k: int, dim: int = 1) -> torch.Tensor:
    """Indices of the k largest entries along ``dim``, largest first, ties toward the lower index."""
    return torch.sort(-scores, dim=dim, stable=True).indices.narrow(dim, 0, k)


def _order_slots(experts: torch.Tensor, gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's slots by gate descending, ties to the lower expert index, empty slots (-1) last."""
    if experts.numel() == 0:
        return experts, gates
    o1 = torch.sort(torch.where(experts < 0, torch.iinfo(torch.int64).max, experts), dim=1, stable=True).indices
    experts, gates = experts.gather(1, o1), gates.gather(1, o1)
    o2 = torch.sort(torch.where(experts < 0, torch.inf, -gates), dim=1, stable=True).indices
    return experts.gather(1, o2), gates.gather(1, o2)


def _hash_experts(ids: torch.Tensor, n_experts: int, top_k: int, seed: int) -> torch.Tensor:
    """Knuth multiplicative hashing of token ids with linear probing (curmoe.routing.hash_experts), in int64."""
    t = ids.to(torch.int64)
    cols: list[torch.Tensor] = []
    for j in range(top_k):
        x = torch.remainder(t + _SEED_STRIDE * seed + _SLOT_STRIDE * j, 1 << 31)
        h = torch.remainder(x * _KNUTH, 1 << 32)
        e = torch.div(h * n_experts, 1 << 32, rounding_mode="floor")
        for _ in range(j):
            clash = (torch.stack(cols, 1) == e[:, None]).any(dim=1)
            if not bool(clash.any()):
                break
            e = torch.where(clash, torch.remainder(e + 1, n_experts), e)
        cols.append(e)
    return torch.stack(cols, 1)


def _route_group(z: torch.Tensor, kind: str, rc: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(experts (n, k) int64, -1 = dropped/empty; gates (n, k) float64) for one group of per-group routers."""
    n, e = z.shape
    probs = torch.softmax(z.to(torch.float64), dim=-1)  # (n, E)
    if kind == "switch":
        choice = torch.argmax(probs, dim=1)  # first maximum on ties
        gate = probs.gather(1, choice[:, None])[:, 0]
        cap = _capacity(n, e, rc.get("capacity_factor"), 1)
        keep = torch.ones(n, dtype=torch.bool, device=z.device)
        if cap is not None:
            pos = F.one_hot(choice, e).cumsum(0).gather(1, choice[:, None])[:, 0] - 1  # place in its queue
            keep = pos < cap
        return torch.where(keep, choice, -1)[:, None], torch.where(keep, gate, 0.0)[:, None]
    if kind == "expert_choice":
        cap = _capacity(n, e, rc.get("capacity_factor"), int(rc["top_k"]))
        cap = n if cap is None else min(n, cap)
        chosen = _stable_topk(probs, cap, dim=0)  # (C, E) token indices per expert
        taken = torch.zeros((n, e), dtype=torch.bool, device=z.device)
        taken[chosen, torch.arange(e, device=z.device)[None, :]] = True
        k = max(1, int(taken.sum(dim=1).max()))
        order = torch.sort(torch.where(taken, -probs, torch.inf), dim=1, stable=True).indices[:, :k]
        valid = taken.gather(1, order)
        return torch.where(valid, order, -1), torch.where(valid, probs.gather(1, order), 0.0)
    # random: curmoe's NumPy generator keyed by (seed, group size)
    import numpy as np

    k = int(rc["top_k"])
    keys = np.random.default_rng([int(rc.get("seed", 0)), n]).random((n, e))
    ex = np.sort(np.argsort(keys, axis=1, kind="stable")[:, :k], axis=1)
    ex_t = torch.from_numpy(np.ascontiguousarray(ex)).to(device=z.device, dtype=torch.int64)
    return ex_t, torch.full(ex_t.shape, 1.0 / k, dtype=torch.float64, device=z.device)


def route(
    logits: torch.Tensor,  # (N, E) router logits of the real tokens, group after group
    rc: dict[str, Any],  # curmoe RouterConfig as a dict
    group_sizes: list[int],  # tokens per routing group, summing to N
    token_ids: torch.Tensor,  # (N,) for hash
    bias: torch.Tensor | None,  # (E,) selection bias for sigmoid_bias
    decoding: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(experts (N, k) int64 with -1 for empty/dropped slots, gates (N, k) float64): curmoe.route, per group."""
    e = logits.shape[1]
    kind, k = rc["kind"], int(rc["top_k"])
    if kind == "expert_choice" and decoding:
        if rc.get("decode_fallback") is None:
            raise RuntimeError(
                "router kind='expert_choice' is non-causal (each expert ranks the whole sequence), so it cannot "
                "decode with a KV cache; call generate(..., use_cache=False) or the model on full sequences")
        kind = rc["decode_fallback"]
    if kind == "topk":
        probs = torch.softmax(logits.to(torch.float64), dim=-1)
        experts = _stable_topk(probs, k)
        gates = probs.gather(1, experts)
        if rc.get("normalize", True) and gates.numel():
            gates = gates / gates.sum(dim=1, keepdim=True)
        return experts, gates
    if kind == "sigmoid_bias":
        scores = torch.sigmoid(logits.to(torch.float64))
        b = torch.zeros_like(scores[0]) if bias is None else bias.to(torch.float64)
        experts = _stable_topk(scores + b, k)  # the bias steers the selection only
        gates = scores.gather(1, experts)
        if rc.get("normalize", True) and gates.numel():
            total = gates.sum(dim=1, keepdim=True)
            gates = gates / torch.where(total > 0, total, torch.ones_like(total))
        return _order_slots(experts, gates * float(rc.get("routed_scaling", 1.0)))
    if kind == "hash":
        experts = torch.sort(_hash_experts(token_ids, e, k, int(rc.get("seed", 0))), dim=1).values
        return experts, torch.full(experts.shape, 1.0 / k, dtype=torch.float64, device=logits.device)
    if kind not in ("switch", "expert_choice", "random"):
        raise ValueError(f"router kind {kind!r} is unknown to this modeling code")
    parts = [_route_group(z, kind, rc) for z in torch.split(logits, group_sizes) if z.shape[0]]
    if not parts:
        return logits.new_full((0, 1), -1, dtype=torch.int64), logits.new_zeros((0, 1), dtype=torch.float64)
    w = max(p[0].shape[1] for p in parts)  # pad the slot axis to the widest group
    experts = torch.cat([F.pad(p[0], (0, w - p[0].shape[1]), value=-1) for p in parts])
    gates = torch.cat([F.pad(p[1], (0, w - p[1].shape[1]), value=0.0) for p in parts])
    return experts, gates


class Router(nn.Module):
    """Router weights (E, d); ``bias`` (E,) is the selection bias of the sigmoid_bias router."""

    def __init__(self, n_experts: int, d: int, with_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, d))
        if with_bias:
            self.register_buffer("bias", torch.zeros(n_experts))
        else:
            self.bias = None


def moe_forward(layer: Layer, x: torch.Tensor, ids: torch.Tensor, group_sizes: list[int],
                decoding: bool) -> torch.Tensor:
    """An MoE block on x (N, d) normed real tokens, sequence after sequence -> (N, d); each expert runs on its
    tokens only (one gather, one index_add), shared experts on every token."""
    N = x.shape[0]
    logits = F.linear(x, layer.router.weight)  # (N, E)
    experts, gates = route(logits, layer.rc, group_sizes, ids, layer.router.bias, decoding)
    k = experts.shape[1]
    flat_e = experts.reshape(-1)  # token-major
    valid = flat_e >= 0
    flat_e = flat_e[valid]
    flat_t = torch.arange(N, device=x.device).repeat_interleave(k)[valid]
    flat_g = gates.to(x.dtype).reshape(-1)[valid]
    counts = torch.bincount(flat_e, minlength=len(layer.experts))  # (E,)
    order = torch.sort(flat_e, stable=True).indices  # grouped by expert, tokens in time order
    tok = flat_t[order]
    xs = x.index_select(0, tok)  # (A, d)
    outs = [layer.experts[e](chunk) for e, chunk in enumerate(xs.split(counts.tolist())) if chunk.shape[0]]
    y = torch.zeros_like(x)
    if outs:
        y = y.index_add(0, tok, torch.cat(outs) * flat_g[order][:, None])
    if len(layer.shared):
        ys = layer.shared[0](x)
        for s in layer.shared[1:]:
            ys = ys + s(x)
        if layer.shared_gate is not None:
            ys = torch.sigmoid(layer.shared_gate(x)) * ys  # (N, 1) * (N, d)
        y = y + ys
    return y


# Attention ----------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(x.square().mean(dim=-1, keepdim=True) + self.eps) * self.weight


def rope_cos_sin(positions: torch.Tensor, hd: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """cos, sin (B, T, hd) for positions (B, T): angle_i = pos * theta^(-2i/hd), computed in float64."""
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64, device=positions.device) / hd)
    ang = positions.to(torch.float64)[..., None] * inv
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, hd) * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]."""
    half = x.shape[-1] // 2
    return x * cos[:, None] + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin[:, None]


class Attention(nn.Module):
    def __init__(self, c: dict[str, Any], layer: int) -> None:
        super().__init__()
        d, H = int(c["d_model"]), int(c["n_heads"])
        KV, hd = int(c.get("n_kv_heads") or H), int(c.get("head_dim") or d // H)
        self.layer, self.H, self.KV, self.hd = layer, H, KV, hd
        bias = bool(c.get("attn_bias"))
        self.q = nn.Linear(d, H * hd, bias=bias)
        self.k = nn.Linear(d, KV * hd, bias=bias)
        self.v = nn.Linear(d, KV * hd, bias=bias)
        self.o = nn.Linear(H * hd, d, bias=False)
        self.qk_norm = c.get("qk_norm")
        eps = float(c.get("norm_eps", 1e-5))
        if self.qk_norm == "head":  # Qwen3-MoE
            self.q_norm, self.k_norm = RMSNorm(hd, eps), RMSNorm(hd, eps)
        elif self.qk_norm == "full":  # OLMoE
            self.q_norm, self.k_norm = RMSNorm(H * hd, eps), RMSNorm(KV * hd, eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, allowed: torch.Tensor,
                cache: Cache | None) -> torch.Tensor:
        """x (B, T, d) normed; allowed (B, T, S) bool over past + new keys -> (B, T, d)."""
        B, T, _ = x.shape
        H, KV, hd = self.H, self.KV, self.hd
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, KV, hd).transpose(1, 2)  # (B, KV, T, hd)
        v = v.view(B, T, KV, hd).transpose(1, 2)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer)  # (B, KV, S, hd), keys after RoPE
        empty = ~allowed.any(dim=-1)  # (B, T): a padding query with no real key before it
        mask = (allowed | empty[..., None])[:, None]  # (B, 1, T, S); empty rows get dummy keys, zeroed below
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(hd),
                                             enable_gqa=H != KV)
        out = out.masked_fill(empty[:, None, :, None], 0.0)
        return self.o(out.transpose(1, 2).reshape(B, T, H * hd))


class Layer(nn.Module):
    def __init__(self, c: dict[str, Any], layer: int) -> None:
        super().__init__()
        d, eps = int(c["d_model"]), float(c.get("norm_eps", 1e-5))
        self.attn_norm = RMSNorm(d, eps)
        self.attn = Attention(c, layer)
        self.ffn_norm = RMSNorm(d, eps)
        types = c.get("layer_types")
        self.is_moe = types is None or types[layer] == "moe"
        if self.is_moe:  # attribute names are curmoe's checkpoint names: router, experts, shared, shared_gate
            moe, factors = c["moe"], c.get("factors") or {}
            self.rc = moe["router"]
            self.router = Router(int(moe["n_experts"]), d, self.rc["kind"] == "sigmoid_bias")
            act = moe.get("activation", "swiglu")
            self.experts = nn.ModuleList(Expert(d, int(moe["d_ff"]), act, factors, f"layers.{layer}.experts.{e}")
                                         for e in range(int(moe["n_experts"])))
            n_shared, f_shared = int(moe.get("n_shared", 0)), int(moe.get("shared_d_ff", 0))
            self.shared = nn.ModuleList(Expert(d, f_shared, act, factors, f"layers.{layer}.shared.{s}")
                                        for s in range(n_shared))
            self.shared_gate = nn.Linear(d, 1, bias=False) if moe.get("shared_gate") else None
        else:
            self.mlp = Expert(d, int(c["dense_d_ff"]), "swiglu", {}, "")


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _output(cls: type, cache: Cache | None, **kw: Any) -> Any:
    """An output dataclass with the cache under its field name: ``cache`` (transformers >= 5.2x) or the older
    ``past_key_values``."""
    kw["cache" if "cache" in _fields(cls) else "past_key_values"] = cache
    return cls(**kw)


# Models -------------------------------------------------------------------------------------------------------
class CurmoePreTrainedModel(PreTrainedModel):
    config_class = CurmoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Layer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """Only for tensors a checkpoint lacks (from_config): normal(0, 0.02) weights, unit norms, zero biases."""
        for name, p in module.named_parameters(recurse=False):
            with torch.no_grad():
                if isinstance(module, RMSNorm):
                    p.fill_(1.0)
                elif name == "bias":
                    p.zero_()
                else:
                    p.normal_(0.0, 0.02)


class CurmoeModel(CurmoePreTrainedModel):
    """The decoder stack: embeddings, layers, final norm (hidden states out)."""

    def __init__(self, config: CurmoeConfig) -> None:
        super().__init__(config)
        c = config.curmoe_config
        self.c = c
        self.embed = nn.Embedding(int(c["vocab_size"]), int(c["d_model"]))
        self.layers = nn.ModuleList(Layer(c, l) for l in range(int(c["n_layers"])))
        self.norm = RMSNorm(int(c["d_model"]), float(c.get("norm_eps", 1e-5)))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed = value

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                cache: Cache | None = None, use_cache: bool | None = None, past_key_values: Cache | None = None,
                **kwargs: Any) -> BaseModelOutputWithPast:
        """Hidden states (B, T, d) of input_ids (B, T) after ``cache``'s tokens; ``attention_mask`` (B, past + T) is
        1 for real tokens, 0 for padding (left or right). ``past_key_values`` is the pre-5.x name of ``cache``."""
        c = self.c
        past_key_values = cache if cache is not None else past_key_values
        if input_ids is None:
            raise ValueError("curmoe models take input_ids (inputs_embeds is not supported: the hash router "
                             "routes by token id)")
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must have shape (B, T) with T >= 1, got {tuple(input_ids.shape)}")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        B, T = input_ids.shape
        dev = input_ids.device
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        full = (torch.ones((B, past + T), dtype=torch.bool, device=dev) if attention_mask is None
                else attention_mask.to(device=dev, dtype=torch.bool))
        if full.shape != (B, past + T):
            raise ValueError(f"attention_mask has shape {tuple(full.shape)}; it must cover the {past} cached and "
                             f"{T} new tokens: ({B}, {past + T})")
        mask = full[:, past:]  # (B, T) real new tokens
        positions = torch.where(mask, full.long().cumsum(dim=1)[:, past:] - 1, 0)  # over real tokens only
        S = past + T
        causal = torch.arange(S, device=dev)[None, :] <= (past + torch.arange(T, device=dev))[:, None]  # (T, S)
        allowed = causal[None] & full[:, None, :]  # (B, T, S)
        dtype = self.embed.weight.dtype
        cos, sin = rope_cos_sin(positions, int(c.get("head_dim") or int(c["d_model"]) // int(c["n_heads"])),
                                float(c.get("rope_theta", 10000.0)), dtype)
        flat_idx = mask.reshape(-1).nonzero()[:, 0]  # real tokens, row-major (sequence by sequence)
        group_sizes = [n for n in mask.sum(dim=1).tolist() if n]
        ids_flat = input_ids.reshape(-1).index_select(0, flat_idx)
        decoding = past > 0
        x = self.embed(input_ids)  # (B, T, d)
        for layer in self.layers:
            x = x + layer.attn(layer.attn_norm(x), cos, sin, allowed, past_key_values)
            hn = layer.ffn_norm(x).reshape(B * T, -1)  # (B*T, d)
            if layer.is_moe:  # padding gets no MoE output, as in curmoe's reference
                yr = moe_forward(layer, hn.index_select(0, flat_idx), ids_flat, group_sizes, decoding)
                y = hn.new_zeros(hn.shape).index_copy(0, flat_idx, yr)
            else:  # dense FFNs run on padding too, as in the reference
                y = layer.mlp(hn)
            x = x + y.view(B, T, -1)
        return _output(BaseModelOutputWithPast, last_hidden_state=self.norm(x),
                       cache=past_key_values if use_cache else None)


class CurmoeForCausalLM(CurmoePreTrainedModel, GenerationMixin):
    """CurmoeModel + the LM head (the embedding when tied). ``labels`` give the usual shifted cross-entropy."""

    def __init__(self, config: CurmoeConfig) -> None:
        super().__init__(config)
        self.model = CurmoeModel(config)
        c = config.curmoe_config
        self.tied = bool(c.get("tie_embeddings"))
        self.lm_head = None if self.tied else nn.Linear(int(c["d_model"]), int(c["vocab_size"]), bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> nn.Module | None:
        return self.lm_head

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                cache: Cache | None = None, use_cache: bool | None = None, labels: torch.LongTensor | None = None,
                past_key_values: Cache | None = None, **kwargs: Any) -> CausalLMOutputWithPast:
        """Logits (B, T, V); see :meth:`CurmoeModel.forward`. ``labels`` (B, T) give the shifted cross-entropy."""
        out = self.model(input_ids, attention_mask=attention_mask, cache=cache, use_cache=use_cache,
                         past_key_values=past_key_values)
        new_cache = out.cache if "cache" in _fields(type(out)) else out.past_key_values
        head = self.model.embed.weight if self.tied else self.lm_head.weight
        logits = F.linear(out.last_hidden_state, head)  # (B, T, d) @ (d, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return _output(CausalLMOutputWithPast, loss=loss, logits=logits, cache=new_cache)
