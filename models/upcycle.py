"""Upcycling a dense model into an MoE: split each FFN's neurons into E experts, add a router, train only it.

Method (MoEfication, Zhang et al. 2022; LLaMA-MoE, Zhu et al. 2024):

1. **Partition.** The d_ff neurons of each dense SwiGLU FFN ``down(silu(gate x) * up x)`` are clustered into E
   groups of equal size d_ff / E by balanced k-means on their unit-normalised weight rows ``[W_gate[i], W_up[i]]``
   (MoEfication's parameter clustering). Expert e keeps rows ``I_e`` of W_gate and W_up and columns ``I_e`` of
   W_down, bit-identical. Since the FFN is a sum over neurons, ``FFN(x) = sum_e FFN_e(x)`` exactly.
2. **Router.** Each layer gets a ``select`` router (``curmoe.routing``: top-k by logit, every gate exactly 1), so
   at ``top_k = E`` the MoE reproduces the dense model up to the order of a floating-point sum. It is initialised
   at the cluster centroids of the gate rows (a token whose input aligns with a group's gate rows activates it).
3. **Router training** (only the routers; every expert weight is frozen), layer by layer on the dense model's own
   FFN inputs x of calibration tokens, distilling the dense FFN output y(x) = sum_e y_e(x). The target of token x is
   the set of k experts a greedy search finds best at reproducing y: add, k times, the expert that most lowers
   ``||y - sum_{e in S} y_e||^2``. The router is trained to pick that set: binary cross-entropy of its logits
   against the 0/1 set (as MoEfication trains its routers to predict the most useful experts), Adam, a bounded
   number of steps over minibatches of tokens. It is measured by the distillation loss
   ``L = ||sum_{e in topk(z)} y_e - y||^2 / ||y||^2`` (mean over held-out tokens) before and after; a layer whose
   held-out loss rises keeps its centroid router. (Training L itself through a straight-through top-k mask was
   tried first: on baby models it lowered L less and sometimes raised it.)

``upcycle(model, config, calib_ids)`` returns the MoE ``Model`` and an :class:`UpcycleReport` (losses before and
after on held-out calibration tokens, steps, tokens, seconds). CLI: ``curmoe upcycle``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from curmoe.common.checks import check_int, check_number
from curmoe.common.errors import InvalidInputError
from curmoe.reference import DenseLinear, Linear, Model, MoEConfig
from curmoe.routing import RouterConfig

__all__ = ["UpcycleConfig", "UpcycleReport", "balanced_kmeans", "partition_neurons", "split_ffns", "greedy_targets",
           "upcycle"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpcycleConfig:
    """How to upcycle.

    Attributes:
        n_experts: E, experts per layer; must divide the dense FFN width.
        top_k: experts per token (``top_k = n_experts`` reproduces the dense model).
        steps: router training steps per layer (0: the centroid router, untrained).
        lr: Adam learning rate of the router weights.
        batch_tokens: tokens per training step.
        kmeans_iters: balanced k-means iterations.
        holdout: share of the calibration tokens kept out of training to measure the loss.
        seed: k-means initialisation and minibatch order.
    """

    n_experts: int = 8
    top_k: int = 2
    steps: int = 200
    lr: float = 1e-2
    batch_tokens: int = 512
    kmeans_iters: int = 25
    holdout: float = 0.125
    seed: int = 0
    version: int = 1

    def __post_init__(self) -> None:
        check_int(self.n_experts, "n_experts", lo=2, fix="split each FFN into at least 2 experts")
        check_int(self.top_k, "top_k", lo=1, hi=self.n_experts,
                  fix=f"pass 1 <= top_k <= n_experts={self.n_experts}")
        check_int(self.steps, "steps", lo=0, fix="0 keeps the centroid router untrained")
        check_number(self.lr, "lr", lo=0, lo_open=True, fix="e.g. 1e-2")
        check_int(self.batch_tokens, "batch_tokens", lo=1)
        check_int(self.kmeans_iters, "kmeans_iters", lo=1)
        check_number(self.holdout, "holdout", lo=0, hi=0.5, fix="a share in [0, 0.5], e.g. 0.125")
        check_int(self.seed, "seed", lo=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class UpcycleReport:
    """What upcycling did: per-layer distillation loss (held-out calibration tokens) before and after router
    training, the partition sizes, and the training cost."""

    config: dict[str, Any]
    layers: list[dict[str, Any]] = field(default_factory=list)
    train_tokens: int = 0
    holdout_tokens: int = 0
    steps: int = 0
    collect_s: float = 0.0
    train_s: float = 0.0
    partition_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.layers:
            d["mean_loss_before"] = float(np.mean([r["loss_before"] for r in self.layers]))
            d["mean_loss_after"] = float(np.mean([r["loss_after"] for r in self.layers]))
        return d


# --- partition ---------------------------------------------------------------------------------------------------
def balanced_kmeans(features: np.ndarray, n_clusters: int, *, iters: int = 25, seed: int = 0) -> np.ndarray:
    """Balanced k-means: (n, f) points -> (n,) labels with exactly n / n_clusters points per cluster.

    Lloyd iterations whose assignment step is a greedy balanced assignment: all (point, cluster) pairs sorted by
    squared distance, each taken while the point is free and the cluster below its size n / k (MoEfication's
    balanced clustering). Centroids start at k distinct points chosen by k-means++ (``seed``).
    """
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    k = check_int(n_clusters, "n_clusters", lo=1, hi=n)
    if n % k:
        raise InvalidInputError(f"{n} points do not split into {k} equal clusters; pass a number of experts that "
                                f"divides {n}")
    size = n // k
    rng = np.random.default_rng(seed)
    cent = [x[rng.integers(n)]]
    for _ in range(1, k):  # k-means++
        d2 = np.min(((x[:, None, :] - np.asarray(cent)[None]) ** 2).sum(-1), axis=1)
        cent.append(x[rng.choice(n, p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(n)])
    c = np.asarray(cent)  # (k, f)
    labels = np.full(n, -1, np.int64)
    for _ in range(iters):
        d2 = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]  # (n, k)
        order = np.argsort(d2, axis=None, kind="stable")
        new = np.full(n, -1, np.int64)
        fill = np.zeros(k, np.int64)
        left = n
        for flat in order:
            i, j = divmod(int(flat), k)
            if new[i] < 0 and fill[j] < size:
                new[i], fill[j] = j, fill[j] + 1
                left -= 1
                if not left:
                    break
        if np.array_equal(new, labels):
            break
        labels = new
        c = np.stack([x[labels == j].mean(0) for j in range(k)])
    return labels


def partition_neurons(gate: np.ndarray, up: np.ndarray, n_experts: int, *, iters: int = 25,
                      seed: int = 0) -> np.ndarray:
    """(E, d_ff / E) sorted neuron indices of each expert: balanced k-means of the unit rows [W_gate[i], W_up[i]]."""
    f = np.concatenate([gate, up], axis=1).astype(np.float64)  # (d_ff, 2 d)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-30)
    labels = balanced_kmeans(f, n_experts, iters=iters, seed=seed)
    return np.stack([np.flatnonzero(labels == e) for e in range(n_experts)]).astype(np.int64)


def split_ffns(model: Model, config: UpcycleConfig) -> tuple[Model, list[np.ndarray]]:
    """The dense model as an MoE with ``select`` routers initialised at the gate-row centroids (untrained), and each
    layer's partition (E, d_ff / E). Exact at ``top_k = n_experts``."""
    if not isinstance(model, Model):
        raise InvalidInputError(f"model must be a curmoe.Model, got {type(model).__name__}")
    cfg = model.config
    if cfg.factors:
        raise InvalidInputError("upcycle needs a dense (uncompressed) model; this one has compressed experts")
    if any(cfg.layer_type(l) != "dense" for l in range(cfg.n_layers)):
        raise InvalidInputError("upcycle splits dense FFNs: every layer must be dense (this model already has MoE "
                                "layers); pass a dense Llama-family model, e.g. curmoe pretrained smollm2-135m")
    E, d_ff = config.n_experts, cfg.dense_d_ff
    if d_ff % E:
        divs = [e for e in range(2, min(d_ff, 64) + 1) if d_ff % e == 0]
        raise InvalidInputError(f"n_experts={E} does not divide the FFN width {d_ff}; pass one of {divs}")
    tensors = {k: v for k, v in model.tensors.items() if ".mlp." not in k}
    experts: dict[str, Linear] = {}
    parts = []
    for l in range(cfg.n_layers):
        g, u, d = (np.asarray(model.tensors[f"layers.{l}.mlp.{n}.weight"]) for n in ("gate", "up", "down"))
        part = partition_neurons(g, u, E, iters=config.kmeans_iters, seed=config.seed + l)
        parts.append(part)
        for e, idx in enumerate(part):
            experts[f"layers.{l}.experts.{e}.gate"] = DenseLinear(np.ascontiguousarray(g[idx]))  # (d_ff/E, d)
            experts[f"layers.{l}.experts.{e}.up"] = DenseLinear(np.ascontiguousarray(u[idx]))  # (d_ff/E, d)
            experts[f"layers.{l}.experts.{e}.down"] = DenseLinear(np.ascontiguousarray(d[:, idx]))  # (d, d_ff/E)
        cent = np.stack([g[idx].astype(np.float64).mean(0) for idx in part])  # (E, d)
        tensors[f"layers.{l}.router.weight"] = cent.astype(model.dtype)
    moe = MoEConfig(n_experts=E, d_ff=d_ff // E, activation="swiglu",
                    router=RouterConfig(kind="select", top_k=config.top_k))
    new_cfg = replace(cfg, moe=moe, layer_types=None, dense_d_ff=0)
    return Model(new_cfg, tensors, experts, model.tokenizer_path, model.storage_dtype), parts


