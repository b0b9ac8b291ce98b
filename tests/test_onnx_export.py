"""ONNX export: graph structure, initializer names/shapes, metadata, numbers vs the float64 reference on ONNX Runtime
(graph optimisations off and default), dispatch forms, cached decoding, routers, float16, fused MoE, atomic writes."""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import curmoe  # noqa: E402
from curmoe import CURLinear  # noqa: E402
from curmoe.exporters import OnnxExportConfig, export  # noqa: E402
from tests.babies import EXPORT_VARIANTS as VARIANTS  # noqa: E402
from tests.babies import baby_model, compressed, random_ids  # noqa: E402

F32_REL = 2e-5  # float32 graph vs float64 reference, relative to the largest |logit| (measured ~2e-6)


def session(path, optimization: str = "all") -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(sess, ids, mask, past=None) -> dict[str, np.ndarray]:
    feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
    names = {i.name for i in sess.get_inputs()}
    for i in sess.get_inputs():
        if i.name.startswith("past."):
            dt = np.float16 if i.type == "tensor(float16)" else np.float32
            feeds[i.name] = past[i.name] if past else np.zeros((ids.shape[0], i.shape[1], 0, i.shape[3]), dt)
    assert set(feeds) == names
    outs = [o.name for o in sess.get_outputs()]
    return dict(zip(outs, sess.run(outs, feeds)))


def next_past(res):
    return {"past" + k[len("present"):]: v for k, v in res.items() if k.startswith("present.")}


def check_numbers(path, model, rel: float, optimization: str) -> None:
    """Left-padded batch, then two cached decode steps: runtime logits vs the float64 reference."""
    ref = model.astype(np.float64)
    sess = session(path, optimization)
    ids = random_ids(model, 3, 8, seed=5)
    mask = np.ones((3, 8), np.int64)
    mask[1, :3] = 0
    mask[2, :7] = 0
    cache = ref.new_cache()
    want = ref.forward(ids, attention_mask=mask, cache=cache)
    res = run(sess, ids, mask)
    scale = np.abs(want).max()
    real = mask.astype(bool)
    np.testing.assert_array_less(np.abs(res["logits"][real] - want[real]).max(), rel * scale)
    full = mask
    for step in range(2):
        tok = random_ids(model, 3, 1, seed=10 + step)
        full = np.concatenate([full, np.ones((3, 1), np.int64)], axis=1)
        res = run(sess, tok, full, next_past(res))
        want = ref.forward(tok, attention_mask=np.ones((3, 1)), cache=cache)
        np.testing.assert_array_less(np.abs(res["logits"] - want).max(), rel * scale)


def initializers(path) -> dict[str, tuple[int, ...]]:
    m = onnx.load(str(path))
    return {i.name: tuple(i.dims) for i in m.graph.initializer}


def op_counts(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


# Configuration ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, msg", [
    (dict(dispatch="both"), "dispatch='both' is unknown"),
    (dict(dtype="bfloat16"), "dtype='bfloat16' is not exportable"),
    (dict(opset=13), r"opset=13 must be an integer in \[\d+, \d+\]"),
    (dict(fold_u=1), "fold_u=1 must be True or False"),
    (dict(fused_moe=True, dispatch="dense"), "leave dispatch='sparse'"),
])
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(curmoe.InvalidInputError, match=msg):
        OnnxExportConfig(**kw)


