"""The demo's building blocks: the side-by-side decomposition comparison and the model stage on a baby model."""

from __future__ import annotations

import numpy as np

from curmoe.decompose._compare import (
    METHODS,
    compare,
    format_table,
    synthetic_activations,
    synthetic_weight,
)


def test_synthetic_weight_has_the_requested_spectrum():
    W = synthetic_weight(64, 160, alpha=1.0, noise=0.0, dtype=np.float64)
    s = np.linalg.svd(W, compute_uv=False)
    np.testing.assert_allclose(s, (1.0 + np.arange(64)) ** -1.0, rtol=1e-10)


def test_compare_runs_every_method_and_orders_errors_sensibly():
    W = synthetic_weight(48, 132, dtype=np.float64)
    X = synthetic_activations(512, 132, dtype=np.float64)
    rows = compare(W, X, [0.5])
    by = {r.method: r for r in rows}
    assert set(by) == set(METHODS)
    for r in rows:
        assert r.ratio >= 0.5 and r.weight_error > 0 and r.output_error > 0
    # SVD is weight-optimal at its rank; the whitened variants win on output error.
    assert by["svd"].weight_error <= min(r.weight_error for r in rows if r.method != "svd") + 1e-12
    assert by["svd-llm"].output_error < by["svd"].output_error
    assert by["deim-aware"].output_error < by["deim"].output_error
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| 0.50 | seed |" in table