# --- router training ---------------------------------------------------------------------------------------------
def _collect(model: Model, calib_ids: np.ndarray, batch: int) -> list[Any]:
    """Each dense layer's FFN inputs (N, d) float32 torch tensors, from the dense model's own forward (torch twin)."""
    import torch

    from curmoe.models.twin import TorchMoE

    tm = TorchMoE.from_reference(model.astype(np.float32)).eval()
    got: list[list[Any]] = [[] for _ in tm.layers]
    hooks = [layer.mlp.register_forward_hook(lambda mod, inp, out, l=l: got[l].append(inp[0].detach().clone()))
             for l, layer in enumerate(tm.layers)]
    try:
        with torch.no_grad():
            for s in range(0, calib_ids.shape[0], batch):
                tm(torch.as_tensor(calib_ids[s:s + batch], dtype=torch.int64))
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(g) for g in got]


def _expert_outputs(x: Any, w: dict[str, Any], part: np.ndarray) -> Any:
    """(N, E, d) outputs of every expert on x (N, d); their sum over E is the dense FFN output."""
    import torch
    import torch.nn.functional as F

    outs = []
    for idx in part:
        i = torch.as_tensor(idx)
        h = F.silu(x @ w["gate"][i].T) * (x @ w["up"][i].T)  # (N, d_ff/E)
        outs.append(h @ w["down"][:, i].T)  # (N, d)
    return torch.stack(outs, 1)


