"""Neuron CUR of one expert: keep k real neurons (rows of W_gate and W_up), refit W_down on the kept activations.

Maths in :mod:`curmoe.decompose._neuron`: with H = sum_t g_t^2 h_t h_t^T the expert's gate-weighted intermediate
second moment, keeping neurons J and ``W_down' = W_down H[:, J] (H_JJ + lambda I)^-1`` leaves the output error
``tr(W_down S W_down^T)``, S the Schur complement of H_JJ. The expert becomes a smaller dense expert
(k rows of gate and up, k columns of down): 3 k d parameters (GELU: 2 k d) instead of 3 I d.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curmoe.common.checks import check_finite
from curmoe.common.errors import InvalidInputError
from curmoe.compress._configs import NeuronConfig
from curmoe.decompose import greedy_order, refit_down, select_neurons
from curmoe.decompose import neuron_output_error as output_error
from curmoe.reference import Linear, NeuronLinear

__all__ = ["neuron_expert", "neurons_for_ratio", "expert_error_curve"]


def neurons_for_ratio(d_ff: int, ratio: float, prefix: str) -> int:
    """Neurons each expert keeps at ``ratio``: floor((1 - ratio) d_ff), so at least ``ratio`` is removed."""
    k = int(np.floor((1.0 - ratio) * d_ff + 1e-9))
    if k < 1:
        raise InvalidInputError(
            f"ratio={ratio} leaves expert {prefix} (d_ff={d_ff}) with {k} neurons; pass ratio <= {1 - 1 / d_ff:.4f} "
            f"(keep at least one neuron) or allocation='global' with min_neurons >= 1")
    return k


def expert_error_curve(H: np.ndarray, W_down: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(greedy order (I,), output error after keeping 1..I neurons (I,), error with none kept = tr(W_down H W_down^T))."""
    order, err = greedy_order(H, W_down, H.shape[0])
    W = np.asarray(W_down, np.float64)
    return order, err, float(np.sum((W @ H) * W))


def neuron_expert(mats: dict[str, Linear], H: np.ndarray, k: int, cfg: NeuronConfig, prefix: str,
                  order: np.ndarray | None = None) -> tuple[dict[str, NeuronLinear], dict[str, Any]]:
    """Compress one expert given its dense matrices and its statistics H (I, I) float64.

    ``order``: a precomputed greedy order (nested, so its first k neurons are greedy's choice for k)."""
    check_finite(H, f"calibration activations of {prefix} (H)")
    down = np.asarray(mats["down"].dense())  # (d, I)
    I = down.shape[1]
    if not 1 <= k <= I:
        raise InvalidInputError(f"k={k} neurons cannot be kept from expert {prefix} with d_ff={I}: need 1 <= k <= {I}")
    if order is not None and cfg.selection == "greedy":
        J = np.asarray(order[:k], np.int64)
    else:
        J = select_neurons(H, down, k, cfg.selection)
    J = np.sort(J)  # index order: the kept neurons read in the order they had
    W_new = refit_down(H, down, J, ridge=cfg.ridge)  # (d, k) float64
    dtype = down.dtype
    new = {n: NeuronLinear(np.asarray(mats[n].dense())[J], J, "rows") for n in ("gate", "up") if n in mats}
    new["down"] = NeuronLinear(W_new.astype(dtype), J, "refit")
    err0 = float(np.sum((down.astype(np.float64) @ H) * down))
    err = output_error(H, down, J, W_new)
    rel = float(np.sqrt(err / err0)) if err0 > 0 else 0.0
    return new, {"kind": "neuron", "n_neurons": int(k), "neurons": J.tolist(), "output_error": rel}
