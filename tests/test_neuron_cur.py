"""Neuron CUR through the whole model: real rows kept bit-identical, refit down, budgets, sequential calibration,
checkpoints, the torch twin and every exporter/runtime, and the bad inputs of issue 12."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import curmoe
from curmoe.reference import NeuronLinear
from tests.babies import VARIANTS, baby_model, random_ids


def _calib(model, B=16, T=16, seed=3):
    return random_ids(model, B, T, seed=seed)


@pytest.mark.parametrize("variant", ["mixtral", "qwen2_moe", "gelu_dense_layer", "olmoe"])
def test_kept_rows_are_real_and_down_is_refit(variant):
    model = baby_model(dtype=np.float32, **VARIANTS[variant])
    cfg = curmoe.NeuronConfig(ratio=0.5, include_shared=True)
    small = curmoe.compress(model, cfg, calib_ids=_calib(model), progress=False)
    d_ff = model.config.moe.d_ff
    seen = 0
    for key, lin in small.experts.items():
        assert isinstance(lin, NeuronLinear)
        name = key.rsplit(".", 1)[1]
        J = lin.neurons
        assert np.all(np.diff(J) > 0), "neurons are stored in index order"
        if name == "down":
            assert lin.W.shape == (model.config.d_model, len(J)) and lin.role == "refit"
        else:
            assert lin.role == "rows"
            np.testing.assert_array_equal(lin.W, model.experts[key].W[J])  # bit-identical real rows
            seen += 1
        if ".experts." in key:
            assert len(J) == d_ff // 2
    assert seen > 0
    rec = small.config.compression
    assert rec["method"] == "cur-neuron" and rec["ratio_expert_params"] >= 0.5 - 1e-12


def test_refit_beats_plain_truncation_and_more_neurons_help():
    """The refit down projection lowers the expert output error against simply dropping columns of W_down; and
    the calibrated output error falls as the kept share grows."""
    model = baby_model(dtype=np.float64)
    ids = _calib(model)
    errs = []
    for ratio in (0.75, 0.5, 0.25):
        small = curmoe.compress(model, curmoe.NeuronConfig(ratio=ratio), calib_ids=ids, progress=False)
        m = small.config.compression["matrices"]
        errs.append(np.mean([r["output_error"] for k, r in m.items() if k.endswith(".down")]))
    assert errs[0] > errs[1] > errs[2]
    # plain truncation: the same neurons with W_down[:, J] unchanged
    small = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5, ridge=0.0), calib_ids=ids, progress=False)
    trunc = dict(small.experts)
    for key, lin in small.experts.items():
        if key.endswith(".down"):
            trunc[key] = NeuronLinear(model.experts[key].W[:, lin.neurons], lin.neurons, "refit")
    truncated = curmoe.Model(small.config, small.tensors, trunc)
    ref = model.forward(ids[:4])
    err = lambda m: np.linalg.norm(m.forward(ids[:4]) - ref)  # noqa: E731
    assert err(small) < err(truncated)


def test_greedy_is_not_worse_than_energy_on_calibration_error():
    model = baby_model(dtype=np.float64)
    ids = _calib(model)

    def mean_err(sel):
        small = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.6, selection=sel), calib_ids=ids, progress=False)
        m = small.config.compression["matrices"]
        return np.mean([r["output_error"] ** 2 for k, r in m.items() if k.endswith(".down")])

    assert mean_err("greedy") <= mean_err("energy") + 1e-12


def test_global_budget_spends_the_same_total_with_floors():
    model = baby_model(dtype=np.float64)
    ids = _calib(model)
    small = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.6, allocation="global", min_neurons=2), calib_ids=ids,
                            progress=False)
    rec = small.config.compression
    assert rec["ratio_expert_params"] >= 0.6 - 1e-12
    ks = [r["n_neurons"] for k, r in rec["matrices"].items() if k.endswith(".down")]
    assert min(ks) >= 2 and len(set(ks)) > 1, ks  # floors hold, and the budget is not spread uniformly
    # nearly all of the budget is spent: at most one neuron per expert short
    assert rec["ratio_expert_params"] <= 0.6 + 3 * model.config.d_model * len(ks) / rec["expert_params_before"]


def test_sequential_calibration_equals_one_pass_on_the_first_layer_only():
    """Layer 0 sees the same inputs either way; later layers see the compressed layers' outputs."""
    model = baby_model(dtype=np.float64)
    ids = _calib(model)
    a = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5), calib_ids=ids, progress=False)
    b = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5, sequential=True), calib_ids=ids, progress=False)
    assert b.config.compression["calibration"] == "sequential"
    for key in a.experts:
        same = np.array_equal(a.experts[key].W, b.experts[key].W)
        assert same == key.startswith("layers.0."), key


