"""Export a curmoe model (dense or CUR/SVD-compressed) as one ONNX causal language model.

Graph (opset 18 by default, see :data:`curmoe.exporters.DEFAULT_OPSET`)::

    inputs   input_ids (B, T) int64, attention_mask (B, P+T) int64,
             past.{l}.key / past.{l}.value (B, KV, P, hd)                    [with_cache]
    outputs  logits (B, T, V) float32, present.{l}.key / value (B, KV, P+T, hd) [with_cache]
             routing.{l}.selected (B*T, E) bool, routing.{l}.logits (B*T, E) float32  [routing_outputs]

with B, T, P dynamic. Hidden states stay 2-D (B*T, d) so every linear map is a MatMul of equal-rank inputs; the
blocks are those of the NumPy reference (``curmoe.reference._model``): pre-norm GQA attention with RoPE and an MoE block (or a
dense SwiGLU FFN). Every export is checked with ``onnx.checker.check_model(full_check=True)`` (which runs strict
shape inference) after ``onnx.shape_inference`` has stored the inferred shapes, and is written atomically: a temporary
directory next to the target, then ``os.replace`` (the external data file first, the model last).

Metadata (``metadata_props``): ``curmoe.version``, ``curmoe.config`` (the source ModelConfig JSON),
``curmoe.export`` (this export's OnnxExportConfig JSON), ``curmoe.compression`` (JSON: method, ratio, ... or
``null``), ``curmoe.compression_method``, ``curmoe.compression_ratio``, ``curmoe.non_causal``,
``curmoe.cur_indices`` (JSON ``{matrix key: {"rows": [...], "cols": [...]}}``: the CUR row/column indices are kept
in metadata, not as initializers, because no node reads them and unused initializers are dropped with a warning
by ONNX Runtime).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

import curmoe
from curmoe.common.errors import (
    CurmoeError,
    DecodingNotSupportedError,
    InvalidInputError,
)
from curmoe.exporters._checks import check_exportable, common_metadata
from curmoe.exporters.onnx._attention import attention, prologue, rms_norm
from curmoe.exporters.onnx._config import EXTERNAL_DATA_BYTES, OnnxExportConfig
from curmoe.exporters.onnx._graph import ExternalData, GraphBuilder
from curmoe.exporters.onnx._moe import dense_ffn, fused_applies, moe_layer
from curmoe.reference import CURLinear, Model
from curmoe.reference.names import routing_logits, routing_selected

__all__ = ["export_onnx", "build_model"]

log = logging.getLogger(__name__)


def _check(model: Model, config: OnnxExportConfig) -> None:
    cfg = check_exportable(model, config, OnnxExportConfig, "ONNX").config
    moe_layers = [l for l in range(cfg.n_layers) if cfg.layer_type(l) == "moe"]
    kind = cfg.moe.router.kind
    if moe_layers and kind == "expert_choice" and config.with_cache:
        raise DecodingNotSupportedError(
            "router kind='expert_choice' is non-causal (each expert ranks the whole sequence), so it has no "
            "KV-cache decoding graph; export the full-sequence graph with OnnxExportConfig(with_cache=False)"
        )
    if config.fused_moe and moe_layers:
        why = fused_applies(cfg)
        if why:
            raise InvalidInputError(f"fused_moe=True does not apply to this model: {why}; pass fused_moe=False")


def build_model(model: Model, config: OnnxExportConfig) -> onnx.ModelProto:
    """The ONNX ModelProto of ``model`` (weights in memory; :func:`export_onnx` writes it)."""
    return _build(model, config)[0]


def _build(model: Model, config: OnnxExportConfig, external: ExternalData | None = None
           ) -> tuple[onnx.ModelProto, int]:
    _check(model, config)
    cfg = model.config
    act = np.dtype(config.dtype)
    g = GraphBuilder(act, external)
    t, cache = model.tensors, config.with_cache
    ctx = prologue(g, cfg, cache)

    x = g.op("Gather", [g.weight("embed.weight", t["embed.weight"]), ctx.ids_flat], "embed", axis=0)  # (N, d)
    for l in range(cfg.n_layers):
        w = g.weight(f"layers.{l}.attn_norm.weight", t[f"layers.{l}.attn_norm.weight"])
        a = attention(g, ctx, cfg, l, rms_norm(g, x, w, cfg.norm_eps, f"layers.{l}.attn_norm"), t, cache)
        x = g.op("Add", [x, a], f"layers.{l}.h")
        w = g.weight(f"layers.{l}.ffn_norm.weight", t[f"layers.{l}.ffn_norm.weight"])
        hn = rms_norm(g, x, w, cfg.norm_eps, f"layers.{l}.ffn_norm")
        if cfg.layer_type(l) == "moe":
            y = moe_layer(g, ctx, cfg, l, hn, t, model.experts, config.dispatch, config.fold_u, config.fused_moe)
        else:
            y = dense_ffn(g, hn, l, t)
        x = g.op("Add", [x, y], f"layers.{l}.out")
    x = rms_norm(g, x, g.weight("norm.weight", t["norm.weight"]), cfg.norm_eps, "final_norm")
    head = "embed.weight" if cfg.tie_embeddings else "lm_head.weight"
    logits = g.op("MatMul", [x, g.weight_t(head, t[head])], "logits_flat")  # (N, d) @ (d, V)
    if act == np.float32:
        g.op("Reshape", [logits, ctx.shape_btv], outputs=["logits"])
    else:  # logits are float32 in every export
        g.op("Cast", [g.op("Reshape", [logits, ctx.shape_btv], "logits_act")], outputs=["logits"], to=TensorProto.FLOAT)

    g.add_output("logits", TensorProto.FLOAT, ["batch", "seq", cfg.vocab_size])
    if cache:
        for l in range(cfg.n_layers):
            for kv in ("key", "value"):
                g.add_output(f"present.{l}.{kv}", g.act_onnx, ["batch", cfg.kv_heads, "total_seq", cfg.head_dim_])
    if config.routing_outputs:
        for l in range(cfg.n_layers):
            if cfg.layer_type(l) == "moe":
                if not config.fused_moe:
                    g.add_output(routing_selected(l), TensorProto.BOOL, ["tokens", cfg.moe.n_experts])
                g.add_output(routing_logits(l), TensorProto.FLOAT, ["tokens", cfg.moe.n_experts])

    graph = g.make_graph("curmoe", f"curmoe {curmoe.__version__} export of {model!r}")
    opsets = [helper.make_opsetid("", config.opset)]
    if config.fused_moe:
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="curmoe", producer_version=curmoe.__version__)
    proto.ir_version = helper.find_min_ir_version_for(opsets[:1])
    proto.doc_string = "curmoe MoE language model; see metadata_props for the source config and compression"
    helper.set_model_props(proto, _metadata(model, config))
    return proto, g.weight_bytes


def _metadata(model: Model, config: OnnxExportConfig) -> dict[str, str]:
    c = model.config.compression or {}
    ratio = c.get("ratio_expert_params", c.get("target_ratio", c.get("ratio")))
    indices = {k: {"rows": lin.rows.tolist(), "cols": lin.cols.tolist()}
               for k, lin in sorted(model.experts.items()) if isinstance(lin, CURLinear)}
    return common_metadata(model, config) | {
        "curmoe.compression_ratio": "none" if ratio is None else str(ratio),
        "curmoe.cur_indices": json.dumps(indices) if indices else "none",
    }


def export_onnx(model: Model, config: OnnxExportConfig, path: str | os.PathLike[str]) -> Path:
    """Build, shape-infer, check and atomically write the ONNX file; returns its path."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise InvalidInputError(f"ONNX output path {str(path)!r} must end in .onnx")
    if path.is_dir():
        raise InvalidInputError(f"ONNX output path {str(path)!r} is a directory; pass a file name ending in .onnx")
    # decided before building (weights of the export's dtype), so that external weights are streamed to their file
    estimate = model.n_params() * np.dtype(config.dtype).itemsize
    external = config.external_data if config.external_data is not None else estimate > EXTERNAL_DATA_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        data_name = path.name + ".data"
        if external:  # weights go to the data file as they are added: the proto never holds them
            with ExternalData(tmpdir / data_name, data_name) as ext:
                proto, weight_bytes = _build(model, config, ext)
        else:
            proto, weight_bytes = _build(model, config)
        onnx.save_model(proto, tmp)
        del proto
        # shape inference file to file: the in-memory API (infer_shapes(proto)) serialises and parses the whole
        # model in Python several times (measured 8x the weights at peak for a 0.5 GB inline export)
        onnx.shape_inference.infer_shapes_path(str(tmp), str(tmp), strict_mode=True, data_prop=True)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as e:
            raise CurmoeError(
                f"the exported graph failed onnx.checker ({e}); this is a curmoe bug, please report it"
            ) from e
        if external:
            os.replace(tmpdir / data_name, path.parent / data_name)
        elif (path.parent / data_name).exists():
            log.debug("leaving stale %s from an earlier external-data export", data_name)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    log.info("exported %s (%s, %s dispatch, %.1f MB of weights%s)", path, config.dtype, config.dispatch,
             weight_bytes / 1e6, ", external data" if external else "")
    return path
