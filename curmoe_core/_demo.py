"""``curmoe demo``: the main job, staged on what is available here.

1. Decompositions on one matrix of a realistic shape: every method side by side (time, weight and output error).
2. The shipped model (``models/wt2-moe-8x``), when present: activation-aware CUR at 50% and 70% of expert
   parameters, perplexity on WikiText-2 valid (or on a short built-in sample, clearly labelled, when the data is
   not available), and a few generated lines from each model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from curmoe._compare import compare, format_table, synthetic_activations, synthetic_weight

__all__ = ["decomposition_demo"]

log = logging.getLogger(__name__)


def decomposition_demo(m: int = 1024, n: int = 2816, ratios: tuple[float, ...] = (0.5, 0.7), n_tokens: int = 4096,
                       say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Every decomposition method on one synthetic (m, n) weight with anisotropic activations."""
    W = synthetic_weight(m, n)
    X = synthetic_activations(n_tokens, n)
    rows = compare(W, X, ratios, progress=lambda s: say(f"  {s}"))
    return {"shape": [m, n], "n_tokens": n_tokens, "rows": [r.__dict__ for r in rows], "table": format_table(rows)}
