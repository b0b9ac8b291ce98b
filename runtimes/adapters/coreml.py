"""Core ML adapter: a curmoe ``.mlpackage`` (``curmoe.exporters.export`` with a CoreMLExportConfig) behind the
:class:`~curmoe.runtimes.Session` interface, two ways.

- ``coreml`` (macOS only): real prediction by Core ML, ``MLModel(path, compute_units=...)``, with compute units
  ``ALL`` (default: CPU, GPU and Neural Engine), ``CPU_AND_GPU``, ``CPU_AND_NE`` or ``CPU_ONLY``. Elsewhere Core ML
  cannot predict ("Model prediction is only supported on macOS") and ``load`` raises RuntimeNotAvailableError.
- ``coreml:mil`` (any OS): the package's MIL program evaluated op by op with NumPy
  (:mod:`curmoe.runtimes.adapters._mil_eval`). It checks the exact program Core ML would compile, but **Apple's kernels are
  not run**: no Neural Engine float16 rounding, no GPU kernels; ``info().extra["apple_kernels_run"]`` is False.

Both take ``input_ids`` / ``attention_mask`` (int32 in the package; any integer array is accepted) and return
``logits`` (B, T, V) float32 and, when exported with ``routing_outputs``, ``routing.{l}.selected`` (B*T, E) (the
package names them ``routing_{l}_selected``: Core ML output names cannot hold dots). :func:`validate_coreml`
compares either with the float64 reference like :func:`curmoe.runtimes.validate` does for ONNX files.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
from coremltools.proto import FeatureTypes_pb2

from curmoe.common.errors import CheckpointError, InvalidInputError
from curmoe.reference import Model
from curmoe.runtimes.base import (
    IOSpec,
    RuntimeInfo,
    RuntimeNotAvailableError,
    Session,
    SessionOptions,
    SpecSession,
)
from curmoe.runtimes.tolerances import tolerance_for

__all__ = ["CoreMLSession", "MilSession", "load", "devices", "validate_coreml", "COMPUTE_UNITS"]

log = logging.getLogger(__name__)

#: compute-unit names accepted by ``load(..., compute_units=...)`` (``coremltools.ComputeUnit`` members)
COMPUTE_UNITS = ("ALL", "CPU_AND_GPU", "CPU_AND_NE", "CPU_ONLY")
_ROUTING = re.compile(r"^routing_(\d+)_selected$")
_NP = {"INT32": np.int32, "FLOAT32": np.float32, "FLOAT16": np.float16, "DOUBLE": np.float64}


def _curmoe_name(name: str) -> str:
    m = _ROUTING.match(name)
    return f"routing.{m.group(1)}.selected" if m else name


def _package_name(name: str) -> str:
    return name.replace(".", "_") if name.startswith("routing.") else name


def can_predict() -> bool:
    """True where Core ML itself can run a model: macOS with coremltools' native extension."""
    if platform.system() != "Darwin":
        return False
    try:
        from coremltools import libcoremlpython  # noqa: F401
    except ImportError:
        return False
    return True


def devices(target: str) -> list[str]:
    """Compute units usable here: Core ML's on macOS ("all"); the NumPy MIL evaluation anywhere ("mil")."""
    if target == "mil":
        return ["numpy (MIL program evaluation; Apple's Core ML kernels are not run)"]
    if target not in ("all",) + tuple(u.lower() for u in COMPUTE_UNITS):
        raise InvalidInputError(f"unknown Core ML target {target!r}; use 'all' (coreml) or 'mil' (coreml:mil)")
    return list(COMPUTE_UNITS) if can_predict() else []


def _io(spec: Any) -> tuple[list[IOSpec], list[IOSpec]]:
    def one(d: Any) -> IOSpec:
        t = d.type.multiArrayType
        ranges = list(t.shapeRange.sizeRanges)
        shape = tuple(None if r.upperBound != r.lowerBound else int(r.lowerBound) for r in ranges) if ranges \
            else tuple(int(s) for s in t.shape)
        dt = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(t.dataType)
        return IOSpec(_curmoe_name(d.name), shape, np.dtype(_NP.get(dt, np.float32)))

    return [one(d) for d in spec.description.input], [one(d) for d in spec.description.output]


class _PackageSession(SpecSession):
    """What both Core ML sessions share: IO specs from the package, name mapping, feed checks."""

    def _setup(self, path: Path, spec: Any, meta: dict[str, str], name: str) -> None:
        self.path, self._name, self._meta = path, name, meta
        self._inputs, self._outputs = _io(spec)
        self._output_names = [o.name for o in self._outputs]
        export = json.loads(meta.get("curmoe.export", "{}"))
        self.max_batch = export.get("max_batch")
        self.max_seq_len = export.get("max_seq_len") or json.loads(meta.get("curmoe.config", "{}")).get("max_seq_len")

    def _feeds(self, feeds: dict[str, np.ndarray],
               outputs: list[str] | None) -> tuple[dict[str, np.ndarray], list[str]]:
        arrays, names = self._check_feeds(feeds, outputs, what="model")
        B, T = arrays["input_ids"].shape
        if self.max_batch and B > self.max_batch or self.max_seq_len and T > self.max_seq_len:
            raise InvalidInputError(
                f"input of shape {(B, T)} exceeds the package's flexible shape (batch <= {self.max_batch}, "
                f"sequence <= {self.max_seq_len}); re-export with a larger max_batch / max_seq_len"
            )
        return arrays, names

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._meta)


