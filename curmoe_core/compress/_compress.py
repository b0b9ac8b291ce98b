"""Whole-model compression: ``curmoe.compress(model, CURConfig(...) | SVDConfig(...))``.

Every routed expert matrix (gate, up, down; shared experts optionally) is replaced by CUR or SVD factors chosen to
remove at least ``ratio`` of its parameters (ratio = 1 - params(factors) / params(W), U counted). The same target
applies to each matrix, so the achieved ratio of expert parameters is at least the target; the result records it,
and the share of all parameters, in ``config.compression``.

Activation-aware mode runs the (dense) reference model over calibration tokens once and accumulates, per expert
matrix, float64 statistics of the inputs that matrix actually sees (the tokens routed to that expert). An expert
that received fewer than ``min_tokens`` tokens falls back to layer-wide statistics: all tokens entering the MoE
block for gate/up, and that expert's intermediate activations on a sample of those tokens for down. The record says
which source each matrix used. Calibration is one pass of the dense model (not layer-by-layer sequential).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from curmoe.common.checks import check_bool, check_choice, check_int, check_ratio
from curmoe.common.errors import InvalidInputError
from curmoe.decompose import SELECTIONS, U_METHODS, CalibStats, cur, svd
from curmoe.reference import (
    CURLinear,
    Linear,
    Model,
    SVDLinear,
    expert_forward,
    expert_keys,
)

__all__ = ["CURConfig", "SVDConfig", "compress", "register_compression", "calibrate"]

log = logging.getLogger(__name__)

_MATRICES = ("gate", "up", "down")


def _check_common(cfg: Any) -> None:
    """Every field of a compression config, checked when it is built (before any calibration work)."""
    check_ratio(cfg.ratio)
    bad = [m for m in cfg.matrices if m not in _MATRICES]
    if bad or not cfg.matrices:
        raise InvalidInputError(f"matrices={cfg.matrices!r}: choose a non-empty subset of {_MATRICES}")
    check_int(cfg.min_tokens, "min_tokens", lo=1)
    check_int(cfg.seed, "seed", lo=0)
    for name in ("activation_aware", "randomized", "include_shared"):
        check_bool(getattr(cfg, name), name)


@dataclass(frozen=True)
class CURConfig:
    """CUR compression of expert matrices (see ``curmoe.cur`` for the selection rules and U)."""

    ratio: float
    selection: str = "deim"
    u: str = "optimal"
    activation_aware: bool = False
    randomized: bool = True
    seed: int = 0
    fold_u: bool = False  # fold U into C for inference (C then no longer holds real columns)
    include_shared: bool = False
    matrices: tuple[str, ...] = _MATRICES
    min_tokens: int = 64  # fewer routed calibration tokens than this -> layer-wide statistics

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrices", tuple(self.matrices))
        _check_common(self)
        check_choice(self.selection, "selection", SELECTIONS)
        check_choice(self.u, "u", U_METHODS)
        check_bool(self.fold_u, "fold_u")

    method = "cur"


@dataclass(frozen=True)
class SVDConfig:
    """Truncated SVD of expert matrices; ``activation_aware`` gives SVD-LLM (truncation-aware whitening)."""

    ratio: float
    activation_aware: bool = False
    randomized: bool = False
    seed: int = 0
    include_shared: bool = False
    matrices: tuple[str, ...] = _MATRICES
    min_tokens: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrices", tuple(self.matrices))
        _check_common(self)

    method = "svd"


# A handler factorises one matrix: (W (m, n), stats or None, config) -> (Linear, record dict).
Handler = Callable[[np.ndarray, CalibStats | None, Any], tuple[Linear, dict[str, Any]]]
_HANDLERS: dict[type, Handler] = {}


def register_compression(config_cls: type) -> Callable[[Handler], Handler]:
    """Register the handler that factorises one matrix for configs of type ``config_cls``."""

    def deco(fn: Handler) -> Handler:
        _HANDLERS[config_cls] = fn
        return fn

    return deco


@register_compression(CURConfig)
def _cur_matrix(W: np.ndarray, stats: CalibStats | None, cfg: CURConfig) -> tuple[Linear, dict[str, Any]]:
    res = cur(W, ratio=cfg.ratio, selection=cfg.selection, u=cfg.u, randomized=cfg.randomized, seed=cfg.seed,
              calib=stats if cfg.activation_aware else None)
    if cfg.fold_u:
        res = res.folded_u()
    lin = CURLinear(res.C, res.U, res.R, np.asarray(res.rows, np.int64), np.asarray(res.cols, np.int64))
    spec = {"kind": "cur", "rank": int(res.rank), "n_cols": int(len(res.cols)), "folded": bool(cfg.fold_u)}
    return lin, spec | {"weight_error": float(res.weight_error), "output_error": res.output_error}


@register_compression(SVDConfig)
def _svd_matrix(W: np.ndarray, stats: CalibStats | None, cfg: SVDConfig) -> tuple[Linear, dict[str, Any]]:
    res = svd(W, ratio=cfg.ratio, randomized=cfg.randomized, seed=cfg.seed,
              calib=stats if cfg.activation_aware else None)
    spec = {"kind": "svd", "rank": int(res.rank)}
    return SVDLinear(res.A, res.B), spec | {"weight_error": float(res.weight_error), "output_error": res.output_error}


@dataclass
class Calibration:
    """Float64 input statistics per expert matrix key, plus layer-wide fallbacks."""

    routed: dict[str, CalibStats]  # "layers.{l}.experts.{e}.{gate|down}" (up shares gate's input)
    layer: dict[int, CalibStats]  # all real tokens entering MoE layer l
    layer_sample: dict[int, np.ndarray]  # (<= max_sample, d_model) float64 sample of those tokens
    n_tokens: int

    def stats_for(self, model: Model, key: str, min_tokens: int) -> tuple[CalibStats, str]:
        """Statistics for matrix ``key``: the routed ones, or the layer-wide fallback when too few tokens."""
        name = key.rsplit(".", 1)[1]
        src = key.rsplit(".", 1)[0] + (".down" if name == "down" else ".gate")
        s = self.routed.get(src)
        if s is not None and s.n_tokens >= min_tokens:
            return s, "routed"
        l = int(key.split(".")[1])
        if name != "down":
            return self.layer[l], "layer"
        # down's input is this expert's intermediate activation: recompute it on the layer sample.
        pre = key.rsplit(".", 1)[0]
        mats = {n: model.experts[f"{pre}.{n}"] for n in ("gate", "up", "down") if f"{pre}.{n}" in model.experts}
        h: list[np.ndarray] = []
        expert_forward(self.layer_sample[l].astype(model.dtype), mats, model.config.moe.activation, pre,
                       lambda k, X: h.append(X) if k.endswith(".down") else None)
        s = CalibStats(h[0].shape[1])
        s.update(h[0])
        return s, "layer"


def calibrate(model: Model, calib_ids: np.ndarray, *, batch_size: int = 8, max_sample: int = 4096,
              progress: bool = True) -> Calibration:
    """Run ``model`` over ``calib_ids`` (B, T) and gather per-expert input statistics (float64)."""
    ids = np.asarray(calib_ids)
    if ids.ndim != 2 or ids.size == 0:
        raise InvalidInputError(f"calibration ids must be a non-empty (B, T) int array, got shape {ids.shape}")
    routed: dict[str, CalibStats] = {}
    layer: dict[int, CalibStats] = {}
    sample: dict[int, list[np.ndarray]] = {}
    swiglu = model.config.moe.activation == "swiglu"

    def observe(key: str, X: np.ndarray) -> None:
        if key.endswith(".moe_input"):
            l = int(key.split(".")[1])
            layer.setdefault(l, CalibStats(X.shape[1])).update(X)
            have = sum(len(a) for a in sample.setdefault(l, []))
            if have < max_sample:
                sample[l].append(np.asarray(X[: max_sample - have], np.float64))
            return
        if swiglu and key.endswith(".up"):
            return  # same input as gate
        if not swiglu and key.endswith(".up"):
            key = key[: -len("up")] + "gate"
        routed.setdefault(key, CalibStats(X.shape[1])).update(X)

    batches = range(0, ids.shape[0], batch_size)
    for s in tqdm(batches, desc="calibrate", unit="batch", disable=not progress):
        model.run(ids[s : s + batch_size], observer=observe)
    return Calibration(routed, layer, {l: np.concatenate(v) for l, v in sample.items()}, int(ids.size))


def compress(
    model: Model,
    config: CURConfig | SVDConfig,
    *,
    calib_ids: np.ndarray | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> Model:
    """Return a new model whose expert matrices are factorised as ``config`` says.

    Args:
        model: a model with dense experts (compressing an already-compressed model is refused).
        config: ``CURConfig`` or ``SVDConfig`` (or any config type with a registered handler).
        calib_ids: (B, T) token ids for activation-aware mode (required then). Without activation awareness
            they are used only to report each matrix's output error.
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(c.__name__ for c in _HANDLERS)
        raise InvalidInputError(f"no compression registered for {type(config).__name__}; known configs: {known}")
    if config.activation_aware and calib_ids is None:
        raise InvalidInputError(
            "activation_aware=True needs calibration tokens: pass calib_ids=(B, T) token ids "
            "(CLI: --calib wikitext2:train or --calib FILE)"
        )
    if model.config.factors:
        raise InvalidInputError("this model is already compressed; compress the dense original instead")
    t0 = time.perf_counter()
    calib = calibrate(model, calib_ids, batch_size=batch_size, progress=progress) if calib_ids is not None else None
    keys = [k for k in expert_keys(model.config)
            if k.rsplit(".", 1)[1] in config.matrices and (".experts." in k or config.include_shared)]
    experts = dict(model.experts)
    factors: dict[str, dict[str, Any]] = {}
    per_matrix: dict[str, dict[str, Any]] = {}
    for key in tqdm(keys, desc=f"compress ({config.method})", unit="matrix", disable=not progress):
        W = model.experts[key].dense()
        stats, source = (None, None)
        if calib is not None:
            stats, source = calib.stats_for(model, key, config.min_tokens)
        lin, rec = handler(np.asarray(W), stats, config)
        if rec.get("output_error") is None and stats is not None:
            rec["output_error"] = stats.output_error(W, lin.dense())
        experts[key] = lin.astype(model.dtype)
        factors[key] = {k: rec[k] for k in ("kind", "rank", "n_cols", "folded") if k in rec}
        per_matrix[key] = rec | {"stats": source, "n_tokens": None if stats is None else int(stats.n_tokens)}
    before = model.n_expert_params(shared=config.include_shared)
    out = Model(model.config, model.tensors, experts, model.tokenizer_path)
    after = out.n_expert_params(shared=config.include_shared)
    record = {
        "method": config.method,
        "config": {k: v for k, v in asdict(config).items()},
        "target_ratio": config.ratio,
        "expert_params_before": before,
        "expert_params_after": after,
        "ratio_expert_params": 1.0 - after / before,
        "params_before": model.n_params(),
        "params_after": out.n_params(),
        "ratio_all_params": 1.0 - out.n_params() / model.n_params(),
        "calib_tokens": None if calib is None else calib.n_tokens,
        "fallback_matrices": sorted(k for k, r in per_matrix.items() if r["stats"] == "layer"),
        "time_s": time.perf_counter() - t0,
        "matrices": per_matrix,
    }
    # Normalise through JSON so the in-memory record equals what config.json will hold (tuples become lists).
    out.config = replace(model.config, factors=factors, compression=json.loads(json.dumps(record)))
    log.info("compressed %d matrices: %.1f%% of expert parameters removed (%.1f%% of all)",
             len(keys), 100 * record["ratio_expert_params"], 100 * record["ratio_all_params"])
    return out
