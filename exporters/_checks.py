"""The checks every exporter makes before building anything (one place, so each format refuses the same things)."""

from __future__ import annotations

from typing import Any

from curmoe.common.errors import InvalidInputError
from curmoe.reference import Model

__all__ = ["check_exportable"]


def check_exportable(model: Any, config: Any, config_cls: type, fmt: str) -> Model:
    """``model`` is a curmoe.Model, ``config`` a ``config_cls``, and its router has a graph form in ``fmt``."""
    if not isinstance(model, Model):
        raise InvalidInputError(f"model must be a curmoe.Model, got {type(model).__name__}")
    if not isinstance(config, config_cls):
        raise InvalidInputError(f"config must be {'an' if config_cls.__name__[0] in 'AEIOU' else 'a'} "
                                f"{config_cls.__name__}, got {type(config).__name__}")
    cfg = model.config
    if any(cfg.layer_type(l) == "moe" for l in range(cfg.n_layers)) and cfg.moe.router.kind == "random":
        raise InvalidInputError(
            f"router kind='random' has no {fmt} export (its draws depend on NumPy's generator per routing group); "
            "export a model with a topk, switch, hash, sigmoid_bias or expert_choice router"
        )
    return model