def test_package_import_does_not_import_onnx():
    code = ("import sys, curmoe.exporters, curmoe.runtimes; "
            "bad = [m for m in ('onnx', 'onnxruntime', 'openvino', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# Structure ----------------------------------------------------------------------------------------------------
def test_dense_export_structure(tmp_path):
    model = baby_model()
    cfg = model.config
    E, L = cfg.moe.n_experts, cfg.n_layers
    p = export(model, OnnxExportConfig(), tmp_path / "m.onnx")
    m = onnx.load(str(p))
    assert [o.opset_import for o in [m]][0][0].version == 18
    assert [i.name for i in m.graph.input] == ["input_ids", "attention_mask"] + [
        f"past.{l}.{kv}" for l in range(L) for kv in ("key", "value")]
    assert [o.name for o in m.graph.output] == ["logits"] + [
        f"present.{l}.{kv}" for l in range(L) for kv in ("key", "value")]
    dims = [d.dim_param or d.dim_value for d in m.graph.input[2].type.tensor_type.shape.dim]
    assert dims == ["batch", cfg.kv_heads, "past_seq", cfg.head_dim_]
    ops = op_counts(p)
    # per layer: q k v o + 2 attention products + router + 3 per expert; plus the lm head
    assert ops["MatMul"] == L * (4 + 2 + 1 + 3 * E) + 1
    assert ops["NonZero"] == L and ops["ScatterND"] == L and ops["TopK"] == L
    inits = initializers(p)
    for l in range(L):
        for e in range(E):
            assert inits[f"layers.{l}.experts.{e}.gate.weight"] == (cfg.moe.d_ff, cfg.d_model)
            assert inits[f"layers.{l}.experts.{e}.down.weight"] == (cfg.d_model, cfg.moe.d_ff)
    # every MatMul has inputs of equal rank
    shapes = {v.name: len(v.type.tensor_type.shape.dim) for v in list(m.graph.value_info) + list(m.graph.input)}
    shapes |= {i.name: len(i.dims) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "MatMul":
            assert shapes[n.input[0]] == shapes[n.input[1]], n.name


def test_dense_dispatch_has_static_expert_shapes(tmp_path):
    p = export(baby_model(), OnnxExportConfig(dispatch="dense"), tmp_path / "d.onnx")
    ops = op_counts(p)
    assert ops["NonZero"] == 0 and ops["ScatterND"] == 0 and ops["Sum"] == 2


@pytest.mark.parametrize("method, fold_u", [("cur", False), ("cur", True), ("svd", False)])
def test_compressed_export_keeps_factors_and_no_dense_expert(tmp_path, method, fold_u):
    model = compressed(baby_model(), method, fold_u)
    cfg = model.config
    m_, n_ = cfg.moe.d_ff, cfg.d_model
    p = export(model, OnnxExportConfig(fold_u=fold_u and method == "cur"), tmp_path / "c.onnx")
    inits = initializers(p)
    for key, lin in model.experts.items():
        assert f"{key}.weight" not in inits
        m, n = lin.shape
        if isinstance(lin, CURLinear):
            c, r = lin.C.shape[1], lin.R.shape[0]
            assert inits[f"{key}.R"] == (r, n)
            if fold_u or lin.U is None:
                assert inits[f"{key}.C"] == (m, r) and f"{key}.U" not in inits
            else:
                assert inits[f"{key}.C"] == (m, c) and inits[f"{key}.U"] == (c, r)
        else:
            r = lin.rank
            assert inits[f"{key}.A"] == (m, r) and inits[f"{key}.B"] == (r, n)
    assert not [k for k, s in inits.items() if s in ((m_, n_), (n_, m_))], "a dense expert matrix remains"
    # the chain x -> R -> U -> C: each factor's MatMul consumes the previous one's output
    g = onnx.load(str(p)).graph
    producer = {o: nd for nd in g.node for o in nd.output}
    key = "layers.1.experts.2.up"
    last = "C" if method == "cur" else "A"
    chain = []
    node = next(nd for nd in g.node if nd.op_type == "MatMul" and nd.input[1] == f"{key}.{last}.T")
    while node.op_type == "MatMul" and node.input[1].startswith(key):
        chain.append(node.input[1].removeprefix(f"{key}.").removesuffix(".T"))
        node = producer[node.input[0]]
    expect = {"svd": ["A", "B"], "cur": ["C", "R"] if fold_u else ["C", "U", "R"]}[method]
    assert chain == expect


def test_metadata(tmp_path):
    model = compressed(baby_model(), "cur")
    p = export(model, OnnxExportConfig(), tmp_path / "m.onnx")
    meta = {q.key: q.value for q in onnx.load(str(p)).metadata_props}
    assert meta["curmoe.version"] == curmoe.__version__
    assert json.loads(meta["curmoe.config"]) == json.loads(model.config.to_json())
    assert json.loads(meta["curmoe.export"])["dispatch"] == "sparse"
    assert meta["curmoe.compression_method"] == "cur"
    assert meta["curmoe.non_causal"] == "false"
    idx = json.loads(meta["curmoe.cur_indices"])
    lin = model.experts["layers.0.experts.1.down"]
    assert idx["layers.0.experts.1.down"] == {"rows": lin.rows.tolist(), "cols": lin.cols.tolist()}
    p = export(baby_model(), OnnxExportConfig(), tmp_path / "d.onnx")
    dense = {q.key: q.value for q in onnx.load(str(p)).metadata_props}
    assert dense["curmoe.compression_method"] == "none" and dense["curmoe.cur_indices"] == "none"


# Numbers --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dispatch", ["sparse", "dense"])
def test_matches_reference(tmp_path, variant, dispatch):
    model = baby_model(**VARIANTS[variant])
    p = export(model, OnnxExportConfig(dispatch=dispatch), tmp_path / "m.onnx")
    for opt in ("disable", "all"):
        check_numbers(p, model, F32_REL, opt)


@pytest.mark.parametrize("variant", ["qwen2_moe", "switch", "sigmoid_bias", "hash2", "gelu_dense_layer"])
@pytest.mark.parametrize("method", ["cur", "svd"])
def test_compressed_matches_reference(tmp_path, method, variant):
    model = compressed(baby_model(**VARIANTS[variant]), method)
    for fold in ((False, True) if method == "cur" else (False,)):
        p = export(model, OnnxExportConfig(fold_u=fold, dispatch="dense" if fold else "sparse"), tmp_path / f"{fold}.onnx")
        for opt in ("disable", "all"):
            check_numbers(p, model, F32_REL, opt)


def test_switch_drops_tokens_as_the_reference(tmp_path):
    """The switch case is not vacuous: capacity drops tokens here, and the graph drops the same ones."""
    model = baby_model(**VARIANTS["switch"])
    ids = random_ids(model, 2, 12, seed=3)
    out = model.run(ids)
    dropped = [r.dropped for r in out.routings[0]]
    assert sum(int(d.sum()) for d in dropped) > 0
    p = export(model, OnnxExportConfig(routing_outputs=True), tmp_path / "s.onnx")
    res = run(session(p), ids, np.ones_like(ids))
    sel = res["routing.0.selected"].reshape(2, 12, -1)
    for b in range(2):
        np.testing.assert_array_equal(sel[b].any(axis=1), ~dropped[b])
    np.testing.assert_allclose(res["logits"], out.logits, atol=F32_REL * np.abs(out.logits).max())


@pytest.mark.parametrize("variant", ["mixtral", "sigmoid_bias"])
def test_router_ties_break_to_the_lower_expert(tmp_path, variant):
    model = baby_model(**VARIANTS[variant])
    t = dict(model.tensors)
    t["layers.0.router.weight"] = np.repeat(t["layers.0.router.weight"][:1], 4, axis=0)  # every expert ties
    if "layers.0.router.bias" in t:
        t["layers.0.router.bias"] = np.zeros(4)
    model = curmoe.Model(model.config, t, model.experts)
    ids = random_ids(model, 1, 5)
    res = run(session(export(model, OnnxExportConfig(routing_outputs=True), tmp_path / "t.onnx")), ids, np.ones_like(ids))
    assert (model.run(ids).routings[0][0].experts == [0, 1]).all()
    np.testing.assert_array_equal(res["routing.0.selected"], np.tile([True, True, False, False], (5, 1)))


def test_sparse_equals_dense_dispatch(tmp_path):
    model = compressed(baby_model(**VARIANTS["olmoe"]), "cur")
    ids = random_ids(model, 2, 9)
    mask = np.ones_like(ids)
    mask[0, :4] = 0
    a = run(session(export(model, OnnxExportConfig(dispatch="sparse"), tmp_path / "s.onnx")), ids, mask)
    b = run(session(export(model, OnnxExportConfig(dispatch="dense"), tmp_path / "d.onnx")), ids, mask)
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=0, atol=1e-5 * np.abs(b["logits"]).max())
    for k in a:
        if k.startswith("present"):
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5)


