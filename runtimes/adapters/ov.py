"""OpenVINO adapter: a curmoe ONNX export (read directly by OpenVINO's ONNX frontend) or OpenVINO IR (.xml/.bin,
written by :func:`curmoe.exporters.export_openvino_ir`) compiled for an OpenVINO device.

Targets (registry names): ``openvino:cpu``, ``openvino:gpu``, ``openvino:npu``, ``openvino:auto``. A target names a
device family; ``device=`` picks one device of it: ``"GPU"`` is ``"GPU.0"``, the integrated GPU when there is one
(a discrete Arc is usually ``"GPU.1"``); AUTO takes a priority list, ``"AUTO:GPU.1,CPU"``.

Precision: OpenVINO's CPU plugin runs in bf16 by default on CPUs with AMX or AVX512-BF16 (and GPUs in f16); an
8-bit mantissa can flip near-tied top-k routing decisions and costs ~1e-2 of the logit scale. This adapter
compiles with ``INFERENCE_PRECISION_HINT=f32`` unless ``precision=`` asks for "bf16", "f16" or the device
"default": validation then reports the routing agreement of the faster precision against the reference.

Speed (docs/openvino_speed.md): ``run`` binds each feed to the request as a zero-copy ``openvino.Tensor`` and
copies out only the outputs asked for (the ``InferRequest.infer(list)`` convenience wrapper cost 0.3-0.7 ms a
call here, about a fifth of a decode step of the shipped model). ``stateful=True`` compiles the KV-cache graph with the
cache as internal state (:func:`curmoe.exporters.genai.make_stateful_ir`): the session's inputs are then only
``input_ids`` and ``attention_mask`` (the whole mask, past tokens included) and a mask as long as ``input_ids``
starts a new sequence; a decoding loop feeds one new token and the grown mask per step and nothing else (the
bench runner does; ``curmoe.runtimes.generate``, finding no ``past.*`` inputs, re-feeds the whole sequence, which is
correct but recomputes it).

This module is named ``ov`` (not ``openvino``) so that it never shadows the SDK; it imports ``openvino`` absolutely.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import openvino

from curmoe.common.errors import CheckpointError, InvalidInputError
from curmoe.runtimes.base import (
    IOSpec,
    RuntimeInfo,
    RuntimeNotAvailableError,
    SessionOptions,
    SpecSession,
)

__all__ = ["OpenVINOSession", "load", "devices", "release_weight_pages", "TARGETS", "PRECISIONS",
           "FUSED_MOE_LAYER_TYPES"]

log = logging.getLogger(__name__)

#: registry target -> what provides it
TARGETS = {
    "CPU": "the CPU plugin (x86-64 and ARM CPUs)",
    "GPU": "the GPU plugin (Intel integrated and Arc GPUs; needs the OpenCL runtime / Intel GPU driver)",
    "NPU": "the NPU plugin (Intel Core Ultra NPUs; needs the NPU driver)",
    "AUTO": "the AUTO plugin (picks among the devices present)",
}
#: ``precision=`` values: an INFERENCE_PRECISION_HINT, or "default" (the device's own choice: bf16 on AMX CPUs)
PRECISIONS = ("f32", "bf16", "f16", "default")
#: runtime layer types that mean OpenVINO fused an MoE block (CPU GatherMatmul kernels, GPU MOE kernels)
FUSED_MOE_LAYER_TYPES = ("MOE", "MOECompressed", "MOE3GemmFusedCompressed", "GatherMatmul", "GatherMatmulCompressed")
_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
_OUT_NAME = re.compile(r"^(logits|present\.\d+\.(key|value)|routing\.\d+\.(selected|logits))$")

_core: openvino.Core | None = None


def core() -> openvino.Core:
    """The process-wide ``openvino.Core`` (created on first use)."""
    global _core
    if _core is None:
        _core = openvino.Core()
    return _core


def _family(target: str) -> str:
    t = target.upper()
    if t not in TARGETS:
        raise InvalidInputError(f"unknown OpenVINO target {target!r}; choose one of {', '.join(TARGETS)}")
    return t


def _present() -> list[str]:
    return list(core().available_devices)


def _describe(dev: str) -> str:
    try:
        return f"{dev} ({core().get_property(dev, 'FULL_DEVICE_NAME')})"
    except RuntimeError:
        return dev


def devices(target: str) -> list[str]:
    """Devices of the target family present here (``"GPU.0 (Intel(R) Arc(TM) ...)"``); [] when there are none."""
    fam = _family(target)
    present = _present()
    if fam == "AUTO":
        return [_describe(d) for d in present]
    return [_describe(d) for d in present if d.split(".")[0] == fam]


def _resolve_device(fam: str, device: str | None) -> str:
    """The device string to compile for, checked against what this machine has."""
    present = _present()
    dev = fam if device is None else device
    if not isinstance(dev, str) or not dev:
        raise InvalidInputError(f"device={device!r} must be a device name such as 'GPU.1'")
    if fam == "AUTO":
        if not dev.upper().startswith("AUTO"):
            raise InvalidInputError(f"device={dev!r} is not an AUTO device; pass 'AUTO' or 'AUTO:GPU,CPU'")
        if not present:
            raise RuntimeNotAvailableError("openvino:auto has no device to choose from: OpenVINO sees none here")
        return dev
    if dev.split(".")[0].upper() != fam:
        raise InvalidInputError(
            f"device={dev!r} is not a {fam} device; for openvino:{fam.lower()} pass {fam!r} or {fam + '.1'!r} "
            f"(devices here: {', '.join(present) or 'none'})"
        )
    same = [d for d in present if d.split(".")[0] == fam]
    ok = dev in present or (dev == fam and same) or (dev == f"{fam}.0" and fam in present)
    if not ok:
        fams = {d.split(".")[0] for d in present}
        usable = [f"openvino:{f.lower()}" for f in TARGETS if f != "AUTO" and f in fams]
        raise RuntimeNotAvailableError(
            f"openvino:{fam.lower()} device {dev!r} is not available in OpenVINO {openvino.__version__.split('-')[0]}: "
            f"it needs {TARGETS[fam]}. Devices here: {', '.join(present) or 'none'}; usable runtimes: "
            f"{', '.join(usable + (['openvino:auto'] if present else [])) or 'none'}"
        )
    return dev


def release_weight_pages(path: Path) -> float:
    """Drop from this process's resident memory the pages of the model's weight file that OpenVINO mapped read-only
    (``.bin`` of IR, ``.onnx.data`` / ``.onnx`` of ONNX); returns the MB released (0 off Linux).

    OpenVINO memory-maps the weights (``ENABLE_MMAP``) and the CPU plugin copies most FullyConnected weights into
    its own packed layout at compile time and on the first inference; the mapped originals it read stay resident
    beside the copies (1.6x the weights after compile). ``madvise(MADV_DONTNEED)`` on a read-only file mapping only
    forgets the pages: one read again faults back from the file, identical, so results cannot change (tested);
    only pages still used (embeddings, unpacked weights) come back. A mapping with write permission is never
    touched.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return 0.0
    stem = os.path.realpath(path.with_suffix(""))  # /x/m.xml -> /x/m: m.bin, m.xml; /x/m.onnx -> m.onnx.data, m.onnx
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madv_dontneed = 4
    released = 0
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    for line in maps:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or "w" in parts[1] or not parts[5].startswith(stem + "."):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if libc.madvise(start, end - start, madv_dontneed) == 0:
            released += end - start
        else:
            log.debug("madvise(%s) failed: errno %d", parts[5], ctypes.get_errno())
    return released / 1e6


