"""Streamed compression: ``compress_checkpoint(src, dst, config)`` for checkpoints that do not fit in memory.

The same maths as :func:`curmoe.compress` (the same per-unit handler, ``_compress_unit``), with a different
memory plan:

- tensors are read from ``src`` (``model.safetensors`` or shards + ``model.safetensors.index.json``) one at a time
  (``_shards.py``); without calibration tokens only one expert matrix and its factors are held at a time;
- with calibration tokens, one layer is held: its weights (in the compute dtype) and the hidden states (B, T, d)
  of the calibration text; the statistics of layer l come from :func:`calibrate_layer` on the hidden states
  entering l, which are the dense model's (one-pass) or the compressed model's (``sequential=True``), exactly
  as the in-memory path computes them, batch for batch;
- the output is written unit by unit into ``<dst>.partial``: ``globals.safetensors`` (embedding, final norm,
  head), ``layers.{l}.safetensors`` (attention, norms, router) and one shard per expert
  (``layers.{l}.experts.{e}.safetensors``), each written to a temporary file, fsynced and renamed; a manifest
  (``_manifest.py``) records every finished unit with its checksum, so a killed run resumes (hidden states are
  recomputed from the source, or from the finished shards for sequential calibration). At the end the index and
  ``config.json`` are written and the folder is renamed to ``dst``.

Floats are stored in the source dtype (bfloat16 stays bfloat16, rounded to nearest even; float16 stays float16);
the tensors equal those ``curmoe.compress(curmoe.load(src), config).save(dst)`` writes, bit for bit, and
``config.json`` equals its config except ``compression.time_s`` (and the in-memory path's calibration-cache note).
Global allocation needs every layer's statistics at once and is refused here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from curmoe.common.errors import CheckpointError, InvalidInputError
from curmoe.decompose import CalibStats
from curmoe.common.io import read_json
from curmoe.compress._calibration import LayerCalibration, calibrate_layer, check_calib_ids
from curmoe.compress._compress import _METHODS, _SPEC_KEYS, Config, _compress_unit, _compressed_config, _units
from curmoe.compress._manifest import Manifest
from curmoe.compress._shards import (
    INDEX_FILE,
    SafetensorsSource,
    from_bf16_bits,
    read_safetensors,
    round_bf16,
    tensor_infos,
    to_bf16_bits,
    write_safetensors,
)
from curmoe.reference import (
    TOKENIZER_SIDE_FILES,
    CURLinear,
    DenseLinear,
    Linear,
    Model,
    ModelConfig,
    NeuronLinear,
    SVDLinear,
)
from curmoe.reference.names import expected_tensors, expert_keys

__all__ = ["compress_checkpoint", "read_sharded"]

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the shard layout or the fingerprint changes: old partial runs then refuse to resume
_STORAGE = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


class _LayerModel(Model):
    """A :class:`Model` holding one layer's tensors and experts: enough for ``block(l)``, ``calibrate_layer`` and
    ``_compress_unit``; the compute dtype is given, since the embedding is not held."""

    def __init__(self, config: ModelConfig, tensors: dict[str, np.ndarray], experts: dict[str, Linear],
                 dtype: np.dtype, storage_dtype: np.dtype | None) -> None:
        super().__init__(config, tensors, experts, None, storage_dtype)
        self._dtype = np.dtype(dtype)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype


def _linear_from(spec: dict[str, Any] | None, t: dict[str, np.ndarray]) -> Linear:
    """The Linear a spec (``config.factors`` entry) and its tensors describe (as ``curmoe.load`` builds it)."""
    if spec is None:
        return DenseLinear(t["weight"])
    if spec["kind"] == "svd":
        return SVDLinear(t["A"], t["B"])
    if spec["kind"] == "neuron":
        return NeuronLinear(t["weight"], t["neurons"], spec["role"])
    return CURLinear(t["C"], None if spec.get("folded") else t["U"], t["R"], t["rows"], t["cols"])


def _spec(rec: dict[str, Any]) -> dict[str, Any]:
    return {f: rec[f] for f in _SPEC_KEYS if f in rec}


class _Job:
    """One streamed compression: source, storage, manifest, and the unit layout."""

    def __init__(self, src: Path, work: Path, config: Config, cfg: ModelConfig, source: SafetensorsSource,
                 ids: np.ndarray | None, dtype: np.dtype | None, batch_size: int, progress: bool) -> None:
        self.src, self.work, self.config, self.cfg, self.source = src, work, config, cfg, source
        self.ids, self.batch_size, self.progress = ids, batch_size, progress
        self.method = _METHODS[type(config)]
        self.storage = source.info["embed.weight"].dtype  # "BF16", "F16", "F32" or "F64"
        default = np.float32 if self.storage in ("BF16", "F16") else _STORAGE[self.storage]
        self.dtype = np.dtype(dtype) if dtype is not None else np.dtype(default)
        keys = expert_keys(cfg)
        self.prefixes: dict[int, list[str]] = {}
        for k in keys:
            lst = self.prefixes.setdefault(int(k.split(".")[1]), [])
            if k.rsplit(".", 1)[0] not in lst:
                lst.append(k.rsplit(".", 1)[0])
        self.todo = {k for v in _units_of(cfg, config, self.method.unit).values() for k in v}  # matrices/experts
        names = [n for n in expected_tensors(cfg) if n.rsplit(".", 1)[0] not in keys]
        self.layer_tensors: dict[int, list[str]] = {}
        self.global_tensors = []
        for n in names:
            if n.startswith("layers."):
                self.layer_tensors.setdefault(int(n.split(".")[1]), []).append(n)
            else:
                self.global_tensors.append(n)
        self.manifest: Manifest | None = None

    # Storage -------------------------------------------------------------------------------------------------
    def _store(self, a: np.ndarray) -> tuple[np.ndarray, bool]:
        """A compute-dtype tensor as stored: (array, is bf16 bits)."""
        if a.dtype.kind in "iu":
            return a.astype(np.int64, copy=False), False
        if self.storage == "BF16":
            return to_bf16_bits(a), True
        return a.astype(_STORAGE[self.storage], copy=False), False

    def _copy(self, name: str) -> tuple[np.ndarray, bool]:
        """A source tensor copied as stored (floats in the storage dtype, like ``Model.save``)."""
        raw = self.source.raw(name)
        t = self.source.info[name].dtype
        if t == "BF16" or raw.dtype.kind in "iu":
            return (raw, True) if t == "BF16" else (raw.astype(np.int64, copy=False), False)
        if self.storage == "BF16":
            return to_bf16_bits(raw), True
        return raw.astype(_STORAGE[self.storage], copy=False), False

    def write_shard(self, unit: str, tensors: dict[str, tuple[np.ndarray, bool]]) -> str:
        """Write one unit's shard atomically (temporary file, fsync, rename); its file name. A retried or resumed
        unit rewrites the same temporary name, so a half-written one never survives."""
        file = f"{unit}.safetensors"
        tmp = self.work / f".{file}.tmp"
        write_safetensors(tmp, {n: a for n, (a, _) in tensors.items()}, bf16={n for n, (_, b) in tensors.items() if b},
                          metadata={"format": "curmoe", "config_version": str(self.cfg.version)})
        os.replace(tmp, self.work / file)
        return file

    def _write(self, unit: str, tensors: dict[str, tuple[np.ndarray, bool]], **fields: Any) -> None:
        """Write one unit's shard atomically, then record it in the manifest."""
        assert self.manifest is not None
        self.manifest.add(unit, self.write_shard(unit, tensors), tensors=sorted(tensors), **fields)

    # Layers ---------------------------------------------------------------------------------------------------
    def _dense_layer(self, l: int) -> _LayerModel:
        """Layer l as in the source: its tensors and dense experts, in the compute dtype."""
        t = {n: self.source.read(n, self.dtype) for n in self.layer_tensors.get(l, [])}
        return _LayerModel(self.cfg, t, self._dense_experts(self.prefixes.get(l, [])), self.dtype, self._storage_np)

    def _dense_experts(self, prefixes: list[str]) -> dict[str, Linear]:
        return {f"{p}.{m}": DenseLinear(self.source.read(f"{p}.{m}.weight", self.dtype))
                for p in prefixes for m in ("gate", "up", "down") if f"{p}.{m}.weight" in self.source.info}

    def spec(self) -> _WorkerSpec:
        """What a worker process needs to rebuild this job (paths and configs, no arrays)."""
        return _WorkerSpec(self.src, self.work, self.config, self.cfg, self.dtype, self.batch_size)

    def finish_expert(self, model: _LayerModel | None, p: str, lc: LayerCalibration | None
                      ) -> tuple[dict[str, Linear], UnitResult]:
        """Compress expert ``p`` and write its shard (not yet in the manifest): its Linears as stored, and the
        result the manifest records. The serial path and every distributed worker run exactly this."""
        lins, recs, tensors = self._expert(model, p, lc)
        params = {k: int(lin.n_params) for k, lin in lins.items()}
        return lins, UnitResult(p, self.write_shard(p, tensors), sorted(tensors), recs, params)

    def record(self, res: UnitResult) -> None:
        """Append a finished unit (its shard already in place) to the manifest."""
        assert self.manifest is not None
        self.manifest.add(res.unit, res.file, tensors=res.tensors, records=res.records, params=res.params)

    @property
    def _storage_np(self) -> np.dtype | None:
        # bf16 has no NumPy dtype: its rounding is applied in _finish_linear instead of Model's _stored.
        return None if self.storage == "BF16" else np.dtype(_STORAGE[self.storage])

    def _finish_linear(self, lin: Linear, spec: dict[str, Any] | None) -> Linear:
        """The compressed Linear as its file gives it back (bf16: rounded through bf16)."""
        if self.storage != "BF16":
            return lin
        return _linear_from(spec, {n: round_bf16(a).astype(self.dtype) if a.dtype.kind == "f" else a
                                   for n, a in lin.tensors().items()})

    def _compressed_experts(self, l: int, skip: set[str]) -> dict[str, Linear]:
        """Layer l's experts read back from the finished shards (those not in ``skip``: finished before a resume)."""
        assert self.manifest is not None
        out: dict[str, Linear] = {}
        for p in self.prefixes.get(l, []):
            if any(k.startswith(f"{p}.") for k in skip):
                continue
            e = self.manifest.done(p)
            assert e is not None
            stored = read_safetensors(self.work / e["file"])
            recs = e["records"]
            for m in ("gate", "up", "down"):
                key = f"{p}.{m}"
                t = {n.rsplit(".", 1)[1]: (from_bf16_bits(a) if dt == "BF16" else a)
                     for n, (dt, a) in stored.items() if n.rsplit(".", 1)[0] == key}
                if not t:
                    continue
                t = {n: a.astype(np.int64) if a.dtype.kind in "iu" else a.astype(self.dtype) for n, a in t.items()}
                out[key] = _linear_from(_spec(recs[key]) if key in recs else None, t)
        return out

    def _expert(self, model: _LayerModel | None, p: str, lc: LayerCalibration | None
                ) -> tuple[dict[str, Linear], dict[str, dict[str, Any]], dict[str, tuple[np.ndarray, bool]]]:
        """Compress (or copy) expert ``p``: (its Linears as stored, per-matrix records, tensors to write)."""
        mats = [m for m in ("gate", "up", "down") if f"{p}.{m}.weight" in self.source.info]
        new: dict[str, Linear] = {}
        recs: dict[str, dict[str, Any]] = {}
        if self.method.unit == "expert" and p in self.todo:
            assert model is not None  # expert methods are activation-aware: the layer is loaded
            lins, r = _compress_unit(model, self.config, self.method, p, lc, None, None)
            new |= lins
            recs |= r
        for m in mats:
            key = f"{p}.{m}"
            if key in new:
                continue
            if self.method.unit == "matrix" and key in self.todo:
                one = model if model is not None else _LayerModel(
                    self.cfg, {}, {key: DenseLinear(self.source.read(f"{key}.weight", self.dtype))}, self.dtype,
                    self._storage_np)
                lins, r = _compress_unit(one, self.config, self.method, key, lc, None, None)
                new |= lins
                recs |= r
            else:
                new[key] = model.experts[key] if model is not None else DenseLinear(self.source.read(f"{key}.weight", self.dtype))
        out: dict[str, Linear] = {}
        tensors: dict[str, tuple[np.ndarray, bool]] = {}
        for key, lin in new.items():
            out[key] = self._finish_linear(lin, _spec(recs[key]) if key in recs else None)
            for n, a in lin.tensors().items():
                tensors[f"{key}.{n}"] = self._copy(f"{key}.{n}") if key not in recs else self._store(a)
        return out, recs, tensors

    def _advance(self, model: _LayerModel, l: int, hidden: np.ndarray) -> np.ndarray:
        assert self.ids is not None
        bs, ids = self.batch_size, self.ids
        return np.concatenate([model.block(l, hidden[s : s + bs], ids[s : s + bs]) for s in range(0, ids.shape[0], bs)])

    def run(self, pool: Pool | None = None) -> None:
        """Every unfinished unit, in order; with a ``pool`` the experts run as its tasks (the driver still
        calibrates and advances the hidden states layer by layer, and writes the non-expert shards)."""
        assert self.manifest is not None
        mf, cfg = self.manifest, self.cfg
        units = ["globals"] + [u for l in range(cfg.n_layers) for u in [f"layers.{l}", *self.prefixes.get(l, [])]]
        bar = tqdm(total=len(units), desc=f"compress ({self.config.method}, streamed)", unit="unit",
                   disable=not self.progress)
        bar.update(sum(mf.done(u) is not None for u in units))
        if mf.done("globals") is None:
            self._write("globals", {n: self._copy(n) for n in self.global_tensors})
            bar.update(1)
        hidden = None
        if self.ids is not None:
            hidden = self.source.read("embed.weight", self.dtype)[self.ids]  # (B, T, d)
        for l in range(cfg.n_layers):
            later = [u for u in units[units.index(f"layers.{l}") :] if mf.done(u) is None]
            if not later:
                break
            mine = [u for u in [f"layers.{l}", *self.prefixes.get(l, [])] if mf.done(u) is None]
            if mf.done(f"layers.{l}") is None:
                self._write(f"layers.{l}", {n: self._copy(n) for n in self.layer_tensors.get(l, [])})
                bar.update(1)
            model = lc = None
            if hidden is not None:
                model = self._dense_layer(l)
                experts_todo = [p for p in self.prefixes.get(l, []) if mf.done(p) is None]
                if experts_todo and any(p in self.todo or any(f"{p}.{m}" in self.todo for m in ("gate", "up", "down"))
                                        for p in experts_todo):
                    lc = calibrate_layer(model, l, hidden, self.ids, batch_size=self.batch_size, progress=self.progress)
            compressed: dict[str, Linear] = {}
            keep = hidden is not None and self.config.sequential
            todo = [p for p in self.prefixes.get(l, []) if p in mine]
            if pool is not None and todo:  # distributed: one task per expert, statistics via the object store
                shared = pool.put(_shared_calibration(lc)) if lc is not None else None
                for p in todo:
                    finished = pool.submit(p, pool.put(_expert_calibration(lc, p)) if lc is not None else None, shared)
                    self._record_all(finished, bar)
                del shared
            for p in todo if pool is None else []:
                lins, res = self.finish_expert(model, p, lc)
                if keep:  # only sequential calibration runs this layer again, compressed; otherwise drop them now
                    compressed |= lins
                self.record(res)
                bar.update(1)
            if hidden is not None and [u for u in units[units.index(f"layers.{l}") + 1 :] if mf.done(u) is None]:
                assert model is not None
                if self.config.sequential:  # layer l+1 sees this layer compressed, as the file holds it
                    if pool is not None:  # every expert of layer l in its shard (read back below)
                        self._record_all(pool.drain(), bar)
                    done = self._compressed_experts(l, set(compressed))
                    model = _LayerModel(cfg, model.tensors, done | compressed, self.dtype, self._storage_np)
                hidden = self._advance(model, l, hidden)
            del model, lc
        if pool is not None:
            self._record_all(pool.drain(), bar)
        bar.close()

    def _record_all(self, finished: list[UnitResult], bar: tqdm) -> None:
        for res in finished:
            self.record(res)
            bar.update(1)


