"""Torch twin of ``curmoe.reference._moe`` and ``curmoe.reference._linear``: expert linear maps (dense, CUR, SVD), experts, MoE block.

y_t = sum over chosen experts e of g_te * expert_e(x_t)  [+ shared experts, times sigmoid(x_t . w) if gated]
expert(x) = down(silu(gate x) * up x)  (SwiGLU, Shazeer 2020)   or   down(gelu(up x))  (GELU)

Factorised experts keep the reference's factor order: CUR computes ``((x R^T) U^T) C^T`` with C and R real columns
and rows of W held as buffers (never trained) and U a Parameter (Mahoney & Drineas 2009); SVD computes
``(x B^T) A^T`` with both factors Parameters. Dispatch gathers each expert's tokens (``index_select``) and adds
its gated output back (``index_add_``), so an expert only runs on the tokens routed to it.

Training losses per MoE layer (over all real tokens of the batch): the Switch balance loss
``E * sum_i f_i P_i`` (Fedus et al. 2021, eq. 4; f_i = share of assignments, P_i = mean router probability) and the
router z-loss ``mean_t (log sum_i exp z_ti)^2`` (Zoph et al. 2022, ST-MoE, eq. 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from curmoe.common.errors import InvalidInputError
from curmoe.models.twin._routers import TorchRouting, route_torch
from curmoe.reference import MoEConfig

__all__ = [
    "TorchCURLinear",
    "TorchSVDLinear",
    "TorchExpert",
    "Router",
    "MoEStats",
    "make_linear",
    "moe_forward",
]


class TorchCURLinear(nn.Module):
    """``y = x @ (C U R).T`` computed as x -> R -> U -> C. C (m, c), R (r, n) and the index vectors are buffers;
    U (c, r) is the only Parameter (None when U was folded into C for inference)."""

    def __init__(self, m: int, n: int, rank: int, n_cols: int, folded: bool) -> None:
        super().__init__()
        self.register_buffer("C", torch.zeros(m, rank if folded else n_cols))
        if folded:
            self.register_parameter("U", None)
        else:
            self.U = nn.Parameter(torch.zeros(n_cols, rank))
        self.register_buffer("R", torch.zeros(rank, n))
        self.register_buffer("rows", torch.zeros(rank, dtype=torch.int64))
        self.register_buffer("cols", torch.zeros(n_cols, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.R)  # (N, n) @ (n, r)
        if self.U is not None:
            h = F.linear(h, self.U)  # (N, r) @ (r, c)
        return F.linear(h, self.C)  # (N, c) @ (c, m)


class TorchNeuronLinear(nn.Module):
    """One matrix of a neuron-CUR expert (``curmoe.reference.NeuronLinear``): kept rows W[J] (k, n) of gate/up are
    a buffer (real rows, never trained); the refit down matrix (m, k) is the Parameter healing may train."""

    def __init__(self, m: int, n: int, k: int, role: str) -> None:
        super().__init__()
        self.role = role
        shape = (k, n) if role == "rows" else (m, k)
        if role == "rows":
            self.register_buffer("weight", torch.zeros(*shape))
        else:
            self.weight = nn.Parameter(torch.zeros(*shape))
        self.register_buffer("neurons", torch.zeros(k, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class TorchSVDLinear(nn.Module):
    """``y = x @ (A B).T`` computed as ``(x B^T) A^T``; A (m, r) and B (r, n) are Parameters."""

    def __init__(self, m: int, n: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.zeros(m, rank))
        self.B = nn.Parameter(torch.zeros(rank, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.B), self.A)  # (N, n) @ (n, r) @ (r, m)


def make_linear(m: int, n: int, spec: dict[str, Any] | None) -> nn.Module:
    """The module for one (m, n) expert matrix: dense ``nn.Linear`` or the factorisation ``spec`` of config.factors."""
    if spec is None:
        return nn.Linear(n, m, bias=False)
    if spec["kind"] == "svd":
        return TorchSVDLinear(m, n, int(spec["rank"]))
    if spec["kind"] == "cur":
        r = int(spec["rank"])
        return TorchCURLinear(m, n, r, int(spec.get("n_cols", r)), bool(spec.get("folded")))
    if spec["kind"] == "neuron":
        return TorchNeuronLinear(m, n, int(spec["n_neurons"]), spec["role"])
    raise InvalidInputError(f"factor kind {spec['kind']!r} is unknown; expected 'cur', 'svd' or 'neuron'")


class TorchExpert(nn.Module):
    """One FFN: SwiGLU ``down(silu(gate x) * up x)`` or GELU ``down(gelu(up x))``."""

    def __init__(self, d_model: int, d_ff: int, activation: str, factors: dict[str, dict[str, Any]],
                 prefix: str = "") -> None:
        super().__init__()
        self.activation = activation
        if activation == "swiglu":
            self.gate = make_linear(d_ff, d_model, factors.get(f"{prefix}.gate"))
        self.up = make_linear(d_ff, d_model, factors.get(f"{prefix}.up"))
        self.down = make_linear(d_model, d_ff, factors.get(f"{prefix}.down"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)  # (N, d_ff)
        else:
            h = F.gelu(self.up(x))
        return self.down(h)  # (N, d_ff) -> (N, d_model)


class Router(nn.Module):
    """Router weights (E, d_model); ``bias`` (E,) is a buffer (selection bias, sigmoid_bias router only)."""

    def __init__(self, n_experts: int, d_model: int, with_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_experts, d_model))
        if with_bias:
            self.register_buffer("bias", torch.zeros(n_experts))
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)  # (N, d) @ (d, E)


@dataclass
class MoEStats:
    """One MoE layer's routing over a batch: assignments per expert, training losses, the routing itself."""

    counts: torch.Tensor  # (E,) int64 token->expert assignments (dropped / empty slots not counted)
    aux_loss: torch.Tensor  # scalar, E * sum_i f_i P_i
    z_loss: torch.Tensor  # scalar, mean_t logsumexp(z_t)^2
    n_dropped: int
    routing: TorchRouting


