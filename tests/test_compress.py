"""Whole-model compression: factorised forward == reconstruct-then-dense forward, accounting, calibration."""

from __future__ import annotations

import numpy as np
import pytest

import curmoe
from curmoe.reference._linear import DenseLinear
from curmoe.reference._model import Model
from tests.babies import baby_model, random_ids

CONFIGS = {
    "cur-deim": curmoe.CURConfig(ratio=0.5),
    "cur-leverage-intersection": curmoe.CURConfig(ratio=0.5, selection="leverage", u="intersection"),
    "cur-folded": curmoe.CURConfig(ratio=0.5, fold_u=True),
    "svd": curmoe.SVDConfig(ratio=0.5),
}


def densified(model: Model) -> Model:
    """The same model with every factorised expert rebuilt as a dense matrix (for comparison only)."""
    from dataclasses import replace

    experts = {k: DenseLinear(v.dense()) for k, v in model.experts.items()}
    return Model(replace(model.config, factors={}), model.tensors, experts)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_factorised_forward_equals_reconstructed_dense_forward(name):
    model = baby_model(moe=dict(d_ff=32, n_shared=1, shared_d_ff=16))
    small = curmoe.compress(model, CONFIGS[name], progress=False)
    ids = random_ids(model, 2, 7)
    np.testing.assert_allclose(small.forward(ids), densified(small).forward(ids), rtol=1e-10, atol=1e-10)
    # shared experts are left dense unless include_shared
    assert all(type(v).__name__ == "DenseLinear" for k, v in small.experts.items() if ".shared." in k)
    assert all(type(v).__name__ != "DenseLinear" for k, v in small.experts.items() if ".experts." in k)


def test_cur_factors_are_real_columns_and_rows():
    model = baby_model(moe=dict(d_ff=32))
    small = curmoe.compress(model, curmoe.CURConfig(ratio=0.5, activation_aware=True),
                            calib_ids=random_ids(model, 4, 16), progress=False)
    for k, lin in small.experts.items():
        W = model.experts[k].dense()
        np.testing.assert_array_equal(lin.C, W[:, lin.cols])
        np.testing.assert_array_equal(lin.R, W[lin.rows, :])


def test_ratio_accounting_is_recorded_and_met():
    model = baby_model(moe=dict(d_ff=32, n_shared=1, shared_d_ff=16))
    for cfg in (curmoe.CURConfig(ratio=0.6), curmoe.SVDConfig(ratio=0.6), curmoe.CURConfig(ratio=0.3, include_shared=True)):
        small = curmoe.compress(model, cfg, progress=False)
        rec = small.config.compression
        assert rec["ratio_expert_params"] >= cfg.ratio
        after = sum(v.n_params for k, v in small.experts.items() if ".experts." in k or cfg.include_shared)
        assert rec["expert_params_after"] == after
        assert rec["ratio_all_params"] == pytest.approx(1 - small.n_params() / model.n_params())
        assert 0 < rec["ratio_all_params"] < rec["ratio_expert_params"]
        for key, spec in small.config.factors.items():
            assert spec["rank"] == small.experts[key].rank
            assert rec["matrices"][key]["weight_error"] > 0


@pytest.mark.parametrize("cfg", [curmoe.CURConfig, curmoe.SVDConfig])
def test_higher_ratio_means_larger_error(cfg):
    model = baby_model(moe=dict(d_ff=32))
    errs = []
    for r in (0.2, 0.5, 0.8):
        rec = curmoe.compress(model, cfg(ratio=r), progress=False).config.compression["matrices"]
        errs.append(np.mean([m["weight_error"] for m in rec.values()]))
    assert errs[0] < errs[1] < errs[2], errs


def test_activation_aware_calibration_and_fallback():
    model = baby_model(moe=dict(d_ff=32))
    calib = random_ids(model, 4, 16, seed=9)  # 64 tokens, top-2 of 4 experts: about 32 per expert
    small = curmoe.compress(model, curmoe.CURConfig(ratio=0.5, activation_aware=True, min_tokens=10),
                            calib_ids=calib, progress=False)
    rec = small.config.compression
    assert rec["calib_tokens"] == 64
    assert all(m["stats"] == "routed" and m["output_error"] is not None for m in rec["matrices"].values())
    n_routed = [m["n_tokens"] for k, m in rec["matrices"].items() if k.startswith("layers.0.") and k.endswith(".up")]
    assert sum(n_routed) == 64 * 2  # every token reaches exactly top_k = 2 experts
    forced = curmoe.compress(model, curmoe.CURConfig(ratio=0.5, activation_aware=True, min_tokens=10_000),
                             calib_ids=calib, progress=False)
    frec = forced.config.compression
    assert len(frec["fallback_matrices"]) == len(frec["matrices"])
    assert all(m["n_tokens"] == 64 for m in frec["matrices"].values())  # layer-wide: all 64 tokens


def test_activation_aware_beats_plain_on_calibration_output_error():
    model = baby_model(moe=dict(d_ff=32))
    calib = random_ids(model, 8, 16, seed=3)
    plain = curmoe.compress(model, curmoe.CURConfig(ratio=0.5), calib_ids=calib, progress=False)
    aware = curmoe.compress(model, curmoe.CURConfig(ratio=0.5, activation_aware=True), calib_ids=calib, progress=False)
    e_plain = np.mean([m["output_error"] for m in plain.config.compression["matrices"].values()])
    e_aware = np.mean([m["output_error"] for m in aware.config.compression["matrices"].values()])
    assert e_aware < e_plain, (e_aware, e_plain)


def test_compress_errors():
    model = baby_model()
    with pytest.raises(curmoe.InvalidInputError, match="needs calibration tokens"):
        curmoe.compress(model, curmoe.CURConfig(ratio=0.5, activation_aware=True))
    with pytest.raises(curmoe.InvalidInputError, match="ratio=1.5 is outside"):
        curmoe.CURConfig(ratio=1.5)
    with pytest.raises(curmoe.InvalidInputError, match="matrices="):
        curmoe.SVDConfig(ratio=0.5, matrices=("qkv",))
    small = curmoe.compress(model, curmoe.SVDConfig(ratio=0.5), progress=False)
    with pytest.raises(curmoe.InvalidInputError, match="already compressed"):
        curmoe.compress(small, curmoe.SVDConfig(ratio=0.5))
    with pytest.raises(curmoe.InvalidInputError, match="no compression registered for dict"):
        curmoe.compress(model, {"ratio": 0.5})
