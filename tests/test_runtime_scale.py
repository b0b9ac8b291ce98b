"""benchmarks/runtime_scale.py's models and roofline, and its results page (curmoe.app.report_runtime_scale)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

import curmoe
from curmoe.app.bench import decode_bytes
from curmoe.app.report_runtime_scale import layout_choices, runtime_scale_page, scale_targets
from tests.babies import baby_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rs():
    spec = importlib.util.spec_from_file_location("runtime_scale", ROOT / "benchmarks" / "runtime_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dense():
    return curmoe.Model.random(baby_config(moe=dict(n_experts=8, d_ff=24), router=dict(top_k=2)), seed=0)


@pytest.mark.parametrize("method", ["svd", "cur", "cur-neuron"])
def test_random_factor_models_have_compressed_shapes_and_run(tmp_path, rs, method):
    """The benchmark's compressed rows: curmoe's rank rule at the ratio, a valid model that exports and validates."""
    pytest.importorskip("onnxruntime")
    from curmoe.exporters import OnnxExportConfig, export
    from curmoe.runtimes import validate

    dense = _dense()
    shapes = {k: lin.shape for k, lin in dense.experts.items()}
    m = rs.compressed_model(dense.config, dense.tensors, shapes, method, 0.5)
    got = 1 - sum(x.n_params for x in m.experts.values()) / sum(a * b for a, b in shapes.values())
    assert got == pytest.approx(m.config.compression["ratio_expert_params"])
    assert 0.45 <= got <= 0.6  # rounding the rank down removes at least the target
    if method == "cur-neuron":
        k = math.floor(0.5 * 24)
        assert all(x.W.shape in ((k, 16), (16, k)) for x in m.experts.values())
    else:
        ref = curmoe.compress(dense, curmoe.CURConfig(ratio=0.5) if method == "cur" else curmoe.SVDConfig(ratio=0.5),
                              progress=False)  # the same shapes as real compression
        for key, lin in m.experts.items():
            assert {n: a.shape for n, a in lin.tensors().items()} == \
                   {n: a.shape for n, a in ref.experts[key].tensors().items()}, key
    p = export(m, OnnxExportConfig(), tmp_path / "m.onnx")
    assert validate(p, m, "onnxruntime:cpu", decode_steps=2).passed


def test_step_bytes_is_bench_decode_bytes_at_batch_1_and_grows_with_batch(rs):
    dense = _dense()
    assert rs.step_bytes(dense, 1, 4) == decode_bytes(dense, 4)
    E, k = 8, 2
    per_expert = 3 * 24 * 16
    extra = (E * (1 - (1 - k / E) ** 8) - k) * per_expert * dense.config.n_layers
    assert rs.step_bytes(dense, 8, 4) - rs.step_bytes(dense, 1, 4) == pytest.approx(4 * (extra + 7 * 16), abs=8)
    assert rs.step_bytes(dense, 1, 2) * 2 == pytest.approx(rs.step_bytes(dense, 1, 4), abs=2)


def _row(name, model, b1, nbytes, export=None, **kw):
    r = {"row": name, "model": model, "export": export or {}, "decode_b1_tok_s": b1, "roofline_b1_tok_s": 1e10 / nbytes,
         "roofline_b1_frac": b1 * nbytes / 1e10, "step_bytes_b1": nbytes, "decode_b8_tok_s": 4 * b1,
         "roofline_b8_frac": 0.5, "prefill_128_ms": 10.0, "prefill_1024_ms": 100.0 / b1}
    return r | kw


def _data():
    rows = [_row("ORT cpu fp32 dense", "dense", 10.0, 1e9),
            _row("ORT cpu fp32 cur-neuron70", "cur-neuron70", 20.0, 1e8),
            _row("ORT cpu fp32 cur-neuron70 fused MoE", "cur-neuron70", 26.0, 1e8, {"fused_moe": True}),
            _row("ORT cpu fp32 cur70", "cur70", 12.0, 4e8, {"fold_u": False}),
            _row("ORT cpu fp32 cur70 fold_u", "cur70", 21.0, 4e8, {"fold_u": True}),
            _row("ORT cpu fp32 svd70", "svd70", 15.0, 4e8),
            {"row": "OpenVINO cpu f32 svd70", "model": "svd70", "error": "RuntimeError: boom"}]
    run = {"provenance": {"command": "python benchmarks/runtime_scale.py", "commit": "abc", "utc": "now"},
           "config": {"d_model": 2048, "n_heads": 16, "n_kv_heads": 16, "moe": {"n_experts": 64, "d_ff": 1024,
                                                                                  "router": {"top_k": 8}}},
           "layers": 1, "vocab": 8192, "threads": 1, "decode_steps": 8, "repeats": 5, "long_repeats": 1,
           "prefill_lengths": [128, 1024], "bandwidth": 1e10, "bandwidth_end": 9e9,
           "models": {"dense": {"params": 4.5e8, "expert_params": 4e8}}, "rows": rows}
    return {"provenance": run["provenance"], "shapes": {"olmoe": run}, "rows": rows}


def test_targets_and_layouts_from_rows():
    run = _data()["shapes"]["olmoe"]
    t = {x["model"]: x for x in scale_targets(run)}
    assert t["cur-neuron70"]["row"].endswith("fused MoE")  # the fastest layout is the one judged
    assert t["cur-neuron70"]["speedup"] == pytest.approx(2.6) and t["cur-neuron70"]["roofline_speedup"] == 10
    assert t["cur-neuron70"]["roofline_frac"] == pytest.approx(0.26)
    assert not t["cur-neuron70"]["met"]  # fast enough against dense (2.6x >= 2.5x), but 26% < 60% of its roofline
    assert t["cur70"]["met"] and t["cur70"]["speedup"] == pytest.approx(2.1)
    assert not t["svd70"]["met"]
    lay = {(x["model"], x["layout"]): x for x in layout_choices(run)}
    assert lay["cur70", "U folded into C"]["b1"] == pytest.approx(21 / 12)
    assert lay["cur-neuron70", "fused com.microsoft.MoE"]["b1"] == pytest.approx(1.3)


def test_page_states_targets_failures_and_source():
    text = runtime_scale_page(_data(), "runtime_scale.png")
    assert "python benchmarks/runtime_scale.py" in text and "abc" in text
    assert "failed: RuntimeError: boom" in text
    assert "**missed**" in text and "**met**" in text
    assert "![decode tok/s at batch 1 against the roofline](runtime_scale.png)" in text
    assert np.isfinite(float(text.split("| ORT cpu fp32 cur70 fold_u | 21.00 | ")[1].split(" |")[0]))


def test_benchmark_end_to_end_on_a_baby_shape(tmp_path, rs):
    """The whole script on a tiny shape: every row measured or its error recorded, results merged by shape."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "r.json"
    common = ["--shape", "baby", "--layers", "1", "--vocab", "256", "--steps", "2", "--repeats", "1",
              "--prefill", "16", "--skip-openvino", "--no-fp16", "--ratios", "70", "--out", str(out)]
    assert rs.main(common + ["--only", "dense,cur70,cur-neuron70"]) == 0
    from curmoe.app.results import read_results

    data = read_results(out)
    rows = {r["row"]: r for r in data["shapes"]["baby"]["rows"]}
    assert set(rows) == {"ORT cpu fp32 dense", "ORT cpu fp32 dense fused MoE", "ORT cpu fp32 cur70",
                         "ORT cpu fp32 cur70 fold_u", "ORT cpu fp32 cur-neuron70", "ORT cpu fp32 cur-neuron70 fused MoE"}
    for r in rows.values():
        assert "error" not in r, r
        assert r["decode_b1_tok_s"] > 0 and r["decode_b8_tok_s"] > 0 and r["prefill_16_ms"] > 0
        assert 0 < r["roofline_b1_frac"] == pytest.approx(r["decode_b1_tok_s"] / r["roofline_b1_tok_s"])
    # the paired measurement: every ORT fp32 layout of a model alternated with dense, stored beside the table
    assert rs.main(common + ["--paired", "cur-neuron70"]) == 0
    pairs = read_results(out)["paired"]["baby"]["pairs"]
    assert [p["layout"] for p in pairs] == ["ORT cpu fp32 cur-neuron70", "ORT cpu fp32 cur-neuron70 fused MoE"]
    for p in pairs:
        assert len(p["ratios"]) == 1 and p["ratio_best"] == pytest.approx(p["tok_s"] / p["dense_tok_s"])
    # a surrogate dense row (2 experts, same top-2): batch 1 only, marked; the paired results are kept
    assert rs.main(common + ["--only", "dense", "--dense-experts", "2", "--no-fused-dense"]) == 0
    data = read_results(out)
    (row,) = data["shapes"]["baby"]["rows"]
    assert row["dense_experts"] == 2 and "decode_b8_tok_s" not in row
    assert "surrogate" in runtime_scale_page(data, None) and data["paired"]["baby"]["pairs"] == pairs


