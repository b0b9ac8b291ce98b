"""Bytes of weights: counted from an exported file, or exactly from the shapes (for models too large to export).

From a file (:func:`weight_bytes`): the bytes of the constants each MatMul (ONNX: ``MatMul`` or ``MatMulNBits``;
OpenVINO IR: ``MatMul`` and its decompression subgraph) reads as its weight, split by :func:`weight_group`
("expert", "other", "never"). ONNX: initializer sizes (weights, scales, zero points); IR: element count x bit width.

From shapes: :func:`matmulnbits_bytes` (ONNX Runtime's MatMulNBits: B as N x ceil(K/block) blocks of block*bits/8
bytes, one float32 scale per block, asymmetric one zero point per block packed to ``bits``) and :func:`nncf_bytes`
(NNCF: int8 per output channel, int4 per group of ``group`` along K; float16 scales; asymmetric: zero points of
the weight's bit width). tests/test_quantize.py checks both formulas against the files the tools write.
"""

from __future__ import annotations

import os
from pathlib import Path

from curmoe.exporters.quantize._config import block_for, weight_group

__all__ = ["float_bytes", "matmulnbits_bytes", "nncf_bytes", "weight_bytes"]


def matmulnbits_bytes(K: int, N: int, bits: int, block_size: int, symmetric: bool = False) -> int:
    """Bytes of one (K, N) weight as ONNX Runtime's MatMulNBits stores it (block chosen by ``block_for``)."""
    b = block_for(K, block_size)
    nb = -(-K // b)
    data = N * nb * (b * bits // 8)
    scales = N * nb * 4
    zp = 0 if symmetric else N * (-(-nb * bits // 8))
    return data + scales + zp


def nncf_bytes(K: int, N: int, bits: int, group: int, symmetric: bool = False) -> int:
    """Bytes of one (K, N) weight after NNCF: int8 per channel; int4 in groups along K (float16 scales)."""
    if bits == 8:
        return N * K + N * 2 + (0 if symmetric else N)
    g = group
    while g > 16 and K % g:  # GroupSizeFallbackMode.ADJUST: the largest power of two dividing K
        g //= 2
    if K % g:
        return nncf_bytes(K, N, 8, group, symmetric)  # backup precision: int8 per channel
    ng = K // g
    return -(-N * K // 2) + N * ng * 2 + (0 if symmetric else -(-N * ng // 2))


def float_bytes(K: int, N: int, itemsize: int = 4) -> int:
    return K * N * itemsize


def weight_bytes(path: str | os.PathLike[str]) -> dict[str, int]:
    """{"expert": bytes, "other": bytes, "never": bytes} of the MatMul weights of an ONNX file or IR .xml."""
    p = Path(path)
    return _ir_bytes(p) if p.suffix == ".xml" else _onnx_bytes(p)


def _onnx_bytes(p: Path) -> dict[str, int]:
    import onnx

    proto = onnx.load(str(p), load_external_data=False)
    g = proto.graph
    size = {}
    for t in g.initializer:
        ext = {e.key: e.value for e in t.external_data}
        if "length" in ext:  # external data
            size[t.name] = int(ext["length"])
        else:
            size[t.name] = len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes
    producer = {o: n for n in g.node for o in n.output}
    out = {"expert": 0, "other": 0, "never": 0}
    for n in g.node:
        if n.op_type not in ("MatMul", "MatMulNBits") or len(n.input) < 2:
            continue
        w = n.input[1]
        name = w
        if w not in size and w in producer and producer[w].op_type == "Transpose":
            w = producer[w].input[0]
        if w not in size:
            continue  # an activation (attention scores)
        for suffix in ("_Q8", "_Q4", "_Q2"):
            name = name.removesuffix(suffix)
        group = weight_group(name)
        out[group] += size[w] + sum(size.get(i, 0) for i in n.input[2:] if i)
    return out


def _ir_bytes(p: Path) -> dict[str, int]:
    import openvino

    model = openvino.Core().read_model(str(p))
    out = {"expert": 0, "other": 0, "never": 0}
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        consts, frontier = [], [op.input_value(1).get_node()]
        for _ in range(8):
            nxt = []
            for node in frontier:
                t = node.get_type_name()
                if t == "Constant":
                    consts.append(node)
                elif t in ("Convert", "Reshape", "Transpose"):
                    nxt.append(node.input_value(0).get_node())
                elif t in ("Subtract", "Multiply"):
                    nxt += [v.get_node() for v in node.input_values()]
            frontier = nxt
        weights = [c for c in consts if len(c.get_output_shape(0)) >= 2 and
                   min(c.get_output_shape(0)[-2:]) > 1]
        if not weights:
            continue
        name = weights[0].get_friendly_name()
        out[weight_group(name)] += sum(
            -(-int(c.get_output_shape(0).__len__() and _numel(c)) * c.get_element_type().bitwidth // 8)
            for c in consts)
    return out


def _numel(c: object) -> int:
    n = 1
    for d in c.get_output_shape(0):  # type: ignore[attr-defined]
        n *= int(d)
    return n
