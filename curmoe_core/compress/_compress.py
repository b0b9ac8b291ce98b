"""Whole-model compression: ``curmoe.compress(model, CURConfig | SVDConfig | NeuronConfig)``.

One verb; each config type has a registered handler. Per-matrix methods (CUR, SVD, SVD-LLM) factorise every
routed expert matrix (gate, up, down; shared experts optionally); neuron CUR compresses whole experts. With
``allocation="uniform"`` each matrix (expert) removes at least ``ratio`` of its parameters (ratio = 1 -
params(factors) / params(W), U counted, index vectors not); ``"global"`` spends the same total across layers,
experts and matrices (see ``_budget.py``). The result records the ratio reached over expert and all parameters.

Calibration (``_calibration.py``): one pass of the dense model (``sequential=False``), or layer by layer
(``sequential=True``): layer l is calibrated on the hidden states of the model whose layers < l are already
compressed, so each layer's factors are fitted to the inputs it will really see; the refit target is the dense
expert applied to those inputs. Global allocation decides sizes on a dense one-pass calibration first.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from curmoe.common.errors import InvalidInputError
from curmoe.compress._budget import neuron_allocation, svd_allocation
from curmoe.compress._calib_cache import cached_calibrate
from curmoe.compress._calibration import (
    Calibration,
    LayerCalibration,
    calibrate,
    calibrate_layer,
    check_calib_ids,
)
from curmoe.compress._configs import CURConfig, NeuronConfig, SVDConfig
from curmoe.compress._matrix import cur_matrix, svd_matrix
from curmoe.compress._neuron import neuron_expert, neurons_for_ratio
from curmoe.decompose import CalibStats
from curmoe.reference import Linear, Model, ModelConfig, expert_keys

__all__ = ["compress", "register_compression", "calibrate", "Calibration"]

log = logging.getLogger(__name__)

Config = CURConfig | SVDConfig | NeuronConfig
# A matrix handler factorises one matrix: (W (m, n), stats or None, config, rank or None) -> (Linear, record).
MatrixHandler = Callable[..., tuple[Linear, dict[str, Any]]]


@dataclass(frozen=True)
class _Method:
    unit: str  # "matrix" or "expert"
    handler: Callable[..., Any]


_METHODS: dict[type, _Method] = {}


def register_compression(config_cls: type, unit: str = "matrix") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the handler for configs of type ``config_cls``: ``unit="matrix"`` handlers factorise one matrix
    ``(W, stats, config, rank=None) -> (Linear, record)``; ``unit="expert"`` handlers one expert (see
    ``_neuron.neuron_expert``)."""
    if unit not in ("matrix", "expert"):
        raise InvalidInputError(f"unit={unit!r} must be 'matrix' or 'expert'")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _METHODS[config_cls] = _Method(unit, fn)
        return fn

    return deco


register_compression(CURConfig)(cur_matrix)
register_compression(SVDConfig)(svd_matrix)
register_compression(NeuronConfig, unit="expert")(neuron_expert)


def _units(model: Model, config: Config, unit: str) -> dict[int, list[str]]:
    """Per MoE layer, the matrix keys or expert prefixes to compress, in layer order."""
    keys = [k for k in expert_keys(model.config)
            if k.rsplit(".", 1)[1] in config.matrices and (".experts." in k or config.include_shared)]
    out: dict[int, list[str]] = {}
    for k in keys:
        name = k if unit == "matrix" else k.rsplit(".", 1)[0]
        lst = out.setdefault(int(k.split(".")[1]), [])
        if name not in lst:
            lst.append(name)
    return out


def _hidden_stats(cfg: NeuronConfig) -> Callable[[LayerCalibration, Model, str], tuple[CalibStats, str]]:
    if cfg.gate_weighted:
        return lambda lc, model, p: lc.hidden_for(model, p, cfg.min_tokens)
    return lambda lc, model, p: lc.stats_for(model, f"{p}.down", cfg.min_tokens)


