"""GGUF files (llama.cpp) of dense Llama / Mistral / Qwen2 / Qwen3 models -> curmoe ``Model``, dequantised once.

A GGUF holds the architecture as metadata (``general.architecture`` = ``llama`` for Llama and Mistral, ``qwen2``,
``qwen3``; ``{arch}.block_count``, ``{arch}.embedding_length``, ...), the tokenizer (``tokenizer.ggml.*`` and
``tokenizer.chat_template``) and the tensors, each in a GGML type (F32, F16, BF16, Q8_0, Q4_1, ...). Import reads
them with ``curmoe.models.hf._gguf_file`` (a fast header parser) and ``gguf.quants.dequantize`` and widens every tensor to
float32 once: the curmoe model is the dequantised model, exactly (no re-quantisation, no rounding beyond float32).

Layout notes (these decide whether logits match transformers):
- ``gguf`` returns a 2-D tensor as (ne1, ne0) = (out, in): torch orientation, no transpose needed.
- llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k`` of ``llama``-arch models from the "rotate half"
  RoPE layout of Hugging Face into llama.cpp's interleaved layout (``permute`` in convert_hf_to_gguf.py); import
  undoes it per head (the same ``reverse_permute`` transformers applies). ``qwen2`` / ``qwen3`` are not permuted.
- No ``output.weight`` means tied embeddings.

Needs the ``gguf`` package (``pip install 'curmoe[pretrained]'``); the tokenizer is rebuilt by transformers'
GGUF tokenizer converter (``AutoTokenizer.from_pretrained(folder, gguf_file=...)``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curmoe.common.errors import CheckpointError, InvalidInputError, require
from curmoe.models.hf._config import dense_placeholder
from curmoe.models.hf._gguf_file import GGUFFile
from curmoe.models.hf._weights import convert_tensors
from curmoe.reference import ModelConfig

__all__ = ["GGUF_ARCHITECTURES", "GGUF_TYPES", "GGUFSource", "read_gguf", "sha256_file"]

log = logging.getLogger(__name__)

GGUF_ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "qwen3")  # Mistral GGUFs are "llama"
# GGML tensor types gguf.quants.dequantize implements and this importer has been run on (tests: F32, F16, Q8_0,
# Q4_1; the real SmolLM2 file: Q8_0 embeddings, Q4_1 matrices, F32 norms).
GGUF_TYPES: tuple[str, ...] = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                               "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_BLK = re.compile(r"blk\.(\d+)\.(.+)")
_LOCAL = {  # GGUF block-local name -> Hugging Face block-local name (then the HF rules of _weights apply)
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


@dataclass
class GGUFSource:
    """What a GGUF import read: the file, its hash, its tensor types, and its tokenizer metadata."""

    path: Path
    sha256: str
    architecture: str
    name: str
    tensor_types: dict[str, int]  # GGML type -> number of tensors
    chat_template: str | None
    tokenizer: dict[str, Any] = field(default_factory=dict)  # the tokenizer.ggml.* metadata (tokens, merges, ...)
    token_ids: dict[str, int | None] = field(default_factory=dict)  # bos / eos / pad / unk

    def card(self) -> str:
        """The model card (Markdown) written beside the converted checkpoint."""
        types = ", ".join(f"{t} x{n}" for t, n in sorted(self.tensor_types.items()))
        return (
            f"# {self.name or self.path.stem} (converted by curmoe)\n\n"
            f"- source file: `{self.path.name}`\n- source sha256: `{self.sha256}`\n"
            f"- architecture (GGUF `general.architecture`): `{self.architecture}`\n"
            f"- quantisation (tensor types in the file): {types}\n"
            "- conversion: every tensor dequantised ONCE at import with `gguf.quants.dequantize` to float32; the "
            "curmoe checkpoint is that dequantised model (it is not re-quantised). Its numbers are those of the "
            "quantised GGUF, not of the original bf16 release.\n"
            f"- chat template: {'yes (tokenizer_config.json)' if self.chat_template else 'none in the source'}\n"
        )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _field(reader: GGUFFile, key: str, default: Any = None) -> Any:
    return reader.fields.get(key, default)


def _reader(path: Path) -> GGUFFile:
    require("gguf", "pretrained")
    return GGUFFile(path)


def _config(r: Any, arch: str, names: set[str], vocab: int) -> ModelConfig:
    def need(key: str) -> Any:
        v = _field(r, f"{arch}.{key}")
        if v is None:
            raise CheckpointError(f"GGUF metadata lacks {arch}.{key}; the file is not a complete {arch} model")
        return v

    scaling = _field(r, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none") or "rope_freqs.weight" in names:
        raise InvalidInputError(
            f"GGUF {arch} model uses scaled RoPE (rope.scaling.type={scaling!r}); only plain RoPE converts exactly"
        )
    window = _field(r, f"{arch}.attention.sliding_window")
    if window:
        raise InvalidInputError(f"GGUF {arch} model uses sliding-window attention ({window}); the reference "
                                "attends to the whole sequence")
    d, H = int(need("embedding_length")), int(need("attention.head_count"))
    f = int(need("feed_forward_length"))
    L = int(need("block_count"))
    tok = lambda k: _field(r, f"tokenizer.ggml.{k}")  # noqa: E731
    ids = {k: (int(tok(f"{k}_token_id")) if tok(f"{k}_token_id") is not None else None) for k in ("eos", "padding")}
    ok = lambda i: i if i is not None and 0 <= i < vocab else None  # noqa: E731
    return ModelConfig(
        vocab_size=vocab, d_model=d, n_layers=L, n_heads=H,
        n_kv_heads=int(_field(r, f"{arch}.attention.head_count_kv", H)),
        head_dim=int(_field(r, f"{arch}.attention.key_length", d // H)),
        rope_theta=float(_field(r, f"{arch}.rope.freq_base", 10000.0)),
        norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        max_seq_len=int(need("context_length")),
        tie_embeddings="output.weight" not in names,
        attn_bias=arch == "qwen2", qk_norm="head" if arch == "qwen3" else None,
        moe=dense_placeholder(f), dense_d_ff=f, layer_types=("dense",) * L,
        eos_token_id=ok(ids["eos"]), pad_token_id=ok(ids["padding"]),
    )


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, rows (hd/2, 2) interleaved -> (2, hd/2) halves."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf(path: str | Path, dt: np.dtype = np.dtype(np.float32)
              ) -> tuple[ModelConfig, dict[str, np.ndarray], dict[str, Any], GGUFSource]:
    """Read and dequantise a GGUF: (config, tensors, experts, source record).

    Raises:
        InvalidInputError: an architecture or tensor type curmoe does not support (the supported ones are named).
        CheckpointError: a missing, truncated or corrupt file, or tensors that do not match the metadata.
        MissingExtraError: ``gguf`` is not installed.
    """
    path = Path(path)
    r = _reader(path)
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    arch = _field(r, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise InvalidInputError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(GGUF_ARCHITECTURES)} "
            "(Llama and Mistral GGUFs say 'llama'; MoE GGUFs are not supported, use a safetensors folder)"
        )
    infos = r.tensors
    types = Counter(t.type_name for t in infos.values())
    bad = sorted(set(types) - set(GGUF_TYPES))
    if bad:
        raise InvalidInputError(
            f"GGUF {path.name} holds tensors of type {', '.join(bad)}, which curmoe does not dequantise; "
            f"supported: {', '.join(GGUF_TYPES)}"
        )
    if "token_embd.weight" not in infos:
        raise CheckpointError(f"GGUF {path.name} has no token_embd.weight; it is not a complete language model")
    vocab = int(infos["token_embd.weight"].shape[-1])  # GGML (d, V)
    config = _config(r, arch, set(infos), vocab)

    hf_names: dict[str, str] = {}
    for name in infos:
        m = _BLK.fullmatch(name)
        if m is not None and m.group(2) in _LOCAL:
            hf_names[f"model.layers.{m.group(1)}.{_LOCAL[m.group(2)]}"] = name
        elif name in _TOP:
            hf_names[_TOP[name]] = name
        else:
            hf_names[name] = name  # unknown: convert_tensors names it in its error

    def get(hf: str) -> np.ndarray:
        t = infos[hf_names[hf]]
        shape = tuple(int(s) for s in reversed(t.shape))  # GGML (ne0, ne1) -> (ne1, ne0) = (out, in)
        try:
            a = np.asarray(dequantize(r.raw(t), GGMLQuantizationType(t.type_id)), dtype=np.float32).reshape(shape)
        except Exception as e:  # a tensor cut short by truncation
            raise CheckpointError(f"GGUF tensor {t.name!r} in {path.name} could not be dequantised ({e}); the file "
                                  "is truncated or corrupt: re-download it") from e
        if arch == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):
            a = _unpermute(a, config.n_heads if "attn_q" in t.name else config.kv_heads)
        return a.astype(dt, copy=False)

    tensors, experts = convert_tensors(config, list(hf_names), get)
    source = GGUFSource(
        path=path, sha256=sha256_file(path), architecture=arch, name=str(_field(r, "general.name", "") or ""),
        tensor_types=dict(types), chat_template=_field(r, "tokenizer.chat_template"),
        tokenizer={k.removeprefix("tokenizer.ggml."): v for k, v in r.fields.items() if k.startswith("tokenizer.ggml.")},
        token_ids={k: _field(r, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding", "unknown")},
    )
    log.info("read %s: %s, %d tensors (%s), dequantised to %s", path.name, arch, len(infos), dict(types), dt)
    return config, tensors, experts, source


