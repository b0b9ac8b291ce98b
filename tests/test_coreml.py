"""Core ML: the MIL-builder exporter (.mlpackage) and its validation against the float64 reference.

Off macOS these tests evaluate the saved package's MIL program with NumPy (runtime ``coreml:mil``): Apple's Core ML
kernels are not run. On macOS, ``test_coreml_prediction_on_macos`` also runs Core ML itself."""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")

import curmoe  # noqa: E402
from curmoe import runtimes  # noqa: E402
from curmoe.exporters import CoreMLExportConfig, export  # noqa: E402
from curmoe.runtimes import RuntimeNotAvailableError, generate, load  # noqa: E402
from curmoe.runtimes.adapters import _mil_eval  # noqa: E402
from curmoe.runtimes.adapters.coreml import can_predict, validate_coreml  # noqa: E402
from curmoe.runtimes.tolerances import TOLERANCES  # noqa: E402
from tests.babies import EXPORT_VARIANTS as VARIANTS  # noqa: E402
from tests.babies import baby_model, compressed, random_ids  # noqa: E402

F32, F16 = TOLERANCES["float32"], TOLERANCES["float16"]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    model = baby_model(**VARIANTS["qwen2_moe"])  # shared expert + sigmoid gate, q/k/v biases, GQA
    return model, export(model, CoreMLExportConfig(), tmp_path_factory.mktemp("cm") / "m.mlpackage")


def program_consts(path) -> dict[str, np.ndarray]:
    """The program's constants by checkpoint name (the package spells ``layers.0.up`` as ``layers_0_up``)."""
    prog = _mil_eval.MilProgram(path)
    return {op.outputs[0].name: op.outputs[0].val for op in prog.function.operations if op.op_type == "const"}


def _n(key: str) -> str:
    return key.replace(".", "_")


# Validation -----------------------------------------------------------------------------------------------------
def test_fp32_validates_tightly(fp32):
    model, path = fp32
    r = validate_coreml(path, model)
    assert r.passed, r.failures
    assert r.max_rel_err <= F32.max_rel_err and r.routing_agreement == 1.0 and r.routing_pairs > 0
    assert r.max_abs_err > 0 and r.decode_max_abs_err is None  # no cache in the Core ML program
    assert {c["case"].split(" ")[0] for c in r.cases} == {"prompt", "left-padded", "perplexity"}
    assert r.info["extra"]["apple_kernels_run"] is False  # said plainly in every report from coreml:mil
    assert r.info["extra"]["evaluated_by"]["silu"] == "numpy"
    assert r.info["extra"]["evaluated_by"]["linear"] == "coremltools"


def test_fp16_within_fp16_tolerance(tmp_path):
    model = baby_model(**VARIANTS["olmoe"])  # q/k norm over the full width, top-3 unnormalised
    path = export(model, CoreMLExportConfig(dtype="float16"), tmp_path / "h.mlpackage")
    consts = program_consts(path)
    assert consts[_n("layers.0.experts.0.up.weight")].dtype == np.float16
    assert consts[_n("layers.0.router.weight")].dtype == np.float32  # routing stays float32
    r = validate_coreml(path, model)
    assert r.dtype == "float16" and r.passed, r.failures
    assert r.max_rel_err <= F16.max_rel_err and r.max_rel_err > F32.max_rel_err  # float16 really ran


def test_compressed_experts_are_matmul_chains(tmp_path):
    model = compressed(baby_model(**VARIANTS["sigmoid_bias"]), "cur")
    path = export(model, CoreMLExportConfig(), tmp_path / "c.mlpackage")
    consts = program_consts(path)
    for key, lin in model.experts.items():
        if ".experts." in key:
            assert _n(f"{key}.weight") not in consts  # no dense (m, n) expert matrix
            assert consts[_n(f"{key}.R")].shape == lin.R.shape and consts[_n(f"{key}.C")].shape[0] == lin.C.shape[0]
    r = validate_coreml(path, model, prompt_lengths=(5,), batch_lengths=(6, 2))
    assert r.passed, r.failures


@pytest.mark.parametrize("variant", ["switch", "expert_choice", "hash2", "gelu_dense_layer", "qwen3_moe"])
def test_variants_match_reference(tmp_path, variant):
    kw = dict(router=dict(kind="expert_choice", top_k=2)) if variant == "expert_choice" else VARIANTS[variant]
    model = baby_model(**kw)
    sess = load(export(model, CoreMLExportConfig(max_batch=3), tmp_path / "v.mlpackage"), "coreml:mil")
    ids = random_ids(model, 3, 9)
    mask = np.array([[1] * 9, [0] * 4 + [1] * 5, [0] * 8 + [1]])
    out = sess.run({"input_ids": ids, "attention_mask": mask})
    ref = model.astype(np.float64).run(ids, attention_mask=mask)
    real = mask.astype(bool)
    assert np.abs(out["logits"] - ref.logits)[real].max() <= F32.max_rel_err * np.abs(ref.logits[real]).max()
    for l, routings in enumerate(ref.routings):
        if not routings:  # a dense FFN layer
            assert f"routing.{l}.selected" not in out
            continue
        sel = np.zeros((int(real.sum()), model.config.moe.n_experts), bool)
        rows = [experts for r in routings for experts in r.experts]  # k may differ between sequences
        for i, experts in enumerate(rows):
            sel[i, experts[experts >= 0]] = True
        np.testing.assert_array_equal(out[f"routing.{l}.selected"].astype(bool)[real.reshape(-1)], sel)


