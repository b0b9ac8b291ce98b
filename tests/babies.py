"""Baby models for tests (mlx-lm style: tiny vocab and widths, a few experts, two layers)."""

from __future__ import annotations

from typing import Any

import numpy as np

import curmoe
from curmoe import ModelConfig, MoEConfig, RouterConfig


def baby_config(router: dict[str, Any] | None = None, moe: dict[str, Any] | None = None, **kw: Any) -> ModelConfig:
    r = RouterConfig(**({"kind": "topk", "top_k": 2} | (router or {})))
    m = MoEConfig(**({"n_experts": 4, "d_ff": 24, "router": r} | (moe or {})))
    base = dict(vocab_size=50, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, moe=m, eos_token_id=1)
    return ModelConfig(**(base | kw))


def baby_model(seed: int = 0, dtype: Any = np.float64, std: float = 0.3, **kw: Any) -> curmoe.Model:
    """Random weights with a large std so routing and attention are far from uniform."""
    return curmoe.Model.random(baby_config(**kw), seed=seed, dtype=dtype, std=std)


def random_ids(model: curmoe.Model, B: int, T: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, size=(B, T))


# Architecture / router variants every backend test runs (keyword overrides for baby_model).
VARIANTS = {
    "mixtral": {},
    "qwen2_moe": dict(attn_bias=True, moe=dict(n_shared=1, shared_d_ff=20, shared_gate=True),
                      router=dict(normalize=False)),
    "qwen3_moe": dict(qk_norm="head", head_dim=6),
    "olmoe": dict(qk_norm="full", router=dict(normalize=False, top_k=3)),
    "gelu_dense_layer": dict(moe=dict(activation="gelu"), layer_types=("dense", "moe"), dense_d_ff=20),
    "mha_tied": dict(n_kv_heads=None, tie_embeddings=True),
    "sigmoid_bias": dict(router=dict(kind="sigmoid_bias", routed_scaling=2.5)),
    "hash": dict(router=dict(kind="hash", top_k=1)),
    "switch": dict(router=dict(kind="switch", top_k=1, capacity_factor=1.0)),
    # real layer shapes at baby width (issue 19): OLMoE's head_dim 128, MHA, 64 experts top-8, full q/k norm;
    # Mixtral's head_dim 128, GQA 4:1 (32/8), 8 experts top-2
    "olmoe_shape": dict(d_model=32, n_heads=2, n_kv_heads=None, head_dim=128, qk_norm="full",
                        moe=dict(n_experts=64, d_ff=8), router=dict(normalize=False, top_k=8)),
    "mixtral_shape": dict(d_model=32, n_heads=4, n_kv_heads=1, head_dim=128, moe=dict(n_experts=8, d_ff=16)),
}

# The variants the exporters and runtimes run: the shared ones with the hash router at top_k=2 (exercises the
# multi-slot hash table).
EXPORT_VARIANTS = {k: v for k, v in VARIANTS.items() if k != "hash"} | {"hash2": dict(router=dict(kind="hash", top_k=2))}


def compressed(model: curmoe.Model, method: str, fold_u: bool = False) -> curmoe.Model:
    """CUR (``method="cur"``) or SVD-compressed copy of a baby model at ratio 0.5, via ``curmoe.compress``."""
    cfg = curmoe.CURConfig(ratio=0.5, fold_u=fold_u) if method == "cur" else curmoe.SVDConfig(ratio=0.5)
    return curmoe.compress(model, cfg, progress=False)


# A corpus for a real (small) BPE tokenizer (the CLI tests' model, tests/conftest.py::model_dir).
TEXT = ["the cat sat on the mat .", "a dog ran in the park .", "the sun is hot and the sky is blue .",
        "we eat bread and drink tea ."] * 20
