"""Graph outputs added to an existing ONNX export: the routing tensors validation compares before values.

Importing this module never imports onnx (runtimes import it on the validation path).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from curmoe.common.errors import require
from curmoe.reference import ModelConfig
from curmoe.reference.names import routing_logits, routing_selected

__all__ = ["with_routing_outputs"]


def with_routing_outputs(path: Path, proto: Any, cfg: ModelConfig) -> Path | None:
    """A sibling copy of the ONNX file ``path`` (loaded as ``proto``) that also outputs each MoE layer's
    ``routing.{l}.selected`` / ``routing.{l}.logits`` (tokens, E), or None when there is nothing to add.

    Used by validation (routing is compared before values) and by the OpenVINO IR ``routing_outputs`` option.
    The caller removes the copy."""
    onnx = require("onnx", "onnx")
    produced = {o for n in proto.graph.node for o in n.output}
    outputs = {o.name for o in proto.graph.output}
    added = False
    for l in range(cfg.n_layers):
        if cfg.layer_type(l) != "moe":
            continue
        for name, elem in ((routing_selected(l), onnx.TensorProto.BOOL), (routing_logits(l), onnx.TensorProto.FLOAT)):
            if name in produced and name not in outputs:
                proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, ["tokens", cfg.moe.n_experts]))
                added = True
    if not added:
        return None
    tmp = path.parent / f".{path.stem}.validate-{uuid.uuid4().hex[:8]}.onnx"
    onnx.save_model(proto, str(tmp))  # external data references stay relative to the same folder
    return tmp
