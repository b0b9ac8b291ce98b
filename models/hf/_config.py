"""Translate a transformers 5.x config (MoE: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE; dense: Llama, Mistral, Qwen2,
Qwen3) into a curmoe ``ModelConfig``.

The four architectures share one block, ``x' = h + FFN(RMSNorm(h))`` with ``h = x + Attn(RMSNorm(x))``; they differ in:

============  ==================  ==========================  =====================  =========================
model_type    q/k/v bias          q/k RMSNorm                 top-k renormalised     extra
============  ==================  ==========================  =====================  =========================
mixtral       no                  no                          always                 -
qwen2_moe     ``qkv_bias``        no                          ``norm_topk_prob``     shared expert, sigmoid gate
qwen3_moe     (o too: refused)    per head (over head_dim)    ``norm_topk_prob``     -
olmoe         (o too: refused)    full width, before heads    ``norm_topk_prob``     ``clip_qkv`` (refused)
============  ==================  ==========================  =====================  =========================

Qwen2-MoE and Qwen3-MoE make layer l an MoE layer iff ``l not in mlp_only_layers`` and
``(l + 1) % decoder_sparse_step == 0``; the others are dense SwiGLU FFNs of width ``intermediate_size``
(curmoe layer type "dense", ``dense_d_ff``). Router: ``p = softmax(x W_r^T)``, top-k of p (Shazeer et al. 2017,
"Outrageously large neural networks"), renormalised as in the table; the curmoe ``topk`` router is exactly this.

The dense architectures use the same block with a dense SwiGLU FFN in every layer: curmoe ``layer_types`` all
"dense" with ``dense_d_ff = intermediate_size``. Their ``moe`` field is a documented placeholder (one expert of width
``intermediate_size``, top-1) that no layer uses; it keeps ``ModelConfig`` valid and is what
``curmoe.models.pretrained.as_single_expert`` turns each dense FFN into (one always-on expert) for compression.

============  ==================  ==========================
model_type    q/k/v bias          q/k RMSNorm
============  ==================  ==========================
llama         (o too: refused)    no
mistral       no                  no
qwen2         always              no
qwen3         (o too: refused)    per head (over head_dim)
============  ==================  ==========================

Anything the NumPy reference cannot compute exactly (scaled RoPE, a sliding window shorter than the context, an
output-projection bias, q/k/v clipping, a non-SiLU activation) raises :class:`curmoe.InvalidInputError` naming it.
"""

from __future__ import annotations

import logging
from typing import Any

from curmoe.common.errors import InvalidInputError
from curmoe.reference import ModelConfig, MoEConfig
from curmoe.routing import RouterConfig

__all__ = ["SUPPORTED_ARCHITECTURES", "MOE_ARCHITECTURES", "DENSE_ARCHITECTURES", "check_model_type",
           "to_model_config", "is_moe_layer", "dense_placeholder"]

log = logging.getLogger(__name__)

MOE_ARCHITECTURES: tuple[str, ...] = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
DENSE_ARCHITECTURES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ARCHITECTURES: tuple[str, ...] = MOE_ARCHITECTURES + DENSE_ARCHITECTURES
_SILU = ("silu", "swish")  # transformers' ACT2FN maps both to SiLU


def check_model_type(model_type: Any) -> str:
    """Return ``model_type`` if curmoe can convert it, else raise an error listing the supported ones."""
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise InvalidInputError(
            f"model_type={model_type!r} is not supported by curmoe.models.from_hf; supported architectures: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} (MoE: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE; dense: Llama, Mistral, "
            "Qwen2, Qwen3)"
        )
    return model_type


def _unsupported(model_type: str, feature: str, fix: str) -> InvalidInputError:
    return InvalidInputError(
        f"{model_type} model uses {feature}, which the curmoe reference model does not implement; {fix}"
    )


def is_moe_layer(cfg: Any, layer: int) -> bool:
    """Whether HF layer ``layer`` holds a sparse MoE block (the rule of Qwen2MoeDecoderLayer / Qwen3MoeDecoderLayer)."""
    if cfg.model_type in ("mixtral", "olmoe"):
        return True
    step = int(getattr(cfg, "decoder_sparse_step", 1) or 1)
    only = set(getattr(cfg, "mlp_only_layers", None) or [])
    return layer not in only and cfg.num_experts > 0 and (layer + 1) % step == 0


def _rope_theta(cfg: Any) -> float:
    rp = getattr(cfg, "rope_parameters", None)
    if not isinstance(rp, dict) or "rope_type" not in rp:
        raise _unsupported(cfg.model_type, f"rope_parameters={rp!r}", "only a single default RoPE is supported")
    if rp["rope_type"] != "default":
        raise _unsupported(
            cfg.model_type, f"rope_parameters rope_type={rp['rope_type']!r} (scaled RoPE)",
            "only rope_type='default' (plain RoPE, no rope_scaling) converts exactly",
        )
    return float(rp["rope_theta"])


def _sliding_window(cfg: Any) -> int | None:
    """The attention window transformers applies, or None for full causal attention."""
    mt = cfg.model_type
    if mt == "olmoe":
        return None  # OlmoeModel always builds a full causal mask
    if mt in ("qwen2_moe", "qwen2", "qwen3"):
        sliding_layers = [t == "sliding_attention" for t in (getattr(cfg, "layer_types", None) or [])]
        return cfg.sliding_window if getattr(cfg, "use_sliding_window", False) and any(sliding_layers) else None
    if mt == "llama":
        return None
    return getattr(cfg, "sliding_window", None) or None  # mixtral, mistral; qwen3_moe: None unless use_sliding_window


