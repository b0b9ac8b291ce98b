"""The NumPy reference model: MoE block vs a naive per-token loop, cached decoding, padding, architecture variants."""

from __future__ import annotations

import numpy as np
import pytest

import curmoe
from curmoe.reference._ops import gelu, rms_norm, sigmoid, silu
from curmoe.routing._gating import route
from tests.babies import VARIANTS, baby_config, baby_model, random_ids


def naive_moe(model: curmoe.Model, layer: int, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per-token loop over one sequence, written independently of _moe.py: x (T, d) normed input."""
    cfg = model.config.moe
    t = model.tensors
    r = route(x @ t[f"layers.{layer}.router.weight"].T, cfg.router, token_ids=ids,
              bias=t.get(f"layers.{layer}.router.bias"))
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        for e, g in zip(r.experts[i], r.gates[i]):
            if e < 0:
                continue
            W = {n: model.experts[f"layers.{layer}.experts.{e}.{n}"].dense()
                 for n in ("gate", "up", "down") if f"layers.{layer}.experts.{e}.{n}" in model.experts}
            h = silu(W["gate"] @ x[i]) * (W["up"] @ x[i]) if cfg.activation == "swiglu" else gelu(W["up"] @ x[i])
            out[i] += g * (W["down"] @ h)
        ys = np.zeros(x.shape[1])
        for s in range(cfg.n_shared):
            W = {n: model.experts[f"layers.{layer}.shared.{s}.{n}"].dense() for n in ("gate", "up", "down")}
            ys += W["down"] @ (silu(W["gate"] @ x[i]) * (W["up"] @ x[i]))
        if cfg.shared_gate:
            ys *= sigmoid(t[f"layers.{layer}.shared_gate.weight"] @ x[i])
        out[i] += ys
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_moe_block_matches_naive_loop(variant):
    model = baby_model(**VARIANTS[variant])
    ids = random_ids(model, 2, 9)
    seen: dict[int, np.ndarray] = {}

    def observer(key, X):
        if key.endswith("moe_input"):
            seen[int(key.split(".")[1])] = X

    out = model.run(ids, observer=observer)
    assert out.logits.shape == (2, 9, model.config.vocab_size) and out.logits.dtype == np.float64
    from curmoe.reference._moe import moe_block

    for l, X in seen.items():
        x = X.reshape(2, 9, -1)
        t = model.tensors
        got, _ = moe_block(x, ids, np.ones((2, 9), bool), l, model.config.moe, t[f"layers.{l}.router.weight"],
                           t.get(f"layers.{l}.router.bias"), model.experts, t.get(f"layers.{l}.shared_gate.weight"),
                           decoding=False)
        for b in range(2):
            np.testing.assert_allclose(got[b], naive_moe(model, l, x[b], ids[b]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", sorted(set(VARIANTS) - {"switch"}))
def test_cached_decoding_reproduces_full_forward(variant):
    model = baby_model(**VARIANTS[variant])
    ids = random_ids(model, 2, 10)
    full = model.forward(ids)
    cache = model.new_cache()
    steps = [model.forward(ids[:, :4], cache=cache)]  # prefill 4, then one token at a time
    for t in range(4, 10):
        steps.append(model.forward(ids[:, t : t + 1], cache=cache))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-10, atol=1e-10)
    assert cache.length == 10


def test_switch_decoding_matches_when_capacity_never_binds():
    model = baby_model(router=dict(kind="switch", top_k=1, capacity_factor=8.0))
    ids = random_ids(model, 1, 8)
    full = model.forward(ids)
    cache = model.new_cache()
    steps = [model.forward(ids[:, t : t + 1], cache=cache) for t in range(8)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-10, atol=1e-10)


def test_expert_choice_refuses_to_decode_unless_fallback():
    model = baby_model(router=dict(kind="expert_choice", capacity_factor=1.0))
    ids = random_ids(model, 1, 6)
    model.forward(ids)  # a full-sequence forward is fine
    cache = model.new_cache()
    model.forward(ids[:, :5], cache=cache)  # so is a prefill
    with pytest.raises(curmoe.DecodingNotSupportedError, match="decode_fallback"):
        model.forward(ids[:, 5:], cache=cache)
    fb = baby_model(router=dict(kind="expert_choice", capacity_factor=1.0, decode_fallback="topk"))
    cache = fb.new_cache()
    fb.forward(ids[:, :5], cache=cache)
    assert np.isfinite(fb.forward(ids[:, 5:], cache=cache)).all()


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_real_tokens(side):
    model = baby_model(**VARIANTS["qwen2_moe"])
    a, b = random_ids(model, 1, 7, seed=2)[0], random_ids(model, 1, 4, seed=3)[0]
    pad = np.zeros(3, np.int64)
    if side == "left":
        ids = np.stack([a, np.concatenate([pad, b])])
        mask = np.stack([np.ones(7), np.concatenate([np.zeros(3), np.ones(4)])])
        got_b = model.forward(ids, attention_mask=mask)[1, 3:]
    else:
        ids = np.stack([a, np.concatenate([b, pad])])
        mask = np.stack([np.ones(7), np.concatenate([np.ones(4), np.zeros(3)])])
        got_b = model.forward(ids, attention_mask=mask)[1, :4]
    np.testing.assert_allclose(got_b, model.forward(b[None])[0], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(model.forward(ids, attention_mask=mask)[0], model.forward(a[None])[0], rtol=1e-10)


def test_left_padded_batch_decodes_like_single_sequences():
    model = baby_model()
    a, b = random_ids(model, 1, 5, seed=4)[0], random_ids(model, 1, 3, seed=5)[0]
    ids = np.stack([a, np.concatenate([[0, 0], b])])
    mask = np.array([[1] * 5, [0, 0, 1, 1, 1]])
    cache = model.new_cache()
    model.forward(ids, attention_mask=mask, cache=cache)
    nxt = np.array([[7], [9]])
    got = model.forward(nxt, attention_mask=np.ones((2, 1)), cache=cache)
    want_a = model.forward(np.concatenate([a, [7]])[None])[0, -1]
    want_b = model.forward(np.concatenate([b, [9]])[None])[0, -1]
    np.testing.assert_allclose(got[:, 0], np.stack([want_a, want_b]), rtol=1e-10, atol=1e-10)


def test_attention_against_explicit_formula():
    """One-layer, one-sequence check of GQA + RoPE against a loop over heads written from the formulas."""
    model = baby_model(n_layers=1)
    cfg, t = model.config, model.tensors
    ids = random_ids(model, 1, 5)
    seen = {}
    model.run(ids, observer=lambda k, X: seen.setdefault(k, X))
    x = t["embed.weight"][ids[0]]
    xn = rms_norm(x, t["layers.0.attn_norm.weight"], cfg.norm_eps)
    hd, H, KV = cfg.head_dim_, cfg.n_heads, cfg.kv_heads
    q = xn @ t["layers.0.attn.q.weight"].T
    k = xn @ t["layers.0.attn.k.weight"].T
    v = xn @ t["layers.0.attn.v.weight"].T

    def rope(vec, pos):  # rotate pairs (i, i + hd/2) by angle pos * theta^(-2i/hd)
        out = vec.copy()
        for i in range(hd // 2):
            a = pos * cfg.rope_theta ** (-2 * i / hd)
            x1, x2 = vec[i], vec[i + hd // 2]
            out[i], out[i + hd // 2] = x1 * np.cos(a) - x2 * np.sin(a), x1 * np.sin(a) + x2 * np.cos(a)
        return out

    heads = []
    for h in range(H):
        g = h // (H // KV)
        qs = np.stack([rope(q[i, h * hd : (h + 1) * hd], i) for i in range(5)])
        ks = np.stack([rope(k[i, g * hd : (g + 1) * hd], i) for i in range(5)])
        s = qs @ ks.T / np.sqrt(hd) + np.triu(np.full((5, 5), -np.inf), 1)
        w = np.exp(s - s.max(1, keepdims=True))
        heads.append((w / w.sum(1, keepdims=True)) @ v[:, g * hd : (g + 1) * hd])
    h1 = x + np.concatenate(heads, 1) @ t["layers.0.attn.o.weight"].T
    want = rms_norm(h1, t["layers.0.ffn_norm.weight"], cfg.norm_eps)
    np.testing.assert_allclose(seen["layers.0.moe_input"], want, rtol=1e-10, atol=1e-12)


def test_float32_model_tracks_float64_oracle():
    m64 = baby_model()
    m32 = m64.astype(np.float32)
    ids = random_ids(m64, 2, 8)
    l32, l64 = m32.forward(ids), m64.forward(ids)
    assert l32.dtype == np.float32
    np.testing.assert_allclose(l32, l64, rtol=1e-4, atol=1e-4)


def test_bad_inputs_are_clear():
    model = baby_model()
    with pytest.raises(curmoe.InvalidInputError, match=r"shape \(B, T\)"):
        model.forward(np.array([1, 2, 3]))
    with pytest.raises(curmoe.InvalidInputError, match="token id 50 outside the vocabulary"):
        model.forward(np.array([[1, 50]]))
    with pytest.raises(curmoe.InvalidInputError, match="integers"):
        model.forward(np.array([[1.0, 2.0]]))
    with pytest.raises(curmoe.InvalidInputError, match="attention_mask has shape"):
        model.forward(np.array([[1, 2]]), attention_mask=np.ones((1, 3)))


def test_config_validation_and_json_round_trip():
    cfg = baby_config(**VARIANTS["qwen2_moe"])
    assert curmoe.ModelConfig.from_json(cfg.to_json()) == cfg
    assert curmoe.ModelConfig.from_dict(cfg.to_dict() | {"future_field": 1}) == cfg  # unknown keys ignored
    with pytest.raises(curmoe.InvalidInputError, match="multiple of n_kv_heads"):
        baby_config(n_kv_heads=3)
    with pytest.raises(curmoe.InvalidInputError, match="qk_norm='bad'"):
        baby_config(qk_norm="bad")
    with pytest.raises(curmoe.InvalidInputError, match="top_k=5 exceeds n_experts=4"):
        baby_config(router=dict(top_k=5))
    with pytest.raises(curmoe.InvalidInputError, match="layer_types has 1 entries"):
        baby_config(layer_types=("moe",))
