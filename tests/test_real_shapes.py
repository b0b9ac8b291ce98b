"""Issue 19: correctness at real shapes. ONNX Runtime's CPU ScatterND(reduction="add") adds repeated indices
non-atomically across threads (ORT issue #18048), so a sparse MoE dispatch that scatter-adds each token's k expert
outputs into one row loses terms at random once rows are wide enough for the kernel to split work. The export
writes each (token, slot) pair into its own cell and sums the slots instead."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from curmoe.exporters import OnnxExportConfig, export  # noqa: E402
from tests.babies import VARIANTS, baby_model, random_ids  # noqa: E402

F32_REL = 2e-5  # float32 graph vs float64 reference, relative to the largest |logit|


@pytest.mark.parametrize("variant", ["olmoe", "switch", "mixtral"])
def test_sparse_dispatch_never_scatter_adds_repeated_indices(tmp_path, variant):
    p = export(baby_model(**VARIANTS[variant]), OnnxExportConfig(), tmp_path / "s.onnx")
    scatters = [n for n in onnx.load(str(p)).graph.node if n.op_type in ("ScatterND", "ScatterElements")]
    assert scatters, "the sparse dispatch scatters its expert outputs"
    for n in scatters:
        red = next((onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "reduction"), b"none")
        assert red == b"none", f"{n.name}: reduction={red!r} relies on atomic adds of repeated indices"


def test_left_padded_batch_is_thread_safe_with_many_experts(tmp_path):
    """A wide baby (row width 2048, 64 experts, top-8), 4 intra-op threads, padded ids random and 0: the real
    tokens' logits equal the reference's every time (before the fix: 3 of 30 runs off by up to 3.6)."""
    model = baby_model(std=0.2, dtype=np.float32, d_model=2048, n_layers=1, n_heads=16, n_kv_heads=None,
                       moe=dict(n_experts=64, d_ff=8), router=dict(top_k=8, normalize=False))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 4
    so.log_severity_level = 3
    p = export(model, OnnxExportConfig(with_cache=False), tmp_path / "w.onnx")
    sess = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
    T = 9
    mask = np.array([[0] * (T - n) + [1] * n for n in (9, 4, 1)], np.int64)
    real = mask.astype(bool)
    ids = random_ids(model, 3, T)
    want = model.astype(np.float64).forward(ids, attention_mask=mask)
    for pad_ids in (ids, np.where(real, ids, 0)):
        for _ in range(15):
            got = sess.run(["logits"], {"input_ids": pad_ids.astype(np.int64), "attention_mask": mask})[0]
            np.testing.assert_allclose(got[real], want[real], rtol=0, atol=F32_REL * np.abs(want).max())


def test_flip_classification():
    from curmoe.runtimes.validate import classify_flips, flip_margins

    sel = np.array([[True, True, False, False], [True, False, True, False]])
    score = np.array([[3.0, 2.0, 1.999, 0.0], [5.0, 1.0, 4.0, 0.0]])
    margin = flip_margins(sel, score)
    np.testing.assert_allclose(margin, [0.001, 3.0])
    flipped = np.array([True, True])
    delta = np.array([1e-3, 1e-3])
    np.testing.assert_array_equal(classify_flips(flipped, margin, delta, ranking=True), [True, False])
    assert not classify_flips(flipped, margin, delta, ranking=False).any()  # hash / expert_choice: all hard


@pytest.mark.parametrize("variant", ["olmoe_shape", "mixtral_shape"])
def test_validation_is_decisive_at_real_shapes(tmp_path, variant):
    """A correct export passes on every seed; the same export judged against a reference with one expert matrix
    perturbed by 1% (a corrupted export) fails on every seed."""
    from curmoe.reference import DenseLinear
    from curmoe.runtimes import validate

    model = baby_model(dtype=np.float32, std=0.2, **VARIANTS[variant])
    path = export(model, OnnxExportConfig(), tmp_path / "m.onnx")
    key = "layers.1.experts.3.up"
    bad = curmoe_model_with(model, key, DenseLinear(model.experts[key].W * np.float32(1.01)))
    for seed in range(3):
        good = validate(path, model, "onnxruntime:cpu", seed=seed)
        assert good.passed, good.failures
        wrong = validate(path, bad, "onnxruntime:cpu", seed=seed)
        assert not wrong.passed and any("max_rel_err" in f for f in wrong.failures), wrong.failures


def curmoe_model_with(model, key, lin):
    import curmoe

    experts = dict(model.experts)
    experts[key] = lin
    return curmoe.Model(model.config, model.tensors, experts)


def test_float32_bound_is_the_models_own_noise_floor_when_that_is_larger(tmp_path, monkeypatch):
    """validate measures NumPy's float32 forward of the same weights against the float64 oracle (the model's own
    float32 noise floor) and bounds the runtime's logit error by max(3e-5, NOISE_FLOOR_FACTOR x floor): the fixed
    tolerance decides on shallow models, the floor on deep ones. The bound is what passes or fails a run: with an
    absurd factor a corrupted export would pass, so the default must stay small enough to catch it."""
    import importlib

    from curmoe.reference import DenseLinear
    from curmoe.runtimes.tolerances import TOLERANCES

    v = importlib.import_module("curmoe.runtimes.validate")  # the module (curmoe.runtimes.validate is the function)
    model = baby_model(dtype=np.float32, std=0.2, **VARIANTS["olmoe_shape"])
    path = export(model, OnnxExportConfig(), tmp_path / "m.onnx")
    key = "layers.1.experts.3.up"
    bad = curmoe_model_with(model, key, DenseLinear(model.experts[key].W * np.float32(1.01)))
    good = v.validate(path, model, "onnxruntime:cpu")
    assert good.passed and 0 < good.noise_floor < 1e-5  # a 2-layer model: ~1e-6
    assert good.max_rel_err_bound == max(TOLERANCES["float32"].max_rel_err, v.NOISE_FLOOR_FACTOR * good.noise_floor)
    wrong = v.validate(path, bad, "onnxruntime:cpu")
    assert not wrong.passed and wrong.max_rel_err > wrong.max_rel_err_bound
    monkeypatch.setattr(v, "NOISE_FLOOR_FACTOR", 1e4 * wrong.max_rel_err / wrong.noise_floor)
    loose = v.validate(path, bad, "onnxruntime:cpu")
    assert loose.max_rel_err_bound > wrong.max_rel_err and not any("max_rel_err" in f for f in loose.failures)
    half = export(model, OnnxExportConfig(dtype="float16"), tmp_path / "h.onnx")
    assert v.validate(half, model, "onnxruntime:cpu").noise_floor is None  # float16 keeps its own tolerance