def test_sequential_lowers_the_final_error_for_every_method():
    model = baby_model(dtype=np.float64, n_layers=3)
    ids = _calib(model, B=24)
    test = random_ids(model, 8, 16, seed=11)
    ref = model.forward(test)
    for cfg in (curmoe.NeuronConfig(ratio=0.6), curmoe.SVDConfig(ratio=0.6, activation_aware=True)):
        errs = {}
        for seq in (False, True):
            small = curmoe.compress(model, dataclasses.replace(cfg, sequential=seq), calib_ids=ids, progress=False)
            errs[seq] = np.linalg.norm(small.forward(test) - ref)
        assert errs[True] < errs[False] * 1.05, (cfg.method, errs)


def test_checkpoint_round_trip_and_storage_dtype(tmp_path):
    model = baby_model(dtype=np.float32)
    small = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5, allocation="global"), calib_ids=_calib(model),
                            progress=False)
    back = curmoe.load(small.save(tmp_path / "n"))
    assert back.config == small.config
    ids = random_ids(model, 2, 6)
    np.testing.assert_array_equal(back.forward(ids), small.forward(ids))
    # a float16 model stays float16 on disk after compression (it computes in float32)
    half = tmp_path / "half"
    curmoe.Model(model.config, {k: v.astype(np.float16) for k, v in model.tensors.items()},
                 {k: v.astype(np.float16) for k, v in model.experts.items()}).save(half)
    m16 = curmoe.load(half)
    assert m16.dtype == np.float32 and m16.storage_dtype == np.float16
    out = curmoe.compress(m16, curmoe.NeuronConfig(ratio=0.5), calib_ids=_calib(model), progress=False).save(tmp_path / "c")
    from safetensors.numpy import load_file

    assert {a.dtype for a in load_file(str(out / "model.safetensors")).values() if a.dtype.kind == "f"} == {
        np.dtype(np.float16)}
    assert (out / "model.safetensors").stat().st_size < (half / "model.safetensors").stat().st_size


def test_torch_twin_runs_neuron_experts():
    torch = pytest.importorskip("torch")
    from curmoe.models.twin import TorchMoE

    model = baby_model(dtype=np.float32)
    small = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5), calib_ids=_calib(model), progress=False)
    tm = TorchMoE.from_reference(small)
    ids = random_ids(model, 2, 7)
    with torch.no_grad():
        got = tm(torch.as_tensor(ids)).double().numpy()
    want = small.astype(np.float64).forward(ids)
    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()
    back = tm.to_reference()
    for k, lin in small.experts.items():
        np.testing.assert_array_equal(back.experts[k].W, lin.W)
        np.testing.assert_array_equal(back.experts[k].neurons, lin.neurons)


@pytest.mark.parametrize("runtime", ["onnxruntime:cpu", "openvino:cpu", "coreml:mil"])
def test_every_runtime_validates_a_neuron_model(tmp_path, runtime):
    from curmoe.runtimes import available, validate

    if runtime not in {r for r, _ in available()} and runtime.split(":")[0] not in {r.split(":")[0] for r, _ in available()}:
        pytest.skip(f"{runtime} is not available here")
    from curmoe.exporters import CoreMLExportConfig, OnnxExportConfig, export

    model = baby_model(dtype=np.float32)
    small = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5, allocation="global"), calib_ids=_calib(model),
                            progress=False)
    if runtime == "coreml:mil":
        pytest.importorskip("coremltools")
        path = export(small, CoreMLExportConfig(), tmp_path / "n.mlpackage")
        from curmoe.runtimes.adapters.coreml import validate_coreml

        report = validate_coreml(path, small, runtime)
    else:
        pytest.importorskip("onnx")
        path = export(small, OnnxExportConfig(), tmp_path / "n.onnx")
        report = validate(path, small, runtime)
    assert report.passed, report


