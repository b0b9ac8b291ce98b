"""What every exporter shares: the checks made before building anything (so each format refuses the same things)
and the metadata written into every exported file."""

from __future__ import annotations

import json
from typing import Any

from curmoe.common.errors import InvalidInputError
from curmoe.reference import Model

__all__ = ["check_exportable", "common_metadata"]


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


def common_metadata(model: Model, config: Any) -> dict[str, str]:
    """``curmoe.*`` metadata every export carries: version, model config, export config, compression record and
    method, whether the model is non-causal (expert_choice routing)."""
    import curmoe

    cfg = model.config
    comp = cfg.compression or None
    method = "none"
    if cfg.factors:
        method = (comp or {}).get("method") or "+".join(sorted({f["kind"] for f in cfg.factors.values()}))
    moe = any(cfg.layer_type(l) == "moe" for l in range(cfg.n_layers))
    return {
        "curmoe.version": curmoe.__version__,
        "curmoe.config": cfg.to_json(),
        "curmoe.export": config.to_json(),
        "curmoe.compression": json.dumps(comp, sort_keys=True, default=str),
        "curmoe.compression_method": method,
        "curmoe.non_causal": "true" if moe and cfg.moe.router.kind == "expert_choice" else "false",
    }
