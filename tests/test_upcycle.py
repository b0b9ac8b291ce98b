"""Upcycling a dense model into an MoE (curmoe.models.upcycle, `curmoe upcycle`) and the `select` router it uses:
exactness at top_k = E on the reference, the torch twin and ONNX Runtime; the balanced partition; router training
lowers the distillation loss; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import curmoe
from curmoe.common.errors import InvalidInputError
from curmoe.routing import RouterConfig, route
from tests.babies import baby_model, random_ids

torch = pytest.importorskip("torch")

from curmoe.models.upcycle import (  # noqa: E402
    UpcycleConfig,
    balanced_kmeans,
    greedy_targets,
    partition_neurons,
    split_ffns,
    upcycle,
)

DENSE = dict(layer_types=("dense", "dense"), dense_d_ff=32)


def dense_baby(seed: int = 0, **kw) -> curmoe.Model:
    return baby_model(seed=seed, **(DENSE | kw))


def calib(model: curmoe.Model, B: int = 16, T: int = 32) -> np.ndarray:
    return random_ids(model, B, T, seed=3)


# --- the select router -------------------------------------------------------------------------------------------
@given(n=st.integers(0, 12), e=st.integers(1, 8), data=st.data())
def test_select_router_gates_are_exactly_one(n: int, e: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, e))
    z = np.asarray(data.draw(st.lists(st.sampled_from([-1.0, 0.0, 0.5, 2.0, -3.25]), min_size=n * e,
                                      max_size=n * e)), np.float64).reshape(n, e)
    r = route(z, RouterConfig(kind="select", top_k=k))
    assert (r.gates == 1.0).all() and r.gates.shape == (n, k)
    np.testing.assert_array_equal(r.experts, np.sort(np.argsort(-z, axis=1, kind="stable")[:, :k], axis=1))  # ties: lower index
    np.testing.assert_array_equal(r.combine(e).sum(axis=1), np.full(n, float(k)))


def test_select_router_in_the_twin_trains_the_router() -> None:
    """The twin's select gates are exactly 1 in value (straight-through) but carry gradients to the router."""
    from curmoe.models.twin import TorchMoE

    moe, _ = split_ffns(dense_baby(), UpcycleConfig(n_experts=4, top_k=2))
    tm = TorchMoE.from_reference(moe)
    ids = random_ids(moe, 2, 6)
    out = tm.forward_train(torch.as_tensor(ids))
    np.testing.assert_allclose(out.logits.detach().numpy(), moe.forward(ids), rtol=0, atol=1e-10)
    out.logits.square().mean().backward()
    assert tm.layers[0].router.weight.grad is not None and bool((tm.layers[0].router.weight.grad != 0).any())


# --- partition -------------------------------------------------------------------------------------------------
@given(k=st.integers(1, 6), per=st.integers(1, 6), seed=st.integers(0, 3))
def test_balanced_kmeans_gives_equal_clusters(k: int, per: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(k * per, 3))
    labels = balanced_kmeans(x, k, seed=seed)
    np.testing.assert_array_equal(np.bincount(labels, minlength=k), np.full(k, per))


def test_balanced_kmeans_recovers_separated_clusters() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 5)) * 20
    truth = np.repeat(np.arange(4), 6)
    x = centers[truth] + rng.normal(size=(24, 5))
    labels = balanced_kmeans(x, 4, seed=1)
    for c in range(4):  # each found cluster is exactly one true cluster
        assert len(set(truth[labels == c])) == 1


def test_partition_is_balanced_disjoint_and_complete() -> None:
    m = dense_baby()
    g, u = m.tensors["layers.0.mlp.gate.weight"], m.tensors["layers.0.mlp.up.weight"]
    part = partition_neurons(g, u, 4)
    assert part.shape == (4, 8)
    np.testing.assert_array_equal(np.sort(part.ravel()), np.arange(32))
    for p in part:
        assert (np.diff(p) > 0).all()


