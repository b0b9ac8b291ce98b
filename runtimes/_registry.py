"""The runtime registry: names like ``"onnxruntime:cpu"`` -> the adapter module, imported on first use."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curmoe.common.errors import (
    CheckpointError,
    CurmoeError,
    InvalidInputError,
    require,
)
from curmoe.runtimes.base import Session

__all__ = ["RuntimeEntry", "REGISTRY", "register", "load", "available", "names"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeEntry:
    """How to reach one runtime: adapter module, the SDK it imports, the extra that installs it, the target."""

    module: str
    sdk: str
    extra: str
    target: str


REGISTRY: dict[str, RuntimeEntry] = {}


def register(name: str, entry: RuntimeEntry) -> None:
    """Add (or replace) a runtime name."""
    REGISTRY[name] = entry


for _t in ("cpu", "cuda", "tensorrt", "rocm", "migraphx", "openvino", "coreml", "dml"):
    register(f"onnxruntime:{_t}", RuntimeEntry("curmoe.runtimes.adapters.ort", "onnxruntime", "ort", _t))
for _t in ("cpu", "gpu", "npu", "auto"):
    register(f"openvino:{_t}", RuntimeEntry("curmoe.runtimes.adapters.ov", "openvino", "openvino", _t.upper()))
register("coreml", RuntimeEntry("curmoe.runtimes.adapters.coreml", "coremltools", "coreml", "all"))  # Core ML itself (macOS)
register("coreml:mil", RuntimeEntry("curmoe.runtimes.adapters.coreml", "coremltools", "coreml", "mil"))  # NumPy MIL evaluation
# The NumPy reference behind the same interface (reads a model directory, not an exported file).
register("reference", RuntimeEntry("curmoe.runtimes.adapters.reference", "numpy", "test", "native"))
register("reference:float64", RuntimeEntry("curmoe.runtimes.adapters.reference", "numpy", "test", "float64"))


def names() -> list[str]:
    return list(REGISTRY)


def _entry(name: str) -> RuntimeEntry:
    if not isinstance(name, str) or name not in REGISTRY:
        raise InvalidInputError(f"runtime {name!r} is unknown; known runtimes: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _adapter(name: str) -> Any:
    e = _entry(name)
    if importlib.util.find_spec(e.module) is None:
        raise CurmoeError(
            f"runtime {name!r} is registered but its adapter ({e.module}) is not implemented in this curmoe version; "
            f"use one of: {', '.join(n for n, x in REGISTRY.items() if importlib.util.find_spec(x.module))}"
        )
    require(e.sdk, e.extra)
    return importlib.import_module(e.module)


def load(path: str | os.PathLike[str], runtime: str = "onnxruntime:cpu", **options: Any) -> Session:
    """Open an exported model on a runtime by name; ``options`` go to the adapter (threads, optimization, ...).

    Raises:
        curmoe.InvalidInputError: unknown runtime name (the message lists the known ones) or bad options.
        curmoe.MissingExtraError: the runtime's Python package is not installed (the message gives the pip line).
        curmoe.runtimes.RuntimeNotAvailableError: the package is there but the device/provider is not.
        curmoe.CheckpointError: the model file does not exist.
    """
    mod = _adapter(runtime)
    p = Path(path)
    if runtime.startswith("reference"):
        if not p.is_dir():
            raise CheckpointError(f"runtime {runtime!r} reads a curmoe model directory; {str(p)!r} is not one")
    elif not (p.is_file() or (p.is_dir() and p.suffix == ".mlpackage")):  # a Core ML package is a directory
        raise CheckpointError(f"model file {str(p)!r} does not exist; export one with curmoe.exporters.export")
    return mod.load(p, _entry(runtime).target, name=runtime, **options)


def available(reasons: dict[str, str] | None = None) -> list[tuple[str, list[str]]]:
    """(name, devices) of every registered runtime usable here (its adapter and package present, device found).

    Args:
        reasons: a dict to fill with ``name -> why it is not usable`` for every other registered runtime.
    """
    out = []
    for name, e in REGISTRY.items():
        try:
            mod = _adapter(name)
            devs = mod.devices(e.target)
        except (CurmoeError, ImportError) as err:
            log.debug("runtime %s not available: %s", name, err)
            if reasons is not None:
                reasons[name] = str(err).splitlines()[0] if str(err) else type(err).__name__
            continue
        if devs:
            out.append((name, list(devs)))
        elif reasons is not None:
            reasons[name] = (f"Core ML prediction needs macOS (this is {platform.system()}); coreml:mil evaluates "
                             "packages here" if name == "coreml" else
                             f"{e.sdk} is installed but has no {e.target} device or execution provider here")
    return out
