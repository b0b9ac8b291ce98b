"""Training data for ``python -m curmoe.models.train``: the tokenizer, the encoded splits, and seeded batches.

Batches are windows of ``seq_len + 1`` tokens of the train stream (inputs and their next-token targets). Epoch
``e`` cuts the stream into windows that start at a random offset in ``[0, seq_len)`` and step by ``seq_len`` (so
every token after the offset is a target exactly once), and visits them in a random order; both come from
``numpy.random.default_rng([seed, e])``. The data position is therefore just ``(epoch, batch index)``: a resumed
run draws exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curmoe.common.errors import InvalidInputError
from curmoe.eval import load_wikitext2
from curmoe.models.tokenizer import (
    encode_split,
    load_tokenizer,
    save_tokenizer,
    train_bpe_tokenizer,
)

__all__ = ["Corpus", "Batcher", "JOINED", "prepare_corpus"]

log = logging.getLogger(__name__)

JOINED = ("each line BPE-encoded and ended with <eos> (curmoe.models.tokenizer.encode_split), lines concatenated "
          "into one stream")


@dataclass(frozen=True)
class Corpus:
    """Encoded train and valid streams, with the valid word count (one ``<eos>`` per line) and the tokenizer."""

    train: np.ndarray  # (N_train,) int64
    valid: np.ndarray  # (N_valid,) int64
    valid_words: int
    tokenizer_path: Path
    vocab_size: int
    eos_id: int
    pad_id: int | None


def prepare_corpus(data_dir: str | None, tokenizer_path: Path, vocab_size: int = 8192) -> Corpus:
    """Load WikiText-2 train/valid, load the tokenizer at ``tokenizer_path`` or train one there (BPE of
    ``vocab_size`` on the train split, ``curmoe.models.tokenizer``), and encode both splits."""
    train = load_wikitext2("train", data_dir=data_dir)
    valid = load_wikitext2("valid", data_dir=data_dir)
    if tokenizer_path.is_file():
        tok = load_tokenizer(tokenizer_path)
        log.info("using tokenizer %s (%d tokens)", tokenizer_path, tok.get_vocab_size())
    else:
        print(f"training a {vocab_size}-token BPE tokenizer on the train split -> {tokenizer_path}", flush=True)
        tok = train_bpe_tokenizer(train.lines, vocab_size)
        save_tokenizer(tok, tokenizer_path)
    return Corpus(
        train=encode_split(tok, train),
        valid=encode_split(tok, valid),
        valid_words=valid.n_words,
        tokenizer_path=tokenizer_path,
        vocab_size=tok.get_vocab_size(),
        eos_id=int(tok.token_to_id("<eos>")),
        pad_id=tok.token_to_id("<pad>"),
    )


class Batcher:
    """Seeded, resumable batches of ``(batch_size, seq_len + 1)`` windows of a token stream (module docstring)."""

    def __init__(self, stream: np.ndarray, seq_len: int, batch_size: int, seed: int,
                 epoch: int = 0, index: int = 0) -> None:
        self.stream = np.asarray(stream, dtype=np.int64)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        if self.stream.size < seq_len * (batch_size + 1) + 1:
            raise InvalidInputError(
                f"the train stream has {self.stream.size} tokens, too few for one batch of {batch_size} windows of "
                f"{seq_len + 1}; lower --batch-size or --seq-len"
            )
        self.epoch, self.index = epoch, index
        self._starts = self._epoch_starts(epoch)

    def _epoch_starts(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        offset = int(rng.integers(0, self.seq_len))
        n = (self.stream.size - 1 - offset) // self.seq_len  # windows of seq_len + 1 fitting after the offset
        return offset + self.seq_len * rng.permutation(n)

    @property
    def batches_per_epoch(self) -> int:
        return len(self._starts) // self.batch_size

    def next(self) -> np.ndarray:
        """The next batch, (batch_size, seq_len + 1) int64; the remainder of an epoch is skipped."""
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._starts = self._epoch_starts(self.epoch)
        s = self._starts[self.index * self.batch_size:(self.index + 1) * self.batch_size]
        self.index += 1
        return self.stream[s[:, None] + np.arange(self.seq_len + 1)[None, :]]  # (B, T + 1)

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}