def _dtype(et: Any) -> np.dtype:
    try:
        return np.dtype(et.to_dtype())
    except (RuntimeError, TypeError, AttributeError):
        return np.dtype(np.float32)


def _name(port: Any) -> str:
    names = sorted(port.get_names())
    good = [n for n in names if _OUT_NAME.match(n) or n in ("input_ids", "attention_mask") or n.startswith("past.")]
    return (good or names or [port.get_any_name()])[0]


def _onnx_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of an ONNX file (None without the onnx package); a file that does not parse is refused here,
    before OpenVINO tries every frontend on it (and its TensorFlow one prints parse errors on stderr)."""
    try:
        import onnx
    except ImportError:  # metadata of an ONNX file needs the onnx package; the model runs without it
        return None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # google.protobuf DecodeError
        raise CheckpointError(f"{str(path)!r} is not a readable ONNX model ({type(e).__name__}); pass a file "
                              "written by curmoe export") from None
    return {p.key: p.value for p in proto.metadata_props}


def _check_ir(path: Path) -> None:
    """An IR .xml is XML whose root is ``<net``: refuse anything else before OpenVINO's frontends see it."""
    head = path.read_bytes()[:4096] if path.is_file() else b""
    if b"<net" not in head:
        raise CheckpointError(f"{str(path)!r} is not OpenVINO IR (no <net> element); pass an .xml written by "
                              "curmoe export --format openvino")


