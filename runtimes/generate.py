"""Autoregressive generation over any runtime session, with a KV cache when the graph has one.

Step 0 feeds the prompt with an empty cache (past length 0), every later step feeds the one new token, the
``present.*`` outputs of the previous step as ``past.*`` and the grown attention mask. Graphs exported without a
cache (``with_cache=False``, e.g. the non-causal expert_choice router) are re-run on the whole sequence each step.

Sampling (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration", for top-p): ``temperature == 0``
is greedy (argmax, ties to the lower token id); otherwise ``p = softmax(z / temperature)`` in float64, the nucleus
is the smallest set of most likely tokens whose probability reaches ``top_p`` (the most likely token always
included), renormalised, and sampled with ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from curmoe.common.checks import check_int, check_number
from curmoe.common.errors import InvalidInputError
from curmoe.runtimes.base import Session

__all__ = ["generate", "cache_layout", "empty_cache", "sample_next"]

log = logging.getLogger(__name__)
_PAST = re.compile(r"^past\.(\d+)\.(key|value)$")


def cache_layout(session: Session) -> list[tuple[str, tuple[int | str | None, ...], np.dtype]]:
    """The ``past.{l}.{key|value}`` inputs of a session (name, shape, dtype), in layer order ([] if no cache)."""
    specs = [(i.name, i.shape, i.dtype) for i in session.inputs if _PAST.match(i.name)]
    return sorted(specs, key=lambda s: (int(_PAST.match(s[0]).group(1)), s[0]))  # type: ignore[union-attr]


def empty_cache(session: Session, batch: int) -> dict[str, np.ndarray]:
    """Zero-length past tensors (B, KV, 0, hd) for the first step."""
    out = {}
    for name, shape, dtype in cache_layout(session):
        kv, hd = shape[1], shape[3]
        if not isinstance(kv, int) or not isinstance(hd, int):
            raise InvalidInputError(f"input {name!r} has shape {shape}; curmoe graphs have static KV heads and head_dim")
        out[name] = np.zeros((batch, kv, 0, hd), dtype=dtype)
    return out


def _sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """Next token per row of logits (B, V)."""
    z = logits.astype(np.float64)
    if temperature == 0:
        return np.argmax(z, axis=-1)
    z = z / temperature
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    out = np.empty(z.shape[0], dtype=np.int64)
    for b in range(z.shape[0]):
        order = np.argsort(-p[b], kind="stable")
        cum = np.cumsum(p[b, order])
        n_keep = int(np.searchsorted(cum, top_p, side="left")) + 1 if top_p < 1.0 else len(order)
        keep = order[: max(1, min(n_keep, len(order)))]
        q = p[b, keep] / p[b, keep].sum()
        out[b] = keep[rng.choice(len(keep), p=q)]
    return out


def sample_next(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """The next token per row of ``logits`` (B, V), exactly as :func:`generate` picks it (greedy when
    ``temperature == 0``, else nucleus sampling drawing from ``rng``): for servers that step sequences themselves."""
    return _sample(logits, temperature, top_p, rng)


def generate(
    session: Session,
    prompt_ids: np.ndarray,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_token_id: int | None = None,
    attention_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Generate up to ``max_new_tokens`` tokens after ``prompt_ids``.

    Args:
        session: a loaded model (``curmoe.runtimes.load``) with inputs input_ids / attention_mask (and past.*).
        prompt_ids: (T,) or (B, T) token ids; a batch of prompts of different lengths is left-padded with
            ``attention_mask`` marking real tokens.
        max_new_tokens: >= 0.
        temperature: 0 for greedy, > 0 to sample.
        top_p: nucleus mass in (0, 1].
        seed: the sampling generator's seed (sampling only).
        eos_token_id: stop a sequence once it emits this token; generation ends when every sequence stopped
            (finished sequences are padded with it).
        attention_mask: (B, T) 1 for real prompt tokens, 0 for (left) padding; None = all real.

    Returns:
        int64 (T + n,) or (B, T + n): the prompt followed by the n <= max_new_tokens generated tokens.
    """
    ids = np.asarray(prompt_ids)
    squeeze = ids.ndim == 1
    ids = ids[None] if squeeze else ids
    if ids.ndim != 2 or ids.shape[1] < 1 or ids.dtype.kind not in "iu":
        raise InvalidInputError(f"prompt_ids must be integer ids of shape (T,) or (B, T) with T >= 1, got {ids.shape}")
    max_new_tokens = check_int(max_new_tokens, "max_new_tokens", lo=0)
    temperature = check_number(temperature, "temperature", lo=0, fix="0 = greedy")
    top_p = check_number(top_p, "top_p", lo=0, lo_open=True, hi=1, fix="1 = no nucleus truncation")
    mask = np.ones(ids.shape, np.int64) if attention_mask is None else np.asarray(attention_mask, np.int64)
    if mask.shape != ids.shape:
        raise InvalidInputError(f"attention_mask has shape {mask.shape}, prompt_ids {ids.shape}; they must match")
    rng = np.random.default_rng(seed)
    ids = ids.astype(np.int64)
    B = ids.shape[0]
    # A stateful session (OpenVINO, stateful=True) keeps its KV cache inside: feed one new token per step too.
    cached = bool(cache_layout(session)) or bool(getattr(session, "stateful", False))
    past = empty_cache(session, B) if cached else {}
    done = np.zeros(B, dtype=bool)
    new_ids = ids
    out = [ids]
    for step in range(int(max_new_tokens)):
        feeds = {"input_ids": new_ids, "attention_mask": mask} | past
        res = session.run(feeds) if cached else session.run(feeds, ["logits"])
        nxt = _sample(res["logits"][:, -1], float(temperature), float(top_p), rng)
        if eos_token_id is not None:
            nxt = np.where(done, eos_token_id, nxt)
            done |= nxt == eos_token_id
        nxt = nxt.astype(np.int64)[:, None]
        out.append(nxt)
        mask = np.concatenate([mask, np.ones((B, 1), np.int64)], axis=1)
        if cached:
            past = {n: res["present" + n[len("past"):]] for n in past}
            new_ids = nxt
        else:
            new_ids = np.concatenate(out, axis=1)
        if eos_token_id is not None and done.all():
            log.debug("all sequences reached eos after %d tokens", step + 1)
            break
    seq = np.concatenate(out, axis=1)
    return seq[0] if squeeze else seq