@dataclass(frozen=True)
class UnitResult:
    """One finished expert unit as the manifest records it: its shard (already renamed into place), the names
    of the tensors it holds, the per-matrix compression records and parameter counts."""

    unit: str
    file: str
    tensors: list[str]
    records: dict[str, dict[str, Any]]
    params: dict[str, int]


@dataclass(frozen=True)
class _WorkerSpec:
    """A streamed job as a worker rebuilds it: paths and configs only (pickled once, shared by every task)."""

    src: Path
    work: Path
    config: Config
    cfg: ModelConfig
    dtype: np.dtype
    batch_size: int

    def job(self) -> _Job:
        return _Job(self.src, self.work, self.config, self.cfg, SafetensorsSource(self.src), None, self.dtype,
                    self.batch_size, False)


class Pool(Protocol):
    """Where expert units run when they do not run in the driver (``_ray.RayPool``)."""

    def put(self, obj: Any) -> Any:
        """Store ``obj`` once for several tasks; returns what :meth:`submit` accepts in its place."""

    def submit(self, unit: str, stats: Any, shared: Any) -> list[UnitResult]:
        """Queue ``run_unit(spec, unit, stats, shared)``; returns the units that finished meanwhile."""

    def drain(self) -> list[UnitResult]:
        """Wait for every queued unit; returns those not yet returned."""


