"""curmoe.decompose: the maths of factorising one matrix (CUR, SVD, SVD-LLM whitening, calibration statistics).

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
from curmoe.decompose._interpret import jaccard, kept_columns, kept_rows
from curmoe.decompose._params import n_params, rank_for_ratio
from curmoe.decompose._selection import SELECTIONS
from curmoe.decompose._svd import SVDResult, svd

__all__ = ["cur", "svd", "CURResult", "SVDResult", "CalibStats", "n_params", "rank_for_ratio", "kept_columns",
           "kept_rows", "jaccard", "compare", "format_table", "synthetic_weight", "synthetic_activations", "SELECTIONS", "U_METHODS"]
