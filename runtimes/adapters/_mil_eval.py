"""Evaluate the MIL program of a saved ``.mlpackage`` with NumPy, op by op (the Core ML check where Core ML cannot
predict: Linux, Windows, CI).

The package's ML Program is read back with coremltools' own MIL proto loader (weights from its blob file), so
what is evaluated is exactly the program Core ML would compile, after coremltools' passes. Each op is re-created
through the MIL builder with its inputs as constants, which runs coremltools' value inference for that op
(Apple's Python reference of the op's semantics, used by the converter for constant folding) and its type
inference on the concrete shapes. Ops without value inference are computed by the NumPy kernels in
:data:`NUMPY_OPS` (silu, one_hot, gather_nd). Every result is checked against the op's declared output dtype
and static dims. Apple's compiled kernels (CPU / GPU / Neural Engine) are not run: this checks the program's
semantics, not Core ML's numerics on a device.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.frontend.milproto import load as milproto_load
from coremltools.converters.mil.mil import Function, types

from curmoe.common.errors import CheckpointError, CurmoeError, InvalidInputError

__all__ = ["MilProgram", "NUMPY_OPS", "read_only"]

log = logging.getLogger(__name__)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x.astype(np.float32))).astype(x.dtype)


def _one_hot(indices: np.ndarray, one_hot_vector_size: Any, axis: int = -1, on_value: Any = 1,
             off_value: Any = 0) -> np.ndarray:
    n = int(np.asarray(one_hot_vector_size))
    idx = np.asarray(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + n, idx)
    hot = np.expand_dims(idx, -1) == np.arange(n)  # (..., n)
    out = np.where(hot, np.asarray(on_value), np.asarray(off_value))
    return np.moveaxis(out, -1, axis if axis >= 0 else out.ndim + axis)


def _gather_nd(x: np.ndarray, indices: np.ndarray, batch_dims: int = 0, **_: Any) -> np.ndarray:
    if batch_dims:
        raise NotImplementedError("gather_nd with batch_dims > 0")
    idx = np.asarray(indices)
    return x[tuple(np.moveaxis(idx, -1, 0))]


#: op type -> NumPy kernel taking the op's inputs as keyword arguments (ops coremltools has no value inference for)
NUMPY_OPS: dict[str, Callable[..., np.ndarray]] = {
    "silu": lambda x: _silu(x),
    "one_hot": _one_hot,
    "gather_nd": _gather_nd,
}


def _py(x: Any) -> Any:
    """Boolean scalars as Python bools (NumPy 2 rejects numpy.bool for ``keepdims`` in coremltools' reductions)."""
    if isinstance(x, (bool, np.bool_)) or (isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype == np.bool_):
        return bool(x)
    return x


@contextmanager
def read_only(package: Path) -> Iterator[None]:
    """Opening a package with coremltools rewrites its Manifest.json (same bytes, new file): put back the
    manifest's and the package folder's times so that reading a model leaves it as it was on disk."""
    manifest = package / "Manifest.json"
    try:
        before = manifest.read_bytes()
        times = [(p, p.stat()) for p in (manifest, package)]
    except OSError:
        yield
        return
    try:
        yield
    finally:
        try:
            if manifest.read_bytes() == before:
                for p, st in times:
                    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError:
            pass


class MilProgram:
    """The ``main`` function of a saved ML Program, runnable on NumPy feeds.

    Attributes:
        spec: the package's protobuf spec (``Model``).
        function: the loaded MIL function.
        evaluated_by: op type -> "coremltools" (value inference) or "numpy" (:data:`NUMPY_OPS`), filled as ops run.
    """

    def __init__(self, package: str | Path) -> None:
        package = Path(package)
        if not (package.is_dir() and (package / "Manifest.json").is_file()):
            raise CheckpointError(f"{str(package)!r} is not an .mlpackage directory (no Manifest.json)")
        self.package = package
        with read_only(package):
            mlmodel = ct.models.MLModel(str(package), skip_model_load=True)
        self.spec = mlmodel.get_spec()
        if self.spec.WhichOneof("Type") != "mlProgram":
            raise InvalidInputError(f"{str(package)!r} holds a {self.spec.WhichOneof('Type')} model, not an ML Program")
        self.metadata = dict(mlmodel.user_defined_metadata)
        prog = milproto_load.load(self.spec, specification_version=self.spec.specificationVersion,
                                  file_weights_dir=mlmodel.weights_dir)
        self.function = prog.functions["main"]
        self.evaluated_by: dict[str, str] = {}
        self.op_counts = Counter(op.op_type for op in self.function.operations)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Evaluate the program on ``feeds`` (by input name); returns the outputs (all or those named)."""
        f = self.function
        env: dict[str, Any] = {}
        for name, var in f.inputs.items():
            env[name] = np.ascontiguousarray(feeds[name], dtype=types.nptype_from_builtin(var.dtype))

        def value(v: Any) -> Any:
            if v.name in env:
                return env[v.name]
            if v.val is not None:
                return _py(v.val)
            raise CurmoeError(f"MIL var {v.name!r} is read before it is computed; the program is not in order")

        quiet = logging.getLogger("coremltools")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # value inference warns on every int64 -> int32 store
        try:
            with Function({}, opset_version=f.opset_version):
                for op in f.operations:
                    if op.op_type == "const":
                        env[op.outputs[0].name] = _py(op.outputs[0].val)
                        continue
                    kw = {k: (tuple(value(x) for x in v) if isinstance(v, (list, tuple)) else value(v))
                          for k, v in op.inputs.items()}
                    for var, res in zip(op.outputs, self._eval(op, kw)):
                        env[var.name] = self._checked(op, var, res)
        finally:
            quiet.setLevel(level)
        names = [v.name for v in f.outputs] if outputs is None else list(outputs)
        return {n: env[n] for n in names}

    def _eval(self, op: Any, kw: dict[str, Any]) -> list[np.ndarray]:
        res: list[Any] | None = None
        err: Exception | None = None
        if op.op_type not in NUMPY_OPS:
            try:
                out = getattr(mb, op.op_type)(**kw)
                res = [o.val for o in (out if isinstance(out, (list, tuple)) else [out])]
                if any(r is None for r in res):
                    res = None
                else:
                    self.evaluated_by[op.op_type] = "coremltools"
            except Exception as e:  # noqa: BLE001 - an op the builder cannot fold: try our NumPy kernel
                err = e
        if res is None:
            if op.op_type not in NUMPY_OPS:
                raise CurmoeError(
                    f"MIL op {op.op_type!r} ({op.name}) has no value inference in coremltools {ct.__version__} and no "
                    f"NumPy kernel in curmoe.runtimes.adapters._mil_eval.NUMPY_OPS" + (f" ({err})" if err else "")
                )
            res = [NUMPY_OPS[op.op_type](**kw)]
            self.evaluated_by[op.op_type] = "numpy"
        return res

    @staticmethod
    def _checked(op: Any, var: Any, res: Any) -> np.ndarray:
        dtype = types.nptype_from_builtin(var.dtype)
        arr = np.asarray(res)
        if arr.dtype != dtype:
            arr = arr.astype(dtype)
        want = var.shape if types.is_tensor(var.sym_type) else ()
        if len(want) != arr.ndim or any(isinstance(w, (int, np.integer)) and w != a for w, a in zip(want, arr.shape)):
            raise CurmoeError(f"MIL op {op.op_type!r} ({op.name}) produced shape {arr.shape}, declared {want}")
        return arr