def _expert_calibration(lc: LayerCalibration, prefix: str) -> LayerCalibration:
    """The part of a layer's statistics that only expert ``prefix`` reads (its matrices' inputs, its hidden
    statistics); the layer-wide fallback (block Gram, sample) travels separately, once per layer."""
    own = lambda k: k == prefix or k.startswith(f"{prefix}.")
    return LayerCalibration(lc.layer, {k: v for k, v in lc.inputs.items() if own(k)},
                            {k: v for k, v in lc.hidden.items() if own(k)}, CalibStats(), [])


def _shared_calibration(lc: LayerCalibration) -> tuple[CalibStats, list[np.ndarray]]:
    return lc.block, lc.sample


def run_unit(spec: _WorkerSpec, prefix: str, stats: LayerCalibration | None,
             shared: tuple[CalibStats, list[np.ndarray]] | None) -> UnitResult:
    """One expert unit in a worker process: read its weights from the source, compress them with the statistics
    it was sent, write its shard into the work folder; the driver appends the manifest line."""
    job = spec.job()
    lc = None
    model = None
    if stats is not None:
        assert shared is not None
        lc = replace(stats, block=shared[0], sample=list(shared[1]))
        model = _LayerModel(job.cfg, {}, job._dense_experts([prefix]), job.dtype, job._storage_np)
    return job.finish_expert(model, prefix, lc)[1]


