"""Export a curmoe model (dense or CUR/SVD-compressed) as a Core ML ML Program, built with coremltools' MIL builder.

The program is written op by op from the model (not converted from ONNX: coremltools' ONNX converter was removed
in coremltools 6 and onnx-coreml is unmaintained)::

    inputs   input_ids (B, T) int32, attention_mask (B, T) int32       B in [1, max_batch], T in [1, max_seq_len]
    outputs  logits (B, T, V) float32
             routing.{l}.selected (B*T, E) int32                        [routing_outputs]

It is the full-sequence graph (no KV cache; generation re-runs the sequence): pre-norm GQA attention with RoPE
(``curmoe.exporters.coreml._attention``) and an MoE block with dense dispatch (``curmoe.exporters.coreml._moe``), with
factorised experts as chains of ``linear`` ops on their factors (no dense expert matrix in a compressed export).
``ct.convert`` then runs coremltools' default MIL pass pipeline (constant folding, op fusion) and the ML Program
backend, with ``compute_precision=FLOAT32`` so that the float16 export keeps the float32 islands it was built with.

The ``.mlpackage`` is written atomically: saved into a temporary directory next to the target, then moved into
place with ``os.replace`` (an existing package is moved aside first and deleted after the swap). Metadata
(``user_defined_metadata``): ``curmoe.version``, ``curmoe.config``, ``curmoe.export`` (the CoreMLExportConfig JSON),
``curmoe.compression``, ``curmoe.compression_method``, ``curmoe.non_causal``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import get_new_symbol, types

import curmoe
from curmoe.common.errors import InvalidInputError
from curmoe.exporters._checks import check_exportable, common_metadata
from curmoe.exporters.coreml._attention import attention, prologue
from curmoe.exporters.coreml._config import CoreMLExportConfig
from curmoe.exporters.coreml._moe import dense_ffn, moe_layer
from curmoe.exporters.coreml._ops import MilBuilder
from curmoe.reference import Model

__all__ = ["build_program", "export_coreml", "metadata"]

log = logging.getLogger(__name__)

_TARGETS = {"iOS17": "iOS17", "iOS18": "iOS18", "macOS14": "iOS17", "macOS15": "iOS18"}


def _target(config: CoreMLExportConfig) -> Any:
    return getattr(ct.target, _TARGETS[config.minimum_deployment_target])


def _check(model: Model, config: CoreMLExportConfig) -> None:
    cfg = check_exportable(model, config, CoreMLExportConfig, "Core ML").config
    if cfg.vocab_size > 2**31 - 1:
        raise InvalidInputError(f"vocab_size={cfg.vocab_size} does not fit the int32 input_ids of a Core ML model")


def build_program(model: Model, config: CoreMLExportConfig) -> Any:
    """The MIL ``Program`` of ``model`` (function ``main``), before coremltools' passes."""
    _check(model, config)
    cfg, t = model.config, model.tensors
    g = MilBuilder(np.dtype(config.dtype))
    max_tokens = config.max_seq_len or cfg.max_seq_len  # real tokens of one sequence (capacity is per sequence)
    B, T = get_new_symbol(), get_new_symbol()

    def main(input_ids: Any, attention_mask: Any) -> Any:
        ctx = prologue(g, cfg, input_ids, attention_mask)
        x = mb.gather(x=g.weight("embed.weight", t["embed.weight"]), indices=input_ids, axis=0)  # (B, T, d)
        selected = []
        for l in range(cfg.n_layers):
            h = g.rms_norm(x, g.weight(f"layers.{l}.attn_norm.weight", t[f"layers.{l}.attn_norm.weight"]), cfg.norm_eps)
            x = mb.add(x=x, y=attention(g, ctx, cfg, l, h, t))
            h = g.rms_norm(x, g.weight(f"layers.{l}.ffn_norm.weight", t[f"layers.{l}.ffn_norm.weight"]), cfg.norm_eps)
            if cfg.layer_type(l) == "moe":
                y, sel = moe_layer(g, ctx, cfg, l, h, t, model.experts, max_tokens)
                selected.append((l, sel))
            else:
                y = dense_ffn(g, h, l, t)
            x = mb.add(x=x, y=y)
        x = g.rms_norm(x, g.weight("norm.weight", t["norm.weight"]), cfg.norm_eps)
        head = "embed.weight" if cfg.tie_embeddings else "lm_head.weight"
        logits = g.linear(x, head, t[head])  # (B, T, V)
        outs = [mb.cast(x=logits, dtype="fp32", name="logits") if g.act != np.float32
                else mb.identity(x=logits, name="logits")]
        if config.routing_outputs:
            E = cfg.moe.n_experts
            for l, sel in selected:
                outs.append(mb.reshape(x=mb.cast(x=sel, dtype="int32"), shape=np.array([-1, E], np.int32),
                                       name=f"routing_{l}_selected"))
        return tuple(outs)

    specs = [mb.TensorSpec(shape=(B, T), dtype=types.int32), mb.TensorSpec(shape=(B, T), dtype=types.int32)]
    return mb.program(input_specs=specs, opset_version=_target(config))(main)


def metadata(model: Model, config: CoreMLExportConfig) -> dict[str, str]:
    """The ``user_defined_metadata`` written into the package."""
    return common_metadata(model, config)


def export_coreml(model: Model, config: CoreMLExportConfig, path: str | os.PathLike[str]) -> Path:
    """Build, convert and atomically save the ``.mlpackage``; returns its path.

    Raises:
        curmoe.InvalidInputError: bad path, config or a model the exporter cannot express (``random`` router).
    """
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise InvalidInputError(f"Core ML output path {str(path)!r} must end in .mlpackage")
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"Core ML output path {str(path)!r} is a file; an .mlpackage is a directory")
    if model.config.moe.router.kind == "expert_choice":
        log.info("expert_choice is non-causal: the Core ML program is a full-sequence graph (it has no cache anyway)")
    prog = build_program(model, config)
    T = config.max_seq_len or model.config.max_seq_len
    dims = (ct.RangeDim(1, config.max_batch, 1), ct.RangeDim(1, T, min(T, 8)))
    inputs = [ct.TensorType(name=n, shape=dims, dtype=np.int32) for n in ("input_ids", "attention_mask")]
    mlmodel = ct.convert(prog, convert_to="mlprogram", inputs=inputs, minimum_deployment_target=_target(config),
                         compute_precision=ct.precision.FLOAT32, skip_model_load=True)
    for k, v in metadata(model, config).items():
        mlmodel.user_defined_metadata[k] = v
    mlmodel.short_description = f"curmoe {curmoe.__version__} MoE language model ({config.dtype})"
    mlmodel.input_description["input_ids"] = "token ids (B, T)"
    mlmodel.input_description["attention_mask"] = "1 for real tokens, 0 for (left) padding (B, T)"
    mlmodel.output_description["logits"] = "next-token logits (B, T, V), float32"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        mlmodel.save(str(tmp))
        old = None
        if path.exists():  # a directory cannot be replaced in one rename: move the old one aside first
            old = tmpdir / (path.name + ".old")
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    log.info("exported %s (%s, Core ML %s)", path, config.dtype, config.minimum_deployment_target)
    return path
