"""Runtimes: the registry and its errors, the ONNX Runtime adapter, validate() and generate().

The validate / generate cases run on every runtime installed here that reads the ONNX export (the ``rt`` fixture:
onnxruntime:cpu, openvino:cpu); adapter-specific tests live in tests/test_openvino.py and tests/test_coreml.py.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import curmoe  # noqa: E402
from curmoe import runtimes  # noqa: E402
from curmoe.exporters import OnnxExportConfig, export  # noqa: E402
from curmoe.runtimes import RuntimeNotAvailableError, generate, load, validate  # noqa: E402
from curmoe.runtimes.adapters.ort import PROVIDERS  # noqa: E402
from curmoe.runtimes.generate import empty_cache  # noqa: E402
from curmoe.runtimes.tolerances import TOLERANCES, tolerance_for  # noqa: E402
from tests.babies import EXPORT_VARIANTS as VARIANTS  # noqa: E402
from tests.babies import baby_model, compressed, random_ids  # noqa: E402

#: registry names of the runtimes that run the curmoe ONNX export on this machine's CPU
SHARED_RUNTIMES = [
    "onnxruntime:cpu",
    pytest.param("openvino:cpu", marks=pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                                           reason="openvino is not installed")),
]


@pytest.fixture(params=SHARED_RUNTIMES)
def rt(request) -> str:
    """The same test case once per runtime."""
    return request.param


def options(rt: str, **ort_options) -> dict:
    """Session options that only ONNX Runtime has (OpenVINO has no optimisation levels)."""
    return ort_options if rt.startswith("onnxruntime") else {}


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    model = baby_model(**VARIANTS["qwen2_moe"])
    return model, export(model, OnnxExportConfig(), tmp_path_factory.mktemp("dense") / "m.onnx")


# Registry -------------------------------------------------------------------------------------------------------
def test_unknown_runtime_lists_known_ones(dense):
    with pytest.raises(curmoe.InvalidInputError, match="runtime 'tvm' is unknown; known runtimes: onnxruntime:cpu, "):
        load(dense[1], "tvm")


def test_every_registered_runtime_has_an_adapter_and_a_real_extra():
    """A name in the registry leads to an adapter module that exists, and its install hint names a real extra."""
    import importlib.metadata

    from curmoe.runtimes import _registry

    extras = set(importlib.metadata.metadata("curmoe").get_all("Provides-Extra") or ())
    assert "onnxruntime:cpu" in runtimes.names()  # validate's default
    for name in runtimes.names():
        entry = _registry.REGISTRY[name]
        assert importlib.util.find_spec(entry.module) is not None, (name, entry.module)
        assert entry.extra in extras, (name, entry.extra)


def test_unwritten_adapters_say_so(dense, monkeypatch):
    from curmoe.runtimes import _registry

    monkeypatch.setitem(_registry.REGISTRY, "future:npu",
                        _registry.RuntimeEntry("curmoe.runtimes.no_such_adapter", "numpy", "test", "npu"))
    with pytest.raises((curmoe.CurmoeError, curmoe.MissingExtraError), match="not implemented|pip install"):
        load(dense[1], "future:npu")


def test_missing_sdk_names_the_extra(dense, monkeypatch):
    from curmoe.runtimes import _registry

    monkeypatch.setitem(_registry.REGISTRY, "fake:cpu",
                        _registry.RuntimeEntry("curmoe.runtimes.adapters.ort", "no_such_sdk_xyz", "fakeextra", "cpu"))
    with pytest.raises(curmoe.MissingExtraError, match=r"pip install 'curmoe\[fakeextra\]'"):
        load(dense[1], "fake:cpu")


def test_missing_provider_names_available_ones(dense):
    missing = [t for t in ("cuda", "tensorrt", "rocm", "migraphx", "dml")
               if PROVIDERS[t][0] not in ort.get_available_providers()]
    if not missing:
        pytest.skip("every GPU provider is available here")
    with pytest.raises(RuntimeNotAvailableError, match=r"not available .*CPUExecutionProvider"):
        load(dense[1], f"onnxruntime:{missing[0]}")


def test_available_lists_cpu_with_devices():
    avail = dict(runtimes.available())
    assert "onnxruntime:cpu" in avail and avail["onnxruntime:cpu"]
    for name in avail:
        assert name in runtimes.names()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "onnxruntime:cuda" not in avail


def test_missing_file_and_bad_options(dense, tmp_path):
    with pytest.raises(curmoe.CheckpointError, match="does not exist"):
        load(tmp_path / "nope.onnx", "onnxruntime:cpu")
    with pytest.raises(curmoe.InvalidInputError, match="threads=0 must be"):
        load(dense[1], "onnxruntime:cpu", threads=0)
    with pytest.raises(curmoe.InvalidInputError, match="optimization='max' is unknown"):
        load(dense[1], "onnxruntime:cpu", optimization="max")


# ONNX Runtime session -------------------------------------------------------------------------------------------
def test_session_runs_and_reports(dense):
    model, path = dense
    s = load(path, "onnxruntime:cpu", threads=1, optimization="disable")
    i = s.info()
    assert (i.runtime, i.version, i.provider, i.device, i.name) == (
        "onnxruntime", ort.__version__, "CPUExecutionProvider", "cpu", "onnxruntime:cpu")
    assert i.threads == 1 and i.optimization == "disable"
    json.dumps(i.to_dict())
    assert [x.name for x in s.inputs][:2] == ["input_ids", "attention_mask"]
    assert s.metadata["curmoe.version"] == curmoe.__version__
    ids = random_ids(model, 1, 5)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)} | empty_cache(s, 1)
    out = s.run(feeds, ["logits"])
    assert list(out) == ["logits"]
    np.testing.assert_allclose(out["logits"], model.forward(ids), atol=1e-5 * np.abs(out["logits"]).max())
    with pytest.raises(curmoe.InvalidInputError, match="feeds lack input"):
        s.run({"input_ids": ids})
    with pytest.raises(curmoe.InvalidInputError, match="output 'nope' is not in the graph"):
        s.run(feeds, ["nope"])


# validate -------------------------------------------------------------------------------------------------------
def test_validate_dense_passes(dense, rt):
    model, path = dense
    files = sorted(p.name for p in path.parent.iterdir())
    r = validate(path, model, rt)
    assert r.passed, r.failures
    assert r.max_rel_err <= TOLERANCES["float32"].max_rel_err and r.routing_agreement == 1.0
    assert r.routing_pairs > 0 and r.decode_max_abs_err is not None and r.diverged_sequences == 0
    assert r.max_abs_err > 0  # a float32 graph is not bit-equal to float64: the comparison really ran
    assert {c["case"].split(" ")[0] for c in r.cases} >= {"prompt", "left-padded", "decode", "perplexity"}
    d = json.loads(json.dumps(r.to_dict()))
    for k in ("max_abs_err", "max_rel_err", "routing_agreement", "passed"):
        assert k in d
    assert sorted(p.name for p in path.parent.iterdir()) == files  # the routing copy was removed


@pytest.mark.parametrize("method, dtype", [("cur", "float32"), ("svd", "float16")])
def test_validate_compressed(tmp_path, method, dtype, rt):
    model = compressed(baby_model(**VARIANTS["sigmoid_bias"]), method)
    p = export(model, OnnxExportConfig(dtype=dtype), tmp_path / "c.onnx")
    r = validate(p, model, rt, **options(rt, optimization="disable"))
    assert r.dtype == dtype and r.passed, r.failures
    assert r.routing_agreement >= tolerance_for(dtype).routing_agreement


def test_validate_fused_recomputes_routing_from_logits(tmp_path):
    model = baby_model()
    p = export(model, OnnxExportConfig(fused_moe=True), tmp_path / "f.onnx")
    r = validate(p, model)
    assert r.passed and r.routing_pairs > 0 and r.routing_agreement == 1.0


def test_validate_expert_choice_without_cache(tmp_path, rt):
    model = baby_model(router=dict(kind="expert_choice", top_k=2))
    p = export(model, OnnxExportConfig(with_cache=False), tmp_path / "e.onnx")
    r = validate(p, model, rt)
    assert r.passed and r.decode_max_abs_err is None


def test_validate_catches_a_wrong_export(dense, rt):
    model, path = dense
    t = dict(model.tensors)
    t["layers.1.attn.o.weight"] = t["layers.1.attn.o.weight"] * 1.01  # same config, different numbers
    r = validate(path, curmoe.Model(model.config, t, model.experts), rt)
    assert not r.passed and any("max_rel_err" in f for f in r.failures)


def test_validate_rejects_another_model(dense):
    with pytest.raises(curmoe.InvalidInputError, match="different model config"):
        validate(dense[1], baby_model())


def test_tolerance_lookup():
    assert tolerance_for("float16").max_rel_err > tolerance_for("float32").max_rel_err
    with pytest.raises(curmoe.InvalidInputError, match="no tolerance for dtype='int8'"):
        tolerance_for("int8")


# generate -------------------------------------------------------------------------------------------------------
def reference_greedy(model, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(np.argmax(model.forward(np.array([seq]))[0, -1])))
    return np.array(seq)


def test_greedy_generation_matches_reference(dense, tmp_path, rt):
    model, path = dense
    prompt = random_ids(model, 1, 4)[0]
    want = reference_greedy(model.astype(np.float64), prompt, 8)
    s = load(path, rt)
    np.testing.assert_array_equal(generate(s, prompt, 8), want)
    nocache = load(export(model, OnnxExportConfig(with_cache=False), tmp_path / "nc.onnx"), rt)
    np.testing.assert_array_equal(generate(nocache, prompt, 8), want)


def test_generation_batch_left_padded_matches_single(dense, rt):
    model, path = dense
    s = load(path, rt)
    a, b = random_ids(model, 1, 5, seed=2)[0], random_ids(model, 1, 3, seed=3)[0]
    batch = np.stack([a, np.concatenate([[0, 0], b])])
    mask = np.array([[1] * 5, [0, 0, 1, 1, 1]])
    out = generate(s, batch, 6, attention_mask=mask)
    np.testing.assert_array_equal(out[0], generate(s, a, 6))
    np.testing.assert_array_equal(out[1, 2:], generate(s, b, 6))


def test_sampling_is_seeded_and_stops_at_eos(dense, rt):
    model, path = dense
    s = load(path, rt)
    prompt = random_ids(model, 1, 3)[0]
    x = generate(s, prompt, 12, temperature=1.5, seed=1)
    np.testing.assert_array_equal(x, generate(s, prompt, 12, temperature=1.5, seed=1))
    runs = {tuple(generate(s, prompt, 12, temperature=1.5, seed=k)) for k in range(4)}
    assert len(runs) > 1
    greedy = generate(s, prompt, 12)
    np.testing.assert_array_equal(generate(s, prompt, 12, temperature=1.0, top_p=1e-9, seed=5), greedy)
    eos = int(greedy[4])  # the second generated token
    stopped = generate(s, prompt, 12, eos_token_id=eos)
    assert stopped[-1] == eos and len(stopped) == len(prompt) + 1 + list(greedy[3:]).index(eos)


@pytest.mark.parametrize("kw, msg", [
    (dict(max_new_tokens=-1), "max_new_tokens=-1"),
    (dict(temperature=-0.5), "temperature=-0.5"),
    (dict(top_p=0.0), "top_p=0.0"),
])
def test_generate_rejects_bad_arguments(dense, kw, msg):
    args = dict(max_new_tokens=2) | kw
    with pytest.raises(curmoe.InvalidInputError, match=msg):
        generate(load(dense[1]), np.array([1, 2]), args.pop("max_new_tokens"), **args)