# --- exactness at top_k = E ------------------------------------------------------------------------------------
def test_top_k_equal_experts_reproduces_the_dense_model() -> None:
    m = dense_baby()
    moe, rep = upcycle(m, UpcycleConfig(n_experts=4, top_k=4, steps=20), calib(m))
    assert moe.config.moe.router.kind == "select" and moe.config.moe.n_experts == 4 and moe.config.moe.d_ff == 8
    assert all(moe.config.layer_type(l) == "moe" for l in range(2))
    ids = random_ids(m, 3, 12, seed=9)
    mask = np.ones((3, 12), np.int64)
    mask[1, :4] = 0
    want, got = m.forward(ids, attention_mask=mask), moe.forward(ids, attention_mask=mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], rtol=0, atol=1e-12 * np.abs(want).max())
    c1, c2 = m.new_cache(), moe.new_cache()  # cached decode too
    m.forward(ids, attention_mask=mask, cache=c1)
    moe.forward(ids, attention_mask=mask, cache=c2)
    step = random_ids(m, 3, 1, seed=11)
    np.testing.assert_allclose(moe.forward(step, cache=c2), m.forward(step, cache=c1), rtol=0,
                               atol=1e-12 * np.abs(want).max())
    assert rep.layers and all(r["loss_before"] < 1e-20 for r in rep.layers)  # k = E: nothing to distil


def test_experts_are_slices_of_the_dense_ffn() -> None:
    m = dense_baby()
    moe, parts = split_ffns(m, UpcycleConfig(n_experts=4, top_k=1))
    for e, idx in enumerate(parts[1]):
        np.testing.assert_array_equal(moe.experts[f"layers.1.experts.{e}.gate"].dense(),
                                      m.tensors["layers.1.mlp.gate.weight"][idx])
        np.testing.assert_array_equal(moe.experts[f"layers.1.experts.{e}.down"].dense(),
                                      m.tensors["layers.1.mlp.down.weight"][:, idx])


def test_twin_and_onnx_runtime_match_the_reference_on_an_upcycled_model(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from curmoe.exporters import OnnxExportConfig, export
    from curmoe.models.twin import TorchMoE
    from tests.test_onnx_export import F32_REL, check_numbers

    m = dense_baby()
    for k in (4, 2):
        moe, _ = upcycle(m, UpcycleConfig(n_experts=4, top_k=k, steps=0))
        ids = random_ids(m, 2, 10, seed=4)
        with torch.no_grad():
            twin = TorchMoE.from_reference(moe).forward(torch.as_tensor(ids)).numpy()
        np.testing.assert_allclose(twin, moe.forward(ids), rtol=0, atol=1e-10 * np.abs(twin).max())
        for dispatch in ("sparse", "dense"):
            p = export(moe.astype(np.float32), OnnxExportConfig(dispatch=dispatch), tmp_path / f"{k}{dispatch}.onnx")
            check_numbers(p, moe, F32_REL, "disable")
    dense_out = m.forward(ids)
    assert np.abs(moe.forward(ids) - dense_out).max() > 1e-3  # k = 2 is a different model (the test can fail)


# --- router training -------------------------------------------------------------------------------------------
def test_router_training_lowers_the_distillation_loss() -> None:
    m = dense_baby(seed=2)
    moe, rep = upcycle(m, UpcycleConfig(n_experts=4, top_k=2, steps=150), calib(m, 32))
    d = rep.to_dict()
    assert d["mean_loss_after"] < 0.95 * d["mean_loss_before"], d
    for r in rep.layers:
        assert r["loss_trained"] < r["loss_before"], r
        assert r["loss_greedy_oracle"] <= r["loss_after"] + 1e-6  # the greedy target bounds what a router reaches
    assert rep.train_tokens + rep.holdout_tokens == 32 * 32 and rep.steps == 150
    untrained, _ = upcycle(m, UpcycleConfig(n_experts=4, top_k=2, steps=0))
    assert not np.array_equal(moe.tensors["layers.0.router.weight"], untrained.tensors["layers.0.router.weight"])


def test_greedy_targets_pick_the_expert_that_carries_the_output() -> None:
    ye = torch.zeros((2, 3, 4))
    ye[0, 2] = torch.tensor([1.0, 2.0, 0.0, 0.0])  # token 0: only expert 2 contributes
    ye[1, 0] = torch.tensor([0.0, 0.0, 3.0, 0.0])  # token 1: only expert 0
    lab = greedy_targets(ye, 1)
    np.testing.assert_array_equal(lab.numpy(), [[0, 0, 1], [1, 0, 0]])


# --- bad input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, msg", [
    (dict(n_experts=1), "n_experts=1 must be an integer >= 2"),
    (dict(n_experts=4, top_k=5), "top_k=5 must be an integer"),
    (dict(steps=-1), "steps=-1"),
    (dict(lr=0), "lr=0"),
])
def test_config_rejects_bad_values(kw, msg) -> None:
    with pytest.raises(InvalidInputError, match=msg):
        UpcycleConfig(**kw)


