r"""The model's own tokenizer travels with a converted checkpoint: ``tokenizer.json`` + ``tokenizer_config.json``.

- From a Hugging Face folder: ``tokenizer.json`` is copied by ``Model.save``; ``tokenizer_config.json`` (special
  tokens, chat template), ``special_tokens_map.json`` and ``chat_template.jinja`` (transformers 5 writes the
  template there) are copied as they are.
- From a GGUF whose ``tokenizer.ggml.model`` is ``gpt2`` (byte-level BPE: SmolLM, Llama 3, Qwen): curmoe builds
  the ``tokenizers`` BPE from ``tokens`` + ``merges`` directly, with the pre-tokenizer llama.cpp uses for
  ``tokenizer.ggml.pre``: ``smollm`` splits every digit first (``\p{N}``, as SmolLM's own tokenizer.json), then
  the GPT-2 byte-level split; ``gpt2`` / ``default`` the GPT-2 split alone. Tokens of type CONTROL (3) are special
  added tokens, USER_DEFINED (4) plain added tokens. Other ``pre`` values and sentencepiece (``llama``) GGUFs go
  through transformers' GGUF converter (``AutoTokenizer.from_pretrained(folder, gguf_file=name)``; slower, and
  it does not reproduce every llama.cpp pre-tokenizer: a warning says so).
  curmoe writes ``tokenizer.json`` and a ``tokenizer_config.json`` with the special tokens and the GGUF's
  ``tokenizer.chat_template``.

``curmoe.models.tokenizer.load_hf_tokenizer`` reads both back.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from curmoe.common.errors import CheckpointError, require

__all__ = ["TOKENIZER_CONFIG", "CHAT_TEMPLATE_FILE", "copy_tokenizer_files", "write_gguf_tokenizer"]

log = logging.getLogger(__name__)

TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
_EXTRA = (TOKENIZER_CONFIG, "special_tokens_map.json", CHAT_TEMPLATE_FILE)


def copy_tokenizer_files(src: Path, out: Path) -> list[str]:
    """Copy the tokenizer side files of HF folder ``src`` into ``out``; returns the names copied."""
    done = []
    for name in _EXTRA:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
            done.append(name)
    return done


_CONTROL, _USER_DEFINED = 3, 4
_NATIVE_PRE = ("gpt2", "default", "smollm")


def _bpe_from_gguf(meta: dict[str, Any]) -> Any:
    """A ``tokenizers.Tokenizer`` from gpt2-style ``tokenizer.ggml.*`` metadata (byte-level BPE)."""
    tk = require("tokenizers", "tokenizer")
    tokens = list(meta["tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("merges", [])]
    tok = tk.Tokenizer(tk.models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False,
                                     byte_fallback=False))
    byte_level = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if meta.get("pre") == "smollm":
        tok.pre_tokenizer = tk.pre_tokenizers.Sequence([tk.pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = tk.decoders.ByteLevel()
    tok.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    types = list(meta.get("token_type", []))
    added = [tk.AddedToken(tokens[i], special=types[i] == _CONTROL, normalized=False)
             for i in range(len(types)) if types[i] in (_CONTROL, _USER_DEFINED)]
    tok.add_tokens(added)  # ids unchanged: each is already in the vocabulary
    return tok


def write_gguf_tokenizer(gguf: Path, out: Path, chat_template: str | None,
                         meta: dict[str, Any] | None = None) -> None:
    """Write the GGUF's tokenizer (tokenizer.json + tokenizer_config.json) into ``out``.

    Args:
        meta: the file's ``tokenizer.ggml.*`` metadata without the prefix (``GGUFSource.tokenizer``).

    Raises:
        CheckpointError: the GGUF carries no tokenizer, or it cannot be converted.
    """
    meta = meta or {}
    if "tokens" not in meta:
        raise CheckpointError(f"{gguf.name} carries no tokenizer (no tokenizer.ggml.tokens metadata); curmoe needs "
                              "the model's own tokenizer: use a GGUF written with its tokenizer")
    if meta.get("model") == "gpt2" and meta.get("pre", "default") in _NATIVE_PRE:
        tok = _bpe_from_gguf(meta)
        tok.save(str(out / "tokenizer.json"))
        names = {k: meta.get(f"{k}_token_id") for k in ("bos", "eos", "padding", "unknown")}
        tokens = meta["tokens"]
        cfg: dict[str, Any] = {f"{'pad' if k == 'padding' else 'unk' if k == 'unknown' else k}_token": tokens[int(i)]
                               for k, i in names.items() if i is not None and 0 <= int(i) < len(tokens)}
        cfg["add_bos_token"] = bool(meta.get("add_bos_token", False))
        if chat_template:
            cfg["chat_template"] = chat_template
        (out / TOKENIZER_CONFIG).write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
        log.info("built the GGUF's byte-level BPE tokenizer (%d tokens, pre=%s) in %s", len(tokens),
                 meta.get("pre"), out)
        return
    log.warning("GGUF tokenizer model=%r pre=%r: converted by transformers, whose pre-tokenizer may differ from "
                "llama.cpp's", meta.get("model"), meta.get("pre"))
    transformers = require("transformers", "pretrained")
    try:
        tok: Any = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as e:  # transformers raises KeyError/ValueError/... for tokenizers it cannot convert
        raise CheckpointError(
            f"the tokenizer of {gguf.name} could not be rebuilt by transformers ({type(e).__name__}: {e}); curmoe "
            "needs a GGUF whose tokenizer.ggml.model is one transformers converts (gpt2-style BPE or llama "
            "sentencepiece)"
        ) from e
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise CheckpointError(f"transformers gave a slow tokenizer for {gguf.name}; curmoe needs a fast one")
    backend.save(str(out / "tokenizer.json"))
    cfg: dict[str, Any] = {
        k: getattr(tok, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")
    }
    cfg = {k: str(v) for k, v in cfg.items() if v is not None}
    cfg["add_bos_token"] = bool(getattr(tok, "add_bos_token", False))
    if chat_template:
        cfg["chat_template"] = chat_template
    (out / TOKENIZER_CONFIG).write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    log.info("wrote the GGUF tokenizer (%d tokens) to %s", backend.get_vocab_size(), out)