def compress(model: Model, config: Config, *, calib_ids: np.ndarray | None = None, batch_size: int = 8,
             progress: bool = True, calib_cache: str | os.PathLike[str] | None = None,
             calib_source: str | None = None) -> Model:
    """Return a new model whose experts are compressed as ``config`` says.

    Args:
        model: a model with dense experts (compressing an already-compressed model is refused).
        config: ``CURConfig``, ``SVDConfig`` or ``NeuronConfig`` (or any config type with a registered handler).
        calib_ids: (B, T) token ids of calibration text; required for activation-aware methods (SVD-LLM, neuron
            CUR, activation-aware CUR). Otherwise they are used only to report each matrix's output error.
        calib_cache: a folder where the one-pass calibration is looked up and stored (``_calib_cache.py``; e.g.
            ``default_cache_dir()``); None calibrates without a cache. ``calib_source`` names the text in the entry.
    """
    method = _METHODS.get(type(config))
    if method is None:
        known = ", ".join(c.__name__ for c in _METHODS)
        raise InvalidInputError(f"no compression registered for {type(config).__name__}; known configs: {known}")
    if config.activation_aware and calib_ids is None:
        raise InvalidInputError(
            f"{config.method} needs calibration tokens: pass calib_ids=(B, T) token ids "
            "(CLI: --calib wikitext2:train or --calib FILE)"
        )
    if model.config.factors:
        raise InvalidInputError("this model is already compressed; compress the dense original instead")
    if not model.n_expert_params():
        raise InvalidInputError(
            "this model has no experts to compress (every FFN is dense); wrap each dense FFN as one always-on expert "
            "first: curmoe.models.pretrained.as_single_expert(model) (curmoe compress does this itself)")
    ids = None if calib_ids is None else check_calib_ids(calib_ids)
    t0 = time.perf_counter()
    units = _units(model, config, method.unit)
    one_pass = ids is not None and (not config.sequential or config.allocation == "global")
    calib, cache = (cached_calibrate(model, ids, cache_dir=calib_cache, batch_size=batch_size, progress=progress,
                                     source=calib_source) if one_pass
                    else (None, {"status": "no one-pass calibration"}))
    if config.sequential and ids is not None:  # layer l's statistics depend on the compressed layers < l
        cache["sequential"] = "per-layer statistics are not cacheable (they depend on the compressed layers)"
    sizes, orders = _allocate(model, config, calib, units)

    experts: dict[str, Linear] = dict(model.experts)
    current = Model(model.config, model.tensors, experts, model.tokenizer_path)  # sees each layer once compressed
    records: dict[str, dict[str, Any]] = {}
    hidden = model.embed(ids) if config.sequential else None
    bar = tqdm(total=sum(len(v) for v in units.values()), desc=f"compress ({config.method})",
               unit=method.unit, disable=not progress)
    for l in range(model.config.n_layers):
        lc: LayerCalibration | None = None
        if l in units and config.sequential:
            lc = calibrate_layer(current, l, hidden, ids, batch_size=batch_size, progress=progress)
        elif l in units and calib is not None:
            lc = calib.layers[l]
        for unit in units.get(l, []):
            new, recs = _compress_unit(model, config, method, unit, lc, sizes.get(unit), orders.get(unit))
            experts.update(new)
            records.update(recs)
            bar.update(1)
        if config.sequential:
            hidden = np.concatenate([current.block(l, hidden[s : s + batch_size], ids[s : s + batch_size])
                                     for s in range(0, ids.shape[0], batch_size)])
    bar.close()
    out = _finish(model, config, experts, records, calib, ids, time.perf_counter() - t0)
    # what the calibration cache did ("hit": the statistics were read, not computed)
    out.config = replace(out.config, compression=out.config.compression | {"calibration_cache": cache})
    return out


