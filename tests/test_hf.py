"""Hugging Face import: curmoe reference logits vs transformers logits on small random models of each architecture.

Criterion everywhere: max |logits_curmoe - logits_hf| / max |logits_hf| <= 1e-4 over the real (non-padding) tokens,
float32 on both sides. Every parameter (norm weights and biases included) is randomised so that a misplaced tensor
cannot hide behind an all-ones or all-zeros initialisation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", minversion="5.0")

import curmoe  # noqa: E402
from curmoe.models import convert, from_hf  # noqa: E402

TOL = 1e-4
V = 64
COMMON = dict(
    vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    num_experts_per_tok=2, max_position_embeddings=128, attn_implementation="eager",
)
ARCHS = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(intermediate_size=16, num_local_experts=4, eos_token_id=2)),
    "qwen2_moe": (  # layer 1 dense (mlp_only_layers), shared expert with sigmoid gate, q/k/v bias, no renormalisation
        "Qwen2MoeConfig", "Qwen2MoeForCausalLM",
        dict(intermediate_size=40, moe_intermediate_size=16, shared_expert_intermediate_size=24, num_experts=4,
             mlp_only_layers=[1], eos_token_id=5, pad_token_id=0),
    ),
    "qwen3_moe": (  # per-head q/k norm, head_dim != hidden/heads, renormalised top-k, tied embeddings
        "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
        dict(intermediate_size=40, moe_intermediate_size=16, num_experts=4, norm_topk_prob=True, head_dim=16,
             tie_word_embeddings=True, eos_token_id=7),
    ),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(intermediate_size=16, num_experts=4, eos_token_id=3, pad_token_id=1)),
}


def hf_config(arch: str, **overrides):
    cfg_cls, _, kw = ARCHS[arch]
    return getattr(transformers, cfg_cls)(**(COMMON | kw | overrides))


@pytest.fixture(scope="module", params=list(ARCHS))
def hf_model(request):
    arch = request.param
    torch.manual_seed(1234)
    model = getattr(transformers, ARCHS[arch][1])(hf_config(arch)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    return model


def batch(T: int = 9, pad: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two sequences; the second is left-padded by ``pad`` tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(2, T))
    mask = np.ones((2, T), dtype=np.int64)
    mask[1, :pad] = 0
    ids[1, :pad] = 0
    return ids, mask


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers forward with the positions generate() uses for left padding (count of real tokens before)."""
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos))
    return out.logits.numpy()


