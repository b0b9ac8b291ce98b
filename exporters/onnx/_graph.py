"""A small ONNX graph builder: unique names, cached constants, weight initializers in torch orientation.

Weights are stored as the checkpoint holds them, W of shape (out, in), under their checkpoint names, and used as
``MatMul(x, Transpose(W))``: the Transpose of an initializer is constant-folded by ONNX Runtime (basic level) and
OpenVINO at load time, and the file keeps the stable names and shapes (``layers.{l}.experts.{e}.up.C`` (m, c) ...).
Activations are kept 2-D (tokens, features) for every linear map, so each MatMul has inputs of equal rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["GraphBuilder", "ExternalData", "ONNX_DTYPE"]

ONNX_DTYPE = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.bool_): TensorProto.BOOL,
}


class ExternalData:
    """Writes initializers straight into one external data file while the graph is built, so the graph never holds a
    second copy of the weights (a 3.4 GB model would otherwise sit in memory twice: as NumPy arrays and as protobuf
    ``raw_data``). The layout is ONNX's external-data format: each tensor's bytes at a 4096-byte aligned offset
    (ONNX Runtime can memory-map aligned data), named by ``location`` / ``offset`` / ``length``.

    Use as a context manager: ``with ExternalData(file, location) as ext: GraphBuilder(act, ext) ...``.
    """

    ALIGN = 4096
    MIN_BYTES = 1024  # smaller tensors (norms, constants) stay inside the model file

    def __init__(self, path: Path, location: str) -> None:
        self.location = location
        self._f = open(path, "wb")  # noqa: SIM115 (closed by __exit__)
        self._offset = 0

    def __enter__(self) -> ExternalData:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def tensor(self, arr: np.ndarray, name: str) -> onnx.TensorProto:
        """Append ``arr`` (C-contiguous) to the file; a TensorProto that points at it."""
        pad = (-self._offset) % self.ALIGN
        if pad:
            self._f.write(b"\0" * pad)
            self._offset += pad
        data = arr if arr.dtype.byteorder in "=|<" else arr.astype(arr.dtype.newbyteorder("<"))
        self._f.write(memoryview(np.ascontiguousarray(data)).cast("B"))  # no bytes copy of the array
        t = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(arr.dtype), dims=arr.shape,
                             data_location=onnx.TensorProto.EXTERNAL)
        for k, v in (("location", self.location), ("offset", str(self._offset)), ("length", str(arr.nbytes))):
            t.external_data.add(key=k, value=v)
        self._offset += arr.nbytes
        return t

    def stacked(self, parts: Iterable[np.ndarray], shape: tuple[int, ...], dtype: np.dtype, name: str
                ) -> onnx.TensorProto:
        """Append ``np.stack(parts)`` (``shape``) one part at a time (only one part is ever in memory)."""
        pad = (-self._offset) % self.ALIGN
        if pad:
            self._f.write(b"\0" * pad)
            self._offset += pad
        start, want = self._offset, tuple(shape[1:])
        for part in parts:
            if part.shape != want or part.dtype != dtype:
                raise ValueError(f"stacked initializer {name!r}: part {part.shape} {part.dtype}, want {want} {dtype}")
            self._f.write(memoryview(np.ascontiguousarray(part)).cast("B"))
            self._offset += part.nbytes
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if self._offset - start != n:
            raise ValueError(f"stacked initializer {name!r}: {self._offset - start} bytes written, want {n}")
        t = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims=shape,
                             data_location=onnx.TensorProto.EXTERNAL)
        for k, v in (("location", self.location), ("offset", str(start)), ("length", str(n))):
            t.external_data.add(key=k, value=v)
        return t


class GraphBuilder:
    """Collects nodes, initializers, inputs and outputs of one ONNX graph.

    Args:
        act_dtype: the activation/weight dtype of the export (np.float32 or np.float16).
        external: write weights (>= 1 KiB) straight to this external data file instead of into the graph.
    """

    def __init__(self, act_dtype: np.dtype, external: ExternalData | None = None) -> None:
        self.external = external
        self.act = np.dtype(act_dtype)
        self.act_onnx = ONNX_DTYPE[self.act]
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._init_names: set[str] = set()
        self._counts: dict[str, int] = {}
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}
        self._transposed: dict[str, str] = {}
        self._weights: set[str] = set()
        self.weight_bytes = 0

    # Names ----------------------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A tensor/node name not used before, derived from ``hint``."""
        i = self._counts.get(hint, 0)
        self._counts[hint] = i + 1
        return hint if i == 0 and hint not in self._init_names else f"{hint}_{i}"

    # Nodes ----------------------------------------------------------------------------------------------------
    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        hint: str | None = None,
        *,
        outputs: Sequence[str] | int = 1,
        domain: str = "",
        **attrs: Any,
    ) -> Any:
        """Append a node; returns its output name (or list of names when ``outputs`` is a count > 1 or a list)."""
        base = hint or op_type.lower()
        if isinstance(outputs, int):
            outs = [self.fresh(f"{base}:{i}" if outputs > 1 else base) for i in range(outputs)]
            single = outputs == 1
        else:
            outs, single = list(outputs), len(outputs) == 1
        node = helper.make_node(op_type, list(inputs), outs, name=self.fresh(f"{base}/{op_type}"), domain=domain, **attrs)
        self.nodes.append(node)
        return outs[0] if single else outs

    def cast(self, x: str, to: np.dtype | int, hint: str | None = None) -> str:
        to_onnx = to if isinstance(to, int) else ONNX_DTYPE[np.dtype(to)]
        return self.op("Cast", [x], hint or f"{x}.cast", to=to_onnx)

    def to_float32(self, x: str) -> str:
        """x in float32 (a Cast only when the export is float16)."""
        return x if self.act == np.float32 else self.cast(x, np.float32)

    def to_act(self, x: str) -> str:
        """A float32 tensor in the activation dtype (a Cast only when the export is float16)."""
        return x if self.act == np.float32 else self.cast(x, self.act)

    # Initializers ---------------------------------------------------------------------------------------------
    def init(self, name: str, array: np.ndarray) -> str:
        """Add an initializer under exactly ``name`` (weights keep their checkpoint names)."""
        if name in self._init_names:
            raise ValueError(f"initializer {name!r} added twice")
        self._init_names.add(name)
        arr = np.ascontiguousarray(array)
        ext = self.external is not None and arr.nbytes >= ExternalData.MIN_BYTES
        self.initializers.append(self.external.tensor(arr, name) if ext else  # type: ignore[union-attr]
                                 numpy_helper.from_array(arr, name))
        self.weight_bytes += arr.nbytes
        return name

    def weight(self, name: str, array: np.ndarray, dtype: np.dtype | None = None) -> str:
        """A float weight cast to ``dtype`` (default: the activation dtype); added once (tied weights reuse it)."""
        if name in self._weights:
            return name
        self._weights.add(name)
        return self.init(name, np.asarray(array).astype(dtype or self.act, copy=False))

    def stacked_weight(self, name: str, shape: tuple[int, ...], part: Callable[[int], np.ndarray]) -> str:
        """A weight of ``shape`` whose slice ``[i]`` is ``part(i)`` (cast to the activation dtype): written part by part
        to the external data file when there is one, so a stacked copy of every expert never sits in memory."""
        self._weights.add(name)
        self._init_names.add(name)
        parts = (np.asarray(part(i)).astype(self.act, copy=False) for i in range(shape[0]))
        nbytes = int(np.prod(shape)) * self.act.itemsize
        if self.external is not None and nbytes >= ExternalData.MIN_BYTES:
            self.initializers.append(self.external.stacked(parts, shape, self.act, name))
        else:
            self.initializers.append(numpy_helper.from_array(np.stack(list(parts)), name))
        self.weight_bytes += nbytes
        return name

    def weight_t(self, name: str, array: np.ndarray, dtype: np.dtype | None = None) -> str:
        """Add W (out, in) as initializer ``name`` and return ``Transpose(W)`` (in, out), built once per weight."""
        if name not in self._transposed:
            self.weight(name, array, dtype)
            self._transposed[name] = self.op("Transpose", [name], f"{name}.T", perm=[1, 0])
        return self._transposed[name]

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """A small constant initializer (cached by value), e.g. ``g.const([-1], np.int64)``."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.tobytes(), arr.shape)
        if key not in self._consts:
            name = self.fresh(f"const.{arr.dtype.name}")
            self._init_names.add(name)
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def fconst(self, value: Any, dtype: Any = None) -> str:
        """A float constant in ``dtype`` (default the activation dtype)."""
        return self.const(value, dtype or self.act)

    # Inputs / outputs -----------------------------------------------------------------------------------------
    def add_input(self, name: str, elem: int, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def add_output(self, name: str, elem: int, shape: Sequence[int | str] | None) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem, None if shape is None else list(shape)))
        return name

    def make_graph(self, name: str, doc: str = "") -> onnx.GraphProto:
        return helper.make_graph(
            self.nodes, name, self.inputs, self.outputs, initializer=self.initializers, doc_string=doc
        )
