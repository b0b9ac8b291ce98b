"""A calibration cache: one-pass statistics stored on disk, reused across methods and ratios.

One pass of :func:`calibrate` over 16k WikiText-2 tokens takes about a minute on the shipped model, and its result
depends only on the model's weights and config, the calibration token ids, the batch size (float summation order)
and ``max_sample``, never on the compression method or ratio. So it is stored once per

    key = sha256(CACHE_VERSION, model checksum, token ids (shape, dtype, bytes), batch_size, max_sample)

where the model checksum hashes the config and every tensor in memory (name, dtype, shape, bytes: the weights as
the model computes with them, so a float64 copy of a float32 checkpoint is another model). Hashing the token ids
covers the text source, the tokenizer, the token count and the row length at once.

An entry is ``<key>.safetensors`` (every Gram in float64, the fallback sample in the model dtype, which is how it is
used) and ``<key>.json`` (the key's parts, in words, plus each statistic's token count), both written atomically;
the JSON is written last, so an entry without it is ignored. Never pickle. Loading rebuilds the same objects bit for
bit (:meth:`CalibStats.from_gram`), so a compression from the cache equals one that calibrated.

Not cacheable: the sequential mode's per-layer statistics (layer l is calibrated on the outputs of layers < l
*already compressed*, so they depend on the method and ratio); only its one-pass calibration for a global budget is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from curmoe.common.io import atomic_write
from curmoe.compress._calibration import Calibration, LayerCalibration, calibrate, check_calib_ids
from curmoe.decompose import CalibStats
from curmoe.reference import Model

__all__ = ["CACHE_VERSION", "default_cache_dir", "model_checksum", "calibration_key", "cached_calibrate",
           "load_calibration", "save_calibration"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when what calibrate() gathers changes: older entries then miss


def default_cache_dir() -> Path:
    """``$CURMOE_CACHE_DIR/calib`` or ``~/.cache/curmoe/calib`` (beside ``pretrained/`` and ``exports/``)."""
    env = os.environ.get("CURMOE_CACHE_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "curmoe") / "calib"


def model_checksum(model: Model) -> str:
    """sha256 of the config and every tensor (name, dtype, shape, bytes) the model computes with."""
    h = hashlib.sha256(model.config.to_json().encode())
    items = [(k, v) for k, v in model.tensors.items()]
    items += [(f"{k}.{n}", t) for k, lin in model.experts.items() for n, t in lin.tensors().items()]
    for name, t in sorted(items, key=lambda kv: kv[0]):
        a = np.ascontiguousarray(t)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def calibration_key(model: Model, ids: np.ndarray, *, batch_size: int, max_sample: int,
                    source: str | None = None) -> dict[str, Any]:
    """The parts of an entry's key (``digest`` is what names the files) and, for people, the text source."""
    ids = np.ascontiguousarray(check_calib_ids(ids))
    id_hash = hashlib.sha256(f"{ids.dtype.str}|{ids.shape}|".encode() + ids.tobytes()).hexdigest()
    parts = {"version": CACHE_VERSION, "model_sha256": model_checksum(model), "ids_sha256": id_hash,
             "ids_shape": list(ids.shape), "batch_size": int(batch_size), "max_sample": int(max_sample)}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return parts | {"digest": digest, "n_tokens": int(ids.size), "source": source}


_PARTS = ("version", "model_sha256", "ids_sha256", "ids_shape", "batch_size", "max_sample")


