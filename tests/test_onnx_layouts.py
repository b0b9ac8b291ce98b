"""ONNX export layouts chosen by measurement (issue 15 item 2; docs/runtime_scale.md): CUR's U folded into C at
export (the default; the checkpoint untouched), neuron-pruned experts through ONNX Runtime's fused
``com.microsoft.MoE`` (zero-padded to the widest expert, streamed part by part into the external data file).
Every layout is checked against the float64 reference, as every other export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import curmoe  # noqa: E402
from curmoe import CURLinear  # noqa: E402
from curmoe.exporters import OnnxExportConfig, export  # noqa: E402
from curmoe.runtimes import validate  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from tests.babies import VARIANTS, baby_model, random_ids  # noqa: E402


def initializers(path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))  # external data loaded from beside the file
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def cur_model(ratio: float = 0.5, **kw) -> curmoe.Model:
    return curmoe.compress(baby_model(dtype=np.float32, **kw), curmoe.CURConfig(ratio=ratio), progress=False)


def neuron_model(allocation: str, **kw) -> curmoe.Model:
    model = baby_model(dtype=np.float32, **kw)
    return curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5, allocation=allocation),
                           calib_ids=random_ids(model, 16, 16, seed=3), progress=False)


def test_fold_u_is_the_default_and_leaves_the_checkpoint_untouched(tmp_path):
    model = cur_model()
    before = {k: lin.U.copy() for k, lin in model.experts.items()}
    p = export(model, OnnxExportConfig(), tmp_path / "m.onnx")
    inits = initializers(p)
    for key, lin in model.experts.items():
        assert isinstance(lin, CURLinear) and lin.U is not None
        np.testing.assert_array_equal(lin.U, before[key])  # the model (checkpoint) still holds C, U, R
        assert f"{key}.U" not in inits
        m, r = lin.C.shape[0], lin.R.shape[0]
        assert inits[f"{key}.C"].shape == (m, r)
        # C @ U folded in float64, then stored in the export dtype
        np.testing.assert_allclose(inits[f"{key}.C"], (lin.C.astype(np.float64) @ lin.U).astype(np.float32),
                                   rtol=0, atol=0)
    meta = {q.key: q.value for q in onnx.load(str(p), load_external_data=False).metadata_props}
    assert json.loads(meta["curmoe.export"])["fold_u"] is True
    lin = model.experts["layers.1.experts.0.gate"]
    assert json.loads(meta["curmoe.cur_indices"])["layers.1.experts.0.gate"] == {"rows": lin.rows.tolist(),
                                                                                  "cols": lin.cols.tolist()}


def test_folded_export_reads_fewer_bytes(tmp_path):
    """Folding drops U and shrinks C from (m, c) to (m, r): m r + r n instead of m c + c r + r n per matrix."""
    model = cur_model()
    sizes = {}
    for fold in (False, True):
        inits = initializers(export(model, OnnxExportConfig(fold_u=fold), tmp_path / f"{fold}.onnx"))
        sizes[fold] = sum(a.nbytes for k, a in inits.items() if ".experts." in k)
    want = {False: sum(lin.n_params for lin in model.experts.values()) * 4,
            True: sum((lin.C.shape[0] + lin.R.shape[1]) * lin.rank for lin in model.experts.values()) * 4}
    assert sizes == want and sizes[True] < sizes[False]


@pytest.mark.parametrize("variant", ["mixtral", "olmoe_shape"])
@pytest.mark.parametrize("dispatch", ["sparse", "dense"])
def test_folded_cur_matches_reference(tmp_path, variant, dispatch):
    """The default (folded) layout at real head/expert counts; U kept is covered by tests/test_onnx_export.py."""
    model = cur_model(**VARIANTS[variant])
    p = export(model, OnnxExportConfig(dispatch=dispatch), tmp_path / "m.onnx")
    report = validate(p, model, "onnxruntime:cpu", decode_steps=3)
    assert report.passed, report


def test_float16_folded_matches_reference(tmp_path):
    model = cur_model()
    p = export(model, OnnxExportConfig(dtype="float16"), tmp_path / "h.onnx")
    assert not any(k.endswith(".U") for k in initializers(p))
    report = validate(p, model, "onnxruntime:cpu", decode_steps=3)
    assert report.passed, report


@settings(max_examples=8)
@given(ratio=st.sampled_from([0.3, 0.5, 0.7]), d_ff=st.integers(12, 40), seed=st.integers(0, 3))
def test_fold_equals_unfolded_graph(tmp_path_factory, ratio, d_ff, seed):
    """Property: folded and unfolded graphs compute the same map (same weights, same inputs) within float32."""
    tmp = tmp_path_factory.mktemp("fold")
    model = curmoe.compress(baby_model(seed=seed, dtype=np.float32, moe=dict(d_ff=d_ff)),
                            curmoe.CURConfig(ratio=ratio), progress=False)
    ids = random_ids(model, 2, 5, seed=seed)
    out = {}
    for fold in (False, True):
        s = curmoe.runtimes.load(export(model, OnnxExportConfig(fold_u=fold, with_cache=False), tmp / f"{fold}.onnx"),
                                 "onnxruntime:cpu", optimization="disable")
        out[fold] = s.run({"input_ids": ids, "attention_mask": np.ones_like(ids)}, ["logits"])["logits"]
    scale = np.abs(out[False]).max()
    np.testing.assert_allclose(out[True], out[False], rtol=0, atol=2e-5 * scale)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_fused_neuron_layout_is_padded_exactly(tmp_path, allocation):
    """fc1 rows interleave gate and up ([g0, u0, g1, u1, ...]) and fc2 holds down, each expert zero-padded to the
    widest; the file runs through ORT's fused MoE and matches the reference (routing first, then logits)."""
    model = neuron_model(allocation, router=dict(normalize=True))
    cfg = model.config
    widths = [model.experts[f"layers.0.experts.{e}.down"].shape[1] for e in range(cfg.moe.n_experts)]
    if allocation == "global":
        assert len(set(widths)) > 1, "the global budget should give experts different widths here"
    p = export(model, OnnxExportConfig(fused_moe=True), tmp_path / "f.onnx")
    inits = initializers(p)
    f = max(widths)
    fc1, fc2 = inits["layers.0.experts.fc1_interleaved"], inits["layers.0.experts.fc2"]
    assert fc1.shape == (cfg.moe.n_experts, 2 * f, cfg.d_model) and fc2.shape == (cfg.moe.n_experts, cfg.d_model, f)
    for e, k in enumerate(widths):
        np.testing.assert_array_equal(fc1[e, 0:2 * k:2], model.experts[f"layers.0.experts.{e}.gate"].W)
        np.testing.assert_array_equal(fc1[e, 1:2 * k:2], model.experts[f"layers.0.experts.{e}.up"].W)
        np.testing.assert_array_equal(fc2[e, :, :k], model.experts[f"layers.0.experts.{e}.down"].W)
        assert not fc1[e, 2 * k:].any() and not fc2[e, :, k:].any()
    assert [n.op_type for n in onnx.load(str(p), load_external_data=False).graph.node].count("MoE") == cfg.n_layers
    report = validate(p, model, "onnxruntime:cpu", decode_steps=3)
    assert report.passed, report


