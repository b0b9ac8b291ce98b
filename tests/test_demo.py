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


def test_model_demo_runs_the_main_job_end_to_end(tmp_path):
    """`curmoe demo`'s model stage (the README's main job) on the shipped tiny model: neuron-CUR compression,
    ONNX export, validation on every runtime here, perplexity and text (the built-in sample text keeps it short)."""
    import pytest

    pytest.importorskip("onnxruntime")
    pytest.importorskip("tokenizers")
    from curmoe.app.demo import format_model_demo, model_demo, shipped_model_dir

    lines: list[str] = []
    steps: list[str] = []

    def on_row(line: str) -> None:
        lines.append(line)
        if line.startswith("| dense |"):  # the first row is printed before the compressed model exists
            assert not any("compressing" in s for s in steps)

    out = model_demo(shipped_model_dir("wt2-moe-tiny"), ratios=(0.7,), data_dir=str(tmp_path / "no-data"),
                     workdir=tmp_path / "work", on_row=on_row, status=steps.append)
    # printed piece by piece as it went: the same text as the whole output formatted at the end
    assert "\n".join(lines) == format_model_demo(out)
    assert steps[-1].split("] ", 1)[1].startswith("model stage done") and len(steps) >= 8
    assert all(s.startswith("[") and " s] " in s for s in steps)
    assert set(out["timings_s"]) >= {"compress", "validate", "perplexity", "total"}
    # Core ML and bf16 extras only on the most compressed model (see demo.py); the second compression would read
    # the calibration cache (one ratio here: stored)
    assert "coreml" not in out["rows"][0] and "coreml" in out["rows"][-1]
    assert out["rows"][-1]["calibration_cache"] == "stored"
    rows = {r["model"]: r for r in out["rows"]}
    assert set(rows) == {"dense", "cur-neuron70"}
    assert rows["cur-neuron70"]["ratio_expert_params"] >= 0.7 - 1e-9
    for r in rows.values():
        assert r["validation"]["onnxruntime:cpu"]["passed"], r["validation"]
        assert np.isfinite(r["ppl"]["ppl_token"]) and len(r["samples"]) == 2
    assert rows["cur-neuron70"]["ppl"]["ppl_token"] > rows["dense"]["ppl"]["ppl_token"] * 0.9
    assert "built-in sample" in out["eval_split"]
    table = format_model_demo(out)
    assert "| cur-neuron70 |" in table and "PASS" in table


def test_quiet_third_party_hides_progress_bars_unless_the_block_fails(capsys):
    import sys

    import pytest
    from tqdm import tqdm

    from curmoe.app.demo import quiet_third_party

    with quiet_third_party():
        for _ in tqdm(range(3), desc="Running MIL default pipeline"):
            pass
        print("a warning", file=sys.stderr)
    assert capsys.readouterr().err == ""
    with pytest.raises(RuntimeError), quiet_third_party():
        print("what went wrong", file=sys.stderr)
        raise RuntimeError("boom")
    assert "what went wrong" in capsys.readouterr().err


def test_decomposition_demo_prints_each_ratio_table_when_ready():
    from curmoe.app.demo import decomposition_demo

    tables: list[str] = []
    seen: list[str] = []
    out = decomposition_demo(24, 40, ratios=(0.5, 0.7), n_tokens=64, say=seen.append,
                             on_table=lambda t: tables.append((t, len(seen))))
    assert len(tables) == 2 and tables[0][1] == 1 + 9  # the 0.5 table came right after the 0.5 methods ran
    assert "\n".join(t for t, _ in tables) == out["table"]  # one header, then both ratios' rows