def moe_forward(
    x: torch.Tensor,  # (N, d_model) normed real tokens, sequence after sequence
    token_ids: torch.Tensor,  # (N,) for the hash router
    group_sizes: Sequence[int],  # real tokens per sequence
    cfg: MoEConfig,
    router: Router,
    experts: Sequence[nn.Module],
    shared: Sequence[nn.Module] = (),
    shared_gate: nn.Linear | None = None,
    decoding: bool = False,
) -> tuple[torch.Tensor, MoEStats]:
    """Returns (output (N, d_model), :class:`MoEStats`)."""
    N = x.shape[0]
    E = cfg.n_experts
    logits = router(x)  # (N, E)
    r = route_torch(logits, cfg.router, group_sizes=group_sizes, token_ids=token_ids, bias=router.bias,
                    decoding=decoding)
    k = r.experts.shape[1]
    flat_e = r.experts.reshape(-1)  # token-major: (t0 s0, t0 s1, t1 s0, ...)
    valid = flat_e >= 0
    flat_e = flat_e[valid]
    flat_t = torch.arange(N, device=x.device).repeat_interleave(k)[valid]
    flat_g = r.gates.reshape(-1)[valid]
    counts = torch.bincount(flat_e, minlength=E)  # (E,)
    order = torch.sort(flat_e, stable=True).indices  # by expert, each expert's tokens in time order
    tok = flat_t[order]  # (A,) token of each assignment, grouped by expert
    xs = x.index_select(0, tok)  # (A, d): one gather for all experts
    outs = [experts[e](chunk) for e, chunk in enumerate(xs.split(counts.tolist())) if chunk.shape[0]]
    y = torch.zeros_like(x)
    if outs:
        ys = torch.cat(outs) * flat_g[order][:, None]  # (A, d) gated expert outputs
        y = y.index_add(0, tok, ys.to(y.dtype))  # expert by expert, as the reference accumulates
    if len(shared):
        ys = shared[0](x)
        for s in shared[1:]:
            ys = ys + s(x)
        if shared_gate is not None:
            ys = torch.sigmoid(shared_gate(x)) * ys  # (N, 1) * (N, d)
        y = y + ys
    total = counts.sum().clamp_min(1)
    f = counts.to(torch.float64) / total  # (E,) share of assignments, no gradient
    aux = E * torch.dot(f, r.probs.mean(dim=0)) if N else x.new_zeros((), dtype=torch.float64)
    z = torch.logsumexp(logits.to(torch.float64), dim=-1).square().mean() if N else aux * 0
    return y, MoEStats(counts, aux.to(x.dtype), z.to(x.dtype), int(r.dropped.sum()), r)
