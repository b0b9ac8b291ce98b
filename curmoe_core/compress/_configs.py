"""Compression configs: frozen dataclasses that validate every field when built (before any calibration work).

Method names as users know them (``method`` in records and tables): ``cur`` (per-matrix CUR), ``svd`` (plain
truncated SVD), ``svd-llm`` (SVD with truncation-aware whitening: ``SVDConfig(activation_aware=True)``) and
``cur-neuron`` (neuron CUR: keep whole expert neurons, refit the down projection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from curmoe.common.checks import check_bool, check_choice, check_int, check_number, check_ratio
from curmoe.common.errors import InvalidInputError
from curmoe.decompose import NEURON_RULES, SELECTIONS, U_METHODS

__all__ = ["CURConfig", "SVDConfig", "NeuronConfig", "MATRICES", "ALLOCATIONS", "NEURON_RULES"]

MATRICES = ("gate", "up", "down")
ALLOCATIONS = ("uniform", "global")


def _check_common(cfg: Any) -> None:
    check_ratio(cfg.ratio)
    bad = [m for m in cfg.matrices if m not in MATRICES]
    if bad or not cfg.matrices:
        raise InvalidInputError(f"matrices={cfg.matrices!r}: choose a non-empty subset of {MATRICES}")
    check_int(cfg.min_tokens, "min_tokens", lo=1)
    check_int(cfg.seed, "seed", lo=0)
    for name in ("activation_aware", "randomized", "include_shared", "sequential"):
        check_bool(getattr(cfg, name), name)
    check_choice(cfg.allocation, "allocation", ALLOCATIONS)
    if cfg.sequential and not cfg.activation_aware:
        raise InvalidInputError("sequential=True calibrates each layer on the compressed layers before it; it needs "
                                "activation_aware=True (and calibration tokens)")


@dataclass(frozen=True)
class CURConfig:
    """Per-matrix CUR of expert matrices (see ``curmoe.cur`` for the selection rules and U).

    ``whiten=True`` selects columns and rows on the whitened matrix W L (L the Cholesky factor of the input second
    moment, as SVD-LLM whitens) instead of the diagonal column scaling W diag(sqrt(E[x^2])); it needs
    ``activation_aware``. ``allocation="global"`` is not offered for CUR (its error curve needs one CUR per rank).
    """

    ratio: float
    selection: str = "deim"
    u: str = "optimal"
    activation_aware: bool = False
    whiten: bool = False
    randomized: bool = True
    seed: int = 0
    fold_u: bool = False  # fold U into C for inference (C then no longer holds real columns)
    include_shared: bool = False
    matrices: tuple[str, ...] = MATRICES
    min_tokens: int = 64  # fewer routed calibration tokens than this -> layer-wide statistics
    sequential: bool = False
    allocation: str = "uniform"

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrices", tuple(self.matrices))
        _check_common(self)
        check_choice(self.selection, "selection", SELECTIONS)
        check_choice(self.u, "u", U_METHODS)
        check_bool(self.fold_u, "fold_u")
        check_bool(self.whiten, "whiten")
        if self.whiten and not self.activation_aware:
            raise InvalidInputError("whiten=True selects on the whitened matrix W L, which needs activation_aware=True")
        if self.allocation != "uniform":
            raise InvalidInputError(f"allocation={self.allocation!r} is not offered for per-matrix CUR; use "
                                    "'uniform' (global allocation is offered for svd-llm and cur-neuron)")

    @property
    def method(self) -> str:
        return "cur"


@dataclass(frozen=True)
class SVDConfig:
    """Truncated SVD of expert matrices; ``activation_aware`` gives SVD-LLM (truncation-aware whitening).

    ``allocation="global"`` spends the budget of all expert parameters across matrices, experts and layers by
    whitened error reduction per parameter (the same allocation neuron CUR gets, for a fair comparison)."""

    ratio: float
    activation_aware: bool = False
    randomized: bool = False
    seed: int = 0
    include_shared: bool = False
    matrices: tuple[str, ...] = MATRICES
    min_tokens: int = 64
    sequential: bool = False
    allocation: str = "uniform"
    min_rank: int = 1  # floor of the global allocation: no matrix is emptied

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrices", tuple(self.matrices))
        _check_common(self)
        check_int(self.min_rank, "min_rank", lo=1)
        if self.allocation == "global" and not self.activation_aware:
            raise InvalidInputError("allocation='global' ranks matrices by their calibrated output error; it needs "
                                    "activation_aware=True (svd-llm)")

    @property
    def method(self) -> str:
        return "svd-llm" if self.activation_aware else "svd"


@dataclass(frozen=True)
class NeuronConfig:
    """Neuron CUR: keep k real neurons of each expert (rows of W_gate and W_up, bit-identical) and refit W_down
    by ridge least squares on the expert's gate-weighted calibration activations (``curmoe.decompose`` neuron
    maths; MoDeGPT, arXiv 2408.09632). Always activation-aware: calibration tokens are required.

    Args:
        ratio: share of expert parameters to remove (each expert keeps ``floor((1 - ratio) * d_ff)`` neurons with
            ``allocation="uniform"``; the same total with ``"global"``).
        selection: "greedy" (forward selection on the output error, default), "energy", "leverage", "qdeim".
        ridge: refit regulariser, lambda = ridge * mean(diag(H_JJ)).
        allocation: "uniform" or "global" (neurons spent across experts and layers by output-error reduction per
            parameter, errors normalised per layer by the layer's dense expert-output energy).
        min_neurons: floor per expert under global allocation (no expert is emptied).
        sequential: calibrate layer l on the hidden states of the model whose layers < l are already compressed.
        gate_weighted: weight each token's activations by the gate value it gives the expert.
    """

    ratio: float
    selection: str = "greedy"
    ridge: float = 1e-3
    allocation: str = "uniform"
    min_neurons: int = 1
    sequential: bool = False
    gate_weighted: bool = True
    include_shared: bool = False
    min_tokens: int = 64
    seed: int = 0

    # fields the shared checks read
    activation_aware = True
    randomized = False
    matrices = MATRICES

    def __post_init__(self) -> None:
        _check_common(self)
        check_choice(self.selection, "selection", NEURON_RULES)
        check_number(self.ridge, "ridge", lo=0.0)
        check_int(self.min_neurons, "min_neurons", lo=1)
        check_bool(self.gate_weighted, "gate_weighted")

    @property
    def method(self) -> str:
        return "cur-neuron"
