"""Safetensors checkpoints read one tensor at a time and written one shard at a time, bfloat16 included.

Reading goes through the one safetensors parser, :mod:`curmoe.common.safetensors` (header checked against the
file, one ``readinto`` per tensor into an array of its own, so file pages are never mapped and the resident
memory is exactly the tensors held; BF16 read as uint16 bits and widened to float32 bit for bit); this module
adds the checkpoint folder (:class:`SafetensorsSource`: ``model.safetensors``, or Hugging Face-style shards with
``model.safetensors.index.json`` ``{"weight_map": {name: shard file}}``), its errors, and the writer: float32
rounded to bf16 to nearest even, as torch does, each shard fsynced.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from curmoe.common import safetensors as st
from curmoe.common.errors import CheckpointError
from curmoe.common.safetensors import TensorInfo, from_bf16_bits

T = TypeVar("T")

__all__ = [
    "INDEX_FILE",
    "SafetensorsSource",
    "TensorInfo",
    "from_bf16_bits",
    "read_safetensors",
    "round_bf16",
    "sha256_file",
    "tensor_infos",
    "to_bf16_bits",
    "write_safetensors",
]

INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"
# NumPy -> safetensors dtype names for the writer ("BF16" tensors are passed as uint16 bit patterns).
_NAME = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.float64): "F64",
         np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8"}


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 (or wider) -> bfloat16 bit patterns (uint16), rounded to nearest even; NaN stays a quiet NaN."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = np.uint16(0x7FC0)
    return rounded


def round_bf16(x: np.ndarray) -> np.ndarray:
    """``x`` rounded through bfloat16 and held as float32 (what a bf16 file will give back)."""
    return from_bf16_bits(to_bf16_bits(x))


def _checked(path: Path, fn: Callable[[Path], T]) -> T:
    try:
        return fn(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({e}); re-save or re-download it") from e


def tensor_infos(path: Path) -> dict[str, TensorInfo]:
    """Where each tensor of one file lies (:func:`curmoe.common.safetensors.tensor_infos`, as a CheckpointError)."""
    return _checked(Path(path), st.tensor_infos)


class SafetensorsSource:
    """The tensors of a checkpoint folder (single file or index + shards), read one at a time on demand."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        if index.is_file():
            try:
                wmap = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{str(index)!r} is not a safetensors index ({e}); it needs a 'weight_map'") from e
            files = sorted(set(wmap.values()))
        elif (self.folder / WEIGHTS_FILE).is_file():
            wmap, files = None, [WEIGHTS_FILE]
        else:
            raise CheckpointError(f"{str(self.folder)!r} holds neither {WEIGHTS_FILE} nor {INDEX_FILE}; "
                                  "pass a curmoe model folder or a sharded safetensors checkpoint")
        self.files = [self.folder / f for f in files]
        self.info: dict[str, TensorInfo] = {}
        for f in self.files:
            if not f.is_file():
                raise CheckpointError(f"shard {str(f)!r} named by {INDEX_FILE} is missing; re-download the checkpoint")
            self.info.update(tensor_infos(f))
        if wmap is not None and set(wmap) != set(self.info):
            diff = sorted(set(wmap) ^ set(self.info))
            raise CheckpointError(f"{INDEX_FILE} and its shards disagree on tensor {diff[0]!r}; re-download the checkpoint")

    def fingerprint(self) -> dict[str, object]:
        """Identity of the source without reading its data: each file's name, size and header hash."""
        out = {}
        for f in self.files:
            head, _base = _checked(f, st.read_header)
            out[f.name] = {"size": f.stat().st_size,
                           "header_sha256": hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()}
        return out

    def raw(self, name: str) -> np.ndarray:
        """The stored array (BF16 as uint16 bits), read with one ``readinto``."""
        t = self.info.get(name)
        if t is None:
            raise CheckpointError(f"tensor {name!r} is not in {str(self.folder)!r}; the checkpoint does not match its config")
        try:
            return st.read_tensor(t)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{str(t.file)!r} is truncated (tensor {name!r}: {e}); re-download it") from e

    def read(self, name: str, dtype: np.dtype | None = None) -> np.ndarray:
        """Tensor ``name`` as curmoe computes with it: BF16 -> float32, float16 -> float32 (or ``dtype`` for all
        floats), integers -> int64 (the same casts as ``curmoe.load``)."""
        a = self.raw(name)  # raises a clear error for a missing tensor
        if self.info[name].dtype == "BF16":
            a = from_bf16_bits(a)
        if a.dtype.kind in "iu":
            return a.astype(np.int64, copy=False)
        target = np.dtype(dtype) if dtype is not None else (np.float32 if a.dtype == np.float16 else a.dtype)
        return a.astype(target, copy=False)


def write_safetensors(path: str | os.PathLike[str], tensors: dict[str, np.ndarray], *, bf16: set[str] = frozenset(),
                      metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (sorted by name) as one safetensors file; names in ``bf16`` hold uint16 bit patterns."""
    head: dict[str, object] = {}
    if metadata:
        head["__metadata__"] = metadata
    off = 0
    arrays = []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dt = "BF16" if name in bf16 else _NAME.get(a.dtype)
        if dt is None or (dt == "BF16" and a.dtype != np.uint16):
            raise ValueError(f"tensor {name!r} has dtype {a.dtype}, which this writer does not store")
        head[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
        arrays.append(a)
    h = json.dumps(head, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # the data starts 8-byte aligned, as safetensors itself pads
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for a in arrays:
            f.write(memoryview(a.reshape(-1)).cast("B"))
        f.flush()
        os.fsync(f.fileno())


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, tuple[str, np.ndarray]]:
    """Every tensor of one file as (safetensors dtype name, stored array): for tests and small files."""
    infos = tensor_infos(Path(path))
    with open(path, "rb") as f:
        buf = f.read()
    return {n: (t.dtype, np.frombuffer(buf, t.stored_dtype, count=int(np.prod(t.shape, dtype=np.int64)),
                                       offset=t.start).reshape(t.shape)) for n, t in infos.items()}


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
