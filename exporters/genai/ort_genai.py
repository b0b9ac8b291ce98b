"""``curmoe export MODEL --format ort-genai -o OUT/``: a folder ONNX Runtime GenAI loads (``og.Model(OUT)``).

    OUT/model.onnx             curmoe's KV-cache graph, GenAI names (past_key_values.{l}.*), see ._graph
    OUT/genai_config.json      decoder shapes and I/O names, eos/pad/bos ids, context length, greedy search
    OUT/tokenizer.json         the model's tokenizer in a layout onnxruntime-extensions reads (see ._tokenizer)
    OUT/tokenizer_config.json  its class and special tokens (and the chat template, when the model has one)

Factorised (CUR / SVD / neuron-CUR) experts need nothing special: ONNX Runtime GenAI runs the graph it is given.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from curmoe.common.errors import require
from curmoe.exporters.genai._config import check_decodable, ort_genai_config, tokenizer_config
from curmoe.exporters.genai._tokenizer import TokenizerFiles
from curmoe.exporters.onnx import OnnxExportConfig
from curmoe.reference import Model

__all__ = ["export_ort_genai"]

log = logging.getLogger(__name__)

STACK = "ONNX Runtime GenAI"


def export_ort_genai(model: Model, folder: str | os.PathLike[str], config: OnnxExportConfig | None = None, *,
                     threads: int | None = None) -> dict[str, Any]:
    """Fill ``folder`` (an empty or new directory) with an ONNX Runtime GenAI model; returns a record of it.

    Args:
        model: a dense or compressed :class:`curmoe.Model` whose router decodes causally (not expert_choice).
        folder: where to write; the CLI passes a temporary folder that replaces ``-o`` when this returns.
        config: the ONNX export options (dispatch, dtype, fold_u, fused_moe); ``with_cache`` must stay True.
        threads: ``intra_op_num_threads`` written into genai_config.json (None: ONNX Runtime's default).

    Raises:
        curmoe.DecodingNotSupportedError: an expert_choice model (nothing written).
        curmoe.MissingExtraError: onnx is not installed (``pip install 'curmoe[genai]'``).
    """
    config = config or OnnxExportConfig()
    check_decodable(model, config, STACK)
    require("onnx", "genai")
    from curmoe.exporters.genai._graph import write_genai_onnx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = TokenizerFiles(model.tokenizer_path, model.config.vocab_size) if model.tokenizer_path else None
    path = write_genai_onnx(model, config, folder / "model.onnx", tok.unk_id if tok else None)
    files = [path.name] + ([path.name + ".data"] if path.with_name(path.name + ".data").exists() else [])
    (folder / "genai_config.json").write_text(json.dumps(ort_genai_config(model, path.name, threads), indent=2))
    files.append("genai_config.json")
    if tok is not None:
        files += tok.write(folder, tokenizer_config(model, tok.json, tok.cls, tok.chat_template))
    else:
        log.warning("the model has no tokenizer.json: %s will take token ids only (og.Generator.append_tokens)",
                    STACK)
    return {"stack": STACK, "files": files, "dtype": config.dtype, "dispatch": config.dispatch,
            "tokenizer": tok.cls if tok else None, "tokenizer_added_pieces": tok.added if tok else 0,
            "chat_template": bool(tok and tok.chat_template)}
