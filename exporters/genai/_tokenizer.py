"""Tokenizer files the vendors' LLM stacks read, from the model's Hugging Face ``tokenizer.json``.

curmoe's own tokenizers (``curmoe.models.tokenizer``: BPE with ``##`` continuation pieces, split on whitespace,
WordPiece-style decoder) are a layout neither onnxruntime-extensions (ONNX Runtime GenAI's tokenizer) nor
openvino-tokenizers implements (``continuing_subword_prefix`` is refused by both). The same tokenizer is written
in the SentencePiece-BPE layout they do implement, by a bijection on the pieces:

    word-initial piece ``the``  -> ``▁the``        continuation piece ``##he`` -> ``he``
    normalizer: prepend ``▁``, replace " " by ``▁`` decoder: ``▁`` -> " ", fuse, strip one leading space

with the same ids and the same merges in the same order (mapped), preceded by one merge ``▁`` + c for every
word-initial character c, so each word starts as ``[▁c0, c1, c2, ...]``: the original's ``[c0, ##c1, ##c2, ...]``
under the bijection, and every later merge applies at the same places. Ids are therefore identical wherever the
original tokenizer emits no ``<unk>``. It needs pieces the model has no embedding for: ``▁`` alone and the
characters seen only word-initially (``(``, ``!``, ...) as mid-word pieces, given ids ``V, V+1, ...`` (V = the
model's vocab size); the exported graph maps every id >= V to ``<unk>`` (see :mod:`._graph`), which is what the
original tokenizer emits there, except that a word starting with a character outside the alphabet gets two
``<unk>``-equivalent ids instead of one. Measured on the first 2,000 lines of WikiText-2 raw valid+test
(tests/test_genai.py checks a sample): ids equal on every line without ``<unk>``.

A ``tokenizer.json`` in another layout (byte-level BPE, SentencePiece: models imported from Hugging Face) is
written unchanged.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

__all__ = ["SPACE", "TokenizerFiles", "genai_tokenizer", "read_chat_template", "tokenizer_class"]

SPACE = "\u2581"  # SentencePiece's word-boundary mark


def _is_continuation_bpe(d: dict[str, Any]) -> bool:
    m = d.get("model") or {}
    pre = d.get("pre_tokenizer") or {}
    return (m.get("type") == "BPE" and bool(m.get("continuing_subword_prefix")) and not m.get("end_of_word_suffix")
            and pre.get("type") in ("WhitespaceSplit", "Whitespace") and d.get("normalizer") is None)


def genai_tokenizer(d: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The tokenizer.json to write and the number of pieces it adds beyond the source's vocabulary (0 when the
    source is written unchanged). ``d`` is the parsed source ``tokenizer.json``."""
    if not _is_continuation_bpe(d):
        return d, 0
    d = copy.deepcopy(d)
    special = {t["content"] for t in d.get("added_tokens", [])}
    prefix: str = d["model"]["continuing_subword_prefix"]
    old: dict[str, int] = d["model"]["vocab"]

    def piece(t: str) -> str:
        if t in special:
            return t
        return t[len(prefix):] if t.startswith(prefix) else SPACE + t

    vocab = {piece(t): i for t, i in old.items()}
    firsts = [t for t in old if t not in special and not t.startswith(prefix) and len(t) == 1]
    n = max(old.values()) + 1
    added = 0
    for extra in [SPACE] + [c for c in firsts if c not in vocab]:  # needed as merge operands, never emitted whole
        vocab[extra] = n + added
        added += 1
    merges = [[SPACE, c] for c in firsts]
    for m in d["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        merges.append([piece(a), piece(b)])
    # a merge whose product is a special token (``<unk`` + ``##>``) has no image: the special token is matched
    # whole by added_tokens before BPE runs
    merges = [m for m in merges if m[0] + m[1] in vocab]
    d["model"].update(vocab=vocab, merges=merges, continuing_subword_prefix=None)
    d["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": SPACE},
        {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]}
    d["pre_tokenizer"] = None
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
        {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    return d, added


def tokenizer_class(d: dict[str, Any]) -> str:
    """The ``tokenizer_class`` under which onnxruntime-extensions reads this tokenizer.json as Hugging Face does.

    For the SentencePiece-BPE layout, "GemmaTokenizer": measured on 300 WikiText-2 lines with ONNX Runtime GenAI
    0.18, "LlamaTokenizer" (and T5/Phi3/PreTrainedTokenizerFast) pre-split digits and punctuation and disagree
    with Hugging Face on 194 lines; "GemmaTokenizer" follows the tokenizer.json (2 lines differ, both with
    characters outside the alphabet).
    """
    dec = json.dumps(d.get("decoder") or {}) + json.dumps(d.get("pre_tokenizer") or {})
    if "ByteLevel" in dec:
        return "GPT2Tokenizer"
    return "GemmaTokenizer"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def read_chat_template(tokenizer_path: Path) -> str | None:
    """A chat template stored beside the tokenizer (``chat_template.jinja``, or ``chat_template`` in
    ``tokenizer_config.json``), as Hugging Face keeps it; None when there is none."""
    folder = Path(tokenizer_path).parent
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            tpl = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, AttributeError):
            return None
        return tpl if isinstance(tpl, str) else None
    return None


class TokenizerFiles:
    """The tokenizer a GenAI folder carries: converted tokenizer.json, its class, chat template, extra pieces."""

    def __init__(self, source: Path, vocab_size: int) -> None:
        from curmoe.common.errors import CheckpointError

        try:
            src = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read the model's tokenizer {str(source)!r} ({e}); restore tokenizer.json "
                                  "in the model directory") from e
        self.source = Path(source)
        self.json, self.added = genai_tokenizer(src)
        # a tokenizer written unchanged keeps its own tokenizer_config.json (class, special tokens), when it has one
        self.source_config = _read_json(self.source.parent / "tokenizer_config.json") if not self.added else {}
        own = self.source_config.get("tokenizer_class")
        generic = ("", "PreTrainedTokenizerFast", "TokenizersBackend")  # no layout to go by in onnxruntime-extensions
        self.cls = own if isinstance(own, str) and own not in generic else tokenizer_class(self.json)
        self.chat_template = read_chat_template(self.source)
        unk = (self.json.get("model") or {}).get("unk_token")
        self.unk_id: int | None = None
        if self.added:
            vocab = self.json["model"]["vocab"]
            if unk not in vocab or vocab[unk] >= vocab_size:
                raise CheckpointError(f"the tokenizer {str(source)!r} has no <unk> piece inside the model's vocabulary "
                                      f"({vocab_size}); curmoe tokenizers always have one: retrain or restore it")
            self.unk_id = int(vocab[unk])

    def write(self, folder: Path, config: dict[str, Any]) -> list[str]:
        """tokenizer.json + tokenizer_config.json into ``folder``; returns the names written."""
        (folder / "tokenizer.json").write_text(json.dumps(self.json, ensure_ascii=False), encoding="utf-8")
        # the source's special tokens, chat template and length win; encoding options are curmoe's (no bos/eos
        # added, as ``curmoe generate``)
        keep = ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template", "model_max_length")
        config = config | {k: v for k, v in self.source_config.items() if k in keep and v is not None}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False),
                                                      encoding="utf-8")
        return ["tokenizer.json", "tokenizer_config.json"]
