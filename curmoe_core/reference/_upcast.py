"""Float64 views of a model's weights that upcast on use: the oracle of a large model, one layer at a time.

``Model.astype(np.float64)`` doubles a float32 model's bytes and keeps the copy alive beside the original: for a
3.4 GB checkpoint that is 6.8 GB more on top of a runtime session's own copy. These read-only mappings hold the
original arrays and hand out a float64 cast of each one when the forward pass reads it; the cast is dropped as soon
as the layer is done with it, so the oracle's extra memory is one layer's (for an expert, one matrix's) float64
weights. The values are the same float64 numbers as ``astype``'s, so the outputs are identical (tested).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from curmoe.reference._linear import Linear

__all__ = ["Float64Experts", "Float64Tensors"]


def _f64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) if a.dtype.kind == "f" else a


class _Float64View(Mapping[str, object]):
    """A read-only mapping whose values are cast to float64 by :meth:`_cast` on every read."""

    def __init__(self, items: Mapping[str, object]) -> None:
        self._items = items

    @staticmethod
    def _cast(value: object) -> object:
        raise NotImplementedError

    def __getitem__(self, key: str) -> object:
        return self._cast(self._items[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


class Float64Tensors(_Float64View):
    """``{name: array}`` whose values come out as float64 (index/int arrays unchanged), cast on every read."""

    _cast = staticmethod(_f64)


class Float64Experts(_Float64View):
    """``{key: Linear}`` whose values are float64 copies of the original's, made on every read."""

    @staticmethod
    def _cast(lin: Linear) -> Linear:
        return lin.astype(np.float64)