def _units_of(cfg: ModelConfig, config: Config, unit: str) -> dict[int, list[str]]:
    """``_units`` needs only the model's config: a stand-in with no tensors."""
    return _units(Model(cfg, {}, {}), config, unit)


def _counts(job: _Job, per_unit: list[dict[str, Any]]) -> tuple[int, int, int, int]:
    """(expert params before, after, all params before, after), counted from shapes and the manifest."""
    shared = job.config.include_shared
    keys = expert_keys(job.cfg)
    counted = lambda k: ".experts." in k or (shared and ".shared." in k)
    before = sum(m * n for k, (m, n) in keys.items() if counted(k))
    all_before = sum(int(np.prod(s)) for n, (s, _) in expected_tensors(job.cfg).items()
                     if n.rsplit(".", 1)[0] not in keys) + sum(m * n for m, n in keys.values())
    params = {k: v for e in per_unit for k, v in e.get("params", {}).items()}
    after = sum(v for k, v in params.items() if counted(k))
    rest = all_before - sum(m * n for m, n in keys.values())
    return before, after, all_before, rest + sum(params.values())


def _fingerprint(src: Path, cfg: ModelConfig, config: Config, source: SafetensorsSource, ids: np.ndarray | None,
                 dtype: np.dtype, batch_size: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "config": {"type": type(config).__name__, **asdict(config)},
        "model_config": json.loads(cfg.to_json()),
        "source": source.fingerprint(),
        "calib_ids": None if ids is None else {"shape": list(ids.shape),
                                               "sha256": hashlib.sha256(np.ascontiguousarray(ids, np.int64)).hexdigest()},
        "compute_dtype": str(dtype),
        "batch_size": batch_size if ids is not None else None,
    }


