"""The ONNX graph both GenAI folders start from: curmoe's KV-cache export, renamed to the GenAI conventions.

curmoe's graph already has the inputs and outputs the stacks drive (input_ids, attention_mask, logits,
present.{l}.key/value; positions are derived from the attention mask inside the graph, so there is no
position_ids input, which both stacks treat as optional). This pass renames the cache inputs ``past.{l}.*`` to
``past_key_values.{l}.*`` and, when the exported tokenizer has pieces beyond the model's vocabulary (see
:mod:`._tokenizer`), maps every input id >= vocab_size to ``<unk>`` in front of the graph. The result passes
``onnx.checker`` (full check) like every curmoe export. Weights above 256 MB go to ``model.onnx.data`` (unless
``OnnxExportConfig.external_data`` says otherwise) and the rename then never loads them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from curmoe.common.errors import CurmoeError
from curmoe.exporters.genai._config import PAST
from curmoe.exporters.onnx import OnnxExportConfig, export_onnx
from curmoe.reference import Model

__all__ = ["EXTERNAL_BYTES", "remove_onnx", "write_genai_onnx"]

#: Weights above this size go to ``model.onnx.data`` unless the config says otherwise.
EXTERNAL_BYTES = 256 << 20


def write_genai_onnx(model: Model, config: OnnxExportConfig, path: Path, unk_id: int | None) -> Path:
    """Export ``model`` to ``path`` (``.onnx``) with GenAI names; ids >= vocab_size become ``unk_id`` when given."""
    if config.external_data is None and model.n_params() * np.dtype(config.dtype).itemsize > EXTERNAL_BYTES:
        # weights in model.onnx.data (as ONNX Runtime GenAI's own model builder writes them), so that the rename
        # below loads the graph only, not a second copy of the weights
        config = dataclasses.replace(config, external_data=True)
    path = export_onnx(model, config, path)
    proto = onnx.load(str(path), load_external_data=False)  # external initializers stay references to .data
    cfg = model.config
    rename = {f"past.{l}.{kv}": PAST.format(l=l, kv=kv) for l in range(cfg.n_layers) for kv in ("key", "value")}
    for vi in proto.graph.input:
        vi.name = rename.get(vi.name, vi.name)
    ids_in = "input_ids"
    if unk_id is not None:
        ids_in = "input_ids.in_vocab"
        rename["input_ids"] = ids_in
    for node in proto.graph.node:
        for i, x in enumerate(node.input):
            if x in rename:
                node.input[i] = rename[x]
    if unk_id is not None:
        v = helper.make_tensor("genai.vocab_size", TensorProto.INT64, [], [int(cfg.vocab_size)])
        u = helper.make_tensor("genai.unk_id", TensorProto.INT64, [], [int(unk_id)])
        proto.graph.initializer.extend([v, u])
        clamp = [
            helper.make_node("GreaterOrEqual", ["input_ids", "genai.vocab_size"], ["input_ids.oov"],
                             name="genai/oov/GreaterOrEqual"),
            helper.make_node("Where", ["input_ids.oov", "genai.unk_id", "input_ids"], [ids_in],
                             name="genai/in_vocab/Where"),
        ]
        nodes = clamp + list(proto.graph.node)
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    helper.set_model_props(proto, {p.key: p.value for p in proto.metadata_props}
                           | {"curmoe.genai": "past_key_values.{l}.key/value; ids >= vocab_size -> unk"
                              if unk_id is not None else "past_key_values.{l}.key/value"})
    onnx.save_model(proto, str(path))
    del proto
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise CurmoeError(f"the GenAI graph failed onnx.checker ({e}); this is a curmoe bug, please report it") from e
    return path


def remove_onnx(path: Path) -> None:
    """Delete an ONNX file and its external data file, if any."""
    for p in (path, path.with_name(path.name + ".data")):
        if p.exists():
            os.remove(p)
