"""The float64 oracle of a large model upcasts layer by layer: same numbers as a float64 copy, less memory."""

from __future__ import annotations

import numpy as np
import pytest

import curmoe
from tests.babies import VARIANTS, baby_model, compressed, random_ids


@pytest.mark.parametrize("variant", ["mixtral", "qwen2_moe", "olmoe", "gelu_dense_layer", "sigmoid_bias"])
def test_lazy_oracle_equals_float64_copy(variant: str) -> None:
    m = baby_model(dtype=np.float32, **VARIANTS[variant])
    eager, lazy = m.oracle(lazy=False), m.oracle(lazy=True)
    assert lazy.dtype == np.float64 and all(v.dtype == np.float32 for v in m.tensors.values())
    ids = random_ids(m, 3, 9)
    mask = np.ones_like(ids)
    mask[1, :4] = 0  # left padding
    a, b = eager.run(ids, attention_mask=mask), lazy.run(ids, attention_mask=mask)
    np.testing.assert_array_equal(a.logits, b.logits)  # bit-identical: the same float64 weights
    for ra, rb in zip(a.routings, b.routings, strict=True):
        for x, y in zip(ra, rb, strict=True):
            np.testing.assert_array_equal(x.experts, y.experts)
    ca, cb = eager.new_cache(), lazy.new_cache()  # cached decode, step by step
    eager.forward(ids, attention_mask=mask, cache=ca), lazy.forward(ids, attention_mask=mask, cache=cb)
    tok = random_ids(m, 3, 1, seed=5)
    one = np.ones_like(tok)
    np.testing.assert_array_equal(eager.forward(tok, attention_mask=one, cache=ca),
                                  lazy.forward(tok, attention_mask=one, cache=cb))


@pytest.mark.parametrize("method", ["cur", "svd", "cur-neuron"])
def test_lazy_oracle_of_compressed_models(method: str) -> None:
    base = baby_model(dtype=np.float32)
    if method == "cur-neuron":
        m = curmoe.compress(base, curmoe.NeuronConfig(ratio=0.5), calib_ids=random_ids(base, 8, 16, seed=3),
                            progress=False)
    else:
        m = compressed(base, method)
    ids = random_ids(m, 2, 7)
    np.testing.assert_array_equal(m.oracle(lazy=False).forward(ids), m.oracle(lazy=True).forward(ids))


def test_oracle_choice() -> None:
    m = baby_model(dtype=np.float32)
    assert m.oracle().tensors.__class__ is dict  # small: a plain float64 copy
    m64 = baby_model(dtype=np.float64)
    assert m64.oracle() is m64  # already float64
    lazy = m.oracle(lazy=True)
    assert lazy.n_params() == m.n_params() and set(lazy.experts) == set(m.experts)
    with pytest.raises(TypeError):
        lazy.tensors["embed.weight"] = np.zeros(1)  # read-only: the oracle never changes the model


def test_lazy_oracle_of_a_large_model_is_chosen_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import curmoe.reference._model as mod

    m = baby_model(dtype=np.float32)
    monkeypatch.setattr(mod, "LAZY_ORACLE_BYTES", 8 * m.n_params())
    assert isinstance(m.oracle().tensors, dict) and not m.is_large()
    monkeypatch.setattr(mod, "LAZY_ORACLE_BYTES", 8 * m.n_params() - 1)
    assert not isinstance(m.oracle().tensors, dict) and m.is_large()


def test_validate_of_a_large_model_is_lazy_and_low_memory(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Treated as large, a model validates the same way: the lazy oracle, ORT without pre-packed weights."""
    import curmoe.reference._model as mod
    from curmoe.exporters import OnnxExportConfig, export
    from curmoe.runtimes import validate

    m = baby_model(dtype=np.float32, **VARIANTS["olmoe"])
    p = export(m, OnnxExportConfig(), tmp_path / "m.onnx")
    small = validate(p, m, "onnxruntime:cpu")
    monkeypatch.setattr(mod, "LAZY_ORACLE_BYTES", 0)
    large = validate(p, m, "onnxruntime:cpu")
    assert small.passed and large.passed
    assert small.info["low_memory"] is False and large.info["low_memory"] is True
    assert abs(large.max_rel_err - small.max_rel_err) < 1e-5 and large.ppl_ref == small.ppl_ref


def test_validate_takes_the_model_directory(tmp_path) -> None:
    """validate(file, MODEL_DIR) opens the runtime first, then reads the model: the same report as with the Model."""
    from curmoe.exporters import OnnxExportConfig, export
    from curmoe.runtimes import validate

    m = baby_model(dtype=np.float32, **VARIANTS["qwen2_moe"])
    d = m.save(tmp_path / "m")
    p = export(m, OnnxExportConfig(), tmp_path / "m.onnx")
    a, b = validate(p, m, "onnxruntime:cpu", seed=3), validate(p, d, "onnxruntime:cpu", seed=3)
    assert a.passed and b.passed and a.max_abs_err == b.max_abs_err and a.ppl_ref == b.ppl_ref
    other = baby_model(dtype=np.float32, seed=1, **VARIANTS["mixtral"]).save(tmp_path / "other")
    with pytest.raises(curmoe.InvalidInputError, match="different model config"):
        validate(p, other, "onnxruntime:cpu")


def test_validate_seeds_is_validate_per_seed(tmp_path) -> None:
    """One session and one reference for several seeds: each report equals validate's with that seed."""
    from curmoe.exporters import OnnxExportConfig, export
    from curmoe.runtimes import validate, validate_seeds

    m = baby_model(dtype=np.float32, **VARIANTS["olmoe"])
    p = export(m, OnnxExportConfig(), tmp_path / "m.onnx")
    many = validate_seeds(p, m, "onnxruntime:cpu", seeds=(0, 4))
    for seed, rep in zip((0, 4), many, strict=True):
        one = validate(p, m, "onnxruntime:cpu", seed=seed)
        assert rep.passed and rep.max_abs_err == one.max_abs_err and rep.ppl_ref == one.ppl_ref
    assert many[0].ppl_ref != many[1].ppl_ref  # different inputs
