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

__all__ = ["session_config", "session_logits_fn", "find_tokenizer", "evaluate_wikitext2", "JOINED"]

JOINED = "lines of the split, each followed by <eos>, tokenised with the model's BPE tokenizer as one stream"


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
    """Token- and word-level perplexity of ``session`` on a WikiText-2 split (word-level text, one <eos> a line)."""
    from curmoe.eval import load_wikitext2
    from curmoe.models.tokenizer import encode_split, load_tokenizer

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
