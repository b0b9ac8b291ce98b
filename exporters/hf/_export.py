"""Write a curmoe model as a Hugging Face folder that ``AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)`` loads: config.json (model_type "curmoe", auto_map to the bundled remote code),
model.safetensors (every expert matrix in the form compression gave it: CUR C/U/R + kept indices, SVD A/B, neuron-CUR
kept rows + refit down), configuration_curmoe.py / modeling_curmoe.py (self-contained: torch + transformers only),
generation_config.json and, when the model has one, its tokenizer wrapped for ``PreTrainedTokenizerFast``.

Tensor names are curmoe's checkpoint names (:mod:`curmoe.reference.names`) under ``model.`` (``lm_head.weight`` at
the top), so ``model.layers.0.experts.3.down.C`` in the folder is ``layers.0.experts.3.down.C`` of the checkpoint.
NumPy only: writing the folder needs neither torch nor transformers.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from curmoe import __version__
from curmoe.common.errors import InvalidInputError
from curmoe.common.io import atomic_dir

__all__ = ["export_hf", "write_hf_folder", "hf_tensor_name", "SUPPORTED_ROUTERS", "SUPPORTED_FACTORS",
           "REMOTE_CODE_FILES"]

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
REMOTE_CODE_FILES = ("configuration_curmoe.py", "modeling_curmoe.py")
SUPPORTED_ROUTERS = ("topk", "switch", "expert_choice", "hash", "sigmoid_bias", "random")
SUPPORTED_FACTORS = ("cur", "svd", "neuron")
_SUPPORTED_VERSION = 1  # the curmoe ModelConfig version modeling_curmoe.py implements
_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64}


def hf_tensor_name(name: str) -> str:
    """The folder's name of a curmoe checkpoint tensor: ``model.`` + name, except ``lm_head.weight``."""
    return name if name == "lm_head.weight" else f"model.{name}"


def _check_expressible(model: Any) -> None:
    """Refuse, before writing anything, what modeling_curmoe.py cannot compute."""
    c = model.config
    if c.version > _SUPPORTED_VERSION:
        raise InvalidInputError(f"the model's config version {c.version} is newer than the HF modeling code "
                                f"({_SUPPORTED_VERSION}); upgrade curmoe")
    kind = c.moe.router.kind
    if kind not in SUPPORTED_ROUTERS:
        raise InvalidInputError(f"router kind {kind!r} has no HF implementation; supported: "
                                f"{', '.join(SUPPORTED_ROUTERS)}")
    for key, spec in c.factors.items():
        if spec.get("kind") not in SUPPORTED_FACTORS:
            raise InvalidInputError(f"{key} is factorised as {spec.get('kind')!r}, which the HF modeling code cannot "
                                    f"express; supported: {', '.join(SUPPORTED_FACTORS)}")


def _hf_config(model: Any, dtype: str) -> dict[str, Any]:
    c = model.config
    causal = not (c.moe.router.kind == "expert_choice" and c.moe.router.decode_fallback is None)
    return {
        "architectures": ["CurmoeForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_curmoe.CurmoeConfig",
                     "AutoModel": "modeling_curmoe.CurmoeModel",
                     "AutoModelForCausalLM": "modeling_curmoe.CurmoeForCausalLM"},
        "model_type": "curmoe",
        "curmoe_config": c.to_dict(),
        "curmoe_version": __version__,
        "dtype": dtype,
        # expert_choice is non-causal: it cannot decode with a KV cache, so generate re-runs full sequences
        "use_cache": causal,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
    }


def _tensors(model: Any, np_dtype: Any) -> dict[str, np.ndarray]:
    """Every tensor under its folder name: floats cast to ``np_dtype``, index vectors int64."""
    out: dict[str, np.ndarray] = {}

    def put(name: str, a: np.ndarray) -> None:
        a = np.asarray(a)
        a = a.astype(np.int64) if a.dtype.kind in "iu" else a.astype(np_dtype)
        out[hf_tensor_name(name)] = np.ascontiguousarray(a)

    for name, a in model.tensors.items():
        put(name, a)
    for key, lin in model.experts.items():
        for leaf, a in lin.tensors().items():
            put(f"{key}.{leaf}", a)
    return out


