"""The KV cache of a batch of sequences that join and leave between decode steps (continuous batching).

Every sequence owns one row (its slot) of the batch tensors ``past.{l}.{key|value}`` (B, KV, P, hd) and of the
attention mask (B, P). Rows have different real lengths; a row shorter than P is padded on the left with zeros and
mask 0. curmoe graphs compute RoPE positions as the count of real tokens before each token (``cumsum(mask) - 1``)
and mask padded keys out of the softmax, so a padded row decodes exactly as it would alone: padding shifts no
position and adds no attention weight.

- :meth:`KVBatch.join` puts a prefilled sequence's cache (1, KV, T, hd) into a new row (the shorter of T and P is
  left-padded to the longer);
- :meth:`KVBatch.feeds` / :meth:`KVBatch.advance` run one decode step: every row feeds its last token and grows by
  one real column;
- :meth:`KVBatch.leave` drops rows, then leading columns that are padding in every remaining row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["KVBatch"]


def _left_pad(x: np.ndarray, width: int, axis: int) -> np.ndarray:
    """``x`` with zeros prepended along ``axis`` up to length ``width``."""
    n = width - x.shape[axis]
    if n <= 0:
        return x
    shape = list(x.shape)
    shape[axis] = n
    return np.concatenate([np.zeros(shape, x.dtype), x], axis=axis)


class KVBatch:
    """Rows of sequences sharing one decode step; ``rows[i]`` is the caller's object for slot ``i``."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)  # past.{l}.{key|value} inputs, in layer order
        self.rows: list[Any] = []
        self.past: dict[str, np.ndarray] = {}  # name -> (B, KV, P, hd)
        self.mask = np.zeros((0, 0), np.int64)  # (B, P): 1 real, 0 padding

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        """P, the cache length every row is padded to."""
        return int(self.mask.shape[1])

    def join(self, row: Any, present: dict[str, np.ndarray], mask: np.ndarray) -> None:
        """Add a sequence whose prefill returned ``present`` (name ``present.*`` -> (1, KV, T, hd)) for ``mask`` (1, T)."""
        T = int(mask.shape[1])
        P = max(T, self.width)
        new = {n: _left_pad(present["present" + n[len("past"):]], P, 2) for n in self.names}
        row_mask = _left_pad(mask.astype(np.int64), P, 1)
        if not self.rows:
            self.past, self.mask = new, row_mask
        else:
            self.past = {n: np.concatenate([_left_pad(self.past[n], P, 2), new[n]], axis=0) for n in self.names}
            self.mask = np.concatenate([_left_pad(self.mask, P, 1), row_mask], axis=0)
        self.rows.append(row)

    def feeds(self, last_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Inputs of one decode step: ``last_ids`` (B,) the token each row feeds next."""
        B = len(self.rows)
        mask = np.concatenate([self.mask, np.ones((B, 1), np.int64)], axis=1)  # (B, P + 1)
        return {"input_ids": np.asarray(last_ids, np.int64).reshape(B, 1), "attention_mask": mask} | self.past

    def advance(self, result: dict[str, np.ndarray]) -> None:
        """Take the step's ``present.*`` outputs (B, KV, P + 1, hd) as the new cache."""
        self.past = {n: result["present" + n[len("past"):]] for n in self.names}
        self.mask = np.concatenate([self.mask, np.ones((len(self.rows), 1), np.int64)], axis=1)

    def leave(self, indices: list[int]) -> None:
        """Drop the rows at ``indices``, then the leading columns no remaining row uses."""
        if not indices:
            return
        gone = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.past, self.mask = {}, np.zeros((0, 0), np.int64)
            return
        mask = self.mask[keep]
        used = np.flatnonzero(mask.any(axis=0))
        start = int(used[0]) if used.size else mask.shape[1]
        self.mask = np.ascontiguousarray(mask[:, start:])
        self.past = {n: np.ascontiguousarray(v[keep][:, :, start:]) for n, v in self.past.items()}
