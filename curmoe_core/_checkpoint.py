"""Model directories: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``).

Tensor names (W in torch orientation (out, in)):
  embed.weight (V, d)                      norm.weight (d,)            lm_head.weight (V, d) unless tied
  layers.{l}.attn_norm.weight (d,)         layers.{l}.ffn_norm.weight (d,)
  layers.{l}.attn.{q,k,v,o}.weight         q (H*hd, d), k/v (KV*hd, d), o (d, H*hd); q/k/v .bias if attn_bias
  layers.{l}.attn.{q,k}_norm.weight        (hd,) for qk_norm="head"; (H*hd,) / (KV*hd,) for "full"
  layers.{l}.router.weight (E, d)          layers.{l}.router.bias (E,) for the sigmoid_bias router
  layers.{l}.shared_gate.weight (1, d)     when moe.shared_gate
  layers.{l}.mlp.{gate,up,down}.weight     dense-FFN layers
  layers.{l}.experts.{e}.{gate,up,down}.*  and layers.{l}.shared.{s}.{...}.*:
      dense: .weight (m, n);  CUR: .C (m, c) .U (c, r) .R (r, n) .rows (r,) .cols (c,) [int64];  SVD: .A (m, r) .B (r, n)

Loading checks every tensor's presence, shape and dtype against the config. Saving writes a sibling temporary
directory and renames it into place, so an interrupted save never leaves a half-written model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curmoe._config import ModelConfig
from curmoe._errors import CheckpointError, InvalidInputError
from curmoe._linear import CURLinear, DenseLinear, Linear, SVDLinear

if TYPE_CHECKING:  # pragma: no cover
    from curmoe._model import Model

__all__ = ["load", "save", "expected_tensors", "expert_keys"]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def expert_keys(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """Every expert matrix key -> its dense shape (out, in)."""
    d, moe = config.d_model, config.moe
    names = ("gate", "up", "down") if moe.activation == "swiglu" else ("up", "down")
    keys: dict[str, tuple[int, int]] = {}
    for l in range(config.n_layers):
        if config.layer_type(l) != "moe":
            continue
        groups = [(f"layers.{l}.experts.{e}", moe.d_ff) for e in range(moe.n_experts)]
        groups += [(f"layers.{l}.shared.{s}", moe.shared_d_ff) for s in range(moe.n_shared)]
        for pre, f in groups:
            for n in names:
                keys[f"{pre}.{n}"] = (d, f) if n == "down" else (f, d)
    return keys


def expected_tensors(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, "float" | "int") of every tensor a checkpoint of ``config`` holds."""
    c = config
    d, V, H, KV, hd = c.d_model, c.vocab_size, c.n_heads, c.kv_heads, c.head_dim_
    t: dict[str, tuple[tuple[int, ...], str]] = {"embed.weight": ((V, d), "float"), "norm.weight": ((d,), "float")}
    if not c.tie_embeddings:
        t["lm_head.weight"] = ((V, d), "float")
    for l in range(c.n_layers):
        p = f"layers.{l}."
        t[p + "attn_norm.weight"] = ((d,), "float")
        t[p + "ffn_norm.weight"] = ((d,), "float")
        t[p + "attn.q.weight"] = ((H * hd, d), "float")
        t[p + "attn.k.weight"] = ((KV * hd, d), "float")
        t[p + "attn.v.weight"] = ((KV * hd, d), "float")
        t[p + "attn.o.weight"] = ((d, H * hd), "float")
        if c.attn_bias:
            t[p + "attn.q.bias"] = ((H * hd,), "float")
            t[p + "attn.k.bias"] = ((KV * hd,), "float")
            t[p + "attn.v.bias"] = ((KV * hd,), "float")
        if c.qk_norm == "head":
            t[p + "attn.q_norm.weight"] = ((hd,), "float")
            t[p + "attn.k_norm.weight"] = ((hd,), "float")
        elif c.qk_norm == "full":
            t[p + "attn.q_norm.weight"] = ((H * hd,), "float")
            t[p + "attn.k_norm.weight"] = ((KV * hd,), "float")
        if c.layer_type(l) == "moe":
            t[p + "router.weight"] = ((c.moe.n_experts, d), "float")
            if c.moe.router.kind == "sigmoid_bias":
                t[p + "router.bias"] = ((c.moe.n_experts,), "float")
            if c.moe.shared_gate:
                t[p + "shared_gate.weight"] = ((1, d), "float")
        else:
            t[p + "mlp.gate.weight"] = ((c.dense_d_ff, d), "float")
            t[p + "mlp.up.weight"] = ((c.dense_d_ff, d), "float")
            t[p + "mlp.down.weight"] = ((d, c.dense_d_ff), "float")
    unknown = set(c.factors) - set(expert_keys(c))
    if unknown:
        raise CheckpointError(f"config.factors names {sorted(unknown)[0]!r}, which is not an expert matrix of this config")
    for key, (m, n) in expert_keys(c).items():
        spec = c.factors.get(key)
        if spec is None:
            t[key + ".weight"] = ((m, n), "float")
        elif spec["kind"] == "svd":
            r = spec["rank"]
            t[key + ".A"], t[key + ".B"] = ((m, r), "float"), ((r, n), "float")
        elif spec["kind"] == "cur":
            r, nc = spec["rank"], spec.get("n_cols", spec["rank"])
            if spec.get("folded"):
                t[key + ".C"] = ((m, r), "float")
            else:
                t[key + ".C"], t[key + ".U"] = ((m, nc), "float"), ((nc, r), "float")
            t[key + ".R"] = ((r, n), "float")
            t[key + ".rows"], t[key + ".cols"] = ((r,), "int"), ((nc,), "int")
        else:
            raise CheckpointError(f"config.factors[{key!r}] has kind {spec['kind']!r}; expected 'cur' or 'svd'")
    return t