def _allocate(model: Model, config: Config, calib: Calibration | None, units: dict[int, list[str]]
              ) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Sizes per unit (rank or neurons) and cached greedy orders; empty for uniform allocation."""
    if config.allocation != "global":
        return {}, {}
    assert calib is not None  # configs refuse global allocation without activation awareness
    flat = [u for l in sorted(units) for u in units[l]]
    if isinstance(config, NeuronConfig):
        stats = _hidden_stats(config)
        return neuron_allocation(model, config, calib, flat, lambda lc, p: stats(lc, model, p)[0])
    if isinstance(config, SVDConfig):
        return svd_allocation(model, config, calib, flat, lambda lc, k: lc.stats_for(model, k, config.min_tokens)), {}
    raise InvalidInputError(f"allocation='global' is not offered for {type(config).__name__}")


def _stored(lin: Linear, model: Model) -> Linear:
    """``lin`` in the compute dtype, rounded through the storage dtype first (a float16 checkpoint computes in
    float32 but is saved as float16): the compressed model in memory computes exactly what its file will hold."""
    if model.storage_dtype is not None and model.storage_dtype != model.dtype:
        lin = lin.astype(model.storage_dtype)
    return lin.astype(model.dtype)


def _compress_unit(model: Model, config: Config, method: _Method, unit: str, lc: LayerCalibration | None,
                   size: int | None, order: np.ndarray | None) -> tuple[dict[str, Linear], dict[str, dict[str, Any]]]:
    """Compress one matrix or expert of the dense ``model``; returns its new Linears and per-matrix records."""
    if method.unit == "matrix":
        W = np.asarray(model.experts[unit].dense())
        stats, source = (None, None) if lc is None else lc.stats_for(model, unit, config.min_tokens)
        lin, rec = method.handler(W, stats, config, rank=size)
        if rec.get("output_error") is None and stats is not None:
            rec["output_error"] = stats.output_error(W, lin.dense())
        n_tok = None if stats is None else int(stats.n_tokens)
        return {unit: _stored(lin, model)}, {unit: rec | {"stats": source, "n_tokens": n_tok}}
    assert lc is not None  # expert methods are activation-aware
    mats = {n: model.experts[f"{unit}.{n}"] for n in ("gate", "up", "down") if f"{unit}.{n}" in model.experts}
    stats, source = _hidden_stats(config)(lc, model, unit)  # type: ignore[arg-type]
    d_ff = mats["down"].shape[1]
    k = size if size is not None else neurons_for_ratio(d_ff, config.ratio, unit)
    new, rec = method.handler(mats, stats.gram, k, config, unit, order)
    recs = {f"{unit}.{n}": {"kind": "neuron", "role": lin.role, "n_neurons": int(k)} for n, lin in new.items()}
    recs[f"{unit}.down"] |= {"neurons": rec["neurons"], "output_error": rec["output_error"], "stats": source,
                            "n_tokens": int(stats.n_tokens)}
    return {f"{unit}.{n}": _stored(lin, model) for n, lin in new.items()}, recs


_SPEC_KEYS = ("kind", "rank", "n_cols", "folded", "n_neurons", "role")


def _finish(model: Model, config: Config, experts: dict[str, Linear], per_matrix: dict[str, dict[str, Any]],
            calib: Calibration | None, ids: np.ndarray | None, seconds: float) -> Model:
    out = Model(model.config, model.tensors, experts, model.tokenizer_path, model.storage_dtype)
    counts = (model.n_expert_params(shared=config.include_shared), out.n_expert_params(shared=config.include_shared),
              model.n_params(), out.n_params())
    out.config = _compressed_config(model.config, config, per_matrix, counts, ids, seconds)
    return out


def _compressed_config(base: ModelConfig, config: Config, per_matrix: dict[str, dict[str, Any]],
                       counts: tuple[int, int, int, int], ids: np.ndarray | None, seconds: float) -> ModelConfig:
    """``base`` with the factors and the compression record; ``counts`` = (expert params before, after, all params
    before, after). Shared with the streamed path (``_stream.py``), which counts without holding the model."""
    factors = {k: {f: r[f] for f in _SPEC_KEYS if f in r} for k, r in per_matrix.items()}
    before, after, all_before, all_after = counts
    record = {
        "method": config.method,
        "config": asdict(config),
        "target_ratio": config.ratio,
        "expert_params_before": before,
        "expert_params_after": after,
        "ratio_expert_params": 1.0 - after / before,
        "params_before": all_before,
        "params_after": all_after,
        "ratio_all_params": 1.0 - all_after / all_before,
        "calib_tokens": None if ids is None else int(ids.size),
        "calibration": "sequential" if config.sequential else ("one-pass" if ids is not None else "none"),
        "fallback_matrices": sorted(k for k, r in per_matrix.items() if r.get("stats") == "layer"),
        "time_s": seconds,
        "matrices": per_matrix,
    }
    log.info("compressed with %s: %.1f%% of expert parameters removed (%.1f%% of all)",
             config.method, 100 * record["ratio_expert_params"], 100 * record["ratio_all_params"])
    # Normalise through JSON so the in-memory record equals what config.json will hold (tuples become lists).
    return replace(base, factors=factors, compression=json.loads(json.dumps(record)))