def save_calibration(calib: Calibration, folder: str | os.PathLike[str], key: dict[str, Any],
                     dtype: np.dtype) -> Path:
    """Write ``calib`` as ``<digest>.safetensors`` + ``<digest>.json`` in ``folder`` (atomically, JSON last)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    layers: dict[str, Any] = {}
    for l, lc in calib.layers.items():
        meta: dict[str, Any] = {"inputs": {}, "hidden": {}, "block": 0, "sample_rows": 0}
        for kind in ("inputs", "hidden"):
            for k, s in getattr(lc, kind).items():
                tensors[f"{l}.{kind}.{k}"] = s.gram
                meta[kind][k] = s.n_tokens
        if lc.block.n_tokens:
            tensors[f"{l}.block"] = lc.block.gram
            meta["block"] = lc.block.n_tokens
        if lc.sample:
            # the fallback casts the sample to the model dtype before use, and every piece came from it: exact
            tensors[f"{l}.sample"] = np.concatenate(lc.sample).astype(dtype)
            meta["sample_rows"] = int(tensors[f"{l}.sample"].shape[0])
        layers[str(l)] = meta
    d = key["digest"]
    atomic_write(folder / f"{d}.safetensors", lambda p: save_file(tensors, str(p)))
    record = {"key": key, "n_tokens": calib.n_tokens, "layers": layers}
    atomic_write(folder / f"{d}.json", lambda p: p.write_text(json.dumps(record, indent=1)))
    return folder / f"{d}.json"


def load_calibration(folder: str | os.PathLike[str], key: dict[str, Any]) -> Calibration | None:
    """The entry for ``key`` in ``folder``, or None when there is none (or it is unreadable: it is then ignored
    and rewritten)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    d = key["digest"]
    jpath, tpath = Path(folder) / f"{d}.json", Path(folder) / f"{d}.safetensors"
    if not jpath.is_file():
        return None
    try:
        record = json.loads(jpath.read_text())
        if any(record["key"][p] != key[p] for p in _PARTS):  # a digest collision, or a hand-edited file
            return None
        t = load_file(str(tpath))
        layers = {}
        for ls, meta in record["layers"].items():
            l = int(ls)
            lc = LayerCalibration(l)
            for kind in ("inputs", "hidden"):
                for k, n in meta[kind].items():
                    getattr(lc, kind)[k] = CalibStats.from_gram(t[f"{l}.{kind}.{k}"], n)
            if meta["block"]:
                lc.block = CalibStats.from_gram(t[f"{l}.block"], meta["block"])
            if meta["sample_rows"]:
                lc.sample = [np.asarray(t[f"{l}.sample"], np.float64)]
            layers[l] = lc
        return Calibration(layers, int(record["n_tokens"]))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        log.warning("calibration cache entry %s is unreadable (%s); calibrating again", jpath, e)
        return None


def cached_calibrate(model: Model, calib_ids: np.ndarray, *, cache_dir: str | os.PathLike[str] | None,
                     batch_size: int = 8, max_sample: int = 4096, progress: bool = True,
                     source: str | None = None) -> tuple[Calibration, dict[str, Any]]:
    """:func:`calibrate`, through the cache in ``cache_dir`` (None: no cache). Returns the calibration and what
    the cache did: ``{"status": "hit" | "stored" | "off", "digest": ..., "dir": ...}``."""
    if cache_dir is None:
        return calibrate(model, calib_ids, batch_size=batch_size, max_sample=max_sample, progress=progress), \
            {"status": "off"}
    key = calibration_key(model, calib_ids, batch_size=batch_size, max_sample=max_sample, source=source)
    info = {"digest": key["digest"], "dir": str(cache_dir)}
    hit = load_calibration(cache_dir, key)
    if hit is not None:
        log.info("calibration loaded from the cache %s (%s)", cache_dir, key["digest"][:12])
        return hit, info | {"status": "hit"}
    calib = calibrate(model, calib_ids, batch_size=batch_size, max_sample=max_sample, progress=progress)
    try:
        save_calibration(calib, cache_dir, key, model.dtype)
    except OSError as e:  # a read-only or full cache folder must not fail the compression
        log.warning("could not store the calibration in %s (%s); continuing without the cache", cache_dir, e)
        return calib, info | {"status": "not stored", "error": str(e)}
    return calib, info | {"status": "stored"}
