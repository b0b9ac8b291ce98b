"""What both GenAI folders share: the decodability check made before anything is written, and the JSON files
(``genai_config.json`` for ONNX Runtime GenAI; ``config.json`` / ``generation_config.json`` for OpenVINO GenAI;
``tokenizer_config.json`` for both)."""

from __future__ import annotations

from typing import Any

from curmoe.common.errors import DecodingNotSupportedError, InvalidInputError
from curmoe.exporters.onnx import OnnxExportConfig
from curmoe.reference import Model

__all__ = ["PAST", "PRESENT", "check_decodable", "hf_configs", "ort_genai_config", "tokenizer_config"]

#: GenAI input/output names of layer l's KV cache (ONNX Runtime GenAI's defaults, optimum's names).
PAST = "past_key_values.{l}.{kv}"
PRESENT = "present.{l}.{kv}"


def check_decodable(model: Any, config: OnnxExportConfig, stack: str) -> None:
    """Refuse, before anything is written, what an LLM stack cannot run token by token."""
    if not isinstance(model, Model):
        raise InvalidInputError(f"model must be a curmoe.Model, got {type(model).__name__}")
    if not isinstance(config, OnnxExportConfig):
        raise InvalidInputError(f"config must be an OnnxExportConfig, got {type(config).__name__}")
    cfg = model.config
    moe = any(cfg.layer_type(l) == "moe" for l in range(cfg.n_layers))
    if moe and cfg.moe.router.kind == "expert_choice":
        raise DecodingNotSupportedError(
            f"router kind='expert_choice' is non-causal (each expert ranks the whole sequence), so the model cannot "
            f"decode token by token and {stack} cannot run it; export it with --format onnx --no-cache and run it "
            "with curmoe generate (it re-reads the whole sequence each step)")
    if not config.with_cache:
        raise InvalidInputError(f"{stack} decodes with a KV cache; drop --no-cache (with_cache=False)")
    if config.routing_outputs:
        raise InvalidInputError(f"{stack} reads logits and the cache only; pass routing_outputs=False")
    if config.fused_moe and stack != "ONNX Runtime GenAI":
        raise InvalidInputError(f"--fused-moe (com.microsoft.MoE) runs on ONNX Runtime only, not on {stack}")


def _bos(model: Model) -> int:
    cfg = model.config
    return int(cfg.eos_token_id if cfg.eos_token_id is not None else cfg.pad_token_id or 0)


def ort_genai_config(model: Model, filename: str, threads: int | None) -> dict[str, Any]:
    """genai_config.json: decoder shapes and I/O names, special ids, greedy search defaults.

    ``past_present_share_buffer`` is False: the graph concatenates past and new keys (present has length P+T), it
    does not write into a preallocated max-length buffer. ``type`` "llama" is ONNX Runtime GenAI's plain decoder
    (input_ids, attention_mask, optional position_ids, KV cache; curmoe graphs derive positions from the mask).
    """
    cfg = model.config
    session: dict[str, Any] = {"log_id": "onnxruntime-genai", "provider_options": []}
    if threads is not None:
        session["intra_op_num_threads"] = int(threads)
        session["inter_op_num_threads"] = 1
    eos = _bos(model)
    return {
        "model": {
            "bos_token_id": eos,  # curmoe models separate documents by <eos>; no separate bos
            "context_length": int(cfg.max_seq_len),
            "eos_token_id": eos,
            "pad_token_id": int(cfg.pad_token_id if cfg.pad_token_id is not None else eos),
            "type": "llama",
            "vocab_size": int(cfg.vocab_size),
            "decoder": {
                "session_options": session,
                "filename": filename,
                "head_size": int(cfg.head_dim_),
                "hidden_size": int(cfg.d_model),
                "num_attention_heads": int(cfg.n_heads),
                "num_hidden_layers": int(cfg.n_layers),
                "num_key_value_heads": int(cfg.kv_heads),
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": PAST.format(l="%d", kv="key"),
                    "past_value_names": PAST.format(l="%d", kv="value"),
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": PRESENT.format(l="%d", kv="key"),
                    "present_value_names": PRESENT.format(l="%d", kv="value"),
                },
            },
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": int(cfg.max_seq_len), "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }


def hf_configs(model: Model) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.json (architecture summary, curmoe's config under "curmoe") and generation_config.json (greedy,
    eos) as Hugging Face writes them: what OpenVINO GenAI reads beside the IR."""
    cfg = model.config
    eos = _bos(model)
    config = {
        "architectures": ["CurmoeForCausalLM"],
        "model_type": "curmoe",
        "vocab_size": int(cfg.vocab_size),
        "hidden_size": int(cfg.d_model),
        "num_hidden_layers": int(cfg.n_layers),
        "num_attention_heads": int(cfg.n_heads),
        "num_key_value_heads": int(cfg.kv_heads),
        "head_dim": int(cfg.head_dim_),
        "max_position_embeddings": int(cfg.max_seq_len),
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": int(cfg.pad_token_id if cfg.pad_token_id is not None else eos),
        "curmoe": cfg.to_dict(),
    }
    generation = {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": config["pad_token_id"],
                  "do_sample": False, "max_length": int(cfg.max_seq_len)}
    return config, generation


def tokenizer_config(model: Model, tok: dict[str, Any], cls: str, chat_template: str | None) -> dict[str, Any]:
    """tokenizer_config.json: class, special tokens, no bos/eos added when encoding (as ``curmoe generate``)."""
    cfg = model.config
    by_id = {t["id"]: t["content"] for t in tok.get("added_tokens", [])}
    eos = by_id.get(_bos(model))
    pad = by_id.get(cfg.pad_token_id) if cfg.pad_token_id is not None else None
    unk = (tok.get("model") or {}).get("unk_token")
    out: dict[str, Any] = {
        "tokenizer_class": cls, "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": int(cfg.max_seq_len), "bos_token": eos, "eos_token": eos, "pad_token": pad or eos,
        "unk_token": unk, "legacy": False,
    }
    if chat_template is not None:
        out["chat_template"] = chat_template
    return {k: v for k, v in out.items() if v is not None}