def _read_config(path: Path) -> ModelConfig:
    f = path / CONFIG_FILE
    if not path.is_dir():
        raise CheckpointError(f"model directory {str(path)!r} does not exist; pass a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not f.is_file():
        raise CheckpointError(f"{str(f)!r} is missing; a curmoe model directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        d = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(f)!r} is not valid JSON ({e}); the file is corrupt or truncated: re-save the model") from e
    try:
        return ModelConfig.from_dict(d)
    except (InvalidInputError, TypeError) as e:
        raise CheckpointError(f"{str(f)!r} does not describe a valid model: {e}") from e


def _read_tensors(f: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not f.is_file():
        raise CheckpointError(f"{str(f)!r} is missing; the model directory must hold {WEIGHTS_FILE}")
    try:
        return load_file(str(f))
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{str(f)!r} could not be read as safetensors ({e}); the file is truncated or corrupt: re-save or re-download it"
        ) from e


def load(path: str | Path, *, dtype: np.dtype | None = None) -> Model:
    """Load a model directory, checking every tensor against the config. ``dtype`` casts floats (e.g. float64)."""
    from curmoe._model import Model

    path = Path(path)
    config = _read_config(path)
    raw = _read_tensors(path / WEIGHTS_FILE)
    want = expected_tensors(config)
    problems = []
    for name, (shape, kind) in want.items():
        if name not in raw:
            problems.append(f"missing tensor {name!r} (expected shape {shape})")
            continue
        a = raw[name]
        if tuple(a.shape) != shape:
            problems.append(f"tensor {name!r} has shape {tuple(a.shape)}, config expects {shape}")
        ok = a.dtype.type in _FLOAT_DTYPES if kind == "float" else a.dtype.kind in "iu"
        if not ok:
            problems.append(f"tensor {name!r} has dtype {a.dtype}, expected {'float16/32/64' if kind == 'float' else 'an integer type'}")
    extra = sorted(set(raw) - set(want))
    if extra:
        problems.append(f"unexpected tensor(s) {extra[:3]}{' ...' if len(extra) > 3 else ''} not described by config.json")
    if problems:
        raise CheckpointError(
            f"{str(path / WEIGHTS_FILE)!r} does not match {CONFIG_FILE}: " + "; ".join(problems[:5])
            + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        )
    # float16 files compute in float32 unless asked otherwise (NumPy float16 matmul is slow and lossy).
    dt = np.dtype(dtype) if dtype is not None else None

    def f(a: np.ndarray) -> np.ndarray:
        if a.dtype.kind in "iu":
            return a.astype(np.int64)
        target = dt or (np.float32 if a.dtype == np.float16 else a.dtype)
        return a.astype(target, copy=False)

    tensors, experts = {}, {}
    keys = expert_keys(config)
    for name, a in raw.items():
        base = name.rsplit(".", 1)[0]
        if base not in keys:
            tensors[name] = f(a)
    for key in keys:
        spec = config.factors.get(key)
        g = lambda s: f(raw[f"{key}.{s}"])  # noqa: E731
        lin: Linear
        if spec is None:
            lin = DenseLinear(g("weight"))
        elif spec["kind"] == "svd":
            lin = SVDLinear(g("A"), g("B"))
        else:
            lin = CURLinear(g("C"), None if spec.get("folded") else g("U"), g("R"), g("rows"), g("cols"))
        experts[key] = lin
    tok = path / TOKENIZER_FILE
    return Model(config, tensors, experts, tok if tok.is_file() else None)


def _apply_umask(folder: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~mask)


def save(model: Model, path: str | Path) -> Path:
    """Write ``model`` to directory ``path`` atomically (temp dir + rename); returns the path."""
    from safetensors.numpy import save_file

    path = Path(path)
    flat = dict(model.tensors)
    for key, lin in model.experts.items():
        for n, a in lin.tensors().items():
            flat[f"{key}.{n}"] = a
    want = expected_tensors(model.config)
    if set(flat) != set(want):
        diff = sorted(set(flat) ^ set(want))
        raise InvalidInputError(f"model tensors do not match its config (first difference: {diff[0]!r}); fix config.factors")
    flat = {k: np.ascontiguousarray(v) for k, v in flat.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        save_file(flat, str(tmp / WEIGHTS_FILE), metadata={"format": "curmoe", "config_version": str(model.config.version)})
        (tmp / CONFIG_FILE).write_text(model.config.to_json() + "\n")
        if model.tokenizer_path is not None and Path(model.tokenizer_path).is_file():
            shutil.copyfile(model.tokenizer_path, tmp / TOKENIZER_FILE)
        _apply_umask(tmp)  # mkdtemp makes a 0700 folder (and safetensors a 0600 file): give them normal modes
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if model.tokenizer_path is not None:
        model.tokenizer_path = path / TOKENIZER_FILE
    log.info("saved %s to %s", model, path)
    return path