def _fp_hash(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def compress_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str], config: Config, *,
                        calib_ids: np.ndarray | None = None, batch_size: int = 8, dtype: np.dtype | None = None,
                        force: bool = False, progress: bool = True, workers: int | None = None,
                        ray_address: str | None = None) -> ModelConfig:
    """Compress the checkpoint folder ``src`` into the sharded folder ``dst`` without holding the model in memory.

    Resumable: rerunning the same call after an interruption (even ``kill -9``) finishes the remaining units from
    ``<dst>.partial`` and gives the same bytes; a different config or input refuses to resume. Returns the
    compressed model's config (its ``compression`` record as in :func:`curmoe.compress`).

    Args:
        src: a curmoe model folder (config.json + model.safetensors) or the same config.json with safetensors
            shards and ``model.safetensors.index.json``; float16, bfloat16, float32 or float64.
        config: ``CURConfig``, ``SVDConfig`` or ``NeuronConfig`` with ``allocation="uniform"``.
        calib_ids: (B, T) calibration token ids (required for activation-aware configs).
        dtype: the compute dtype (default float32 for 16-bit files, else the file's); floats are stored in the
            source dtype.
        force: replace an existing ``dst`` (otherwise refused, unless it is this very run already finished).
        workers: run the expert units as Ray tasks on this many workers (a local Ray cluster of ``workers``
            CPUs unless Ray is already initialised or ``ray_address`` is given); needs ``pip install
            'curmoe[ray]'``. The output is bit-identical to the serial run (``workers=None``), and a run
            interrupted with or without workers resumes with or without them.
        ray_address: join the Ray cluster at this address (``"auto"``, ``"ray://host:10001"``) instead of
            starting one; ``src`` and ``dst`` must be visible at the same paths on every node.
    """
    src, dst = Path(src), Path(dst)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1):
        raise InvalidInputError(f"workers={workers!r} must be a positive integer (CLI: --workers N)")
    if ray_address is not None and workers is None:
        raise InvalidInputError(f"ray_address={ray_address!r} needs workers=N, the number of tasks to run at once "
                                "(CLI: --workers N --ray-address ADDR)")
    method = _METHODS.get(type(config))
    if method is None:
        known = ", ".join(c.__name__ for c in _METHODS)
        raise InvalidInputError(f"no compression registered for {type(config).__name__}; known configs: {known}")
    if config.activation_aware and calib_ids is None:
        raise InvalidInputError(f"{config.method} needs calibration tokens: pass calib_ids=(B, T) token ids "
                                "(CLI: --calib wikitext2:train or --calib FILE)")
    if config.allocation == "global":
        raise InvalidInputError("allocation='global' needs every layer's statistics at once, which streamed "
                                "compression does not hold; pass allocation='uniform' (CLI: --allocation uniform)")
    d = read_json(src / "config.json", what="the model config of a curmoe checkpoint folder",
                  fix="pass a folder made by curmoe (curmoe convert makes one from Hugging Face)", error=CheckpointError)
    try:
        cfg = ModelConfig.from_dict(d)
    except (InvalidInputError, TypeError) as e:
        raise CheckpointError(f"{str(src / 'config.json')!r} does not describe a valid model: {e}") from e
    if cfg.factors:
        raise InvalidInputError("this model is already compressed; compress the dense original instead")
    source = SafetensorsSource(src)
    _check_source(source, cfg, src)
    ids = None if calib_ids is None else check_calib_ids(calib_ids)
    job = _Job(src, dst.parent / f"{dst.name}.partial", config, cfg, source, ids, dtype, batch_size, progress)
    fp = _fingerprint(src, cfg, config, source, ids, job.dtype, batch_size)
    if dst.exists():
        idx = dst / INDEX_FILE
        done = idx.is_file() and json.loads(idx.read_text()).get("metadata", {}).get("fingerprint_sha256") == _fp_hash(fp)
        if done and not force:
            log.info("%s already holds this compression; nothing to do", dst)
            return ModelConfig.from_dict(json.loads((dst / "config.json").read_text()))
        if not force:
            raise InvalidInputError(f"output {str(dst)!r} exists; choose another path or pass force=True (CLI: --force)")
    t0 = time.perf_counter()
    pool = None
    if workers is not None:
        from curmoe.compress._ray import RayPool  # Ray is imported only here (MissingExtraError without it)

        pool = RayPool(run_unit, job.spec(), int(workers), ray_address)
    try:
        job.manifest = Manifest(job.work, fp)
        job.run(pool)
    finally:
        if pool is not None:
            pool.close()
    return _finalise(job, dst, fp, time.perf_counter() - t0)