def test_fused_moe_export_of_neuron_experts(tmp_path):
    """A neuron-pruned expert is a smaller dense expert: ONNX Runtime's fused MoE runs it (experts with fewer
    neurons than the largest are zero-padded, which is exact: silu(0) * 0 = 0)."""
    pytest.importorskip("onnxruntime")
    from curmoe.exporters import OnnxExportConfig, export
    from curmoe.runtimes import validate

    model = baby_model(dtype=np.float32, router=dict(normalize=True))
    small = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5, allocation="global"), calib_ids=_calib(model),
                            progress=False)
    path = export(small, OnnxExportConfig(fused_moe=True), tmp_path / "f.onnx")
    import onnx

    assert any(n.op_type == "MoE" for n in onnx.load(str(path)).graph.node)
    assert validate(path, small, "onnxruntime:cpu").passed


def test_bad_inputs():
    model = baby_model(dtype=np.float32)
    ids = _calib(model)
    with pytest.raises(curmoe.InvalidInputError, match="selection='magic' is not one of"):
        curmoe.NeuronConfig(ratio=0.5, selection="magic")
    with pytest.raises(curmoe.InvalidInputError, match="needs calibration tokens"):
        curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5))
    with pytest.raises(curmoe.InvalidInputError, match="leaves expert .* with 0 neurons"):
        curmoe.compress(model, curmoe.NeuronConfig(ratio=0.99), calib_ids=ids, progress=False)
    with pytest.raises(curmoe.InvalidInputError, match="min_neurons=0"):
        curmoe.NeuronConfig(ratio=0.5, min_neurons=0)
    small = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5), calib_ids=ids, progress=False)
    with pytest.raises(curmoe.InvalidInputError, match="already compressed"):
        curmoe.compress(small, curmoe.NeuronConfig(ratio=0.5), calib_ids=ids, progress=False)
    bad = curmoe.Model(model.config, model.tensors, dict(model.experts))
    W = bad.experts["layers.0.experts.0.up"].W.copy()
    W[0, 0] = np.nan
    bad.experts["layers.0.experts.0.up"] = curmoe.DenseLinear(W)
    with pytest.raises(curmoe.InvalidInputError, match="non-finite"):
        curmoe.compress(bad, curmoe.NeuronConfig(ratio=0.5), calib_ids=ids, progress=False)


def test_expert_without_routed_tokens_falls_back_and_says_so():
    model = baby_model(dtype=np.float32, moe=dict(n_experts=8))
    ids = _calib(model, B=1, T=6)  # 6 tokens, top-2 of 8: most experts see nothing
    small = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5, min_tokens=4), calib_ids=ids, progress=False)
    rec = small.config.compression
    assert rec["fallback_matrices"], "experts with < min_tokens routed tokens use the layer-wide statistics"
    assert all(rec["matrices"][k]["stats"] == "layer" for k in rec["fallback_matrices"])


def test_compressed_model_in_memory_equals_its_float16_file(tmp_path):
    """A float16 checkpoint computes in float32 but is saved as float16: compress rounds the new factors through
    float16, so the model it returns computes exactly what its saved file holds."""
    model = baby_model(dtype=np.float32)
    half = tmp_path / "half"
    curmoe.Model(model.config, {k: v.astype(np.float16) for k, v in model.tensors.items()},
                 {k: v.astype(np.float16) for k, v in model.experts.items()}).save(half)
    m16 = curmoe.load(half)
    for cfg in (curmoe.NeuronConfig(ratio=0.5), curmoe.SVDConfig(ratio=0.5, activation_aware=True)):
        small = curmoe.compress(m16, cfg, calib_ids=_calib(model), progress=False)
        back = curmoe.load(small.save(tmp_path / cfg.method))
        ids = random_ids(model, 2, 6)
        np.testing.assert_array_equal(back.forward(ids), small.forward(ids))


@pytest.mark.parametrize("dispatch, dtype", [("dense", "float32"), ("sparse", "float16"), ("dense", "float16")])
def test_onnx_dispatch_and_dtype_variants_validate(tmp_path, dispatch, dtype):
    pytest.importorskip("onnxruntime")
    from curmoe.exporters import OnnxExportConfig, export
    from curmoe.runtimes import validate

    model = baby_model(dtype=np.float32, **VARIANTS["qwen2_moe"])
    small = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5, allocation="global", include_shared=True),
                            calib_ids=_calib(model), progress=False)
    path = export(small, OnnxExportConfig(dispatch=dispatch, dtype=dtype), tmp_path / "n.onnx")
    report = validate(path, small, "onnxruntime:cpu")
    assert report.passed, report.failures
