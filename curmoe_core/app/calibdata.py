"""Calibration tokens for activation-aware compression: ``wikitext2:train`` or a text file.

The text is tokenised with the model's own tokenizer (its ``tokenizer.json``), joined into one stream with an
``<eos>`` after each line, and cut into ``(B, T)`` rows of the model's context (T = min(max_seq_len, 256)).
The first ``n_tokens`` tokens are used: deterministic, so a compression is reproducible.

A pretrained model's subword tokenizer (no ``<eos>``; SmolLM2's byte-level BPE) takes the text as it is: the lines
joined by ``\n`` (every line followed by a newline, as in the file) and tokenised as one stream, no BOS; the
newlines are tokens. ``wikitext2:train`` is then the **word-level** train text (the raw train split is not in the
shared data; the word-level text is the raw text with rare words as ``<unk>`` and spaces around punctuation), and
``wikitext2:valid`` / ``wikitext2:test`` are refused: they are the raw splits such a model is evaluated on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curmoe.common.errors import InvalidInputError
from curmoe.eval import WikiText2Split

__all__ = ["calibration_ids", "text_token_stream"]


def text_token_stream(spec: str, model: Any, *, data_dir: str | None = None,
                      max_tokens: int | None = None) -> np.ndarray:
    """All token ids of ``spec`` ("wikitext2:SPLIT" or a text file path) as one 1-D int64 stream; with
    ``max_tokens``, lines are encoded in chunks only until that many tokens are there (each line is encoded on its
    own, so the result is exactly the prefix of the whole stream, at a fraction of the cost for a long text)."""
    if model.tokenizer_path is None:
        raise InvalidInputError(
            "this model has no tokenizer.json, so text cannot be tokenised for it; "
            "put the tokenizer beside config.json or pass token ids from Python (compress(..., calib_ids=...))"
        )
    from curmoe.eval import load_wikitext2
    from curmoe.models.tokenizer import encode_lines, encode_text, load_hf_tokenizer, load_tokenizer
    from curmoe.runtimes.evaluate import is_word_level

    word_level = is_word_level(model.tokenizer_path)
    if spec.startswith("wikitext2:"):
        split = spec.split(":", 1)[1]
        if not word_level and split != "train":
            raise InvalidInputError(
                f"calibration source {spec!r}: this model has a subword tokenizer and is evaluated on raw WikiText-2 "
                f"{split}, so calibrating on it would leak the evaluation text; pass --calib wikitext2:train "
                "(the word-level train text) or a text file"
            )
        lines = load_wikitext2(split, data_dir=data_dir).lines
    else:
        f = Path(spec)
        if not f.is_file():
            raise InvalidInputError(f"calibration source {spec!r} is neither 'wikitext2:SPLIT' nor an existing text file")
        lines = tuple(f.read_text(encoding="utf-8").splitlines())
    if word_level:
        tok = load_tokenizer(model.tokenizer_path)
        def encode(part: tuple[str, ...]) -> np.ndarray:
            return encode_lines(tok, part)  # one <eos> after every line
    else:
        hf = load_hf_tokenizer(model.tokenizer_path)
        def encode(part: tuple[str, ...]) -> np.ndarray:
            return encode_text(hf, WikiText2Split("train", True, part))  # every line followed by "\n"
    if max_tokens is None:
        return encode(lines)
    if not word_level:  # one stream: a byte-level BPE may merge across line ends, so encode growing prefixes of
        m = 2048  # the text and cut well inside them (the cut tokens are then those of the whole text)
        while True:
            ids = encode(lines[:m])
            if ids.size >= max_tokens + 64 or m >= len(lines):
                return ids
            m *= 2
    parts, have, chunk = [], 0, 512
    for i in range(0, len(lines), chunk):
        parts.append(encode(lines[i : i + chunk]))
        have += parts[-1].size
        if have >= max_tokens:
            break
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def calibration_ids(spec: str, model: Any, *, data_dir: str | None = None, n_tokens: int = 16384,
                    seq_len: int | None = None) -> np.ndarray:
    """(B, T) calibration token ids: the first ``n_tokens`` tokens of ``spec`` in rows of length T."""
    stream = text_token_stream(spec, model, data_dir=data_dir, max_tokens=n_tokens)
    T = seq_len or min(model.config.max_seq_len, 256)
    n = min(n_tokens, stream.size) // T * T
    if n == 0:
        raise InvalidInputError(f"calibration source {spec!r} has {stream.size} tokens, fewer than one row of {T}")
    return stream[:n].reshape(-1, T)
