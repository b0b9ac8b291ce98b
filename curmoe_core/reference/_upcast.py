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


class Float64Tensors(Mapping[str, np.ndarray]):
    """``{name: array}`` whose values come out as float64 (index/int arrays unchanged), cast on every read."""

    def __init__(self, tensors: Mapping[str, np.ndarray]) -> None:
        self._t = tensors

    def __getitem__(self, name: str) -> np.ndarray:
        return _f64(self._t[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def __contains__(self, name: object) -> bool:
        return name in self._t


class Float64Experts(Mapping[str, Linear]):
    """``{key: Linear}`` whose values are float64 copies of the original's, made on every read."""

    def __init__(self, experts: Mapping[str, Linear]) -> None:
        self._e = experts

    def __getitem__(self, key: str) -> Linear:
        return self._e[key].astype(np.float64)

    def __iter__(self) -> Iterator[str]:
        return iter(self._e)

    def __len__(self) -> int:
        return len(self._e)

    def __contains__(self, key: object) -> bool:
        return key in self._e