def _special_tokens(tok: dict[str, Any], config: Any) -> dict[str, str]:
    """eos / pad / unk token strings: the config's eos/pad ids looked up in tokenizer.json, and its model's unk."""
    by_id = {int(t["id"]): t["content"] for t in tok.get("added_tokens", [])}
    vocab = tok.get("model", {}).get("vocab")
    if isinstance(vocab, dict):  # BPE / WordPiece / WordLevel: token -> id (Unigram stores a list)
        by_id = {int(i): t for t, i in vocab.items()} | by_id
    special: dict[str, str] = {}
    for name, tid in (("eos_token", config.eos_token_id), ("pad_token", config.pad_token_id)):
        if tid is not None and tid in by_id:
            special[name] = by_id[tid]
    unk = tok.get("model", {}).get("unk_token")
    if isinstance(unk, str):
        special["unk_token"] = unk
    return special


def _write_tokenizer(model: Any, folder: Path) -> list[str]:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json for PreTrainedTokenizerFast."""
    src = model.tokenizer_path
    if src is None:
        return []
    shutil.copyfile(src, folder / "tokenizer.json")
    special = _special_tokens(json.loads(Path(src).read_text(encoding="utf-8")), model.config)
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.config.max_seq_len,
               "padding_side": "left", "clean_up_tokenization_spaces": False, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def write_hf_folder(model: Any, folder: str | Path, *, dtype: str | None = None) -> dict[str, Any]:
    """Fill the existing (empty) ``folder`` with the HF files of ``model``; returns a record of what was written.

    Args:
        model: a dense or compressed :class:`curmoe.Model`.
        folder: an existing empty directory.
        dtype: the compute dtype HF loads the model in by default (config.json ``dtype``): "float32" | "float16" |
            "float64"; None = the model's compute dtype. The weights are stored in the checkpoint's own dtype
            (``model.storage_dtype``) unless ``dtype`` is narrower, so a float16 checkpoint stays float16 on disk
            (its size is preserved) and still computes in float32, as curmoe computes it.
    """
    folder = Path(folder)
    _check_expressible(model)
    dtype = dtype or np.dtype(model.dtype).name
    if dtype not in _DTYPES:
        raise InvalidInputError(f"dtype={dtype!r} is not a weight dtype of the HF folder; pass one of "
                                f"{', '.join(_DTYPES)}")
    stored = np.dtype(model.storage_dtype if model.storage_dtype is not None else model.dtype)
    if stored.name not in _DTYPES or stored.itemsize > np.dtype(_DTYPES[dtype]).itemsize:
        stored = np.dtype(_DTYPES[dtype])
    tensors = _tensors(model, stored)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = _hf_config(model, dtype)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    c = model.config
    gen = {"do_sample": False, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id,
           "use_cache": cfg["use_cache"]}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    for f in REMOTE_CODE_FILES:
        shutil.copyfile(_HERE / f, folder / f)
    tok = _write_tokenizer(model, folder)
    n_params = int(sum(a.size for a in tensors.values() if a.dtype.kind == "f"))
    log.info("wrote HF folder %s (%d tensors, %d parameters, %s weights, %s compute)", folder, len(tensors),
             n_params, stored.name, dtype)
    return {"dtype": dtype, "weights_dtype": stored.name, "n_tensors": len(tensors), "n_params": n_params,
            "factorised_matrices": len(c.factors), "tokenizer": bool(tok),
            "files": sorted(["config.json", "generation_config.json", "model.safetensors", *REMOTE_CODE_FILES, *tok])}


def export_hf(model: Any, out_dir: str | Path, *, dtype: str | None = None, force: bool = False) -> dict[str, Any]:
    """Write ``model`` as a Hugging Face folder ``out_dir`` atomically (see the module docstring).

    Refuses an existing ``out_dir`` unless ``force``; on any error nothing is left behind.
    """
    out = Path(out_dir)
    if (out.exists() or out.is_symlink()) and not force:
        raise InvalidInputError(f"{str(out)!r} already exists; pass force=True to replace it, or choose another folder")
    _check_expressible(model)
    with atomic_dir(out) as tmp:
        rec = write_hf_folder(model, tmp, dtype=dtype)
    return {"output": str(out), **rec}