def test_bad_models_and_ids_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="every layer must be dense"):
        upcycle(baby_model(), UpcycleConfig(n_experts=2))
    with pytest.raises(InvalidInputError, match=r"n_experts=5 does not divide the FFN width 32; pass one of \[2, 4, 8"):
        upcycle(dense_baby(), UpcycleConfig(n_experts=5, top_k=1))
    m = dense_baby()
    with pytest.raises(InvalidInputError, match="outside \\[0, 50\\)"):
        upcycle(m, UpcycleConfig(n_experts=4), np.full((2, 4), 50))
    with pytest.raises(InvalidInputError, match="must be a non-empty \\(B, T\\) integer array"):
        upcycle(m, UpcycleConfig(n_experts=4), np.zeros((2, 4), np.float32))


# --- the command -----------------------------------------------------------------------------------------------
def test_cli_upcycle_writes_an_moe_checkpoint(tmp_path, capsys) -> None:
    pytest.importorskip("tokenizers")
    from curmoe.app.cli import main
    from curmoe.models.tokenizer import save_tokenizer, train_bpe_tokenizer
    from tests.babies import TEXT

    tok = train_bpe_tokenizer(TEXT, vocab_size=80, min_frequency=1)
    m = dense_baby(vocab_size=tok.get_vocab_size(), eos_token_id=tok.token_to_id("<eos>"))
    m.tokenizer_path = save_tokenizer(tok, tmp_path / "tok.json")
    src = m.save(tmp_path / "dense")
    text = tmp_path / "calib.txt"
    text.write_text("\n".join(TEXT))
    out = tmp_path / "moe"
    argv = ["upcycle", str(src), "-o", str(out), "--experts", "4", "--top-k", "4", "--calib", str(text),
            "--calib-tokens", "256", "--steps", "10", "--json"]
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["experts"] == 4 and rec["report"]["train_tokens"] > 0
    assert json.loads((out / "upcycle.json").read_text())["top_k"] == 4
    moe = curmoe.load(out)
    assert moe.tokenizer_path is not None and moe.config.moe.router.kind == "select"
    ids = random_ids(m, 2, 8)
    np.testing.assert_allclose(moe.forward(ids), curmoe.load(src).forward(ids), atol=1e-5)  # float32 on disk
    assert main(argv) == 2  # an existing output is refused without --force
    assert "already exists" in capsys.readouterr().err
    assert main(["upcycle", str(out), "-o", str(tmp_path / "x"), "--calib", "none", "--experts", "2",
                 "--top-k", "1"]) == 2  # an MoE model is not upcycled again
    assert "every layer must be dense" in capsys.readouterr().err


