"""Hugging Face import: transformers 5.x MoE models (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE), dense Llama / Mistral /
Qwen2 / Qwen3 models, and GGUF files of the dense ones -> curmoe ``Model``.

``from_hf`` reads a ``PreTrainedModel`` instance (its ``state_dict``) or a local model directory (``config.json``
read by ``transformers.AutoConfig`` with ``local_files_only=True``; weights read straight from the safetensors files,
sharded or not, bfloat16 included, without torch). The config is translated by ``curmoe.models.hf._config`` and the
tensors are renamed, and fused experts split, by ``curmoe.models.hf._weights``. The result is the same kind of
``curmoe.Model`` that ``curmoe.load`` returns, with the NumPy reference forward; docs/hf_import.md has the details.

A ``.gguf`` file is read by ``curmoe.models.hf._gguf`` (dequantised once to float32); ``convert`` then writes a
model card (README.md: source file, sha256, tensor types) and the GGUF's tokenizer beside the checkpoint.

Neither torch nor transformers is imported until a function here runs (both are optional extras).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from curmoe.common.errors import CheckpointError, InvalidInputError, require
from curmoe.common.io import atomic_dir, read_json
from curmoe.models.hf._config import (
    SUPPORTED_ARCHITECTURES,
    check_model_type,
    to_model_config,
)
from curmoe.models.hf._gguf import GGUFSource, read_gguf
from curmoe.models.hf._tokenizer_files import copy_tokenizer_files, write_gguf_tokenizer
from curmoe.models.hf._weights import convert_tensors
from curmoe.reference import Model

__all__ = ["from_hf", "convert", "SUPPORTED_ARCHITECTURES"]

log = logging.getLogger(__name__)

_DTYPES = (np.float16, np.float32, np.float64)
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
MODEL_CARD = "README.md"


def from_hf(model_or_path: Any, *, dtype: Any = np.float32) -> Model:
    """Convert a Hugging Face language model (MoE or dense) into a curmoe ``Model`` (NumPy reference weights).

    Args:
        model_or_path: a transformers ``PreTrainedModel`` (the ``...ForCausalLM`` class), a local directory with
            ``config.json`` and ``model.safetensors`` (or ``model.safetensors.index.json`` + shards), or a ``.gguf``
            file of a dense Llama / Mistral / Qwen2 / Qwen3 model (dequantised to float32 at import). A
            ``tokenizer.json`` beside the weights (or, for a GGUF, its own tokenizer rebuilt by transformers into a
            temporary folder that lives as long as the model) travels with the model.
        dtype: float dtype of the converted weights (float16, float32 or float64; bfloat16 loads exactly into any).

    Returns:
        The curmoe model; its logits match transformers' (float32, within 1e-4 relative, tests/test_hf.py).

    Raises:
        InvalidInputError: unsupported architecture (the message lists the supported ones) or feature, bad dtype.
        CheckpointError: missing directory, config or weights, or weights that do not match the config.
        MissingExtraError: transformers (directories) is not installed.
    """
    dt = np.dtype(dtype)
    if dt.type not in _DTYPES:
        raise InvalidInputError(f"dtype={dt} is not supported; pass np.float16, np.float32 or np.float64")
    if isinstance(model_or_path, (str, os.PathLike)):
        p = Path(model_or_path)
        if p.suffix.lower() == ".gguf":
            model, source = _from_gguf(p, dt)
            holder = tempfile.TemporaryDirectory(prefix="curmoe-gguf-tok-")  # removed with the model object
            write_gguf_tokenizer(p, Path(holder.name), source.chat_template, source.tokenizer)
            model.tokenizer_path = Path(holder.name) / "tokenizer.json"
            model._tokenizer_holder = holder  # type: ignore[attr-defined]
            return model
        return _from_dir(p, dt)
    if hasattr(model_or_path, "state_dict") and hasattr(model_or_path, "config"):
        return _from_instance(model_or_path, dt)
    raise InvalidInputError(
        f"from_hf got a {type(model_or_path).__name__}; pass a transformers PreTrainedModel or a local directory path"
    )


def convert(hf_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, dtype: Any = np.float32,
            require_tokenizer: bool = False) -> Path:
    """``from_hf(hf_dir)`` then save into ``out_dir``: config.json + model.safetensors [+ tokenizer.json,
    tokenizer_config.json (chat template), README.md model card for a GGUF]. The folder appears whole or not at all.

    Args:
        require_tokenizer: refuse a source without a tokenizer (a GGUF always needs one).

    Returns:
        ``out_dir`` as a Path; ``curmoe.load(out_dir)`` gives back the converted model.
    """
    src = Path(hf_dir)
    gguf = src.suffix.lower() == ".gguf"
    if gguf:
        model, source = _from_gguf(src, np.dtype(dtype))
    else:
        model = from_hf(src, dtype=dtype)
        if require_tokenizer and model.tokenizer_path is None:
            raise CheckpointError(f"{str(src)!r} holds no tokenizer.json; curmoe needs the model's own tokenizer "
                                  "(save it with tokenizer.save_pretrained(DIR))")
    with atomic_dir(out_dir) as tmp:
        model.save(tmp)
        if gguf:
            write_gguf_tokenizer(src, tmp, source.chat_template, source.tokenizer)
            (tmp / MODEL_CARD).write_text(source.card())
        elif src.is_dir():
            copy_tokenizer_files(src, tmp)
    out = Path(out_dir)
    model.tokenizer_path = out / "tokenizer.json" if (out / "tokenizer.json").is_file() else None
    log.info("converted %s -> %s", hf_dir, out)
    return out


# Sources ------------------------------------------------------------------------------------------------------
def _from_instance(model: Any, dt: np.dtype) -> Model:
    torch = require("torch", "torch")
    check_model_type(getattr(model.config, "model_type", None))
    config = to_model_config(model.config)
    sd = model.state_dict()

    def get(name: str) -> np.ndarray:
        t = sd[name].detach().to("cpu")
        t = t if t.dtype == torch.float64 else t.to(torch.float32)  # bf16/fp16 widen exactly
        return t.numpy().astype(dt)  # a copy: the curmoe model never aliases torch parameters

    tensors, experts = convert_tensors(config, list(sd), get)
    name = getattr(model, "name_or_path", "") or ""
    tok = Path(name) / "tokenizer.json" if name else None
    return Model(config, tensors, experts, tok if tok is not None and tok.is_file() else None)


def _from_gguf(path: Path, dt: np.dtype) -> tuple[Model, GGUFSource]:
    config, tensors, experts, source = read_gguf(path, dt)
    if "tokens" not in source.tokenizer:
        raise CheckpointError(f"{path.name} carries no tokenizer (no tokenizer.ggml.tokens metadata); curmoe needs "
                              "the model's own tokenizer: use a GGUF written with its tokenizer")
    return Model(config, tensors, experts, None), source


def _from_dir(path: Path, dt: np.dtype) -> Model:
    if not path.is_dir():
        raise CheckpointError(
            f"{str(path)!r} is not a local directory or .gguf file; download the model first (e.g. `hf download REPO "
            f"--local-dir DIR`) and pass DIR, or pass a loaded transformers model"
        )
    raw_cfg = read_json(path / "config.json", what="the Hugging Face model's config",
                        fix="a Hugging Face model directory holds config.json (re-save it with save_pretrained)",
                        error=CheckpointError)
    # before transformers, which rejects unknown types less clearly
    check_model_type(raw_cfg.get("model_type") if isinstance(raw_cfg, dict) else None)
    transformers = require("transformers", "hf")
    hf_cfg = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    config = to_model_config(hf_cfg)
    reader = _SafetensorsDir(path, dt)
    tensors, experts = convert_tensors(config, reader.names(), reader.get)
    tok = path / "tokenizer.json"
    return Model(config, tensors, experts, tok if tok.is_file() else None)


class _SafetensorsDir:
    """Lazy reader of the safetensors weights of a HF directory (single file or index + shards)."""

    def __init__(self, path: Path, dt: np.dtype) -> None:
        self.dt = dt
        index = path / _INDEX
        if index.is_file():
            wmap = read_json(index, what="the safetensors index", fix="re-save the model with save_pretrained",
                             error=CheckpointError)
            if not isinstance(wmap, dict) or not isinstance(wmap.get("weight_map"), dict):
                raise CheckpointError(f"{str(index)!r} is not a valid safetensors index (no 'weight_map' mapping)")
            wmap = wmap["weight_map"]
            self.files = {n: path / f for n, f in wmap.items()}
        elif (path / _SINGLE).is_file():
            self.files = {n: path / _SINGLE for n in _header(path / _SINGLE)[0]}
        else:
            raise CheckpointError(
                f"{str(path)!r} holds neither {_SINGLE} nor {_INDEX}; curmoe imports safetensors weights only "
                "(re-save the model with save_pretrained)"
            )
        missing = sorted({str(f) for f in self.files.values() if not f.is_file()})
        if missing:
            raise CheckpointError(f"weight shard {missing[0]!r} listed in {_INDEX} is missing")
        self._open: dict[Path, Any] = {}
        self._headers: dict[Path, tuple[dict[str, Any], int]] = {}

    def names(self) -> list[str]:
        return list(self.files)

    def get(self, name: str) -> np.ndarray:
        from safetensors import SafetensorError, safe_open

        f = self.files[name]
        try:
            if f not in self._open:
                self._open[f] = safe_open(str(f), framework="np")
            h = self._open[f]
            if h.get_slice(name).get_dtype() == "BF16":  # NumPy has no bfloat16: widen the raw bits
                if f not in self._headers:
                    self._headers[f] = _header(f)
                a = _read_bf16(f, name, *self._headers[f])
            else:
                a = h.get_tensor(name)
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"could not read tensor {name!r} from {str(f)!r} ({e}); the file may be corrupt") from e
        if a.dtype.kind != "f":
            raise CheckpointError(f"tensor {name!r} in {str(f)!r} has dtype {a.dtype}; quantised weights are not supported")
        return a.astype(self.dt)


def _header(f: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file (name -> {dtype, shape, data_offsets}) and where its data starts."""
    try:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            h = json.loads(fh.read(n))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(f)!r} is not a readable safetensors file ({e})") from e
    h.pop("__metadata__", None)
    return h, 8 + n


def _read_bf16(f: Path, name: str, header: dict[str, Any], base: int) -> np.ndarray:
    """A BF16 tensor as float32: bfloat16 is the top half of a float32, so shift the 16 bits up (exact)."""
    info = header[name]
    start, end = info["data_offsets"]
    bits = np.fromfile(f, dtype="<u2", count=(end - start) // 2, offset=base + start)
    return (bits.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])