class MilSession(_PackageSession):
    """The package's MIL program evaluated with NumPy (:class:`curmoe.runtimes.adapters._mil_eval.MilProgram`)."""

    def __init__(self, path: Path, name: str) -> None:
        from curmoe.runtimes.adapters._mil_eval import MilProgram

        self.program = MilProgram(path)
        self._setup(path, self.program.spec, self.program.metadata, name)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        arrays, names = self._feeds(feeds, outputs)
        res = self.program.run(arrays, [_package_name(n) for n in names])
        return {n: res[_package_name(n)] for n in names}

    def info(self) -> RuntimeInfo:
        return RuntimeInfo("coremltools-mil", ct.__version__, "MIL value inference (NumPy)", "cpu", self._name, None,
                           "all", {"apple_kernels_run": False, "evaluated_by": dict(self.program.evaluated_by),
                                   "op_counts": dict(self.program.op_counts)})


class CoreMLSession(_PackageSession):
    """Core ML prediction (macOS) with a compute-unit setting."""

    def __init__(self, path: Path, compute_units: str, name: str) -> None:
        from curmoe.runtimes.adapters._mil_eval import read_only

        with read_only(path):
            self._model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        self.compute_units = compute_units
        self._setup(path, self._model.get_spec(), dict(self._model.user_defined_metadata), name)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        arrays, names = self._feeds(feeds, outputs)
        res = self._model.predict(arrays)
        return {n: np.asarray(res[_package_name(n)]) for n in names}

    def info(self) -> RuntimeInfo:
        return RuntimeInfo("coreml", ct.__version__, f"Core ML ({self.compute_units})", self.compute_units.lower(),
                           self._name, None, "all", {"apple_kernels_run": True, "macos": platform.mac_ver()[0]})


def load(path: str | os.PathLike[str], target: str, *, compute_units: str | None = None, threads: int | None = None,
         optimization: str = "all", name: str | None = None, low_memory: bool = False) -> Session:
    """Open a curmoe ``.mlpackage``.

    Args:
        path: the package directory.
        target: "all" (Core ML prediction, macOS) or "mil" (NumPy evaluation of the MIL program, any OS).
        compute_units: one of :data:`COMPUTE_UNITS` (Core ML prediction only; default "ALL").
        threads, optimization: accepted for interface parity; Core ML chooses its own (only the defaults).
        name: the registry name, recorded in ``info()``.
    """
    SessionOptions(threads, optimization)
    if threads is not None or optimization != "all":
        raise InvalidInputError("Core ML has no thread-count or optimisation-level option; leave threads=None, "
                                "optimization='all'")
    path = Path(path)
    if path.suffix != ".mlpackage" or not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is not an .mlpackage directory; export one with "
                              "curmoe.exporters.export(model, CoreMLExportConfig(), 'm.mlpackage')")
    if target == "mil":
        if compute_units is not None:
            raise InvalidInputError("compute_units applies to Core ML prediction ('coreml'); 'coreml:mil' runs NumPy")
        return MilSession(path, name or "coreml:mil")
    units = (compute_units or target).upper()
    if units not in COMPUTE_UNITS:
        raise InvalidInputError(f"compute_units={compute_units or target!r} is unknown; pass one of {COMPUTE_UNITS}")
    if not can_predict():
        raise RuntimeNotAvailableError(
            f"Core ML prediction needs macOS (this is {platform.system()}: 'Model prediction is only supported on "
            "macOS'); use runtime 'coreml:mil' to evaluate the package's MIL program with NumPy (Apple's kernels are "
            "not run), or 'onnxruntime:cpu' / 'openvino:cpu' on the ONNX export"
        )
    return CoreMLSession(path, units, name or "coreml")


def validate_coreml(package: str | os.PathLike[str], model: Model, runtime: str = "coreml:mil", *,
                    prompt_lengths: tuple[int, ...] = (1, 7, 24), batch_lengths: tuple[int, ...] = (9, 4, 1),
                    sample_ids: np.ndarray | None = None, seed: int = 0, **session_options: Any) -> Any:
    """:func:`curmoe.runtimes.validate` for a ``.mlpackage``: same cases (no decode: the program has no cache),
    same measures and the tolerance of the package's dtype. Returns a ValidationReport (``onnx_path`` holds the
    package path; ``info["apple_kernels_run"]`` says whether Core ML itself ran).
    """
    from curmoe.runtimes._registry import load as registry_load
    from curmoe.runtimes.validate import _Cases, _check_exported_from, _run_cases

    if not isinstance(model, Model):
        raise InvalidInputError(f"model must be a curmoe.Model, got {type(model).__name__}")
    sess = registry_load(package, runtime, **session_options)
    meta = sess.metadata
    _check_exported_from(meta, model.config, package)
    if not any(o.name.startswith("routing.") for o in sess.outputs):
        log.warning("%s has no routing outputs (exported with routing_outputs=False): routing agreement not measured",
                    package)
    dtype = json.loads(meta.get("curmoe.export", "{}")).get("dtype", "float32")
    cases = _Cases(tuple(prompt_lengths), tuple(batch_lengths), 0, sample_ids, seed)  # no cache: no decode
    return _run_cases(sess, model, cases, runtime=runtime, path=Path(package), dtype=dtype,
                      tol=tolerance_for(dtype))