# --- the results page ------------------------------------------------------------------------------------------
def test_upcycle_page_renders_both_blocks_and_says_what_is_missing() -> None:
    from curmoe.app.report_upcycle import upcycle_page

    assert "run `python benchmarks/upcycle.py routers`" in upcycle_page({})
    ev = {"split": "valid (raw)", "runtime": "onnxruntime cpu float32", "threads": 1, "context": 512, "stride": 256,
          "tokens": 2048}
    prov = {"command": "python benchmarks/upcycle.py routers", "commit": "abc1234", "utc": "2026-11-30 06:00",
            "machine": "x86_64, 2 CPUs"}
    layer = {"loss_before": 0.7, "loss_after": 0.6, "loss_greedy_oracle": 0.5}
    routers = {"provenance": prov, "experts": 8, "calib": "word-level train", "eval": ev, "rows": [
        {"k": "dense", "ppl_token": 10.0, "ppl_word": 20.0},
        {"k": 2, "ppl_token": 40.0, "ppl_word": 90.0, "active_ffn_share": 0.25,
         "report": {"layers": [layer] * 2, "mean_loss_before": 0.7, "mean_loss_after": 0.6, "steps": 200,
                    "train_tokens": 3584, "partition_s": 37.0, "collect_s": 50.0, "train_s": 90.0}},
        {"k": 8, "ppl_token": 10.0, "ppl_word": 20.0, "active_ffn_share": 1.0,
         "report": {"layers": [], "partition_s": 37.0, "collect_s": 0.0, "train_s": 0.0}}]}
    ok = {"passed": True, "max_rel_err": 1e-6, "routing_agreement": 1.0, "hard_flips": 0, "ppl_rel_diff": 1e-7,
          "failures": []}
    val = {"onnxruntime:cpu": ok, "openvino:cpu": ok | {"passed": False, "max_rel_err": 1e-2,
                                                         "failures": ["max_rel_err=0.01 > 3e-05"]}}
    pipe = {"provenance": prov, "moe": "/tmp/up/k4", "router": {"kind": "select", "top_k": 4}, "experts": 8,
            "ratio_count": "expert params", "calib": "word-level train", "eval": ev, "rows": [
                {"method": "upcycled", "ratio_target": 0.0, "ratio_expert_params": 0.0, "ppl_token": 20.0,
                 "ppl_word": 40.0, "validation": val},
                {"method": "svd", "ratio_target": 0.5, "ratio_expert_params": 0.5, "ppl_token": 50.0,
                 "ppl_word": 99.0, "mean_output_error": 0.4, "compress_s": 3.0, "validation": val}]}
    page = upcycle_page({"routers": routers, "pipeline": pipe})
    assert "| k = 2 of 8 | 25.0% | 40.00 | 90.00 | 4.00x | 0.700 -> 0.600 | 0.500 | 200 x 2 | 3,584 | 37 + 50 + 90 |" \
        in page
    assert "| k = 8 of 8 | 100.0% | 10.00 | 20.00 | 1.00x | 0 (exact) |" in page
    assert "| svd | 50% | 50.0% | 50.00 | 99.00 | 2.50x | 0.400 | 3.0 | pass (1.0e-06) | **FAIL** (1.0e-02) |" in page
    assert "commit `abc1234`" in page
    assert "Validation: 2 of 4 runs pass. Every run routes as the reference (routing agreement >= 1.0000, 0 hard " \
        "flips)" in page and "above the tolerance: `max_rel_err=0.01 > 3e-05`." in page


def test_core_ml_program_routes_as_the_reference(tmp_path) -> None:
    pytest.importorskip("coremltools")
    from curmoe.exporters import CoreMLExportConfig, export
    from curmoe.runtimes import load

    moe, _ = upcycle(dense_baby(), UpcycleConfig(n_experts=4, top_k=2, steps=0))
    sess = load(export(moe, CoreMLExportConfig(max_batch=2), tmp_path / "u.mlpackage"), "coreml:mil")
    ids = random_ids(moe, 2, 7)
    out = sess.run({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    ref = moe.run(ids)
    assert np.abs(out["logits"] - ref.logits).max() <= 2e-5 * np.abs(ref.logits).max()
    sel = np.zeros((14, 4), bool)
    for i, experts in enumerate(e for r in ref.routings[0] for e in r.experts):
        sel[i, experts] = True
    np.testing.assert_array_equal(out["routing.0.selected"].astype(bool).reshape(14, 4), sel)
