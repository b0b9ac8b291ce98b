"""The one safetensors reader: the header parsed once, each tensor read into an array of its own.

``safetensors.numpy.load_file`` reads the whole file into one buffer and copies each tensor out of it, and
``safe_open`` memory-maps the file: either way a process that loads a 3.4 GB checkpoint peaks at twice that in
resident memory (mapped file pages count). This reader parses the layout (an 8-byte little-endian header length,
a JSON header ``{name: {dtype, shape, data_offsets}}``, then the raw little-endian data), checks every entry
against the file's size, and fills each array with one ``readinto``. bfloat16 (no NumPy type) is read as its
uint16 bit patterns and widened to float32 exactly by :func:`from_bf16_bits`: a bf16 value is the top half of a
float32.

Used by ``curmoe.load`` (:func:`read_tensors`: a whole file) and by streamed compression
(:func:`tensor_infos` + :func:`read_tensor`: one tensor of a shard at a time).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["read_tensors", "read_header", "tensor_infos", "read_tensor", "from_bf16_bits", "TensorInfo",
           "SAFETENSORS_DTYPES"]

# safetensors dtype names NumPy can hold (BF16 has no NumPy type: it is read as uint16 bits, see from_bf16_bits)
SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
                      "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32,
                      "U64": np.uint64, "BOOL": np.bool_}
_MAX_HEADER = 100_000_000  # bytes; safetensors itself refuses larger headers


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies: its file, safetensors dtype name ("BF16", "F16", ...), shape and byte range."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def stored_dtype(self) -> np.dtype:
        """The NumPy dtype the bytes are read as (BF16: uint16 bit patterns), little-endian."""
        return np.dtype(SAFETENSORS_DTYPES["U16" if self.dtype == "BF16" else self.dtype]).newbyteorder("<")


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    wide = bits.astype(np.uint32)  # one (.., 4-byte) array, shifted in place: no second temporary
    wide <<= np.uint32(16)
    return wide.view(np.float32)


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, object], int]:
    """(header dict, byte offset of the data) of the safetensors file ``path``.

    Raises ValueError (shorter than 8 bytes, a header length that does not fit in the file, a header that is not
    a JSON object) or OSError.
    """
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, _MAX_HEADER):
            raise ValueError(f"header length {n} does not fit in a file of {size} bytes")
        head = json.loads(f.read(n))
    if not isinstance(head, dict):
        raise ValueError("the header is not a JSON object")
    return head, 8 + n


def tensor_infos(path: str | os.PathLike[str]) -> dict[str, TensorInfo]:
    """Every tensor of ``path`` (in file order), each checked: a known dtype, and data offsets that match its shape
    and lie within the file. Raises ValueError or OSError."""
    path = Path(path)
    head, base = read_header(path)
    size = path.stat().st_size
    entries = sorted(((k, v) for k, v in head.items() if k != "__metadata__"),
                     key=lambda kv: kv[1]["data_offsets"][0])  # type: ignore[index]
    out: dict[str, TensorInfo] = {}
    for name, h in entries:
        dtype = h["dtype"]  # type: ignore[index]
        if dtype != "BF16" and dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {dtype}, which NumPy cannot hold")
        shape = tuple(int(d) for d in h["shape"])  # type: ignore[index]
        a, b = (int(o) for o in h["data_offsets"])  # type: ignore[index]
        item = 2 if dtype == "BF16" else np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize
        if not 0 <= a <= b or base + b > size or b - a != item * int(np.prod(shape)):
            raise ValueError(f"tensor {name!r}: data_offsets {[a, b]} do not match its shape {list(shape)} "
                             f"and dtype within a file of {size} bytes")
        out[name] = TensorInfo(path, dtype, shape, base + a, b - a)
    return out


def read_tensor(info: TensorInfo, f: BinaryIO | None = None) -> np.ndarray:
    """The stored array of one tensor (BF16 as uint16 bits), native byte order, read with one ``readinto`` (from
    the open file ``f`` when given). Raises ValueError when the file is cut short."""
    if f is None:
        with open(info.file, "rb") as g:
            return read_tensor(info, g)
    dt = info.stored_dtype
    arr = np.empty(info.shape, dt)
    f.seek(info.start)
    if f.readinto(memoryview(arr.reshape(-1)).cast("B")) != info.nbytes:
        raise ValueError(f"tensor data at byte {info.start} is cut short")
    return arr if dt.isnative else arr.astype(dt.newbyteorder("="))


def read_tensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of the safetensors file ``path``, in file order; BF16 widened to float32.

    Raises ValueError (truncated file, bad header, unsupported dtype, offsets outside the file) or OSError.
    """
    infos = tensor_infos(path)
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        for name, t in infos.items():
            try:
                arr = read_tensor(t, f)
            except ValueError as e:
                raise ValueError(f"tensor {name!r} is cut short") from e
            out[name] = from_bf16_bits(arr) if t.dtype == "BF16" else arr
    return out
