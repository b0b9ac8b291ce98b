"""Perplexity of a causal LM over a token stream: one harness for the NumPy reference, the torch twin and runtimes.

The model is a callable ``logits_fn(input_ids) -> logits`` with ``input_ids`` an ``(B, T)`` int64 array and
``logits`` ``(B, T, V)`` (float32 or float64), where ``logits[b, t]`` predicts the token after ``input_ids[b, t]``.

Protocol (docs/perplexity.md states it in full). A split is one stream ``x_0 .. x_{N-1}`` (the caller says how it
was joined). Target ``x_t`` is predicted from the tokens before it, so targets are ``t = 1 .. N-1`` and every one of
them is scored exactly once; ``x_0`` has no context and is never scored.

* ``stride=None`` (non-overlapping): window ``k`` feeds ``x[kC : kC + C]`` and scores the ``C`` targets
  ``x[kC + 1 : kC + C + 1]`` (windows of ``C + 1`` tokens overlapping by one). The last window is shorter when
  ``N - 1`` is not a multiple of ``C``; it is scored, never dropped.
* ``stride=s`` (``1 <= s <= C``, sliding window, the "perplexity of fixed-length models" recipe of Hugging Face
  transformers): window ``k`` feeds ``x[ks : ks + C]`` (clipped to the stream) and scores only the targets that no
  earlier window scored, so after the first window each scored token sees at least ``C - s`` tokens of context.
  ``s = C`` is the non-overlapping protocol exactly.

Log-softmax is taken in float64: ``nll_t = logsumexp(z) - z[x_t]``. Token perplexity is
``exp(sum nll / tokens scored)``; word perplexity is ``exp(sum nll / words scored)`` with
``words scored = n_words * tokens scored / N`` (``n_words`` counts the split's words with one ``<eos>`` per line):
the word count prorated to the scored share of the stream, so a word-level tokenizer gives ppl_word == ppl_token
exactly and a truncated stream (``max_tokens``) compares with the full one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curmoe.common.checks import check_int
from curmoe.common.errors import InvalidInputError

__all__ = ["PerplexityResult", "perplexity", "perplexity_windows", "token_nll"]

logger = logging.getLogger(__name__)

LogitsFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of one model on one split, with the protocol that produced it.

    Attributes:
        ppl_token: ``exp(nll_total / tokens)``.
        ppl_word: ``exp(nll_total / n_words_scored)``; compares across tokenisers.
        nll_total: summed negative log-likelihood (nats, float64) over the scored tokens.
        tokens: number of tokens scored.
        n_words: words of the split (one ``<eos>`` per line) as given by the caller.
        n_words_scored: ``n_words * tokens / len(token_ids)``: the words the scored tokens stand for.
        protocol: split, joining, context, stride, windows, token counts and truncation (see :func:`perplexity`).
    """

    ppl_token: float
    ppl_word: float
    nll_total: float
    tokens: int
    n_words: int
    n_words_scored: float
    protocol: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (floats, ints, strings, None)."""
        return {
            "ppl_token": self.ppl_token,
            "ppl_word": self.ppl_word,
            "nll_total": self.nll_total,
            "tokens": self.tokens,
            "n_words": self.n_words,
            "n_words_scored": self.n_words_scored,
            "protocol": dict(self.protocol),
        }

    def summary(self) -> str:
        """One line for logs and tables."""
        p = self.protocol
        mode = "non-overlapping" if p.get("stride") is None else f"stride {p.get('stride')}"
        trunc = ", TRUNCATED" if p.get("truncated") else ""
        return (f"{p.get('split', '?')}: ppl_token={self.ppl_token:.3f} ppl_word={self.ppl_word:.3f} "
                f"({self.tokens} tokens, {self.n_words_scored:.0f} words; context {p.get('context')}, {mode}, "
                f"{p.get('windows')} windows{trunc})")


def perplexity_windows(n_tokens: int, context: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """The evaluation windows of the protocol, as ``(start, stop, n_scored)``.

    Window ``(a, b, k)`` feeds ``x[a:b]`` (``b - a <= context``) and scores its last ``k`` predictions, i.e. the
    targets ``x[b - k + 1 : b + 1]``. Over all windows the targets ``1 .. n_tokens - 1`` are scored exactly once.

    Args:
        n_tokens: length ``N >= 2`` of the stream.
        context: the model's window length ``C >= 1``.
        stride: ``None`` for non-overlapping windows, else ``1 <= stride <= context``.
    """
    n = check_int(n_tokens, "n_tokens", lo=2, fix="a stream needs at least 2 tokens to score one")
    C = check_int(context, "context", lo=1, fix="pass the model's context length (max sequence length)")
    s = C if stride is None else check_int(stride, "stride", lo=1, fix=f"pass 1 <= stride <= context={C}, or None")
    if s > C:
        raise InvalidInputError(
            f"stride={s} is larger than context={C}: tokens between windows would never be scored; "
            f"pass 1 <= stride <= {C}, or stride=None for non-overlapping windows"
        )
    last = n - 1  # the last input position is n - 2; inputs are x[a:b] with b <= n - 1
    out: list[tuple[int, int, int]] = []
    scored_until = 0  # targets 1 .. scored_until are done
    a = 0
    while scored_until < last:
        b = min(a + C, last)
        out.append((a, b, b - scored_until))
        scored_until = b
        a += s
    return out


def token_nll(logits: np.ndarray, targets: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Per-position NLL in float64: ``logsumexp(z) - z[target]`` for ``logits (T, V)`` and ``targets (T,)``.

    The one log-softmax of curmoe: :func:`perplexity` and runtime validation both score tokens with it. Non-finite
    logits give non-finite NLLs (no warning); the caller reports them. Rows go through a float64 buffer ``chunk``
    rows at a time (cache-sized: about 3x faster than whole-window temporaries at V = 8192, with identical results).
    """
    T, V = logits.shape
    out = np.empty(T, dtype=np.float64)
    buf = np.empty((min(chunk, T), V), dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite logits are reported by the caller
        for s in range(0, T, chunk):
            z = logits[s:s + chunk]  # (n, V)
            n = z.shape[0]
            b = buf[:n]
            b[...] = z  # float64 copy
            m = b.max(axis=1)  # (n,)
            b -= m[:, None]
            np.exp(b, out=b)
            out[s:s + n] = m + np.log(b.sum(axis=1)) - z[np.arange(n), targets[s:s + n]]  # (n,)
    return out


def _safe_exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _as_stream(token_ids: np.ndarray) -> np.ndarray:
    """The split as a 1-D array of >= 2 non-negative integer ids, or a clear error."""
    ids = np.asarray(token_ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise InvalidInputError(
            f"token_ids must be a 1-D integer array (the split as one stream), got shape {ids.shape} dtype "
            f"{ids.dtype}; flatten/encode the split first"
        )
    total = int(ids.shape[0])
    if total < 2:
        raise InvalidInputError(f"token_ids has {total} token(s); at least 2 are needed to score one")
    if int(ids.min()) < 0:
        raise InvalidInputError(f"token_ids holds a negative id ({int(ids.min())}); ids must be >= 0")
    return ids


def _batches(windows: list[tuple[int, int, int]], batch_size: int) -> list[list[int]]:
    """Consecutive windows of equal length grouped into batches of at most ``batch_size`` (window indices); all
    windows are ``context`` long except possibly the last."""
    batches: list[list[int]] = []
    for w, (a, b, _) in enumerate(windows):
        first = windows[batches[-1][0]] if batches else None
        if first is not None and len(batches[-1]) < batch_size and first[1] - first[0] == b - a:
            batches[-1].append(w)
        else:
            batches.append([w])
    return batches


def _score_batch(logits_fn: LogitsFn, stream: np.ndarray, windows: list[tuple[int, int, int]],
                 group: list[int]) -> np.ndarray:
    """Run one batch of equal-length windows through ``logits_fn``; the summed NLL of each window's scored
    targets, (len(group),) float64. Wrong logits, out-of-vocabulary targets and non-finite losses raise."""
    a0, b0, _ = windows[group[0]]
    T = b0 - a0
    inputs = np.stack([stream[windows[w][0]:windows[w][1]] for w in group])  # (B, T)
    logits = np.asarray(logits_fn(inputs))
    if logits.ndim != 3 or logits.shape[:2] != inputs.shape or logits.dtype.kind != "f":
        raise InvalidInputError(
            f"logits_fn returned shape {logits.shape} dtype {logits.dtype} for input_ids of shape "
            f"{inputs.shape}; it must return float logits of shape (B, T, V) = ({inputs.shape[0]}, {T}, V)"
        )
    V = logits.shape[2]
    sums = np.empty(len(group), dtype=np.float64)
    for row, w in enumerate(group):
        a, b, k = windows[w]
        targets = stream[a + 1:b + 1]  # (T,)
        if int(targets.max()) >= V:
            raise InvalidInputError(
                f"token id {int(targets.max())} in window {w} is outside the model's vocabulary of {V} "
                "logits; encode the text with the model's own tokenizer"
            )
        nll = token_nll(logits[row, T - k:], targets[T - k:])  # (k,)
        bad = ~np.isfinite(nll)
        if bad.any():
            first = int(np.argmax(bad))
            pos = b - k + 1 + first
            raise InvalidInputError(
                f"non-finite loss in window {w} (inputs x[{a}:{b}]): {int(bad.sum())} scored token(s) have "
                f"NaN/Inf NLL, first at stream position {pos} (token id {int(stream[pos])}); the model "
                "produced NaN/Inf logits there (overflow, a bad weight or a runtime bug)"
            )
        sums[row] = float(np.sum(nll))
    return sums


@contextmanager
def _progress(total: int, desc: str, enabled: bool) -> Iterator[Callable[[int], object]]:
    """``advance(n)`` moves a tqdm bar (closed on exit) when ``enabled``, else does nothing."""
    if not enabled:
        yield lambda n: None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="win")
    try:
        yield bar.update
    finally:
        bar.close()


def _result(nll_total: float, n: int, total: int, n_words: int, n_windows: int,
            protocol: dict[str, Any]) -> PerplexityResult:
    """The result of scoring the first ``n`` of ``total`` tokens, with the full protocol record."""
    tokens = n - 1
    words_scored = n_words * tokens / total
    truncated = n < total
    stride = protocol["stride"]
    return PerplexityResult(
        ppl_token=_safe_exp(nll_total / tokens),
        ppl_word=_safe_exp(nll_total / words_scored),
        nll_total=nll_total,
        tokens=tokens,
        n_words=n_words,
        n_words_scored=words_scored,
        protocol=protocol | {
            "mode": "non-overlapping" if stride is None else "sliding-window",
            "windows": n_windows,
            "tokens_in_stream": total,
            "tokens_evaluated": n,
            "tokens_scored": tokens,
            "first_token_scored": False,
            "truncated": truncated,
            "n_words": n_words,
            "n_words_scored": words_scored,
            "word_count_rule": "n_words_scored = n_words * tokens_scored / tokens_in_stream"
            + (f" (stream truncated to its first {n} of {total} tokens by max_tokens)" if truncated else ""),
            "log_softmax": "float64",
        },
    )


def perplexity(
    logits_fn: LogitsFn,
    token_ids: np.ndarray,
    *,
    n_words: int,
    context: int,
    stride: int | None = None,
    batch_size: int = 8,
    split: str = "?",
    joined: str = "...",
    max_tokens: int | None = None,
    progress: bool = False,
) -> PerplexityResult:
    """Token- and word-level perplexity of ``logits_fn`` over one token stream.

    Perplexity is ``exp`` of the mean negative log-likelihood of each token given the tokens before it inside its
    window (Jelinek et al., 1977); the sliding-window option follows the Hugging Face transformers guide
    "Perplexity of fixed-length models". Windows are described in the module docstring and docs/perplexity.md.

    Args:
        logits_fn: ``(B, T) int64 -> (B, T, V)`` float logits; row ``t`` predicts the token after input ``t``.
        token_ids: the split as one 1-D stream of non-negative token ids.
        n_words: words of the whole split with one ``<eos>`` per line (``WikiText2Split.n_words``).
        context: window length fed to the model (at most its maximum sequence length).
        stride: ``None`` for non-overlapping windows, or ``1 <= stride <= context`` for a sliding window.
        batch_size: windows per ``logits_fn`` call; does not change the result.
        split: split name, recorded in the protocol.
        joined: how the stream was made, e.g. "lines joined with '\\n', tokenized as one stream".
        max_tokens: score only the first ``max_tokens`` tokens of the stream (a quick estimate); the word count is
            prorated and the protocol says ``truncated: true``.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`PerplexityResult`.

    Raises:
        InvalidInputError: bad arguments, logits of the wrong shape, a token id outside the vocabulary, or a
            non-finite loss (the window index and stream positions are named).
    """
    ids = _as_stream(token_ids)
    total = int(ids.shape[0])
    n_words = check_int(n_words, "n_words", lo=1, fix="pass the split's word count incl. one <eos> per line "
                                                      "(WikiText2Split.n_words)")
    batch_size = check_int(batch_size, "batch_size", lo=1, fix="pass a positive number of windows per call")
    n = total
    if max_tokens is not None:
        max_tokens = check_int(max_tokens, "max_tokens", lo=2, fix="pass None to score the whole stream")
        n = min(total, max_tokens)
    stream = ids[:n].astype(np.int64, copy=False)
    windows = perplexity_windows(n, context, stride)
    nll_per_window = np.zeros(len(windows), dtype=np.float64)
    with _progress(len(windows), f"perplexity {split}", progress) as advance:
        for group in _batches(windows, batch_size):
            nll_per_window[group] = _score_batch(logits_fn, stream, windows, group)
            advance(len(group))
    result = _result(float(np.sum(nll_per_window)), n, total, n_words, len(windows),
                     {"split": split, "joined": joined, "context": int(context),
                      "stride": None if stride is None else int(stride)})
    logger.info("%s", result.summary())
    return result
