"""TorchMoE: the torch twin of the NumPy reference model (``curmoe.Model``), for training and fast inference.

Block l:  h = x + Attn(RMSNorm(x));  x' = h + FFN_l(RMSNorm(h)),  FFN_l = MoE block or dense SwiGLU.
Logits = RMSNorm(x_L) @ lm_head.T (lm_head = embedding when tied). Same config, same maths and the same tensor names
as the reference: ``TorchMoE.state_dict()`` keys are exactly the checkpoint's tensor names (see
``curmoe.reference._checkpoint``), so ``from_reference`` / ``to_reference`` are lossless and a model directory written by
``Model.save`` loads into either. Float32 logits agree with the reference's float32 logits to ~1e-6 relative.

Torch is an optional extra (``pip install 'curmoe[torch]'``): nothing in ``curmoe`` core imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import curmoe
from curmoe.common.errors import InvalidInputError
from curmoe.models.twin._attention import (
    RMSNorm,
    TorchAttention,
    TorchKVCache,
    rope_cos_sin,
)
from curmoe.models.twin._moe import (
    MoEStats,
    Router,
    TorchCURLinear,
    TorchExpert,
    moe_forward,
)
from curmoe.reference import (
    CURLinear,
    DenseLinear,
    NeuronLinear,
    Linear,
    ModelConfig,
    SVDLinear,
    expert_keys,
)
from curmoe.reference.names import expert_prefix, shared_prefix
from curmoe.routing import update_bias

__all__ = ["TorchMoE", "TorchKVCache", "TrainOutput", "load_torch", "train_only_u"]

_NP_TO_TORCH = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32,
                np.dtype(np.float16): torch.float16}


class TorchLayer(nn.Module):
    """One block; attribute names follow the checkpoint ("attn", "router", "experts", "shared", "mlp", ...)."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        d, moe = cfg.d_model, cfg.moe
        self.attn_norm = RMSNorm(d, cfg.norm_eps)
        self.attn = TorchAttention(cfg)
        self.ffn_norm = RMSNorm(d, cfg.norm_eps)
        self.is_moe = cfg.layer_type(layer) == "moe"
        self.moe_cfg = moe
        if self.is_moe:
            self.router = Router(moe.n_experts, d, moe.router.kind == "sigmoid_bias")
            self.experts = nn.ModuleList(
                TorchExpert(d, moe.d_ff, moe.activation, cfg.factors, expert_prefix(layer, e))
                for e in range(moe.n_experts)
            )
            self.shared = nn.ModuleList(
                TorchExpert(d, moe.shared_d_ff, moe.activation, cfg.factors, shared_prefix(layer, s))
                for s in range(moe.n_shared)
            )
            self.shared_gate = nn.Linear(d, 1, bias=False) if moe.shared_gate else None
        else:
            self.mlp = TorchExpert(d, cfg.dense_d_ff, "swiglu", {})

    def ffn(self, x: torch.Tensor, ids: torch.Tensor, group_sizes: Sequence[int],
            decoding: bool) -> tuple[torch.Tensor, MoEStats | None]:
        """x (N, d) normed real tokens -> (N, d)."""
        if not self.is_moe:
            return self.mlp(x), None
        return moe_forward(x, ids, group_sizes, self.moe_cfg, self.router, self.experts, self.shared,
                           self.shared_gate, decoding)


@dataclass
class TrainOutput:
    """``forward_train`` result. Losses are summed over the MoE layers; ``counts[i]`` is MoE layer i's (E,)
    token->expert assignments (``moe_layers[i]`` is its layer index)."""

    logits: torch.Tensor  # (B, T, V)
    aux_loss: torch.Tensor  # scalar: sum over MoE layers of E * sum_i f_i P_i
    z_loss: torch.Tensor  # scalar: sum over MoE layers of mean_t logsumexp(z_t)^2
    counts: list[torch.Tensor]
    moe_layers: list[int]
    stats: list[MoEStats]


