"""Resumable training state for ``python -m curmoe.models.train``: safetensors + JSON, never pickle.

``OUT/state/train_state.safetensors`` holds the model's float32 parameters and buffers (``model.<name>``), the
AdamW moments and step counts (``optim.<name>.exp_avg``, ``.exp_avg_sq``, ``.step``) and torch's RNG state
(``rng.torch``); ``OUT/state/train_state.json`` holds the step, the data position, the best validation result and
the run's options and model config. The folder is written beside its destination and renamed into place, so an
interruption leaves either the previous state or the new one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from curmoe.common.errors import CheckpointError
from curmoe.common.io import atomic_dir, read_json

__all__ = ["STATE_DIR", "save_state", "load_state"]

STATE_DIR = "state"
_TENSORS = "train_state.safetensors"
_META = "train_state.json"
FORMAT = "curmoe-train-state"
VERSION = 1


def save_state(out: Path, model: nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> Path:
    """Write the state of ``model`` and ``opt`` plus ``meta`` (JSON-safe) to ``out/state`` atomically."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().cpu().contiguous()
                                        for k, v in model.state_dict().items()}
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                tensors[f"optim.{names[id(p)]}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    dest = out / STATE_DIR
    with atomic_dir(dest) as tmp:
        save_file(tensors, str(tmp / _TENSORS), metadata={"format": FORMAT})
        (tmp / _META).write_text(json.dumps({"format": FORMAT, "version": VERSION} | meta, indent=2) + "\n")
    return dest


def read_meta(out: Path) -> dict[str, Any]:
    """The JSON half of the saved state (run options, step, data position, best result)."""
    f = out / STATE_DIR / _META
    if not f.is_file():
        raise CheckpointError(f"no training state to resume in {out} ({f} is missing); run without --resume first")
    meta = read_json(f, what="the training state's options and progress", fix="start a new run (without --resume)",
                     error=CheckpointError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{f} is not a curmoe training state (format={got!r})")
    return meta


def load_state(out: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore ``model`` and ``opt`` (built with the same config and options) from ``out/state``; returns meta."""
    meta = read_meta(out)
    f = out / STATE_DIR / _TENSORS
    try:
        tensors = load_file(str(f))
    except Exception as e:  # safetensors raises its own error type on truncated files
        raise CheckpointError(f"{f} could not be read ({e}); the state is corrupt: start a new run") from e
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    params = dict(model.named_parameters())
    for n, p in params.items():
        st = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"optim.{n}.")
              and k.count(".") == n.count(".") + 2}
        if st:
            opt.state[p] = {k: v.to(p.device) if k != "step" else v for k, v in st.items()}
    torch.set_rng_state(tensors["rng.torch"])
    return meta
