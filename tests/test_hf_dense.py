"""Dense Llama-family import (Llama, Mistral, Qwen2, Qwen3; safetensors folders and GGUF files) vs transformers.

Criterion (as tests/test_hf.py): max |logits_curmoe - logits_hf| / max |logits_hf| <= 1e-4 over the real tokens,
float32 on both sides, every parameter randomised. GGUF: a tiny Llama written here with gguf.GGUFWriter exactly as
llama.cpp's converter writes one (q/k rows permuted, Q4_1 / Q8_0 / F16 / F32 tensors), read by transformers'
GGUF loader and by curmoe: same dequantised weights, so the same 1e-4 criterion.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", minversion="5.0")
gguf = pytest.importorskip("gguf")

import curmoe  # noqa: E402
from curmoe.common.errors import CheckpointError, InvalidInputError  # noqa: E402
from curmoe.models import convert, from_hf  # noqa: E402
from curmoe.models.tokenizer import load_hf_tokenizer  # noqa: E402

TOL = 1e-4
V = 64
COMMON = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=24, max_position_embeddings=128, attn_implementation="eager")
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(eos_token_id=2)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None, eos_token_id=3, pad_token_id=0)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(eos_token_id=5)),  # q/k/v biases
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16, tie_word_embeddings=True)),  # q/k norm, tied
}
CHAT = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}" \
       "{% if add_generation_prompt %}<|assistant|>{% endif %}"


def randomised(model):
    torch.manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p)) if "norm" in name else p.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture(scope="module", params=list(ARCHS))
def hf_model(request):
    cfg_cls, model_cls, kw = ARCHS[request.param]
    return randomised(getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**(COMMON | kw))))


def batch(T: int = 9, pad: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(2, T))
    mask = np.ones((2, T), dtype=np.int64)
    mask[1, :pad] = 0
    ids[1, :pad] = 0
    return ids, mask


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos))
    return out.logits.numpy()


def rel_err(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    real = mask.astype(bool)
    return float(np.abs(ours - ref)[real].max() / np.abs(ref[real]).max())


# Safetensors / instances ------------------------------------------------------------------------------------------
def test_dense_config_translation(hf_model):
    hc, c = hf_model.config, from_hf(hf_model).config
    mt = hc.model_type
    assert c.layer_types == ("dense", "dense") and c.dense_d_ff == 24
    assert (c.moe.n_experts, c.moe.router.top_k, c.moe.d_ff) == (1, 1, 24)  # the documented placeholder
    assert c.attn_bias == (mt == "qwen2") and c.qk_norm == ("head" if mt == "qwen3" else None)
    assert c.tie_embeddings == (mt == "qwen3") and c.eos_token_id == hc.eos_token_id
    assert not curmoe.reference.expert_keys(c)  # no expert matrix: every FFN is the layer's own mlp


def test_batch_logits_match_transformers(hf_model):
    ids, mask = batch()
    assert rel_err(from_hf(hf_model).forward(ids, attention_mask=mask), hf_logits(hf_model, ids, mask), mask) <= TOL


def test_cached_decoding_matches_transformers(hf_model):
    model = from_hf(hf_model)
    ids, mask = batch(T=10, pad=3, seed=1)
    cache = model.new_cache()
    steps = [model.forward(ids[:, :4], attention_mask=mask[:, :4], cache=cache)]
    steps += [model.forward(ids[:, t : t + 1], attention_mask=mask[:, t : t + 1], cache=cache) for t in range(4, 10)]
    assert rel_err(np.concatenate(steps, axis=1), hf_logits(hf_model, ids, mask), mask) <= TOL


def write_hf_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(V)}, unk_token="w0"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "w2", "chat_template": CHAT}))


def test_folder_convert_keeps_tokenizer_and_chat_template(tmp_path):
    cfg_cls, model_cls, kw = ARCHS["llama"]
    hf = randomised(getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**(COMMON | kw))))
    hf.save_pretrained(tmp_path / "hf")
    write_hf_tokenizer(tmp_path / "hf")
    out = convert(tmp_path / "hf", tmp_path / "cm", require_tokenizer=True)
    ids, mask = batch()
    assert rel_err(curmoe.load(out).forward(ids, attention_mask=mask), hf_logits(hf, ids, mask), mask) <= TOL
    tok = load_hf_tokenizer(out)
    assert tok.eos_token_id == 2 and tok.encode("w5 w7") == [5, 7]
    prompt = tok.apply_chat_template([{"role": "user", "content": "w9"}])
    assert prompt == "<|user|>w9w2<|assistant|>"
    # a folder without its tokenizer is refused when the tokenizer is required, and nothing is written
    (tmp_path / "hf" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="holds no tokenizer.json"):
        convert(tmp_path / "hf", tmp_path / "cm2", require_tokenizer=True)
    assert not (tmp_path / "cm2").exists()


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(InvalidInputError, match="llama, mistral, qwen2, qwen3"):
        from_hf(tmp_path)
    cfg = transformers.LlamaConfig(**(COMMON | dict(attention_bias=True)))
    with pytest.raises(InvalidInputError, match="attention_bias"):
        from_hf(transformers.LlamaForCausalLM(cfg))


# GGUF ---------------------------------------------------------------------------------------------------------------
TOKENS = (["<|endoftext|>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
          + [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [str(i) for i in range(8)] + ["Ġ", "Ċ", "Ġa"])


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (HF rotate-half rows -> interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, sd: dict[str, np.ndarray], *, arch: str = "llama", tokenizer: bool = True,
               bad_type: bool = False) -> Path:
    from gguf.quants import quantize

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(2), w.add_context_length(128), w.add_embedding_length(64), w.add_feed_forward_length(64)
    w.add_head_count(4), w.add_head_count_kv(2), w.add_rope_freq_base(10000.0), w.add_layer_norm_rms_eps(1e-6)
    if tokenizer:
        w.add_tokenizer_model("gpt2"), w.add_tokenizer_pre("default"), w.add_token_list(TOKENS)
        w.add_token_types([3] + [1] * (V - 1)), w.add_token_merges(["Ġ a"]), w.add_eos_token_id(0)
        w.add_chat_template(CHAT)

    def add(name: str, a: np.ndarray, q: str) -> None:
        a = a.astype(np.float32)
        if q == "F32":
            w.add_tensor(name, a)
        elif q == "F16":
            w.add_tensor(name, a.astype(np.float16))
        else:
            qt = getattr(gguf.GGMLQuantizationType, q)
            d = quantize(a, qt)
            w.add_tensor(name, d, raw_shape=d.shape, raw_dtype=qt)

    add("token_embd.weight", sd["model.embed_tokens.weight"], "Q8_0")
    add("output_norm.weight", sd["model.norm.weight"], "F32")
    add("output.weight", sd["lm_head.weight"], "F16")
    for l in range(2):
        p = f"model.layers.{l}."
        add(f"blk.{l}.attn_norm.weight", sd[p + "input_layernorm.weight"], "F32")
        add(f"blk.{l}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], "F32")
        add(f"blk.{l}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], 4), "Q4_1")
        add(f"blk.{l}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], 2), "Q4_1")
        add(f"blk.{l}.attn_v.weight", sd[p + "self_attn.v_proj.weight"], "Q8_0")
        add(f"blk.{l}.attn_output.weight", sd[p + "self_attn.o_proj.weight"], "Q4_1")
        for n in ("gate", "up", "down"):
            add(f"blk.{l}.ffn_{n}.weight", sd[p + f"mlp.{n}_proj.weight"], "Q4_1")
    if bad_type:  # an extra tensor in a type curmoe refuses
        w.add_tensor("blk.0.extra.weight", np.zeros((4, 66), np.uint8), raw_shape=(4, 66),
                     raw_dtype=gguf.GGMLQuantizationType.IQ2_XXS)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    cfg = transformers.LlamaConfig(**(COMMON | dict(hidden_size=64, intermediate_size=64)))
    sd = {k: v.numpy() for k, v in randomised(transformers.LlamaForCausalLM(cfg)).state_dict().items()}
    folder = tmp_path_factory.mktemp("gguf")
    return write_gguf(folder / "tiny.gguf", sd), sd


def test_gguf_logits_match_transformers_gguf_loader(tiny_gguf):
    path, _ = tiny_gguf
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    ours = from_hf(path)
    ids, mask = batch()
    assert rel_err(ours.forward(ids, attention_mask=mask), hf_logits(hf, ids, mask), mask) <= TOL
    cache = ours.new_cache()
    steps = [ours.forward(ids[:, :4], attention_mask=mask[:, :4], cache=cache)]
    steps += [ours.forward(ids[:, t : t + 1], attention_mask=mask[:, t : t + 1], cache=cache) for t in range(4, 9)]
    assert rel_err(np.concatenate(steps, axis=1), hf_logits(hf, ids, mask), mask) <= TOL


def test_gguf_convert_writes_card_tokenizer_and_template(tiny_gguf, tmp_path):
    from curmoe.models.hf import sha256_file

    path, _ = tiny_gguf
    out = convert(path, tmp_path / "cm")
    card = (out / "README.md").read_text()
    assert sha256_file(path) in card and "Q4_1 x12" in card and "dequantised ONCE" in card
    tok = load_hf_tokenizer(out)
    assert tok.encode(" a") == [TOKENS.index("Ġa")] and tok.decode(tok.encode(" abc")) == " abc"
    assert tok.eos_token_id == 0 and tok.chat_template == CHAT
    np.testing.assert_array_equal(curmoe.load(out).tensors["embed.weight"], from_hf(path).tensors["embed.weight"])


def test_gguf_bad_inputs_leave_nothing_behind(tiny_gguf, tmp_path):
    path, sd = tiny_gguf
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size - 100])
    cases = [
        (cut, CheckpointError, "truncated"),
        (write_gguf(tmp_path / "gpt2.gguf", sd, arch="gpt2"), InvalidInputError, "supported: llama, qwen2, qwen3"),
        (write_gguf(tmp_path / "iq.gguf", sd, bad_type=True), InvalidInputError, "IQ2_XXS.*supported: F32"),
        (write_gguf(tmp_path / "notok.gguf", sd, tokenizer=False), CheckpointError, "carries no tokenizer"),
        (tmp_path / "missing.gguf", CheckpointError, "does not exist"),
    ]
    for src, err, msg in cases:
        with pytest.raises(err, match=msg):
            convert(src, tmp_path / "out")
        assert not (tmp_path / "out").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder left
