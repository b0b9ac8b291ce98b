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

import logging
import shutil
from pathlib import Path

import numpy as np

from curmoe.common.errors import CheckpointError, InvalidInputError
from curmoe.common.io import atomic_dir, read_json
from curmoe.common.safetensors import read_tensors
from curmoe.reference._config import ModelConfig
from curmoe.reference._linear import CURLinear, DenseLinear, Linear, NeuronLinear, SVDLinear
from curmoe.reference.names import expected_tensors, expert_keys

__all__ = ["CONFIG_FILE", "INDEX_FILE", "TOKENIZER_FILE", "WEIGHTS_FILE", "read_checkpoint", "read_config", "write_checkpoint"]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # sharded weights (Hugging Face layout; curmoe.compress_checkpoint)
TOKENIZER_FILE = "tokenizer.json"
# a pretrained model's tokenizer files beside tokenizer.json (special tokens, chat template): saved with it, so a
# compressed or re-saved pretrained model keeps its chat template
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def _read_config(path: Path) -> ModelConfig:
    if not path.is_dir():
        raise CheckpointError(f"model directory {str(path)!r} does not exist; pass a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    d = read_json(path / CONFIG_FILE, what=f"the model config of a curmoe model directory (with {WEIGHTS_FILE})",
                  fix="re-save the model", error=CheckpointError)
    try:
        return ModelConfig.from_dict(d)
    except (InvalidInputError, TypeError) as e:
        raise CheckpointError(f"{str(path / CONFIG_FILE)!r} does not describe a valid model: {e}") from e


def read_config(path: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` of a model directory, without reading its weights."""
    return _read_config(Path(path))


def _read_tensors(f: Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file, read one at a time (the file's size in memory, once)."""
    if not f.is_file():
        raise CheckpointError(f"{str(f)!r} is missing; the model directory must hold {WEIGHTS_FILE}")
    try:
        return read_tensors(f)
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{str(f)!r} could not be read as safetensors ({e}); the file is truncated or corrupt: re-save or re-download it"
        ) from e


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    """The tensors of ``model.safetensors``, or of the shards ``model.safetensors.index.json`` names."""
    index = path / INDEX_FILE
    if not index.is_file():
        return _read_tensors(path / WEIGHTS_FILE)
    d = read_json(index, what="the index of a sharded curmoe checkpoint", fix="re-run the command that wrote it",
                  error=CheckpointError)
    wmap = d.get("weight_map") if isinstance(d, dict) else None
    if not isinstance(wmap, dict):
        raise CheckpointError(f"{str(index)!r} has no 'weight_map'; re-run the command that wrote it")
    out: dict[str, np.ndarray] = {}
    for f in sorted(set(wmap.values())):
        out |= _read_tensors(path / f)
    if set(out) != set(wmap):
        diff = sorted(set(out) ^ set(wmap))
        raise CheckpointError(f"{str(index)!r} and its shards disagree on tensor {diff[0]!r}; re-run the command "
                              "that wrote it")
    return out


def read_checkpoint(path: str | Path, *, dtype: np.dtype | None = None
                    ) -> tuple[ModelConfig, dict[str, np.ndarray], dict[str, Linear], Path | None, np.dtype]:
    """Read a model directory, checking every tensor against the config:
    (config, tensors, experts, tokenizer, the float dtype stored in the file).

    ``dtype`` casts floats (e.g. float64); without it float16 files compute in float32."""
    path = Path(path)
    config = _read_config(path)
    raw = _read_weights(path)
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
        elif spec["kind"] == "neuron":
            lin = NeuronLinear(g("weight"), g("neurons"), spec["role"])
        else:
            lin = CURLinear(g("C"), None if spec.get("folded") else g("U"), g("R"), g("rows"), g("cols"))
        experts[key] = lin
    tok = path / TOKENIZER_FILE
    return config, tensors, experts, (tok if tok.is_file() else None), raw["embed.weight"].dtype


def write_checkpoint(path: str | Path, config: ModelConfig, tensors: dict[str, np.ndarray],
                     experts: dict[str, Linear], tokenizer: Path | None, *, dtype: np.dtype | None = None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer.json and its side files) to ``path`` atomically; returns it.
    ``dtype``: the float dtype to store (index vectors stay int64)."""
    from safetensors.numpy import save_file

    path = Path(path)
    flat = dict(tensors)
    for key, lin in experts.items():
        for n, a in lin.tensors().items():
            flat[f"{key}.{n}"] = a
    want = expected_tensors(config)
    if set(flat) != set(want):
        diff = sorted(set(flat) ^ set(want))
        raise InvalidInputError(f"model tensors do not match its config (first difference: {diff[0]!r}); fix config.factors")
    cast = (lambda a: a.astype(dtype, copy=False) if dtype is not None and a.dtype.kind == "f" else a)  # noqa: E731
    flat = {k: np.ascontiguousarray(cast(v)) for k, v in flat.items()}
    with atomic_dir(path) as tmp:
        save_file(flat, str(tmp / WEIGHTS_FILE), metadata={"format": "curmoe", "config_version": str(config.version)})
        (tmp / CONFIG_FILE).write_text(config.to_json() + "\n")
        if tokenizer is not None and Path(tokenizer).is_file():
            shutil.copyfile(tokenizer, tmp / TOKENIZER_FILE)
            for side in TOKENIZER_SIDE_FILES:
                if (Path(tokenizer).parent / side).is_file():
                    shutil.copyfile(Path(tokenizer).parent / side, tmp / side)
    log.info("saved %s", path)
    return path
