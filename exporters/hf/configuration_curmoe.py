"""Hugging Face configuration of a curmoe model (remote code: copied into every ``curmoe export --format hf`` folder).

Self-contained on purpose: it imports only ``transformers``, so the exported folder loads on a machine without curmoe
(``AutoConfig.from_pretrained(folder, trust_remote_code=True)``). ``curmoe_config`` is curmoe's own ``ModelConfig``
as JSON (the architecture, the router and which expert matrices are factorised); the standard fields
(``hidden_size``, ``num_hidden_layers``, ...) mirror it for tools that read them.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

# The curmoe ModelConfig version this modeling code implements (curmoe.reference._config.CONFIG_VERSION).
CURMOE_CONFIG_VERSION = 1


class CurmoeConfig(PretrainedConfig):
    """A curmoe MoE transformer: ``curmoe_config`` is the full architecture; the other fields are derived from it."""

    model_type = "curmoe"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, curmoe_config: dict[str, Any] | None = None, use_cache: bool = True, **kwargs: Any) -> None:
        c = dict(curmoe_config or {})
        self.curmoe_config = c
        self.use_cache = use_cache  # False for the non-causal expert_choice router (generate re-runs full sequences)
        if c:
            if int(c.get("version", 1)) > CURMOE_CONFIG_VERSION:
                raise ValueError(f"curmoe_config version {c.get('version')} is newer than this modeling code "
                                 f"({CURMOE_CONFIG_VERSION}); re-export the folder with this curmoe")
            n_heads = int(c["n_heads"])
            kwargs.setdefault("vocab_size", int(c["vocab_size"]))
            kwargs.setdefault("hidden_size", int(c["d_model"]))
            kwargs.setdefault("num_hidden_layers", int(c["n_layers"]))
            kwargs.setdefault("num_attention_heads", n_heads)
            kwargs.setdefault("num_key_value_heads", int(c.get("n_kv_heads") or n_heads))
            kwargs.setdefault("head_dim", int(c.get("head_dim") or int(c["d_model"]) // n_heads))
            kwargs.setdefault("max_position_embeddings", int(c.get("max_seq_len", 256)))
            kwargs.setdefault("rms_norm_eps", float(c.get("norm_eps", 1e-5)))
            kwargs.setdefault("rope_theta", float(c.get("rope_theta", 10000.0)))
            kwargs.setdefault("eos_token_id", c.get("eos_token_id"))
            kwargs.setdefault("pad_token_id", c.get("pad_token_id"))
            kwargs.setdefault("num_local_experts", int(c["moe"]["n_experts"]))
            kwargs.setdefault("num_experts_per_tok", int(c["moe"]["router"]["top_k"]))
        # the model computes tied logits itself (embed.weight); HF must not try to tie an lm_head
        kwargs["tie_word_embeddings"] = False
        super().__init__(**kwargs)
