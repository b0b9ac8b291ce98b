"""The models shipped in models/: they load, the torch twin and ONNX Runtime agree with the reference on them, and
they are real language models (far better than uniform on WikiText-2 valid)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import curmoe

MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = [d.name for d in sorted(MODELS.iterdir()) if (d / "config.json").is_file()]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_with_tokenizer_and_card(name):
    m = curmoe.load(MODELS / name)
    assert m.tokenizer_path is not None and (MODELS / name / "README.md").is_file()
    assert m.config.eos_token_id is not None
    assert (MODELS / name / "model.safetensors").stat().st_size <= 20 * 2**20  # fp16, within the size budget


def test_tiny_model_twin_and_onnx_agree_with_reference(tmp_path):
    torch_model = pytest.importorskip("curmoe.models.twin._model")
    pytest.importorskip("onnxruntime")
    import torch

    from curmoe.exporters import OnnxExportConfig, export
    from curmoe.runtimes import validate

    m = curmoe.load(MODELS / "wt2-moe-tiny")
    ids = np.random.default_rng(0).integers(0, m.config.vocab_size, size=(2, 32))
    ref = m.forward(ids)
    with torch.inference_mode():
        tw = torch_model.TorchMoE.from_reference(m)(torch.from_numpy(ids)).numpy()
    assert np.abs(tw - ref).max() / np.abs(ref).max() < 1e-5
    rep = validate(export(m, OnnxExportConfig(), tmp_path / "t.onnx"), m, "onnxruntime:cpu")
    assert rep.passed, rep.failures


def test_tiny_model_is_a_language_model(wikitext2):
    pytest.importorskip("tokenizers")
    from curmoe.runtimes import load
    from curmoe.runtimes.evaluate import evaluate_wikitext2

    sess = load(MODELS / "wt2-moe-tiny", "reference")
    res = evaluate_wikitext2(sess, MODELS / "wt2-moe-tiny" / "tokenizer.json", split="valid", max_tokens=4096)
    assert res.ppl_token < 1000 < curmoe.load(MODELS / "wt2-moe-tiny").config.vocab_size  # uniform = 8192