def _loss(router_w: Any, x: Any, ye: Any, k: int) -> Any:
    """The distillation loss: mean over tokens of ``||sum_{e in topk(z)} y_e - y||^2 / ||y||^2``, z = x W_r^T."""
    import torch

    z = x @ router_w.T  # (N, d) @ (d, E)
    top = torch.sort(-z, dim=1, stable=True).indices[:, :k]  # ties to the lower index, as route_select
    mask = torch.zeros_like(z).scatter_(1, top, 1.0)  # (N, E)
    y = ye.sum(1)  # (N, d) the dense output
    err = (mask[:, :, None] * ye).sum(1) - y
    return ((err * err).sum(1) / (y * y).sum(1).clamp_min(1e-12)).mean()


def _loss_mask(mask: Any, ye: Any) -> Any:
    y = ye.sum(1)
    err = (mask[:, :, None] * ye).sum(1) - y
    return ((err * err).sum(1) / (y * y).sum(1).clamp_min(1e-12)).mean()


def greedy_targets(ye: Any, k: int) -> Any:
    """(N, E) 0/1: per token, the k experts chosen greedily to reproduce y = sum_e y_e (each step adds the expert
    with the largest gain ``||r||^2 - ||r - y_e||^2 = 2 <y_e, r> - ||y_e||^2``, r the part of y still missing)."""
    import torch

    y = ye.sum(1)  # (N, d)
    n, e, _ = ye.shape
    rows = torch.arange(n)
    have, lab = torch.zeros_like(y), torch.zeros((n, e), dtype=ye.dtype)
    sq = (ye * ye).sum(-1)  # (N, E)
    for _ in range(k):
        gain = 2 * (ye * (y - have)[:, None]).sum(-1) - sq
        j = gain.masked_fill(lab > 0, -torch.inf).argmax(1)
        lab[rows, j] = 1.0
        have = have + ye[rows, j]
    return lab