def rel_err(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    real = mask.astype(bool)
    return float(np.abs(ours - ref)[real].max() / np.abs(ref[real]).max())


# Logits -----------------------------------------------------------------------------------------------------------
def test_batch_logits_match_transformers(hf_model):
    model = from_hf(hf_model)
    assert model.config.moe.n_experts == 4 and model.dtype == np.float32
    ids, mask = batch()
    ref = hf_logits(hf_model, ids, mask)
    ours = model.forward(ids, attention_mask=mask)
    assert rel_err(ours, ref, mask) <= TOL


def test_cached_decoding_matches_transformers_full_forward(hf_model):
    model = from_hf(hf_model)
    ids, mask = batch(T=10, pad=3, seed=1)
    ref = hf_logits(hf_model, ids, mask)
    cache = model.new_cache()
    P = 4  # prefill: the padded row has one real token
    steps = [model.forward(ids[:, :P], attention_mask=mask[:, :P], cache=cache)]
    for t in range(P, ids.shape[1]):
        steps.append(model.forward(ids[:, t : t + 1], attention_mask=mask[:, t : t + 1], cache=cache))
    ours = np.concatenate(steps, axis=1)
    assert cache.length == ids.shape[1]
    assert rel_err(ours, ref, mask) <= TOL


def test_config_translation(hf_model):
    hc, c = hf_model.config, from_hf(hf_model).config
    arch = hc.model_type
    assert c.eos_token_id == hc.eos_token_id and c.pad_token_id == hc.pad_token_id
    assert c.tie_embeddings == (arch == "qwen3_moe") and ("lm_head.weight" in from_hf(hf_model).tensors) != c.tie_embeddings
    assert c.qk_norm == {"qwen3_moe": "head", "olmoe": "full"}.get(arch)
    assert c.moe.router.normalize == (arch in ("mixtral", "qwen3_moe"))
    assert (c.layer_types == ("moe", "dense")) == (arch == "qwen2_moe")
    assert (c.moe.n_shared, c.moe.shared_gate, c.attn_bias) == ((1, True, True) if arch == "qwen2_moe" else (0, False, False))


# Directories ------------------------------------------------------------------------------------------------------
def write_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    Tokenizer(WordLevel({f"w{i}": i for i in range(V)}, unk_token="w0")).save(str(path / "tokenizer.json"))


def assert_same_model(a: curmoe.Model, b: curmoe.Model) -> None:
    assert a.config == b.config
    assert a.tensors.keys() == b.tensors.keys() and a.experts.keys() == b.experts.keys()
    for k in a.tensors:
        np.testing.assert_array_equal(a.tensors[k], b.tensors[k])
    for k in a.experts:
        np.testing.assert_array_equal(a.experts[k].dense(), b.experts[k].dense())


def test_save_pretrained_directory_and_convert(hf_model, tmp_path):
    """save_pretrained writes per-expert tensors (w1/w2/w3 for Mixtral); they fuse back to the same model."""
    src = tmp_path / "hf"
    hf_model.save_pretrained(src)
    write_tokenizer(src)
    from_dir, from_obj = from_hf(src), from_hf(hf_model)
    assert_same_model(from_dir, from_obj)
    assert from_dir.tokenizer_path == src / "tokenizer.json"
    out = convert(src, tmp_path / "curmoe")
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    ids, mask = batch()
    np.testing.assert_array_equal(curmoe.load(out).forward(ids, attention_mask=mask), from_obj.forward(ids, attention_mask=mask))
    from curmoe.app.cli import main  # the CLI spelling of the same conversion

    assert main(["convert", str(src), "-o", str(tmp_path / "cli")]) == 0
    np.testing.assert_array_equal(curmoe.load(tmp_path / "cli").forward(ids, attention_mask=mask),
                                  from_obj.forward(ids, attention_mask=mask))


@pytest.mark.parametrize("layout", ["fused", "sharded", "bf16"])
def test_other_weight_layouts(layout, tmp_path):
    torch.manual_seed(0)
    hf = transformers.Qwen2MoeForCausalLM(hf_config("qwen2_moe")).eval()
    if layout == "bf16":
        hf = hf.to(torch.bfloat16)
    if layout == "fused":  # the in-memory transformers 5.x layout: experts.gate_up_proj (E, 2I, H), down_proj (E, H, I)
        from safetensors.torch import save_file

        hf.config.save_pretrained(tmp_path)
        sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
        assert sd["model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 32, 32)
        save_file(sd, str(tmp_path / "model.safetensors"))
    else:
        hf.save_pretrained(tmp_path, max_shard_size="20KB" if layout == "sharded" else "5GB")
    if layout == "sharded":
        assert (tmp_path / "model.safetensors.index.json").is_file()
    assert_same_model(from_hf(tmp_path), from_hf(hf))


# Errors -----------------------------------------------------------------------------------------------------------
def test_unsupported_architecture_lists_supported(tmp_path):
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(curmoe.InvalidInputError, match="model_type='gpt2'.*mixtral, qwen2_moe, qwen3_moe, olmoe"):
        from_hf(gpt2)  # dense Llama-family models are supported since issue 14 (tests/test_hf_dense.py)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_oss"}))
    with pytest.raises(curmoe.InvalidInputError, match="model_type='gpt_oss'.*mixtral, qwen2_moe, qwen3_moe, olmoe"):
        from_hf(tmp_path)


@pytest.mark.parametrize(
    "arch, overrides, message",
    [
        ("mixtral", dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}), "rope_type='linear'"),
        ("mixtral", dict(sliding_window=16), "sliding_window=16 < max_position_embeddings=128"),
        ("qwen2_moe", dict(use_sliding_window=True, sliding_window=16, max_window_layers=2), "sliding_window=16"),
        ("qwen3_moe", dict(attention_bias=True), "o_proj"),
        ("olmoe", dict(clip_qkv=8.0), "clip_qkv=8.0"),
        ("olmoe", dict(hidden_act="gelu"), "hidden_act='gelu'"),
    ],
)
def test_unsupported_features_are_named(arch, overrides, message, tmp_path):
    hf_config(arch, **overrides).save_pretrained(tmp_path)  # the config is checked before any weight is read
    with pytest.raises(curmoe.InvalidInputError, match=message):
        from_hf(tmp_path)


def test_window_covering_the_context_is_accepted():
    torch.manual_seed(0)
    hf = transformers.MixtralForCausalLM(hf_config("mixtral", sliding_window=128)).eval()
    ids, mask = batch()
    assert rel_err(from_hf(hf).forward(ids, attention_mask=mask), hf_logits(hf, ids, mask), mask) <= TOL


def test_bad_arguments(tmp_path):
    with pytest.raises(curmoe.InvalidInputError, match="pass a transformers PreTrainedModel or a local directory"):
        from_hf(42)
    with pytest.raises(curmoe.CheckpointError, match="is not a local directory"):
        from_hf(tmp_path / "org/model")
    with pytest.raises(curmoe.CheckpointError, match="config.json is missing|config.json' is missing"):
        from_hf(tmp_path)
    with pytest.raises(curmoe.InvalidInputError, match="dtype=int32 is not supported"):
        from_hf(tmp_path, dtype=np.int32)
    hf_config("olmoe").save_pretrained(tmp_path)
    with pytest.raises(curmoe.CheckpointError, match="neither model.safetensors nor"):
        from_hf(tmp_path)


def test_out_of_vocabulary_token_ids_are_dropped():
    hf = transformers.OlmoeForCausalLM(hf_config("olmoe", eos_token_id=50279)).eval()
    assert from_hf(hf).config.eos_token_id is None


def test_import_is_light():
    code = "import sys, curmoe.models.hf; print('torch' in sys.modules or 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