def test_generation_without_cache_matches_reference(fp32):
    model, path = fp32
    prompt = random_ids(model, 1, 4)[0]
    seq = list(prompt)
    ref = model.astype(np.float64)
    for _ in range(5):
        seq.append(int(np.argmax(ref.forward(np.array([seq]))[0, -1])))
    np.testing.assert_array_equal(generate(load(path, "coreml:mil"), prompt, 5), seq)


# Package --------------------------------------------------------------------------------------------------------
def test_package_io_and_metadata(fp32):
    model, path = fp32
    s = load(path, "coreml:mil")
    assert [(i.name, i.shape, i.dtype) for i in s.inputs] == [("input_ids", (None, None), np.dtype(np.int32)),
                                                               ("attention_mask", (None, None), np.dtype(np.int32))]
    assert [o.name for o in s.outputs] == ["logits", "routing.0.selected", "routing.1.selected"]
    assert json.loads(s.metadata["curmoe.config"]) == json.loads(model.config.to_json())
    assert json.loads(s.metadata["curmoe.export"])["dtype"] == "float32"
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    ranges = spec.description.input[0].type.multiArrayType.shapeRange.sizeRanges
    assert [(r.lowerBound, r.upperBound) for r in ranges] == [(1, 8), (1, model.config.max_seq_len)]  # RangeDim
    ids = random_ids(model, 1, model.config.max_seq_len + 1)
    with pytest.raises(curmoe.InvalidInputError, match="exceeds the package's flexible shape"):
        s.run({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    with pytest.raises(curmoe.InvalidInputError, match="feeds lack input"):
        s.run({"input_ids": ids})


def test_export_is_atomic_and_overwrites(tmp_path):
    model = baby_model(n_layers=1)
    path = tmp_path / "a.mlpackage"
    export(model, CoreMLExportConfig(routing_outputs=False), path)
    export(model, CoreMLExportConfig(dtype="float16", routing_outputs=False), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mlpackage"]  # no temporary or old package left
    s = load(path, "coreml:mil")
    assert json.loads(s.metadata["curmoe.export"])["dtype"] == "float16" and [o.name for o in s.outputs] == ["logits"]


def test_missing_numpy_kernel_is_a_clear_error(fp32, monkeypatch):
    model, path = fp32
    monkeypatch.delitem(_mil_eval.NUMPY_OPS, "silu")
    ids = random_ids(model, 1, 3)
    with pytest.raises(curmoe.CurmoeError, match="MIL op 'silu' .* has no value inference"):
        load(path, "coreml:mil").run({"input_ids": ids, "attention_mask": np.ones_like(ids)})


# Errors ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, msg", [
    (dict(dtype="int8"), "dtype='int8' is not exportable to Core ML"),
    (dict(max_batch=0), "max_batch=0 must be an integer >= 1"),
    (dict(max_seq_len=True), "max_seq_len=True must be"),
    (dict(minimum_deployment_target="iOS15"), "minimum_deployment_target='iOS15' is not supported"),
])
def test_config_validation(kw, msg):
    with pytest.raises(curmoe.InvalidInputError, match=msg):
        CoreMLExportConfig(**kw)


def test_export_errors(tmp_path):
    with pytest.raises(curmoe.InvalidInputError, match="must end in .mlpackage"):
        export(baby_model(), CoreMLExportConfig(), tmp_path / "m.mlmodel")
    with pytest.raises(curmoe.InvalidInputError, match="router kind='random' has no Core ML export"):
        export(baby_model(router=dict(kind="random")), CoreMLExportConfig(), tmp_path / "r.mlpackage")


def test_runtime_errors(fp32, tmp_path):
    _, path = fp32
    assert "coreml:mil" in dict(runtimes.available())
    with pytest.raises(curmoe.CheckpointError, match="does not exist"):
        load(tmp_path / "none.mlpackage", "coreml:mil")
    with pytest.raises(curmoe.InvalidInputError, match="compute_units='GPU_ONLY' is unknown"):
        load(path, "coreml", compute_units="GPU_ONLY")
    with pytest.raises(curmoe.InvalidInputError, match="no thread-count"):
        load(path, "coreml:mil", threads=2)
    if not can_predict():
        assert "coreml" not in dict(runtimes.available())
        with pytest.raises(RuntimeNotAvailableError, match="Core ML prediction needs macOS.*'coreml:mil'"):
            load(path, "coreml")


@pytest.mark.skipif(not can_predict(), reason="Core ML prediction runs on macOS only")
@pytest.mark.parametrize("units", ["CPU_ONLY", "ALL"])
def test_coreml_prediction_on_macos(fp32, units):  # pragma: no cover - macOS
    model, path = fp32
    r = validate_coreml(path, model, "coreml", compute_units=units)
    tol = F32 if units == "CPU_ONLY" else F16  # the GPU / Neural Engine may compute in float16
    assert r.max_rel_err <= tol.max_rel_err and r.info["extra"]["apple_kernels_run"] is True
    assert platform.system() == "Darwin"