def upcycle(model: Model, config: UpcycleConfig, calib_ids: np.ndarray | None = None, *,
            progress: bool = False) -> tuple[Model, UpcycleReport]:
    """Upcycle the dense ``model`` into an MoE (see the module docstring).

    Args:
        model: an all-dense curmoe model (e.g. converted from a Llama-family checkpoint).
        config: experts, top-k and the router-training budget.
        calib_ids: (B, T) calibration token ids for router training; None (or ``config.steps == 0``) keeps the
            centroid routers untrained.
        progress: a tqdm bar over the layers.

    Returns:
        ``(moe_model, report)``; the model's routers are float ``model.dtype``, every expert weight is a slice of the
        dense FFN.
    """
    if not isinstance(config, UpcycleConfig):
        raise InvalidInputError(f"config must be an UpcycleConfig, got {type(config).__name__}")
    t0 = time.perf_counter()
    moe, parts = split_ffns(model, config)
    report = UpcycleReport(config=config.to_dict(), partition_s=round(time.perf_counter() - t0, 2))
    if calib_ids is None or config.steps == 0:
        return moe, report
    ids = np.asarray(calib_ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.size == 0:
        raise InvalidInputError(f"calib_ids must be a non-empty (B, T) integer array, got shape {ids.shape} "
                                f"dtype {ids.dtype}")
    if int(ids.max()) >= model.config.vocab_size or int(ids.min()) < 0:
        raise InvalidInputError(f"calib_ids hold ids outside [0, {model.config.vocab_size}); encode the text with "
                                "the model's own tokenizer")
    import torch

    t0 = time.perf_counter()
    feats = _collect(model, ids, batch=max(1, 4096 // ids.shape[1]))
    report.collect_s = round(time.perf_counter() - t0, 2)
    n = feats[0].shape[0]
    gen = torch.Generator().manual_seed(config.seed)
    perm = torch.randperm(n, generator=gen)
    n_hold = round(n * config.holdout)
    hold, train = perm[:n_hold], perm[n_hold:]
    if train.numel() == 0:
        raise InvalidInputError(f"{n} calibration tokens leave none to train on after the holdout; pass more")
    report.train_tokens, report.holdout_tokens, report.steps = int(train.numel()), int(n_hold), config.steps
    tensors = dict(moe.tensors)
    t0 = time.perf_counter()
    layers = range(model.config.n_layers)
    if progress:
        from tqdm.auto import tqdm

        layers = tqdm(layers, desc="router training", unit="layer")
    k = config.top_k
    for l in layers:
        w = {nm: torch.as_tensor(np.asarray(model.tensors[f"layers.{l}.mlp.{nm}.weight"], np.float32))
             for nm in ("gate", "up", "down")}
        with torch.no_grad():
            ye = _expert_outputs(feats[l], w, parts[l])  # (N, E, d)
        ev = hold if n_hold else train
        rw = torch.nn.Parameter(torch.as_tensor(np.asarray(tensors[f"layers.{l}.router.weight"], np.float32)))
        with torch.no_grad():
            before = float(_loss(rw, feats[l][ev], ye[ev], k))
        target = greedy_targets(ye, k)  # (N, E)
        opt = torch.optim.Adam([rw], lr=config.lr)
        for _ in range(config.steps):
            b = train[torch.randint(train.numel(), (min(config.batch_tokens, train.numel()),), generator=gen)]
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(feats[l][b] @ rw.T, target[b])
            loss.backward()
            opt.step()
        with torch.no_grad():
            after = float(_loss(rw, feats[l][ev], ye[ev], k))
        if after > before:  # keep the better router (measured on the held-out tokens)
            log.info("layer %d: router training raised the held-out loss (%.4f -> %.4f); keeping the centroid router",
                     l, before, after)
        else:
            tensors[f"layers.{l}.router.weight"] = rw.detach().numpy().astype(model.dtype)
        with torch.no_grad():
            oracle = float(_loss_mask(target[ev], ye[ev]))
        report.layers.append({"layer": l, "loss_before": before, "loss_after": min(before, after),
                              "loss_trained": after, "loss_greedy_oracle": oracle,
                              "sizes": [int(p.size) for p in parts[l]]})
        del ye
    report.train_s = round(time.perf_counter() - t0, 2)
    out = Model(moe.config, tensors, moe.experts, moe.tokenizer_path, moe.storage_dtype)
    return out, report
