"""curmoe.models: the torch twin (``twin/``), training (``train/``), Hugging Face import (``hf/``), the BPE tokenizer
and the shipped checkpoints (``wt2-moe-8x/``, ``wt2-moe-tiny/``).

Lazy: importing this package imports neither torch nor transformers. It may import the core (``curmoe``), never
``curmoe.exporters``, ``curmoe.runtimes`` or ``curmoe.app``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names served lazily (PEP 562) so that `python -m curmoe.models.tokenizer` does not import its own module twice
# and `import curmoe.models` stays light: {public name: module that defines it}.
_LAZY = {
    "train_bpe_tokenizer": "curmoe.models.tokenizer",
    "save_tokenizer": "curmoe.models.tokenizer",
    "load_tokenizer": "curmoe.models.tokenizer",
    "encode_split": "curmoe.models.tokenizer",
}

__all__: list[str] = [*_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'curmoe.models' has no attribute {name!r}")

# --- Hugging Face import ---
_LAZY.update({"from_hf": "curmoe.models.hf", "convert": "curmoe.models.hf"})
__all__ += ["from_hf", "convert"]

# --- torch twin (torch is imported on first use of these names) ---
_LAZY.update({name: "curmoe.models.twin" for name in ("TorchMoE", "TorchKVCache", "TrainOutput", "load_torch",
                                                             "train_only_u")})
__all__ += ["TorchMoE", "TorchKVCache", "TrainOutput", "load_torch", "train_only_u"]

# --- healing after compression (torch on first use) ---
_LAZY.update({name: "curmoe.models.healing" for name in ("heal", "HealConfig", "HealReport")})
__all__ += ["heal", "HealConfig", "HealReport"]

# --- real pretrained models (converted once into a cache) ---
_LAZY.update({name: "curmoe.models.pretrained" for name in ("pretrained", "pretrained_dir", "as_single_expert")})
_LAZY.update({name: "curmoe.models.tokenizer" for name in ("load_hf_tokenizer", "HFTokenizer", "encode_text")})
__all__ += ["pretrained", "pretrained_dir", "as_single_expert", "load_hf_tokenizer", "HFTokenizer", "encode_text"]