def test_paired_ratio_decides_the_target():
    run = _data()["shapes"]["olmoe"]
    pairs = {"rounds": 3, "steps": 4, "pairs": [{"model": "svd70", "dense_tok_s": 10, "tok_s": 22, "ratio_median": 2.2,
                                                "ratio_best": 2.2, "ratios": [2.2] * 3}],
             "provenance": {"command": "python benchmarks/runtime_scale.py --paired svd70"}}
    t = {x["model"]: x for x in scale_targets(run, pairs)}
    assert t["svd70"]["speedup"] == pytest.approx(1.5) and t["svd70"]["paired_speedup"] == 2.2 and t["svd70"]["met"]
    assert t["cur70"]["paired_speedup"] is None and t["cur70"]["met"]
    text = runtime_scale_page(_data() | {"paired": {"olmoe": pairs}}, None)
    assert "--paired svd70" in text and "| svd70 | 10.00 | 22.00 | 2.20 | 2.20 |" in text


def test_roofline_uses_the_highest_bandwidth_seen_in_the_run():
    from curmoe.app.report_runtime_scale import best_bandwidth, with_roofline

    run = _data()["shapes"]["olmoe"]
    run["rows"][1]["bandwidth_row"] = 2e10
    assert best_bandwidth(run) == 2e10
    r = with_roofline(run)["rows"][0]  # dense: 1e9 bytes a step
    assert r["roofline_b1_tok_s"] == pytest.approx(20.0) and r["roofline_b1_frac"] == pytest.approx(0.5)


def test_an_unpaired_ratio_above_the_byte_roofline_is_not_judged():
    run = _data()["shapes"]["olmoe"]
    run["rows"][5] = _row("ORT cpu fp32 svd70", "svd70", 40.0, 4e8)  # 4x dense with 2.5x fewer bytes
    t = {x["model"]: x for x in scale_targets(run)}
    assert t["svd70"]["met"] is None
    assert "not judged" in runtime_scale_page(_data() | {"shapes": {"olmoe": run}}, None)