def _metadata(path: Path, model: Any, onnx_meta: dict[str, str] | None) -> dict[str, str]:
    if path.suffix == ".xml":
        if not model.has_rt_info(["curmoe"]):
            return {}
        return {k: v.astype(str) for k, v in model.get_rt_info()["curmoe"].items()}
    return onnx_meta or {}


class OpenVINOSession(SpecSession):
    """An OpenVINO ``CompiledModel`` and one infer request behind the curmoe :class:`Session` interface."""

    def __init__(self, path: Path, target: str, device: str | None, precision: str, options: SessionOptions,
                 performance_hint: str | None, properties: dict[str, Any] | None, extra_outputs: list[str] | None,
                 name: str, stateful: bool = False) -> None:
        self.path, self.options, self._name = path, options, name
        self.family = _family(target)
        self.device = _resolve_device(self.family, device)
        self.precision = precision
        onnx_meta = _onnx_metadata(path) if path.suffix == ".onnx" else _check_ir(path)
        try:
            model = core().read_model(os.fspath(path))
        except RuntimeError as e:  # OpenVINO's "Unable to read the model" for a corrupt or foreign file
            raise CheckpointError(f"OpenVINO cannot read {str(path)!r} as a model; pass an ONNX file or IR .xml "
                                  "written by curmoe export") from None
        self._meta = _metadata(path, model, onnx_meta)
        if extra_outputs:
            have = {n for op in model.get_ops() for o in op.outputs() for n in o.get_names()}
            missing = [n for n in extra_outputs if n not in have]
            if missing:
                raise InvalidInputError(f"extra_outputs {missing} are not tensors of the model (OpenVINO may have "
                                        "removed unused ones); export with routing_outputs=True instead")
            model.add_outputs(list(extra_outputs))
        self.stateful = stateful
        self._past_len: int | None = None  # tokens held in the state (stateful only); None = unknown, reset first
        self._batch = 0  # batch of the sequences held
        if stateful:
            from curmoe.exporters.genai import make_stateful_ir

            if any(i.get_any_name() == "beam_idx" for i in model.inputs) or model.get_sinks():
                raise InvalidInputError(f"{str(path)!r} is already stateful; load it with stateful=False")
            make_stateful_ir(model, beam_idx=False)  # InvalidInputError for a graph exported without KV cache
        config: dict[str, Any] = {}
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        if options.threads is not None:
            config["INFERENCE_NUM_THREADS"] = options.threads
        if performance_hint is not None:
            config["PERFORMANCE_HINT"] = performance_hint
        config.update(properties or {})
        self._config = config
        self._compiled = core().compile_model(model, self.device, config)
        del model  # the compiled model holds what it needs; the read model's constants go now, not with the session
        self.released_mb = release_weight_pages(path) if options.low_memory else 0.0
        self._release_after_run = options.low_memory  # the first inference packs the dynamic-shape FCs: again then
        self._req = self._compiled.create_infer_request()
        self._inputs = [IOSpec(_name(i), tuple(d.get_length() if d.is_static else None for d in i.get_partial_shape()),
                               _dtype(i.get_element_type())) for i in self._compiled.inputs]
        self._outputs = [IOSpec(_name(o), tuple(d.get_length() if d.is_static else None for d in o.get_partial_shape()),
                                _dtype(o.get_element_type())) for o in self._compiled.outputs]
        self._output_names = [o.name for o in self._outputs]
        self._in_ports = list(zip(self._inputs, self._compiled.inputs))
        self._out_ports = dict(zip(self._output_names, self._compiled.outputs))

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        by_input, names = self._check_feeds(feeds, outputs)
        if self.stateful:
            self._sync_state(by_input["input_ids"], by_input["attention_mask"])
        req = self._req
        for spec, port in self._in_ports:
            # zero-copy: the tensor points into the array, which by_input keeps alive through the synchronous infer
            # below. OpenVINO shares only writeable memory: a read-only feed (np.broadcast_to, a frozen array) is
            # copied, and the copy kept in by_input for the same reason
            if not by_input[spec.name].flags.writeable:
                by_input[spec.name] = by_input[spec.name].copy()
            req.set_tensor(port, openvino.Tensor(by_input[spec.name], shared_memory=True))
        try:
            req.infer()
        except BaseException:
            self._past_len = None  # the state may be half-updated: the next call must start a new sequence
            raise
        if self.stateful:
            self._past_len = by_input["attention_mask"].shape[1]
        if self._release_after_run:
            self._release_after_run = False
            self.released_mb += release_weight_pages(self.path)
        # copied out: the request reuses its output buffers on the next call
        return {n: req.get_tensor(self._out_ports[n]).data.copy() for n in names}

    def _sync_state(self, ids: np.ndarray, mask: np.ndarray) -> None:
        """Start a new sequence (mask as long as ids) or check that the mask continues the one held."""
        if ids.ndim != 2 or mask.shape[:1] != ids.shape[:1] or mask.ndim != 2:
            raise InvalidInputError(f"input_ids {ids.shape} and attention_mask {mask.shape} must be (B, T) and "
                                    "(B, P + T) with the same B")
        past = mask.shape[1] - ids.shape[1]
        if past == 0:
            self._req.reset_state()
            self._past_len, self._batch = 0, ids.shape[0]
        elif past != self._past_len or ids.shape[0] != self._batch:
            held = "no sequence" if self._past_len is None else f"{self._past_len} tokens x batch {self._batch}"
            fix = ("one as long as input_ids starts a new sequence" if self._past_len is None else
                   f"feed batch {self._batch} with a mask of {self._past_len} + new tokens, or one as long as input_ids "
                   "to start a new sequence")
            raise InvalidInputError(
                f"this stateful session holds {held} of KV cache but attention_mask has {mask.shape[1]} columns for "
                f"{ids.shape[1]} new tokens of batch {ids.shape[0]} (past {past}); {fix}"
            )

    def reset(self) -> None:
        """Forget the KV cache of a stateful session (the next call must start a new sequence)."""
        if self.stateful:
            self._req.reset_state()
            self._past_len = None

    def info(self) -> RuntimeInfo:
        extra: dict[str, Any] = {"openvino": openvino.__version__, "precision_requested": self.precision,
                                 "config": {k: str(v) for k, v in self._config.items()}, "stateful": self.stateful,
                                 "released_weight_mb": round(self.released_mb, 1)}
        try:
            extra["execution_devices"] = list(self._compiled.get_property("EXECUTION_DEVICES"))
            hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
            extra["precision"] = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        except RuntimeError:  # AUTO does not expose the hint of the device it picked
            pass
        first = (extra.get("execution_devices") or [self.device])[0]
        extra["full_device_name"] = _describe(first if self.family == "AUTO" else self.device)
        return RuntimeInfo("openvino", openvino.__version__.split("-")[0], f"OpenVINO {self.family}", self.device,
                           self._name, self.options.threads, self.options.optimization, extra)

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._meta)

    # Introspection -----------------------------------------------------------------------------------------------
    def profiling_info(self) -> list[Any]:
        """OpenVINO's per-node timings of the last ``run`` (``openvino.ProfilingInfo``: node_name, node_type,
        exec_type, status, real_time); load with ``properties={"PERF_COUNT": True}`` or it is empty."""
        return list(self._req.profiling_info)

    def layer_types(self) -> dict[str, int]:
        """Count of the compiled (runtime) model's layer types, e.g. {"FullyConnected": 35, "RMS": 5, ...}."""
        rt = self._compiled.get_runtime_model()
        return dict(Counter(op.get_rt_info()["layerType"].astype(str) for op in rt.get_ordered_ops()))

    def moe_fusion(self) -> dict[str, Any]:
        """Whether OpenVINO fused MoE blocks: ``{"fused": bool, "fused_layers": {type: n}, "layer_types": {...}}``.

        Fused means a layer of one of :data:`FUSED_MOE_LAYER_TYPES` (or any type naming MoE / GatherMatmul) is in
        the runtime model; otherwise each expert's MatMuls run as separate FullyConnected layers.
        """
        types = self.layer_types()
        fused = {t: n for t, n in types.items() if t in FUSED_MOE_LAYER_TYPES or "moe" in t.lower()
                 or "gathermatmul" in t.lower()}
        return {"fused": bool(fused), "fused_layers": fused, "layer_types": types}