def test_fused_weights_streamed_to_external_data_equal_inline(tmp_path):
    """The stacked fc1/fc2 are written one expert at a time into the external data file: same bytes as inline."""
    model = neuron_model("global", router=dict(normalize=True))
    a = initializers(export(model, OnnxExportConfig(fused_moe=True, external_data=False), tmp_path / "a.onnx"))
    b_path = export(model, OnnxExportConfig(fused_moe=True, external_data=True), tmp_path / "b.onnx")
    assert (tmp_path / "b.onnx.data").stat().st_size > 0
    b = initializers(b_path)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert validate(b_path, model, "onnxruntime:cpu", decode_steps=2).passed


def test_layout_for_picks_the_measured_fastest_per_runtime(tmp_path):
    from curmoe.exporters.onnx import layout_for

    dense = baby_model(dtype=np.float32, router=dict(normalize=True))
    cfg = layout_for(dense, "onnxruntime:cpu")
    assert cfg.fused_moe and cfg.fold_u  # dense SwiGLU top-k experts on ORT: the fused kernel
    assert validate(export(dense, cfg, tmp_path / "f.onnx"), dense, "onnxruntime:cpu", decode_steps=2).passed
    assert not layout_for(dense, "openvino:cpu").fused_moe  # no com.microsoft.MoE there
    assert not layout_for(dense, "onnxruntime:cpu", dispatch="dense").fused_moe
    assert not layout_for(dense, "onnxruntime:cpu", fused_moe=False).fused_moe  # an explicit choice is kept
    assert not layout_for(cur_model(), "onnxruntime:cpu").fused_moe  # factorised experts
    assert layout_for(neuron_model("uniform", router=dict(normalize=True)), "onnxruntime:cpu").fused_moe  # one width
    assert not layout_for(neuron_model("global", router=dict(normalize=True)), "onnxruntime:cpu").fused_moe  # padded
    assert not layout_for(baby_model(**VARIANTS["hash"]), "onnxruntime:cpu").fused_moe  # not a top-k router
    assert layout_for(dense, "onnxruntime:cpu", dtype="float16").dtype == "float16"


def test_cli_export_folds_u_by_default_and_no_fold_u_keeps_it(tmp_path) -> None:
    """`curmoe export` follows the config default (U folded into C); --no-fold-u keeps C, U, R as three MatMuls."""
    from curmoe.app.cli import main

    src = cur_model().save(tmp_path / "cur")
    sizes = {}
    for flag in ([], ["--no-fold-u"]):
        out = tmp_path / f"m{len(flag)}.onnx"
        assert main(["export", str(src), "--format", "onnx", "-o", str(out)] + flag) == 0
        sizes[bool(flag)] = sum(int(np.prod(a.shape)) for n, a in initializers(out).items() if ".experts." in n)
    u = sum(v.U.size for v in curmoe.load(src).experts.values() if isinstance(v, CURLinear))
    assert u > 0 and sizes[True] - sizes[False] == u  # C U folded is C's shape: only the U (r, r) go
