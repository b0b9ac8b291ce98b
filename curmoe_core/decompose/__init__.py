"""curmoe.decompose: the maths of one matrix or expert (CUR, SVD, SVD-LLM whitening, neuron selection, statistics).

Owns: ``cur``, ``svd``, ``CalibStats``, the selection rules, parameter accounting, interpretability helpers, and the
synthetic side-by-side comparison. Imports only NumPy/SciPy and :mod:`curmoe.common`; knows nothing of models.
"""

from __future__ import annotations

from curmoe.decompose._calib import CalibStats
from curmoe.decompose._compare import (
           compare,
           format_table,
           synthetic_activations,
           synthetic_weight,
)
from curmoe.decompose._cur import U_METHODS, CURResult, cur
from curmoe.decompose._interpret import (
    energy_share,
    jaccard,
    jaccard_chance,
    jaccard_matrix,
    kept_columns,
    kept_rows,
)
from curmoe.decompose._neuron import RULES as NEURON_RULES
from curmoe.decompose._neuron import allocate, greedy_order, refit_down, select_neurons
from curmoe.decompose._neuron import output_error as neuron_output_error
from curmoe.decompose._params import n_params, rank_for_ratio
from curmoe.decompose._selection import SELECTIONS
from curmoe.decompose._svd import SVDResult, svd

__all__ = ["cur", "svd", "CURResult", "SVDResult", "CalibStats", "n_params", "rank_for_ratio", "kept_columns",
           "kept_rows", "jaccard", "jaccard_matrix", "jaccard_chance", "energy_share", "compare", "format_table", "synthetic_weight", "synthetic_activations", "SELECTIONS", "U_METHODS",
           "NEURON_RULES", "select_neurons", "refit_down", "greedy_order", "neuron_output_error", "allocate"]