class TorchMoE(nn.Module):
    """A curmoe MoE language model as a torch module.

    Args:
        config: the architecture; ``config.factors`` makes the listed expert matrices CUR / SVD modules.
        init_std: weights are drawn from normal(0, init_std) (output projections ``attn.o`` and ``down`` from
            normal(0, init_std / sqrt(2 n_layers)), GPT-2 style); norms start at 1, biases at 0. Uses torch's
            global generator: seed it with ``torch.manual_seed`` first.
    """

    def __init__(self, config: ModelConfig, *, init_std: float = 0.02) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise InvalidInputError(f"config must be a curmoe.ModelConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(TorchLayer(c, l) for l in range(c.n_layers))
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.tokenizer_path: Path | None = None
        self.reset_parameters(init_std)

    # Construction ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Fresh weights (see the class docstring); factorised experts get random factors, identity indices."""
        out_std = std / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                is_out = name.endswith("attn.o.weight") or ".down." in name
                p.normal_(0.0, out_std if is_out else std)
        for name, b in self.named_buffers():
            if name.endswith((".rows", ".cols")):
                b.copy_(torch.arange(b.numel(), device=b.device))
            elif name.endswith((".C", ".R")):
                b.normal_(0.0, std)
            else:  # router.bias
                b.zero_()

    @classmethod
    def from_reference(cls, model: curmoe.Model, *, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> TorchMoE:
        """A torch copy of the reference ``model`` (weights copied; ``dtype`` defaults to the model's, float16
        becomes float32)."""
        if not isinstance(model, curmoe.Model):
            raise InvalidInputError(f"model must be a curmoe.Model, got {type(model).__name__}")
        dt = dtype or _NP_TO_TORCH.get(np.dtype(model.dtype), torch.float32)
        if dt == torch.float16 and dtype is None:
            dt = torch.float32
        state: dict[str, torch.Tensor] = {}

        def put(name: str, a: np.ndarray) -> None:
            t = torch.from_numpy(np.ascontiguousarray(a))
            # copy into torch's (64-byte aligned) memory: training must not write into the reference's arrays
            state[name] = t.to(torch.int64 if a.dtype.kind in "iu" else dt, copy=True)

        for name, a in model.tensors.items():
            put(name, a)
        for key, lin in model.experts.items():
            for n, a in lin.tensors().items():
                put(f"{key}.{n}", a)
        with torch.device("meta"):
            tm = cls(model.config)
        tm.load_state_dict(state, strict=True, assign=True)
        tm.tokenizer_path = model.tokenizer_path
        return tm.to(device) if device is not None else tm

    def to_reference(self) -> curmoe.Model:
        """The NumPy reference model with these weights (float32 unless the module is float64 / float16)."""
        keys = expert_keys(self.config)
        tensors: dict[str, np.ndarray] = {}
        groups: dict[str, dict[str, np.ndarray]] = {}
        for name, t in self.state_dict().items():
            t = t.detach().cpu()
            if t.is_floating_point() and t.dtype not in (torch.float64, torch.float32, torch.float16):
                t = t.to(torch.float32)  # bfloat16 has no NumPy dtype
            a = t.numpy().copy()
            base, leaf = name.rsplit(".", 1)
            if base in keys:
                groups.setdefault(base, {})[leaf] = a
            else:
                tensors[name] = a
        experts: dict[str, Linear] = {}
        for key, g in groups.items():
            if "neurons" in g:
                experts[key] = NeuronLinear(g["weight"], g["neurons"], self.config.factors[key]["role"])
            elif "weight" in g:
                experts[key] = DenseLinear(g["weight"])
            elif "A" in g:
                experts[key] = SVDLinear(g["A"], g["B"])
            else:
                experts[key] = CURLinear(g["C"], g.get("U"), g["R"], g["rows"], g["cols"])
        return curmoe.Model(self.config, tensors, experts, self.tokenizer_path)

    # Forward ------------------------------------------------------------------------------------------------
    def new_cache(self) -> TorchKVCache:
        return TorchKVCache()

    def forward(self, input_ids: Any, attention_mask: Any = None, cache: TorchKVCache | None = None) -> torch.Tensor:
        """Logits (B, T, V) for ``input_ids`` (B, T). With ``cache``, the tokens continue the cached ones and the
        cache is extended in place (incremental decoding). ``attention_mask`` (B, T): 1 real, 0 padding."""
        return self._run(input_ids, attention_mask, cache)[0]

    def forward_train(self, input_ids: Any, attention_mask: Any = None) -> TrainOutput:
        """Logits plus the MoE training losses and per-layer expert counts (see :class:`TrainOutput`)."""
        logits, stats = self._run(input_ids, attention_mask, None)
        moe = [(l, s) for l, s in enumerate(stats) if s is not None]
        zero = logits.new_zeros(())
        return TrainOutput(
            logits=logits,
            aux_loss=sum((s.aux_loss for _, s in moe), zero),
            z_loss=sum((s.z_loss for _, s in moe), zero),
            counts=[s.counts for _, s in moe],
            moe_layers=[l for l, _ in moe],
            stats=[s for _, s in moe],
        )

    def _run(self, input_ids: Any, attention_mask: Any,
             cache: TorchKVCache | None) -> tuple[torch.Tensor, list[MoEStats | None]]:
        cfg = self.config
        dev = self.embed.weight.device
        ids, mask = self._check_inputs(input_ids, attention_mask, cache, dev)
        B, T = ids.shape
        past = 0 if cache is None else cache.length
        if cache is not None and past and cache.mask.shape[0] != B:
            raise InvalidInputError(f"batch size {B} differs from the cache's {cache.mask.shape[0]}; start a new cache")
        dtype = self.embed.weight.dtype
        hd = cfg.head_dim_
        fast = cache is None and mask is None  # every token real, no past: plain causal attention
        if fast:
            positions = torch.arange(T, device=dev)[None]  # (1, T)
            allowed = None
            flat_idx = None
            group_sizes = [T] * B
            ids_flat = ids.reshape(-1)
        else:
            if mask is None:
                mask = torch.ones((B, T), dtype=torch.bool, device=dev)
            n_past = (torch.zeros(B, dtype=torch.int64, device=dev) if cache is None or cache.n_real is None
                      else cache.n_real)
            key_mask = mask if not past else torch.cat([cache.mask, mask], dim=1)  # (B, S)
            positions = n_past[:, None] + mask.cumsum(dim=1) - 1
            positions = torch.where(mask, positions, 0)  # padding positions are masked out anyway
            S = key_mask.shape[1]
            causal = torch.arange(S, device=dev)[None, :] <= (past + torch.arange(T, device=dev))[:, None]  # (T, S)
            allowed = causal[None] & key_mask[:, None, :]  # (B, T, S)
            flat_idx = mask.reshape(-1).nonzero()[:, 0]  # real tokens, row-major
            group_sizes = [n for n in mask.sum(dim=1).tolist() if n]
            ids_flat = ids.reshape(-1).index_select(0, flat_idx)
        cos, sin = rope_cos_sin(positions, hd, cfg.rope_theta, dtype)
        decoding = past > 0

        x = self.embed(ids)  # (B, T, d)
        stats: list[MoEStats | None] = []
        for l, layer in enumerate(self.layers):
            pk = cache.keys[l] if cache is not None and past else None
            pv = cache.values[l] if cache is not None and past else None
            a, k, v = layer.attn(layer.attn_norm(x), cos, sin, allowed, pk, pv)
            if cache is not None:
                if past:
                    cache.keys[l], cache.values[l] = k, v
                else:
                    cache.keys.append(k)
                    cache.values.append(v)
            x = x + a
            hn = layer.ffn_norm(x).reshape(B * T, -1)  # (B*T, d)
            if flat_idx is None or not layer.is_moe:  # dense FFNs run on padding too, as in the reference
                y, st = layer.ffn(hn, ids_flat, group_sizes, decoding)
            else:
                yr, st = layer.ffn(hn.index_select(0, flat_idx), ids_flat, group_sizes, decoding)
                y = hn.new_zeros(hn.shape).index_copy(0, flat_idx, yr)  # padding gets no FFN output
            stats.append(st)
            x = x + y.view(B, T, -1)
        x = self.norm(x)
        head = self.embed.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(x, head)  # (B, T, d) @ (d, V)
        if cache is not None:
            cache.mask = key_mask
            cache.n_real = n_past + mask.sum(dim=1)
        return logits, stats

    def _check_inputs(self, input_ids: Any, attention_mask: Any, cache: TorchKVCache | None,
                      dev: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = torch.as_tensor(input_ids, device=dev)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise InvalidInputError(
                f"input_ids must be an integer tensor of shape (B, T) with T >= 1, got shape {tuple(ids.shape)}"
            )
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise InvalidInputError(f"input_ids must hold integers, got dtype {ids.dtype}")
        ids = ids.to(torch.int64)
        V = self.config.vocab_size
        if ids.numel():
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= V:
                bad = lo if lo < 0 else hi
                raise InvalidInputError(f"input_ids contains token id {bad} outside the vocabulary [0, {V})")
        if attention_mask is None:
            return ids, None
        mask = torch.as_tensor(attention_mask, device=dev)
        if tuple(mask.shape) != tuple(ids.shape):
            raise InvalidInputError(
                f"attention_mask has shape {tuple(mask.shape)} but input_ids has {tuple(ids.shape)}; they must match"
            )
        mask = mask.to(torch.bool)
        if cache is None and bool(mask.all()):
            return ids, None
        return ids, mask

    # Training helpers ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def update_router_biases(self, counts: Sequence[torch.Tensor], speed: float) -> None:
        """DeepSeek-V3 auxiliary-loss-free balancing after a training step: for every ``sigmoid_bias`` layer,
        ``b_i <- b_i + speed * sign(mean(c) - c_i)`` with ``counts`` from :meth:`forward_train`."""
        moe = [layer for layer in self.layers if layer.is_moe]
        if len(counts) != len(moe):
            raise InvalidInputError(f"got {len(counts)} count vectors for {len(moe)} MoE layers; pass "
                                    "TrainOutput.counts")
        for layer, c in zip(moe, counts):
            b = layer.router.bias
            if b is not None:
                new = update_bias(b.detach().cpu().double().numpy(), c.detach().cpu().double().numpy(), speed)
                b.copy_(torch.from_numpy(new).to(b))

    def n_params(self) -> int:
        """Parameters and float buffers (CUR's C and R count, its index vectors do not), as ``Model.n_params``."""
        n = sum(p.numel() for p in self.parameters())
        return n + sum(b.numel() for b in self.buffers() if b.is_floating_point())

    def __repr__(self) -> str:
        c = self.config
        kind = "compressed" if c.factors else "dense"
        return (f"TorchMoE({kind}, layers={c.n_layers}, d_model={c.d_model}, experts={c.moe.n_experts}, "
                f"router={c.moe.router.kind}, params={self.n_params():,}, dtype={self.embed.weight.dtype})")


def load_torch(path: str | Path, *, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> TorchMoE:
    """Load a curmoe model directory into a :class:`TorchMoE` (``from_reference(curmoe.load(path))``)."""
    return TorchMoE.from_reference(curmoe.load(path), dtype=dtype, device=device)


def train_only_u(model: TorchMoE) -> list[nn.Parameter]:
    """Freeze every parameter except the CUR ``U`` matrices (a "healing" fine-tune: C and R stay real columns and
    rows of the original weights). Returns the trainable U parameters, to hand to an optimizer.

    Raises:
        InvalidInputError: the model has no CUR expert with an unfolded U.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    us = [m.U for m in model.modules() if isinstance(m, TorchCURLinear) and m.U is not None]
    if not us:
        raise InvalidInputError(
            "train_only_u found no CUR expert with a U matrix to train; compress the model with "
            "curmoe.CURConfig(fold_u=False) (folded U lives inside C, which must stay frozen)"
        )
    for u in us:
        u.requires_grad_(True)
    return us