def test_cached_decode_equals_full_forward(tmp_path):
    model = baby_model(**VARIANTS["qwen3_moe"])
    sess = session(export(model, OnnxExportConfig(), tmp_path / "m.onnx"))
    ids = random_ids(model, 2, 10, seed=7)
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # left padding
    full = run(sess, ids, mask)["logits"]
    res = run(sess, ids[:, :6], mask[:, :6])
    steps = [res["logits"]]
    for t in range(6, 10):
        res = run(sess, ids[:, t:t + 1], mask[:, : t + 1], next_past(res))
        steps.append(res["logits"])
    inc = np.concatenate(steps, axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(inc[real], full[real], rtol=0, atol=1e-5 * np.abs(full).max())


def test_expert_choice_full_sequence_only(tmp_path):
    model = baby_model(router=dict(kind="expert_choice", top_k=2))
    with pytest.raises(curmoe.DecodingNotSupportedError, match="with_cache=False"):
        export(model, OnnxExportConfig(), tmp_path / "ec.onnx")
    assert not (tmp_path / "ec.onnx").exists()
    p = export(model, OnnxExportConfig(with_cache=False), tmp_path / "ec.onnx")
    m = onnx.load(str(p))
    assert {q.key: q.value for q in m.metadata_props}["curmoe.non_causal"] == "true"
    assert [i.name for i in m.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in m.graph.output] == ["logits"]
    ids = random_ids(model, 2, 11)
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    want = model.astype(np.float64).forward(ids, attention_mask=mask)
    for disp in ("sparse", "dense"):
        got = run(session(export(model, OnnxExportConfig(with_cache=False, dispatch=disp), tmp_path / "e.onnx")),
                  ids, mask)["logits"]
        real = mask.astype(bool)
        np.testing.assert_allclose(got[real], want[real], rtol=0, atol=F32_REL * np.abs(want).max())


def test_random_router_is_refused(tmp_path):
    with pytest.raises(curmoe.InvalidInputError, match="kind='random' has no ONNX export"):
        export(baby_model(router=dict(kind="random")), OnnxExportConfig(), tmp_path / "r.onnx")


def test_float16_export(tmp_path):
    model = compressed(baby_model(**VARIANTS["qwen2_moe"]), "cur")
    p = export(model, OnnxExportConfig(dtype="float16"), tmp_path / "h.onnx")
    m = onnx.load(str(p))
    types = {i.name: i.data_type for i in m.graph.initializer}
    assert types["layers.0.experts.0.up.C"] == onnx.TensorProto.FLOAT16
    assert types["embed.weight"] == onnx.TensorProto.FLOAT16
    assert types["layers.0.router.weight"] == onnx.TensorProto.FLOAT  # routing in float32
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # logits float32
    assert m.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16  # KV cache float16
    for opt in ("disable", "all"):
        check_numbers(p, model, 1.5e-2, opt)  # measured ~5e-3 (10-bit mantissa)


def test_other_opset_and_routing_outputs(tmp_path):
    model = baby_model()
    p = export(model, OnnxExportConfig(opset=21, routing_outputs=True), tmp_path / "m.onnx")
    assert onnx.load(str(p)).opset_import[0].version == 21
    ids = random_ids(model, 1, 6)
    res = run(session(p), ids, np.ones_like(ids))
    out = model.run(ids)
    for l in range(2):
        want = np.zeros((6, 4), bool)
        for t, ex in enumerate(out.routings[l][0].experts):
            want[t, ex] = True
        np.testing.assert_array_equal(res[f"routing.{l}.selected"], want)
        np.testing.assert_allclose(res[f"routing.{l}.logits"], out.routings[l][0].logits, rtol=1e-4, atol=1e-5)


# fused com.microsoft.MoE --------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["mixtral", "olmoe", "qwen2_moe"])
def test_fused_moe_matches_reference(tmp_path, variant):
    model = baby_model(**VARIANTS[variant])
    p = export(model, OnnxExportConfig(fused_moe=True), tmp_path / "f.onnx")
    ops = op_counts(p)
    assert ops["MoE"] == 2 and ops["NonZero"] == 0
    check_numbers(p, model, F32_REL, "all")


@pytest.mark.parametrize("model_fn, msg", [
    (lambda: compressed(baby_model(), "cur"), "factorised"),
    (lambda: baby_model(**VARIANTS["switch"]), "kind='switch'"),
    (lambda: baby_model(moe=dict(activation="gelu")), "activation='gelu'"),
])
def test_fused_moe_refused_where_it_does_not_apply(tmp_path, model_fn, msg):
    with pytest.raises(curmoe.InvalidInputError, match=msg):
        export(model_fn(), OnnxExportConfig(fused_moe=True), tmp_path / "f.onnx")


# Files ----------------------------------------------------------------------------------------------------------
def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    model = baby_model()
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")

    def boom(*a, **k):
        raise onnx.checker.ValidationError("injected failure")

    monkeypatch.setattr(onnx.checker, "check_model", boom)
    with pytest.raises(curmoe.CurmoeError, match="injected failure"):
        export(model, OnnxExportConfig(external_data=True), target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temp dir, no .data file


def test_external_data(tmp_path):
    model = baby_model()
    p = export(model, OnnxExportConfig(external_data=True), tmp_path / "m.onnx")
    inits = {i.name: i for i in onnx.load(str(p), load_external_data=False).graph.initializer}
    for name in ("embed.weight", "layers.1.experts.3.down.weight"):
        assert inits[name].data_location == onnx.TensorProto.EXTERNAL
        assert {e.key: e.value for e in inits[name].external_data}["location"] == "m.onnx.data"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    check_numbers(p, model, F32_REL, "all")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_streamed_external_data_equals_inline_weights(tmp_path, dtype):
    """Weights streamed to the data file while the graph is built: the same tensors as an inline export, each at
    a 4096-aligned offset, the graph itself identical."""
    model = compressed(baby_model(), "cur")
    ext = onnx.load(str(export(model, OnnxExportConfig(external_data=True, dtype=dtype), tmp_path / "e.onnx")))
    inl = onnx.load(str(export(model, OnnxExportConfig(external_data=False, dtype=dtype), tmp_path / "i.onnx")))
    a = {i.name: onnx.numpy_helper.to_array(i) for i in ext.graph.initializer}
    b = {i.name: onnx.numpy_helper.to_array(i) for i in inl.graph.initializer}
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k]), k
    assert [n.op_type for n in ext.graph.node] == [n.op_type for n in inl.graph.node]
    offsets = [int({e.key: e.value for e in i.external_data}["offset"])
               for i in onnx.load(str(tmp_path / "e.onnx"), load_external_data=False).graph.initializer
               if i.data_location == onnx.TensorProto.EXTERNAL]
    assert offsets and all(o % 4096 == 0 for o in offsets)


def test_bad_path(tmp_path):
    with pytest.raises(curmoe.InvalidInputError, match="must end in .onnx"):
        export(baby_model(), OnnxExportConfig(), tmp_path / "m.bin")
