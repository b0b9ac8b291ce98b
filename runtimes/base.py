"""The interface every runtime adapter implements: load a model for a device, run feeds, say what it is.

An adapter module (``curmoe.runtimes.adapters.ort``, later ``curmoe.runtimes.openvino`` ...) provides two functions,

- ``load(path, target, **options) -> Session``: open the exported model on the target (an execution provider or
  device name from the registry);
- ``devices(target) -> list[str]``: the devices the target can use here ([] when it is not available),

and a :class:`Session` subclass. Importing this module imports no vendor SDK.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curmoe.common.checks import check_int
from curmoe.common.errors import CurmoeError, InvalidInputError

__all__ = ["Session", "IOSpec", "RuntimeInfo", "SessionOptions", "RuntimeNotAvailableError", "OPTIMIZATION_LEVELS"]

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


class RuntimeNotAvailableError(CurmoeError, RuntimeError):
    """The runtime or device asked for is not usable here; the message names those that are."""


@dataclass(frozen=True)
class SessionOptions:
    """Options every adapter understands.

    Attributes:
        threads: intra-op threads (None = the runtime's default, usually one per physical core).
        optimization: graph optimisation level, one of :data:`OPTIMIZATION_LEVELS` ("disable" runs the graph as
            written; "all" is the runtime's default and fastest).
        low_memory: keep one copy of the weights where the runtime would make a second for speed (ONNX Runtime
            CPU pre-packs every MatMul weight into its GEMM kernel's layout: 1.6x the weights resident and a slower
            load; without it prefill is about 1.4x slower here). ``curmoe.runtimes.validate`` turns it on for
            large models; adapters without such a copy ignore it.
    """

    threads: int | None = None
    optimization: str = "all"
    low_memory: bool = False

    def __post_init__(self) -> None:
        if self.threads is not None:
            object.__setattr__(self, "threads", check_int(self.threads, "threads", lo=1,
                                                          fix="or None for the runtime's default"))
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise InvalidInputError(
                f"optimization={self.optimization!r} is unknown; pass one of {', '.join(OPTIMIZATION_LEVELS)}"
            )


@dataclass(frozen=True)
class IOSpec:
    """One graph input or output: name, shape (ints for static dims, names or None for dynamic ones), dtype."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class RuntimeInfo:
    """What a session runs on."""

    runtime: str  # e.g. "onnxruntime"
    version: str
    provider: str  # e.g. "CPUExecutionProvider"
    device: str  # e.g. "cpu", "cuda:0"
    name: str = ""  # the registry name it was loaded by, e.g. "onnxruntime:cpu"
    threads: int | None = None
    optimization: str = "all"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Session(abc.ABC):
    """A model loaded on one runtime and device."""

    path: Path

    @abc.abstractmethod
    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the graph: ``feeds`` by input name; returns the outputs (all, or those named) by name."""

    @abc.abstractmethod
    def info(self) -> RuntimeInfo:
        """Runtime, version, provider and device."""

    @property
    @abc.abstractmethod
    def inputs(self) -> list[IOSpec]:
        """The graph inputs."""

    @property
    @abc.abstractmethod
    def outputs(self) -> list[IOSpec]:
        """The graph outputs."""

    @property
    def metadata(self) -> dict[str, str]:
        """The model's metadata_props (curmoe writes its version, config and compression there)."""
        return {}

    def __repr__(self) -> str:
        i = self.info()
        return f"{type(self).__name__}({str(getattr(self, 'path', '?'))!r}, {i.runtime} {i.version}, {i.provider})"


class SpecSession(Session):
    """A session that keeps its IO specs in ``_inputs`` / ``_outputs``: the shared feed checks and accessors."""

    _inputs: list[IOSpec]
    _outputs: list[IOSpec]

    def _check_feeds(self, feeds: dict[str, np.ndarray], outputs: list[str] | None,
                     what: str = "graph") -> tuple[dict[str, np.ndarray], list[str]]:
        """(contiguous arrays in the declared dtypes by input name, names of the outputs to return)."""
        known = [o.name for o in self._outputs]
        names = list(outputs) if outputs is not None else known
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InvalidInputError(f"output {unknown[0]!r} is not in the {what}; outputs are {known}")
        missing = [i.name for i in self._inputs if i.name not in feeds]
        if missing:
            raise InvalidInputError(f"feeds lack input(s) {missing}; the {what} needs {[i.name for i in self._inputs]}")
        return {i.name: np.ascontiguousarray(feeds[i.name], dtype=i.dtype) for i in self._inputs}, names

    @property
    def inputs(self) -> list[IOSpec]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[IOSpec]:
        return list(self._outputs)

