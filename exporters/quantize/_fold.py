"""Give each chosen MatMul a constant (K, N) initializer as its weight, the form the quantisers match.

A curmoe export stores each weight under its checkpoint name in torch orientation (out, in) and multiplies by
``Transpose(W)`` (so initializers keep the checkpoint's names). ONNX Runtime's MatMulNBits quantiser and NNCF only
quantise a MatMul whose second input is a constant: here ``x @ Transpose(W)`` becomes ``x @ W_T`` with the
initializer ``W_T = W.T`` named ``<name>.T`` (the Transpose's output name). A Transpose left without consumers is
removed and so is its source initializer unless something else reads it (the tied embedding stays for the Gather).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from curmoe.common.errors import InvalidInputError

__all__ = ["curmoe_meta", "fold_weights"]


def curmoe_meta(proto: Any, path: str) -> dict[str, str]:
    """The curmoe metadata of an ONNX model; refuses a file that is not a curmoe export or is quantised already."""
    meta = {p.key: p.value for p in proto.metadata_props}
    if "curmoe.config" not in meta:
        raise InvalidInputError(f"{path!r} has no curmoe.config metadata: it is not a curmoe export; export one with "
                                "curmoe export MODEL -o X.onnx")
    if "curmoe.quantization" in meta:
        q = json.loads(meta["curmoe.quantization"])
        raise InvalidInputError(f"{path!r} is quantised already ({q['config']['bits']}-bit); quantise the float "
                                "export instead")
    if any(n.domain == "com.microsoft" and n.op_type == "MoE" for n in proto.graph.node):
        raise InvalidInputError(f"{path!r} uses the fused com.microsoft.MoE operator, whose expert weights are no "
                                "MatMul; export without --fused-moe to quantise the experts")
    return meta


def fold_weights(proto: Any, chosen: Callable[[str], bool]) -> dict[str, tuple[int, int]]:
    """Rewrite ``proto`` in place so every MatMul whose weight name satisfies ``chosen`` reads a (K, N) initializer.

    Returns: MatMul node name -> (K, N) of its weight, for the chosen MatMuls whose weight is a 2-D constant.
    """
    from onnx import numpy_helper

    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    out: dict[str, tuple[int, int]] = {}
    new_inits = []
    for n in g.node:
        if n.op_type != "MatMul" or len(n.input) != 2 or not chosen(n.input[1]):
            continue
        b = n.input[1]
        if b in inits:
            dims = tuple(inits[b].dims)
        else:
            t = producer.get(b)
            if t is None or t.op_type != "Transpose" or t.input[0] not in inits:
                continue
            perm = [list(a.ints) for a in t.attribute if a.name == "perm"]
            W = numpy_helper.to_array(inits[t.input[0]])  # (out, in), the checkpoint's orientation
            if W.ndim != 2 or perm not in ([], [[1, 0]]):
                continue
            if b not in {i.name for i in new_inits}:
                new_inits.append(numpy_helper.from_array(np.ascontiguousarray(W.T), b))  # (K=in, N=out)
            dims = (W.shape[1], W.shape[0])
        if len(dims) == 2:
            out[n.name] = (int(dims[0]), int(dims[1]))
    g.initializer.extend(new_inits)
    folded = {i.name for i in new_inits}
    keep = [n for n in g.node if not (n.op_type == "Transpose" and n.output[0] in folded)]
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return out
