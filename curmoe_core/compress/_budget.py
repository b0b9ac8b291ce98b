"""One global budget: a target share of all expert parameters, spent across layers, experts and matrices by error
reduction per parameter (convex-hull marginal analysis, :func:`curmoe.decompose._neuron.allocate`), with floors
so that no expert or matrix is emptied.

- Neuron CUR: one curve per expert, its greedy output error after keeping 1..d_ff neurons, in the units of the
  residual stream summed over the expert's calibration tokens and weighted by their gate values squared, so the
  routing mass an expert carries is in the curve; a neuron costs 3 d parameters (GELU: 2 d).
- SVD-LLM: one curve per matrix, the relative whitened error ``sum_{i>r} s_i^2 / sum s_i^2`` (Eckart-Young of
  W S) times the expert's share of the layer's routed tokens; a rank costs m + n parameters. (gate/up outputs and
  down outputs live in different spaces, hence the relative errors.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curmoe.compress._calibration import Calibration
from curmoe.compress._configs import NeuronConfig, SVDConfig
from curmoe.compress._matrix import svd_error_curve
from curmoe.compress._neuron import expert_error_curve
from curmoe.decompose import allocate
from curmoe.reference import Model
from curmoe.reference.names import layer_of

__all__ = ["neuron_allocation", "svd_allocation"]


def neuron_allocation(model: Model, cfg: NeuronConfig, calib: Calibration, prefixes: list[str],
                      stats_of: Any) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Neurons per expert ({prefix: k}) and each expert's greedy order ({prefix: order})."""
    curves, costs, orders = [], [], {}
    total = 0
    for p in prefixes:
        H = stats_of(calib.layers[layer_of(p)], p).gram
        down = np.asarray(model.experts[f"{p}.down"].dense())
        order, err, _ = expert_error_curve(H, down)
        orders[p] = order
        n_mats = sum(f"{p}.{n}" in model.experts for n in ("gate", "up", "down"))
        d = down.shape[0]
        curves.append(err)
        costs.append(n_mats * d)
        total += n_mats * d * down.shape[1]
    budget = (1.0 - cfg.ratio) * total
    k = allocate(curves, costs, budget, floors=cfg.min_neurons)
    return dict(zip(prefixes, k)), orders


def svd_allocation(model: Model, cfg: SVDConfig, calib: Calibration, keys: list[str], stats_of: Any
                   ) -> dict[str, int]:
    """Rank per matrix ({key: rank}) for SVD-LLM under one global budget."""
    curves, costs = [], []
    total = 0
    layer_tokens = {l: max(lc.block.n_tokens, 1) for l, lc in calib.layers.items()}
    for key in keys:
        stats, _ = stats_of(calib.layers[layer_of(key)], key)
        W = np.asarray(model.experts[key].dense())
        m, n = W.shape
        mass = min(stats.n_tokens / layer_tokens[layer_of(key)], 1.0)
        curves.append(svd_error_curve(W, stats) * mass)
        costs.append(m + n)
        total += m * n
    ranks = allocate(curves, costs, (1.0 - cfg.ratio) * total, floors=cfg.min_rank)
    return dict(zip(keys, ranks))
