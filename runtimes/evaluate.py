"""Perplexity of any session (reference or vendor runtime) on WikiText-2, through the one harness
(:func:`curmoe.perplexity`): same tokenizer, same windows, same float64 loss, whatever computes the logits."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from curmoe.common.errors import InvalidInputError
from curmoe.eval import PerplexityResult, perplexity
from curmoe.reference import ModelConfig
from curmoe.runtimes.base import Session
from curmoe.runtimes.generate import empty_cache

__all__ = ["session_config", "session_logits_fn", "find_tokenizer", "evaluate_wikitext2", "is_word_level",
           "JOINED", "JOINED_RAW", "SUBWORD_CONTEXT"]

JOINED = "lines of the split, each followed by <eos>, tokenised with the model's BPE tokenizer as one stream"
JOINED_RAW = "raw split text (each line followed by '\\n'), one stream, model's subword tokenizer, no BOS"
SUBWORD_CONTEXT = 1024  # default window of the subword path (a pretrained model's max_seq_len, 8192, is too long here)


def is_word_level(tokenizer_path: str | os.PathLike[str]) -> bool:
    """True for curmoe's own WikiText-2 tokenizers (they hold ``<eos>``, which ends every line of the word-level
    text); False for a pretrained model's subword tokenizer (byte-level BPE: the raw text's newlines are tokens)."""
    from curmoe.eval import EOS
    from curmoe.models.tokenizer import load_hf_tokenizer

    return load_hf_tokenizer(tokenizer_path).tok.token_to_id(EOS) is not None


def session_config(session: Session) -> ModelConfig:
    """The curmoe ModelConfig a session runs (reference: the model's; ONNX: the ``curmoe.config`` metadata)."""
    model = getattr(session, "model", None)
    if model is not None:
        return model.config
    meta = session.metadata.get("curmoe.config")
    if meta is None:
        raise InvalidInputError(f"{session.path} carries no curmoe.config metadata; export it with curmoe")
    return ModelConfig.from_dict(json.loads(meta))


def session_logits_fn(session: Session) -> Callable[[np.ndarray], np.ndarray]:
    """ids (B, T) -> logits (B, T, V) on ``session``, with an empty KV cache when the graph has one."""

    def fn(ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones(ids.shape, np.int64)} | empty_cache(session, ids.shape[0])
        return session.run(feeds, ["logits"])["logits"]

    return fn


def find_tokenizer(model_path: str | os.PathLike[str], tokenizer: str | os.PathLike[str] | None = None) -> Path:
    """--tokenizer, else MODEL_DIR/tokenizer.json, else tokenizer.json beside an exported file (a Core ML
    ``X.mlpackage`` is a directory, but an exported one: its tokenizer is beside it, where curmoe export writes it)."""
    if tokenizer is not None:
        return Path(tokenizer)
    p = Path(model_path)
    cand = p / "tokenizer.json" if p.is_dir() and p.suffix != ".mlpackage" else p.parent / "tokenizer.json"
    if not cand.is_file():
        raise InvalidInputError(
            f"no tokenizer found for {str(p)!r} (looked for {str(cand)!r}); pass --tokenizer PATH "
            "(curmoe export writes the model's tokenizer.json beside the exported file)"
        )
    return cand


def evaluate_wikitext2(
    session: Session,
    tokenizer_path: str | os.PathLike[str],
    *,
    split: str = "valid",
    data_dir: str | None = None,
    context: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> PerplexityResult:
    """Token- and word-level perplexity of ``session`` on a WikiText-2 split.

    Two paths, chosen by the tokenizer:

    - curmoe's word-level BPE (it has ``<eos>``): the word-level split, one ``<eos>`` a line; default context the
      model's ``max_seq_len``, non-overlapping windows.
    - a pretrained model's subword tokenizer (no ``<eos>``, e.g. SmolLM2's byte-level BPE): the **raw** split
      (valid or test; raw train is not in the shared data, which raises), its text tokenised as one stream, no
      BOS; the sliding-window recipe of the transformers perplexity guide, default context
      ``min(max_seq_len, 1024)`` and stride ``context // 2``. Word perplexity divides by the raw split's
      whitespace words plus one per line, prorated (as benchmarks/pretrained.py).
    """
    from curmoe.eval import load_wikitext2
    from curmoe.models.tokenizer import encode_split, encode_text, load_hf_tokenizer, load_tokenizer

    if not is_word_level(tokenizer_path):
        if split == "train":
            raise InvalidInputError(
                "split 'train' has no raw text in the shared WikiText-2 data, and a model with a subword tokenizer "
                f"({tokenizer_path}) is evaluated on the raw text; pass --split valid or --split test"
            )
        raw = load_wikitext2(split, raw=True, data_dir=data_dir)
        ids = encode_text(load_hf_tokenizer(tokenizer_path), raw)
        C = context or min(session_config(session).max_seq_len, SUBWORD_CONTEXT)
        return perplexity(session_logits_fn(session), ids, n_words=raw.n_words, context=C,
                          stride=stride if stride is not None else max(1, C // 2), batch_size=1,
                          split=f"wikitext2-raw:{split}", joined=JOINED_RAW, max_tokens=max_tokens, progress=progress)
    data = load_wikitext2(split, data_dir=data_dir)
    ids = encode_split(load_tokenizer(tokenizer_path), data)
    cfg = session_config(session)
    return perplexity(session_logits_fn(session), ids, n_words=data.n_words, context=context or cfg.max_seq_len,
                      stride=stride, batch_size=batch_size, split=f"wikitext2:{split}", joined=JOINED,
                      max_tokens=max_tokens, progress=progress)


def evaluate_text(session: Session, tokenizer_path: str | os.PathLike[str], text: str, *, label: str,
                  context: int | None = None) -> PerplexityResult:
    """Perplexity on a given text (e.g. the demo's built-in sample when WikiText-2 is absent)."""
    from curmoe.models.tokenizer import encode_lines, load_tokenizer

    lines = text.splitlines()
    ids = encode_lines(load_tokenizer(tokenizer_path), lines)
    n_words = sum(len(line.split()) + 1 for line in lines)
    cfg = session_config(session)
    return perplexity(session_logits_fn(session), ids, n_words=n_words, context=context or cfg.max_seq_len,
                      split=label, joined=JOINED.replace("of the split", "of the text"))


def describe(result: PerplexityResult) -> dict[str, Any]:
    return result.to_dict()
