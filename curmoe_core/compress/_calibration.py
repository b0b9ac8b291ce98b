"""Calibration: the statistics of what each expert sees, gathered by running the reference model over text.

Per MoE layer l (float64, summed over tokens):
- ``inputs[key]``: the input second moment of expert matrix ``key`` over the tokens routed to its expert
  (gate and up share the input, so only ``.gate`` (SwiGLU) or ``.up`` (GELU) and ``.down`` are kept);
- ``hidden[prefix]``: the expert's intermediate activations h (I,) weighted by the gate value g each token gives
  the expert, ``H = sum_t g_t^2 h_t h_t^T`` (I, I): the output error of a neuron-pruned expert is measured in it,
  because the MoE block adds ``g_t * expert(x_t)`` (shared experts: g = 1);
- ``block``: all real tokens entering the block, and ``sample``, up to ``max_sample`` of them: the fallback for
  an expert that received fewer than ``min_tokens`` tokens (the record names every matrix that used it).

Two ways to run it: :func:`calibrate` runs the model once (every layer sees the dense model's hidden states), and
:func:`calibrate_layer` runs one layer on given hidden states, which the sequential mode of ``compress`` feeds
with the outputs of the layers it already compressed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from curmoe.common.errors import InvalidInputError
from curmoe.decompose import CalibStats
from curmoe.reference import Model, expert_forward
from curmoe.reference.names import layer_of

__all__ = ["LayerCalibration", "Calibration", "calibrate", "calibrate_layer", "check_calib_ids"]


@dataclass
class LayerCalibration:
    """One MoE layer's statistics (see the module docstring)."""

    layer: int
    inputs: dict[str, CalibStats] = field(default_factory=dict)
    hidden: dict[str, CalibStats] = field(default_factory=dict)
    block: CalibStats = field(default_factory=CalibStats)
    sample: list[np.ndarray] = field(default_factory=list)  # (n_i, d) float64 pieces, <= max_sample rows in all

    def stats_for(self, model: Model, key: str, min_tokens: int) -> tuple[CalibStats, str]:
        """Input statistics of matrix ``key``: its routed ones, or the layer-wide fallback when too few tokens."""
        prefix, name = key.rsplit(".", 1)
        swiglu = model.config.moe.activation == "swiglu"
        src = f"{prefix}.down" if name == "down" else f"{prefix}.{'gate' if swiglu else 'up'}"
        s = self.inputs.get(src)
        if s is not None and s.n_tokens >= min_tokens:
            return s, "routed"
        if name != "down":
            return self.block, "layer"
        return self._fallback_hidden(model, prefix), "layer"

    def hidden_for(self, model: Model, prefix: str, min_tokens: int) -> tuple[CalibStats, str]:
        """Gate-weighted intermediate statistics H of expert ``prefix``, or the layer-wide fallback (the expert
        applied to the layer's sample with weight 1) when it received fewer than ``min_tokens`` tokens."""
        s = self.hidden.get(prefix)
        if s is not None and s.n_tokens >= min_tokens:
            return s, "routed"
        return self._fallback_hidden(model, prefix), "layer"

    def _fallback_hidden(self, model: Model, prefix: str) -> CalibStats:
        mats = {n: model.experts[f"{prefix}.{n}"] for n in ("gate", "up", "down") if f"{prefix}.{n}" in model.experts}
        h: list[np.ndarray] = []
        sample = np.concatenate(self.sample).astype(model.dtype)
        expert_forward(sample, mats, model.config.moe.activation, prefix,
                       lambda k, X: h.append(X) if k.endswith(".down") else None)
        return CalibStats(h[0].shape[1]).update(h[0])


@dataclass
class Calibration:
    """Statistics of every MoE layer from one pass of a model, and the number of calibration tokens."""

    layers: dict[int, LayerCalibration]
    n_tokens: int


class _Collector:
    """The observer that fills :class:`LayerCalibration` objects (see ``curmoe.reference`` Observer)."""

    def __init__(self, layers: dict[int, LayerCalibration], swiglu: bool, max_sample: int) -> None:
        self.layers, self.swiglu, self.max_sample = layers, swiglu, max_sample
        self._weights: dict[str, np.ndarray] = {}  # expert prefix -> gate values of its current tokens

    def __call__(self, key: str, X: np.ndarray) -> None:
        lc = self.layers.get(layer_of(key))
        if lc is None:
            return
        if key.endswith(".moe_input"):
            lc.block.update(X)
            have = sum(len(a) for a in lc.sample)
            if have < self.max_sample:
                lc.sample.append(np.asarray(X[: self.max_sample - have], np.float64))
            return
        prefix, name = key.rsplit(".", 1)
        if name == "routing_weights":
            self._weights[prefix] = np.asarray(X, np.float64)
            return
        if name == "gate" or (name == "up" and not self.swiglu):
            lc.inputs.setdefault(key, CalibStats(X.shape[1])).update(X)
        elif name == "down":
            lc.inputs.setdefault(key, CalibStats(X.shape[1])).update(X)
            g = self._weights.pop(prefix, None)  # None for shared experts: weight 1
            Xw = X if g is None else np.asarray(X, np.float64) * g[:, None]  # (n_e, I) rows scaled by g_t
            lc.hidden.setdefault(prefix, CalibStats(X.shape[1])).update(Xw)


def check_calib_ids(calib_ids: object) -> np.ndarray:
    ids = np.asarray(calib_ids)
    if ids.ndim != 2 or ids.size == 0 or ids.dtype.kind not in "iu":
        raise InvalidInputError(f"calibration ids must be a non-empty (B, T) int array, got shape {ids.shape} "
                                f"dtype {ids.dtype}; pass token ids of calibration text (CLI: --calib wikitext2:train)")
    return ids


def _batches(n: int, batch_size: int, desc: str, progress: bool) -> tqdm:
    return tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress, leave=False)


def calibrate(model: Model, calib_ids: np.ndarray, *, batch_size: int = 8, max_sample: int = 4096,
              progress: bool = True) -> Calibration:
    """Run ``model`` over ``calib_ids`` (B, T) once and gather every MoE layer's statistics (float64)."""
    ids = check_calib_ids(calib_ids)
    cfg = model.config
    layers = {l: LayerCalibration(l) for l in range(cfg.n_layers) if cfg.layer_type(l) == "moe"}
    observe = _Collector(layers, cfg.moe.activation == "swiglu", max_sample)
    for s in _batches(ids.shape[0], batch_size, "calibrate", progress):
        model.run(ids[s : s + batch_size], observer=observe)
    return Calibration(layers, int(ids.size))


def calibrate_layer(model: Model, l: int, hidden: np.ndarray, calib_ids: np.ndarray, *, batch_size: int = 8,
                    max_sample: int = 4096, progress: bool = True) -> LayerCalibration:
    """Statistics of layer ``l`` of ``model`` fed with ``hidden`` (B, T, d), the inputs of that layer."""
    lc = LayerCalibration(l)
    observe = _Collector({l: lc}, model.config.moe.activation == "swiglu", max_sample)
    for s in _batches(calib_ids.shape[0], batch_size, f"calibrate layer {l}", progress):
        model.block(l, hidden[s : s + batch_size], calib_ids[s : s + batch_size], observer=observe)
    return lc