def _token_id(cfg: Any, name: str, vocab: int) -> int | None:
    v = getattr(cfg, name, None)
    if isinstance(v, (list, tuple)):
        if len(v) > 1:
            log.info("%s=%s lists several ids; curmoe keeps the first, %s", name, v, v[0])
        v = v[0] if v else None
    if v is None:
        return None
    if not 0 <= int(v) < vocab:
        log.warning("%s=%s is outside the vocabulary [0, %d); dropping it", name, v, vocab)
        return None
    return int(v)


def to_model_config(cfg: Any) -> ModelConfig:
    """The curmoe ``ModelConfig`` of a transformers config object (``PretrainedConfig``) of a supported model."""
    mt = check_model_type(getattr(cfg, "model_type", None))
    if cfg.hidden_act not in _SILU:
        raise _unsupported(mt, f"hidden_act={cfg.hidden_act!r}", "only SiLU (SwiGLU experts) converts")
    theta = _rope_theta(cfg)
    window = _sliding_window(cfg)
    max_pos = int(cfg.max_position_embeddings)
    if window is not None and window < max_pos:
        raise _unsupported(
            mt, f"sliding-window attention (sliding_window={window} < max_position_embeddings={max_pos})",
            "the reference attends to the whole sequence; set sliding_window to null (or >= "
            "max_position_embeddings) in config.json only if you never run sequences longer than the window",
        )
    if mt in ("qwen3_moe", "olmoe", "llama", "qwen3") and getattr(cfg, "attention_bias", False):
        raise _unsupported(mt, "attention_bias=True (a bias on o_proj)", "only q/k/v biases are supported")
    if mt == "olmoe" and getattr(cfg, "clip_qkv", None) is not None:
        raise _unsupported(mt, f"clip_qkv={cfg.clip_qkv}", "q/k/v clipping is not supported")
    if getattr(cfg, "mlp_bias", False):
        raise _unsupported(mt, "mlp_bias=True (biases on the FFN projections)", "only bias-free SwiGLU FFNs convert")
    if mt in DENSE_ARCHITECTURES:
        return _dense_config(cfg, mt, theta, max_pos)
    n_experts = int(cfg.num_local_experts if mt == "mixtral" else cfg.num_experts)
    layer_types = tuple("moe" if is_moe_layer(cfg, l) else "dense" for l in range(cfg.num_hidden_layers))
    if "moe" not in layer_types:
        raise InvalidInputError(f"{mt} config has no MoE layer (num_experts={n_experts}); curmoe converts MoE models")
    shared_d_ff = int(getattr(cfg, "shared_expert_intermediate_size", 0) or 0) if mt == "qwen2_moe" else 0
    router = RouterConfig(
        kind="topk", top_k=int(cfg.num_experts_per_tok),
        normalize=True if mt == "mixtral" else bool(cfg.norm_topk_prob),
    )
    moe = MoEConfig(
        n_experts=n_experts,
        d_ff=int(cfg.intermediate_size if mt in ("mixtral", "olmoe") else cfg.moe_intermediate_size),
        activation="swiglu",
        router=router,
        n_shared=1 if shared_d_ff else 0,
        shared_d_ff=shared_d_ff,
        shared_gate=bool(shared_d_ff),
    )
    return ModelConfig(
        **_common(cfg, theta, max_pos),
        attn_bias=bool(getattr(cfg, "qkv_bias", False)) if mt == "qwen2_moe" else False,
        qk_norm={"qwen3_moe": "head", "olmoe": "full"}.get(mt),
        moe=moe,
        dense_d_ff=int(cfg.intermediate_size) if "dense" in layer_types else 0,
        layer_types=None if "dense" not in layer_types else layer_types,
    )


def _common(cfg: Any, theta: float, max_pos: int) -> dict[str, Any]:
    """The ``ModelConfig`` fields every architecture sets the same way."""
    V = int(cfg.vocab_size)
    return dict(
        vocab_size=V,
        d_model=int(cfg.hidden_size),
        n_layers=int(cfg.num_hidden_layers),
        n_heads=int(cfg.num_attention_heads),
        n_kv_heads=int(cfg.num_key_value_heads or cfg.num_attention_heads),
        head_dim=int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads),
        rope_theta=theta,
        norm_eps=float(cfg.rms_norm_eps),
        max_seq_len=max_pos,
        tie_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        eos_token_id=_token_id(cfg, "eos_token_id", V),
        pad_token_id=_token_id(cfg, "pad_token_id", V),
    )


def dense_placeholder(d_ff: int) -> MoEConfig:
    """The unused ``moe`` field of an all-dense model: one expert of the dense width, top-1 (see module docstring)."""
    return MoEConfig(n_experts=1, d_ff=int(d_ff), activation="swiglu", router=RouterConfig(kind="topk", top_k=1))


def _dense_config(cfg: Any, mt: str, theta: float, max_pos: int) -> ModelConfig:
    """Llama / Mistral / Qwen2 / Qwen3: every layer a dense SwiGLU FFN of width ``intermediate_size``."""
    f = int(cfg.intermediate_size)
    return ModelConfig(
        **_common(cfg, theta, max_pos),
        attn_bias=mt == "qwen2",  # Qwen2Attention: q/k/v always biased, o never
        qk_norm="head" if mt == "qwen3" else None,
        moe=dense_placeholder(f),
        dense_d_ff=f,
        layer_types=("dense",) * int(cfg.num_hidden_layers),
    )
