"""OpenVINO: the adapter (devices, precision, errors), validation of ONNX exports against the float64 reference
(f32 tight, bf16 reported), IR export, and the MoE-fusion report. The runtime cases shared with ONNX Runtime
(validate, generate) run on OpenVINO through the parametrised fixture of tests/test_runtimes.py."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
ov = pytest.importorskip("openvino")

import curmoe  # noqa: E402
from curmoe import runtimes  # noqa: E402
from curmoe.exporters import OnnxExportConfig, export, export_openvino_ir  # noqa: E402
from curmoe.runtimes import RuntimeNotAvailableError, load, validate  # noqa: E402
from curmoe.runtimes.generate import empty_cache  # noqa: E402
from curmoe.runtimes.tolerances import TOLERANCES  # noqa: E402
from tests.babies import EXPORT_VARIANTS as VARIANTS  # noqa: E402
from tests.babies import baby_model, compressed, random_ids  # noqa: E402

F32 = TOLERANCES["float32"]
HAS_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def model():
    return baby_model(**VARIANTS["qwen2_moe"])


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("ov")
    return {disp: export(model, OnnxExportConfig(dispatch=disp), d / f"{disp}.onnx") for disp in ("sparse", "dense")}


def feeds(sess, ids):
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)} | empty_cache(sess, ids.shape[0])


# Devices and errors ---------------------------------------------------------------------------------------------
def test_available_devices():
    avail = dict(runtimes.available())
    present = ov.Core().available_devices
    assert avail["openvino:cpu"] and avail["openvino:cpu"][0].startswith("CPU (")
    assert ("openvino:gpu" in avail) == any(d.startswith("GPU") for d in present)
    assert ("openvino:npu" in avail) == any(d.startswith("NPU") for d in present)


def test_missing_device_names_the_present_ones(files):
    if any(d.startswith("GPU") for d in ov.Core().available_devices):
        pytest.skip("this machine has an OpenVINO GPU")
    with pytest.raises(RuntimeNotAvailableError,
                       match=r"openvino:gpu device 'GPU' is not available .*Devices here: CPU"):
        load(files["sparse"], "openvino:gpu")
    with pytest.raises(RuntimeNotAvailableError, match=r"'GPU.1' is not available"):
        load(files["sparse"], "openvino:gpu", device="GPU.1")


@pytest.mark.parametrize("kw, msg", [
    (dict(device="GPU.1"), "device='GPU.1' is not a CPU device"),
    (dict(device="CPU.3"), "device 'CPU.3' is not available"),
    (dict(precision="int4"), "precision='int4' is unknown"),
    (dict(optimization="disable"), "OpenVINO has no graph optimisation levels"),
    (dict(performance_hint="FAST"), "performance_hint='FAST' is unknown"),
    (dict(threads=0), "threads=0 must be"),
])
def test_bad_options(files, kw, msg):
    with pytest.raises((curmoe.InvalidInputError, RuntimeNotAvailableError), match=msg):
        load(files["sparse"], "openvino:cpu", **kw)


def test_unknown_target_and_file_type(files, tmp_path):
    from curmoe.runtimes.adapters import ov as adapter

    with pytest.raises(curmoe.InvalidInputError, match="unknown OpenVINO target 'TPU'; choose one of CPU, GPU, NPU"):
        adapter.load(files["sparse"], "TPU")
    bad = tmp_path / "m.txt"
    bad.write_text("x")
    with pytest.raises(curmoe.InvalidInputError, match="neither an ONNX file"):
        load(bad, "openvino:cpu")


# Session --------------------------------------------------------------------------------------------------------
def test_session_runs_and_reports(model, files):
    s = load(files["sparse"], "openvino:cpu", threads=1)
    i = s.info()
    assert (i.runtime, i.provider, i.device, i.name, i.threads) == (
        "openvino", "OpenVINO CPU", "CPU", "openvino:cpu", 1)
    assert i.extra["precision"] == "f32" and i.extra["execution_devices"] == ["CPU"]
    assert [x.name for x in s.inputs][:2] == ["input_ids", "attention_mask"]
    assert s.metadata["curmoe.version"] == curmoe.__version__
    past = [x for x in s.inputs if x.name.startswith("past.")]
    assert past and past[0].shape[1] == model.config.kv_heads and past[0].shape[3] == model.config.head_dim_
    ids = random_ids(model, 2, 6)
    out = s.run(feeds(s, ids), ["logits"])
    assert list(out) == ["logits"] and out["logits"].dtype == np.float32
    ref = model.astype(np.float64).forward(ids)
    assert np.abs(out["logits"] - ref).max() <= F32.max_rel_err * np.abs(ref).max()
    with pytest.raises(curmoe.InvalidInputError, match="feeds lack input"):
        s.run({"input_ids": ids})
    with pytest.raises(curmoe.InvalidInputError, match="output 'nope' is not in the graph"):
        s.run(feeds(s, ids), ["nope"])
    routed = load(files["sparse"], "openvino:cpu", extra_outputs=["routing.0.selected"])
    sel = routed.run(feeds(routed, ids), ["routing.0.selected"])["routing.0.selected"]
    assert sel.shape == (12, model.config.moe.n_experts) and (sel.sum(axis=1) == model.config.moe.router.top_k).all()
    with pytest.raises(curmoe.InvalidInputError, match=r"extra_outputs \['nope'\] are not tensors"):
        load(files["sparse"], "openvino:cpu", extra_outputs=["nope"])


def test_auto_device_runs(model, files):
    s = load(files["dense"], "openvino:auto")
    assert s.info().device == "AUTO"
    ids = random_ids(model, 1, 4)
    ref = load(files["dense"], "openvino:cpu").run(feeds(s, ids))["logits"]
    np.testing.assert_allclose(s.run(feeds(s, ids))["logits"], ref, atol=F32.max_rel_err * np.abs(ref).max())


# validate -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dispatch", ["sparse", "dense"])
def test_validate_f32_passes(model, files, dispatch):
    r = validate(files[dispatch], model, "openvino:cpu")
    assert r.passed, r.failures
    assert r.max_rel_err <= F32.max_rel_err and r.routing_agreement == 1.0 and r.diverged_sequences == 0
    assert r.decode_max_abs_err is not None and r.max_abs_err > 0
    assert r.info["extra"]["precision"] == "f32"


@pytest.mark.parametrize("method, dtype", [("cur", "float32"), ("svd", "float16")])
def test_validate_compressed(tmp_path, method, dtype):
    m = compressed(baby_model(**VARIANTS["sigmoid_bias"]), method)
    r = validate(export(m, OnnxExportConfig(dtype=dtype, dispatch="dense"), tmp_path / "c.onnx"), m, "openvino:cpu")
    assert r.dtype == dtype and r.passed, r.failures


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 support (AMX / AVX512-BF16): OpenVINO runs f32")
def test_bf16_is_reported_not_hidden(model, files):
    f32 = validate(files["dense"], model, "openvino:cpu")
    bf16 = validate(files["dense"], model, "openvino:cpu", precision="bf16")
    assert bf16.info["extra"]["precision"] == "bf16"
    assert bf16.max_rel_err_all > 10 * f32.max_rel_err_all  # an 8-bit mantissa really ran
    assert bf16.routing_agreement is not None and bf16.routing_pairs == f32.routing_pairs
    assert bf16.max_rel_err_all < 0.5  # reported, not held to the float32 budget; a broken graph is far off
    default = load(files["dense"], "openvino:cpu", precision="default")
    assert default.info().extra["precision"] == "bf16"  # this CPU's default: why validation pins f32


# IR -------------------------------------------------------------------------------------------------------------
def test_ir_export_roundtrip(model, files, tmp_path):
    xml = export_openvino_ir(files["dense"], tmp_path / "ir" / "m.xml")
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    assert sorted(p.name for p in xml.parent.iterdir()) == ["m.bin", "m.xml"]  # no temporary directory left
    s_ir, s_onnx = load(xml, "openvino:cpu"), load(files["dense"], "openvino:cpu")
    assert s_ir.metadata["curmoe.config"] == s_onnx.metadata["curmoe.config"]
    ids = random_ids(model, 2, 5)
    np.testing.assert_array_equal(s_ir.run(feeds(s_ir, ids))["logits"], s_onnx.run(feeds(s_onnx, ids))["logits"])
    assert xml.with_suffix(".bin").stat().st_size > 4 * sum(v.size for v in model.tensors.values())  # float32 kept
    routed = load(export_openvino_ir(files["dense"], tmp_path / "r.xml", routing_outputs=True), "openvino:cpu")
    assert {"routing.0.selected", "routing.1.selected"} <= {o.name for o in routed.outputs}
    assert not list(files["dense"].parent.glob(".*validate*"))  # the routing copy of the ONNX file is gone


def test_ir_export_errors(files, tmp_path):
    with pytest.raises(curmoe.InvalidInputError, match="must end in .xml"):
        export_openvino_ir(files["dense"], tmp_path / "m.bin")
    with pytest.raises(curmoe.InvalidInputError, match="is not an ONNX file"):
        export_openvino_ir(tmp_path / "none.onnx", tmp_path / "m.xml")


# MoE fusion -----------------------------------------------------------------------------------------------------
def test_moe_fusion_report_is_consistent(model, files):
    """Dense-dispatch MoE: fused (MOE / GatherMatmul layers) or one FullyConnected per expert matrix."""
    cfg = model.config
    for disp in ("dense", "sparse"):
        rep = load(files[disp], "openvino:cpu").moe_fusion()
        n_expert_mats = 3 * cfg.moe.n_experts * cfg.n_layers
        fc = rep["layer_types"].get("FullyConnected", 0)
        assert rep["fused"] == bool(rep["fused_layers"])
        if rep["fused"]:
            assert fc < n_expert_mats
        else:
            assert fc >= n_expert_mats  # every expert matrix is its own FullyConnected
        assert rep["layer_types"].get("RMS", 0) == 2 * cfg.n_layers + 1  # OpenVINO did fuse the RMSNorms


# Regression: OpenVINO's CPU plugin fused the capacity's integer Add -> Div into a rounding f32 ReduceSum
# (27 div 4 gave 7); the exporter now divides an exact multiple (exporters/_onnx_routers.py::_capacity).
def test_switch_capacity_on_openvino(tmp_path):
    m = baby_model(**VARIANTS["switch"])
    r = validate(export(m, OnnxExportConfig(), tmp_path / "s.onnx"), m, "openvino:cpu", prompt_lengths=(24,),
                 batch_lengths=(), decode_steps=0)
    assert r.routing_agreement == 1.0
