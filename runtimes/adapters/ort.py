"""ONNX Runtime adapter: one :class:`OrtSession` per execution provider chosen by registry name.

Targets (execution providers): CPU, CUDA, TensorRT (falls back to CUDA then CPU for nodes it does not take),
ROCm (AMD builds up to ORT 1.22; removed from ORT in 1.23), MIGraphX (AMD from 1.23 on), OpenVINO, CoreML and
DirectML. A provider is available when the installed onnxruntime build lists it in
``onnxruntime.get_available_providers()``; a session whose first provider is not the one asked for (ORT falls back
silently when a provider's libraries fail to load) is refused with the same "not available" error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from curmoe.common.errors import CheckpointError, InvalidInputError
from curmoe.runtimes.base import (
    IOSpec,
    RuntimeInfo,
    RuntimeNotAvailableError,
    SessionOptions,
    SpecSession,
)

__all__ = ["OrtSession", "load", "devices", "PROVIDERS"]

log = logging.getLogger(__name__)

#: short name -> (execution provider, package that ships it)
PROVIDERS = {
    "cpu": ("CPUExecutionProvider", "onnxruntime"),
    "cuda": ("CUDAExecutionProvider", "onnxruntime-gpu"),
    "tensorrt": ("TensorrtExecutionProvider", "onnxruntime-gpu (with TensorRT libraries)"),
    "rocm": ("ROCMExecutionProvider", "onnxruntime-rocm (AMD builds up to onnxruntime 1.22)"),
    "migraphx": ("MIGraphXExecutionProvider", "onnxruntime-migraphx (AMD ROCm builds from onnxruntime 1.23)"),
    "openvino": ("OpenVINOExecutionProvider", "onnxruntime-openvino"),
    "coreml": ("CoreMLExecutionProvider", "onnxruntime (macOS wheels)"),
    "dml": ("DmlExecutionProvider", "onnxruntime-directml (Windows)"),
}
_EP_TO_SHORT = {ep: short for short, (ep, _) in PROVIDERS.items()}

_LEVELS = {
    "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_NP = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
}


def _provider(target: str) -> str:
    if target not in PROVIDERS:
        raise InvalidInputError(f"unknown ONNX Runtime target {target!r}; choose one of {', '.join(PROVIDERS)}")
    return PROVIDERS[target][0]


def _not_available(target: str, why: str = "") -> RuntimeNotAvailableError:
    ep, package = PROVIDERS[target]
    have = onnxruntime.get_available_providers()
    names = [f"onnxruntime:{_EP_TO_SHORT[p]}" for p in have if p in _EP_TO_SHORT]
    return RuntimeNotAvailableError(
        f"onnxruntime:{target} needs {ep}, which is not available in this onnxruntime {onnxruntime.__version__} "
        f"build{why} (available providers: {', '.join(have)}; usable runtimes: {', '.join(names)}); "
        f"install {package} or pick an available runtime"
    )


def devices(target: str) -> list[str]:
    """Devices the target can use here: [] when the provider is missing from this build."""
    ep = _provider(target)
    if ep not in onnxruntime.get_available_providers():
        return []
    found: list[str] = []
    try:
        for d in onnxruntime.get_ep_devices():
            if d.ep_name == ep:
                kind = str(d.device.type).rsplit(".", 1)[-1].lower()
                found.append(f"{kind}:{d.device.device_id} ({d.device.vendor})")
    except (AttributeError, RuntimeError):  # older ORT without the EP device API
        pass
    if found:
        return found
    return ["cpu"] if target == "cpu" else ["gpu" if target in ("cuda", "tensorrt", "rocm", "migraphx", "dml") else target]


class OrtSession(SpecSession):
    """An ``onnxruntime.InferenceSession`` behind the curmoe :class:`Session` interface."""

    def __init__(self, path: Path, target: str, options: SessionOptions, provider_options: dict[str, Any] | None,
                 name: str) -> None:
        self.path, self.target, self.options, self._name = path, target, options, name
        ep = _provider(target)
        if ep not in onnxruntime.get_available_providers():
            raise _not_available(target)
        so = onnxruntime.SessionOptions()
        so.graph_optimization_level = _LEVELS[options.optimization]
        if options.threads is not None:
            so.intra_op_num_threads = options.threads
        if options.low_memory:  # no pre-packed second copy of each MatMul weight
            so.add_session_config_entry("session.disable_prepacking", "1")
        so.log_severity_level = 3  # errors only: ORT warns on every benign fallback otherwise
        providers: list[Any] = [(ep, provider_options or {})]
        if target == "tensorrt" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.append("CUDAExecutionProvider")
        if ep != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")  # nodes the provider does not take
        try:
            self._sess = onnxruntime.InferenceSession(os.fspath(path), sess_options=so, providers=providers)
        except (onnxruntime.capi.onnxruntime_pybind11_state.InvalidProtobuf,
                onnxruntime.capi.onnxruntime_pybind11_state.InvalidGraph) as e:
            raise CheckpointError(f"{str(path)!r} is not a readable ONNX model ({_first_line(e)}); pass a file "
                                  "written by curmoe export") from None
        if self._sess.get_providers()[0] != ep:
            raise _not_available(target, f" (ONNX Runtime fell back to {self._sess.get_providers()[0]}: its libraries "
                                         "or the device could not be loaded)")
        spec = lambda i: IOSpec(i.name, tuple(i.shape), np.dtype(_NP.get(i.type, np.float32)))  # noqa: E731
        self._inputs = [spec(i) for i in self._sess.get_inputs()]
        self._outputs = [spec(o) for o in self._sess.get_outputs()]
        self._output_names = [o.name for o in self._outputs]

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        arrays, names = self._check_feeds(feeds, outputs)
        return dict(zip(names, self._sess.run(names, arrays)))

    def info(self) -> RuntimeInfo:
        ep = self._sess.get_providers()[0]
        opts = self._sess.get_provider_options().get(ep) or {}
        dev = "cpu" if ep == "CPUExecutionProvider" else f"{self.target}:{opts.get('device_id', 0)}"
        return RuntimeInfo("onnxruntime", onnxruntime.__version__, ep, dev, self._name, self.options.threads,
                           self.options.optimization, {"providers": self._sess.get_providers()})

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._sess.get_modelmeta().custom_metadata_map)


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[-1] if lines else type(e).__name__


def load(path: str | os.PathLike[str], target: str, *, threads: int | None = None, optimization: str = "all",
         provider_options: dict[str, Any] | None = None, name: str | None = None,
         low_memory: bool = False) -> OrtSession:
    """Open an ONNX file on an ONNX Runtime execution provider.

    Args:
        path: the .onnx file (its external data file, if any, next to it).
        target: a key of :data:`PROVIDERS` ("cpu", "cuda", ...).
        threads: intra-op threads (None: ORT's default).
        optimization: "disable" | "basic" | "extended" | "all" (ORT's graph optimisation levels).
        provider_options: passed to the execution provider (e.g. ``{"device_id": 1}`` for CUDA).
        name: the registry name, recorded in :meth:`OrtSession.info`.
        low_memory: skip weight pre-packing (one copy of the weights; see :class:`SessionOptions`).
    """
    _provider(target)
    if provider_options is not None and not isinstance(provider_options, dict):
        raise InvalidInputError(f"provider_options must be a dict, got {type(provider_options).__name__}")
    return OrtSession(Path(path), target, SessionOptions(threads, optimization, bool(low_memory)), provider_options,
                      name or f"onnxruntime:{target}")