def load(path: str | os.PathLike[str], target: str, *, device: str | None = None, precision: str = "f32",
         threads: int | None = None, optimization: str = "all", performance_hint: str | None = None,
         properties: dict[str, Any] | None = None, extra_outputs: list[str] | None = None,
         name: str | None = None, low_memory: bool = False, stateful: bool = False) -> OpenVINOSession:
    """Compile an ONNX file or OpenVINO IR (.xml) for an OpenVINO device.

    Args:
        path: a .onnx file (read by OpenVINO's ONNX frontend) or an IR .xml (its .bin next to it).
        target: "CPU", "GPU", "NPU" or "AUTO" (the registry's ``openvino:cpu`` ... names).
        device: one device of the family ("GPU.1", "AUTO:GPU,CPU"); None = the family's default.
        precision: INFERENCE_PRECISION_HINT, one of :data:`PRECISIONS` (default "f32", what validation needs).
        threads: INFERENCE_NUM_THREADS (CPU only; None = OpenVINO's default).
        optimization: only "all": OpenVINO has no switch for its graph transformations.
        performance_hint: "LATENCY", "THROUGHPUT" or "CUMULATIVE_THROUGHPUT" (None = the device's default).
        properties: any further OpenVINO properties, passed to ``compile_model`` as given (they win).
        extra_outputs: tensor names to add as outputs (e.g. "routing.0.selected").
        name: the registry name, recorded in ``info()``.
        low_memory: after compiling, release the memory-mapped weight pages the CPU plugin has copied into its
            packed layout (:func:`release_weight_pages`; Linux): one copy of the weights resident instead of ~1.6.
            ``curmoe.runtimes.validate`` turns it on for large models.
        stateful: keep the KV cache inside the compiled model (inputs input_ids and attention_mask only; a mask as
            long as input_ids starts a new sequence, a longer one must continue the sequence held). For decoding
            loops; ``curmoe.runtimes.validate`` checks the graph's own past/present cache with stateful=False.

    Raises:
        curmoe.InvalidInputError: unknown target, device of another family, bad option or file type.
        curmoe.runtimes.RuntimeNotAvailableError: the device is not present (the message lists those that are).
    """
    fam = _family(target)
    opts = SessionOptions(threads, optimization, bool(low_memory))  # low_memory: release_weight_pages after compile
    if optimization != "all":
        raise InvalidInputError(f"optimization={optimization!r}: OpenVINO has no graph optimisation levels; leave "
                                "optimization='all'")
    if threads is not None and fam not in ("CPU", "AUTO"):
        raise InvalidInputError(f"threads={threads} applies to the CPU device, not openvino:{fam.lower()}")
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision={precision!r} is unknown; pass one of {PRECISIONS}")
    if performance_hint is not None and performance_hint not in _HINTS:
        raise InvalidInputError(f"performance_hint={performance_hint!r} is unknown; pass one of {_HINTS} or None")
    if properties is not None and not isinstance(properties, dict):
        raise InvalidInputError(f"properties must be a dict, got {type(properties).__name__}")
    if not isinstance(stateful, bool):
        raise InvalidInputError(f"stateful={stateful!r} must be True or False")
    p = Path(path)
    if p.suffix not in (".onnx", ".xml"):
        raise InvalidInputError(f"{str(p)!r} is neither an ONNX file (.onnx) nor OpenVINO IR (.xml)")
    return OpenVINOSession(p, fam, device, precision, opts, performance_hint, properties, extra_outputs,
                           name or f"openvino:{fam.lower()}", stateful)
