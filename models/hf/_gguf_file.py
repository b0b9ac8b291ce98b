"""A small, fast GGUF (v2/v3, little-endian) reader: metadata, tensor directory, and tensor bytes.

Why not ``gguf.GGUFReader``: it builds a NumPy memmap view per metadata element, which takes ~18 s for the
~98,000 tokenizer strings of a 49k-vocabulary model on a shared 2-core machine; this reader parses the header with
``struct`` from one ``bytes`` read (< 1 s) and maps only the tensor data. Dequantisation stays with
``gguf.quants.dequantize`` (the reference implementation of every GGML type).

Layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): magic ``GGUF``, uint32 version, uint64 tensor
count, uint64 metadata count; metadata ``(string key, uint32 type, value)``; tensor infos ``(string name, uint32
n_dims, uint64 dims[n_dims] (ne0 first), uint32 ggml_type, uint64 offset)``; then padding to ``general.alignment``
(default 32) and the tensor data, each tensor at its offset from that start.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curmoe.common.errors import CheckpointError

__all__ = ["GGUFFile", "GGUFTensor"]

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # GGML order: ne0 (the contiguous dimension) first
    type_id: int
    type_name: str
    offset: int  # absolute byte offset in the file
    n_bytes: int


class _Cursor:
    def __init__(self, buf: bytes | mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise CheckpointError(f"{str(self.path)!r} ends inside its GGUF header; the file is truncated: re-download it")
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return v

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise CheckpointError(f"{str(self.path)!r} ends inside its GGUF header; the file is truncated: re-download it")
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.take("<I"), self.take("<Q")
            if etype in _SCALARS and etype != 7:
                dt = np.dtype(_SCALARS[etype])
                end = self.pos + count * dt.itemsize
                if end > len(self.buf):
                    raise CheckpointError(f"{str(self.path)!r} is truncated inside its metadata: re-download it")
                a = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
                self.pos = end
                return a
            return [self.value(etype) for _ in range(count)]
        raise CheckpointError(f"{str(self.path)!r} has metadata of unknown GGUF type {vtype}; not a GGUF v2/v3 file")


class GGUFFile:
    """Metadata (``fields``: key -> value) and tensors (``tensors``: name -> GGUFTensor) of a GGUF file.

    Raises:
        CheckpointError: not a GGUF file, an unsupported version, or a file cut short (header or tensor data).
    """

    def __init__(self, path: str | Path) -> None:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"GGUF file {str(self.path)!r} does not exist; pass the path of a .gguf file")
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.path.stat().st_size else b""
        c = _Cursor(self._map, self.path)
        if bytes(self._map[:4]) != b"GGUF":
            raise CheckpointError(f"{str(self.path)!r} is not a GGUF file (no 'GGUF' magic); pass a llama.cpp .gguf")
        c.pos = 4
        version = c.take("<I")
        if version not in (2, 3):
            raise CheckpointError(f"{str(self.path)!r} is GGUF version {version}; curmoe reads versions 2 and 3 "
                                  "(little-endian)")
        n_tensors, n_kv = c.take("<Q"), c.take("<Q")
        self.fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key = c.string()
            self.fields[key] = c.value(c.take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = c.string()
            dims = tuple(int(c.take("<Q")) for _ in range(c.take("<I")))
            infos.append((name, dims, c.take("<I"), c.take("<Q")))
        align = int(self.fields.get("general.alignment", 32))
        start = (c.pos + align - 1) // align * align
        size = len(self._map)
        self.tensors: dict[str, GGUFTensor] = {}
        for name, dims, tid, off in infos:
            try:
                qt = GGMLQuantizationType(tid)
                block, type_size = GGML_QUANT_SIZES[qt]
                tname = qt.name
            except (ValueError, KeyError):
                tname, block, type_size = f"type {tid}", 1, 0
            n = int(np.prod(dims)) if dims else 1
            nbytes = n // block * type_size
            t = GGUFTensor(name, dims, tid, tname, start + off, nbytes)
            if t.offset + nbytes > size:
                raise CheckpointError(
                    f"{str(self.path)!r} is truncated: tensor {name!r} needs bytes up to {t.offset + nbytes:,} but "
                    f"the file has {size:,}; re-download it"
                )
            self.tensors[name] = t

    def raw(self, t: GGUFTensor) -> np.ndarray:
        """The tensor's bytes as the array ``gguf.quants.dequantize`` expects: (rows, row bytes) uint8 (rows = the
        product of the dimensions after ne0). A read-only view of the mapped file: no copy."""
        rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        return np.frombuffer(self._map, dtype=np.uint8, count=t.n_bytes, offset=t.offset).reshape(rows, -1)