def _check_source(source: SafetensorsSource, cfg: ModelConfig, src: Path) -> None:
    problems = []
    for name, (shape, kind) in expected_tensors(cfg).items():
        t = source.info.get(name)
        if t is None:
            problems.append(f"missing tensor {name!r}")
        elif t.shape != shape:
            problems.append(f"tensor {name!r} has shape {t.shape}, config expects {shape}")
        elif (kind == "float") != (t.dtype in ("BF16", "F16", "F32", "F64")):
            problems.append(f"tensor {name!r} has dtype {t.dtype}")
    if problems:
        raise CheckpointError(f"{str(src)!r} does not match its config.json: " + "; ".join(problems[:5]))


def _finalise(job: _Job, dst: Path, fp: dict[str, Any], seconds: float) -> ModelConfig:
    assert job.manifest is not None
    mf = job.manifest
    order = ["globals"] + [u for l in range(job.cfg.n_layers) for u in [f"layers.{l}", *job.prefixes.get(l, [])]]
    entries = [mf.done(u) for u in order]
    assert all(e is not None for e in entries), "every unit is finished before the index is written"
    per_matrix = {k: r for e in entries for k, r in e.get("records", {}).items()}  # type: ignore[union-attr]
    new_cfg = _compressed_config(job.cfg, job.config, per_matrix, _counts(job, entries), job.ids, seconds)  # type: ignore[arg-type]
    weight_map = {n: e["file"] for e in entries for n in e["tensors"]}  # type: ignore[index]
    total = sum(t.nbytes for e in entries for t in tensor_infos(job.work / e["file"]).values())  # type: ignore[index]
    index = {"metadata": {"total_size": total, "format": "curmoe", "fingerprint_sha256": _fp_hash(fp),
                          "sha256": {e["file"]: e["sha256"] for e in entries}},  # type: ignore[index]
             "weight_map": dict(sorted(weight_map.items()))}
    (job.work / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
    (job.work / "config.json").write_text(new_cfg.to_json() + "\n")
    for name in ("tokenizer.json", *TOKENIZER_SIDE_FILES):  # the chat template and special tokens go with it
        if (job.src / name).is_file():
            shutil.copyfile(job.src / name, job.work / name)
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    for stray in job.work.glob(".*.tmp"):  # a shard whose writer died and whose unit was then written again
        stray.unlink()
    os.replace(job.work, dst)  # atomic: dst is either absent/old or complete
    (dst / "manifest.jsonl").unlink(missing_ok=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    log.info("streamed %s: %d shards, %.1f s", dst, len(entries), seconds)
    return new_cfg


def read_sharded(folder: str | os.PathLike[str]) -> dict[str, tuple[str, np.ndarray]]:
    """Every tensor of a (sharded) output folder: name -> (safetensors dtype, stored array). For tests and small
    models; a streamed output of a large model is read tensor by tensor with :class:`SafetensorsSource`."""
    folder = Path(folder)
    files = {f for f in json.loads((folder / INDEX_FILE).read_text())["weight_map"].values()}
    out: dict[str, tuple[str, np.ndarray]] = {}
    for f in sorted(files):
        out |= read_safetensors(folder / f)
    return out

