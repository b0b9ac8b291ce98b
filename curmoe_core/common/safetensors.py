"""Read a safetensors file one tensor at a time into arrays of its own: resident memory is the tensors, once.

``safetensors.numpy.load_file`` reads the whole file into one buffer and copies each tensor out of it, and
``safe_open`` memory-maps the file: either way a process that loads a 3.4 GB checkpoint peaks at twice that in
resident memory (mapped file pages count). This reader parses the layout (an 8-byte little-endian header length,
a JSON header ``{name: {dtype, shape, data_offsets}}``, then the raw little-endian data) and fills each array with
one ``readinto``. bfloat16 (no NumPy type) is widened to float32 exactly: a bf16 value is the top half of a float32.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

__all__ = ["read_tensors", "SAFETENSORS_DTYPES"]

# safetensors dtype names NumPy can hold (BF16 has no NumPy type: curmoe.compress reads it as uint16 bits)
SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
                      "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32,
                      "U64": np.uint64, "BOOL": np.bool_}


def read_tensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of the safetensors file ``path``, in file order.

    Raises ValueError (truncated file, bad header, unsupported dtype, offsets outside the file) or OSError.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100_000_000):
            raise ValueError(f"header length {n} does not fit in a file of {size} bytes")
        head = json.loads(f.read(n))
        if not isinstance(head, dict):
            raise ValueError("the header is not a JSON object")
        base = 8 + n
        entries = sorted(((k, v) for k, v in head.items() if k != "__metadata__"),
                         key=lambda kv: kv[1]["data_offsets"][0])
        out: dict[str, np.ndarray] = {}
        for name, h in entries:
            bf16 = h["dtype"] == "BF16"
            if bf16:
                h = h | {"dtype": "U16"}
            if h["dtype"] not in SAFETENSORS_DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {h['dtype']}, which NumPy cannot hold")
            dt = np.dtype(SAFETENSORS_DTYPES[h["dtype"]]).newbyteorder("<")
            shape = tuple(int(d) for d in h["shape"])
            a, b = (int(o) for o in h["data_offsets"])
            if not 0 <= a <= b or base + b > size or b - a != dt.itemsize * int(np.prod(shape)):
                raise ValueError(f"tensor {name!r}: data_offsets {[a, b]} do not match its shape {list(shape)} "
                                 f"and dtype within a file of {size} bytes")
            arr = np.empty(shape, dt)
            f.seek(base + a)
            if f.readinto(memoryview(arr.reshape(-1)).cast("B")) != b - a:
                raise ValueError(f"tensor {name!r} is cut short")
            arr = arr if dt.isnative else arr.astype(dt.newbyteorder("="))
            out[name] = (arr.astype(np.uint32) << np.uint32(16)).view(np.float32) if bf16 else arr
    return out
