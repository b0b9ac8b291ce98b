"""``curmoe export MODEL --format ov-genai -o OUT/``: a folder OpenVINO GenAI loads
(``openvino_genai.LLMPipeline(OUT, "CPU")``).

    OUT/openvino_model.xml/.bin        stateful IR (KV cache as internal state + beam_idx, see .stateful);
                                       float32 KV cache and compute as compile defaults (RUNTIME_OPTIONS)
    OUT/openvino_tokenizer.xml/.bin    tokenizer converted with openvino-tokenizers (layout: ._tokenizer)
    OUT/openvino_detokenizer.xml/.bin  and the detokenizer
    OUT/config.json, generation_config.json   what LLMPipeline reads (eos, greedy defaults)
    OUT/tokenizer.json, tokenizer_config.json the Hugging Face files the IRs were made from

Weights are stored as exported: float32 (``openvino.save_model``'s default would halve them, and the saved model
would not be the validated one), or float16 with ``--dtype float16`` (``compress_to_fp16``: OpenVINO's float16,
a float32 graph whose weights are decompressed at load time).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from curmoe.common.errors import require
from curmoe.exporters.genai._config import check_decodable, hf_configs, tokenizer_config
from curmoe.exporters.genai._tokenizer import TokenizerFiles
from curmoe.exporters.onnx import OnnxExportConfig
from curmoe.reference import Model

__all__ = ["export_ov_genai"]

log = logging.getLogger(__name__)

STACK = "OpenVINO GenAI"

#: Compile defaults stored in the IR (``rt_info["runtime_options"]``): the validated float32 computation. The CPU
#: plugin otherwise computes in bf16 on AMX CPUs and may keep a stateful KV cache in uint8 (``KV_CACHE_PRECISION``
#: u8, its default since 2024, applied inside its fused ScaledDotProductAttention node; measured: no effect on the
#: curmoe graph with openvino 2026.4.1, whose attention is not fused into that node). Both are faster and lossy;
#: a user who wants them passes e.g. ``LLMPipeline(folder, "CPU", INFERENCE_PRECISION_HINT="bf16")``: explicit
#: properties override these.
RUNTIME_OPTIONS = {"KV_CACHE_PRECISION": "f32", "INFERENCE_PRECISION_HINT": "f32"}


def export_ov_genai(model: Model, folder: str | os.PathLike[str], config: OnnxExportConfig | None = None
                    ) -> dict[str, Any]:
    """Fill ``folder`` with an OpenVINO GenAI model; returns a record of it.

    Raises:
        curmoe.DecodingNotSupportedError: an expert_choice model (nothing written).
        curmoe.MissingExtraError: openvino / openvino-tokenizers / transformers missing (``pip install
            'curmoe[genai]'``).
    """
    config = config or OnnxExportConfig()
    check_decodable(model, config, STACK)
    for module in ("onnx", "openvino", "openvino_tokenizers", "transformers", "tokenizers"):
        require(module, "genai")
    import openvino as ov

    from curmoe.exporters.genai._graph import remove_onnx, write_genai_onnx
    from curmoe.exporters.genai.stateful import make_stateful_ir

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = TokenizerFiles(model.tokenizer_path, model.config.vocab_size) if model.tokenizer_path else None
    # float16 is OpenVINO's way: a float32 graph with float16 weights (compress_to_fp16), decompressed at load; the
    # CPU plugin then picks its inference precision. (A float16 ONNX graph has a Cast before the logits, which
    # LLMPipeline's logits slicing does not expect: its sampler fails with 'token_idx < seq_len'.)
    half = config.dtype == "float16"
    graph_config = dataclasses.replace(config, dtype="float32") if half else config
    onnx_path = write_genai_onnx(model, graph_config, folder / ".graph.onnx", tok.unk_id if tok else None)
    try:
        ir = ov.Core().read_model(str(onnx_path))
        meta = _onnx_metadata(onnx_path)
    finally:
        remove_onnx(onnx_path)
    make_stateful_ir(ir)
    for k, v in meta.items():
        ir.set_rt_info(v, ["curmoe", k])
    for k, v in RUNTIME_OPTIONS.items():  # compile defaults read from the IR; properties passed by the user win
        ir.set_rt_info(v, ["runtime_options", k])
    ov.save_model(ir, str(folder / "openvino_model.xml"), compress_to_fp16=half)
    del ir
    files = ["openvino_model.xml", "openvino_model.bin"]
    cfg_json, gen_json = hf_configs(model)
    (folder / "config.json").write_text(json.dumps(cfg_json, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(gen_json, indent=2))
    files += ["config.json", "generation_config.json"]
    if tok is not None:
        tcfg = tokenizer_config(model, tok.json, tok.cls, tok.chat_template)
        files += tok.write(folder, tcfg)
        files += _write_tokenizer_irs(folder, tok, tcfg, model)
    else:
        log.warning("the model has no tokenizer.json: LLMPipeline will take token ids only (ov.Tensor input)")
    return {"stack": STACK, "files": files, "dtype": config.dtype, "dispatch": config.dispatch,
            "tokenizer": "openvino-tokenizers" if tok else None, "tokenizer_added_pieces": tok.added if tok else 0,
            "chat_template": bool(tok and tok.chat_template)}


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _write_tokenizer_irs(folder: Path, tok: TokenizerFiles, tcfg: dict[str, Any], model: Model) -> list[str]:
    """openvino_tokenizer / openvino_detokenizer IRs (special tokens skipped when decoding, as curmoe does)."""
    import openvino as ov
    import openvino_tokenizers
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    special = {k: tcfg[k] for k in ("eos_token", "pad_token", "unk_token", "bos_token") if k in tcfg}
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tok.json)), **special)
    if tok.chat_template:
        hf.chat_template = tok.chat_template
    enc, dec = openvino_tokenizers.convert_tokenizer(hf, with_detokenizer=True, skip_special_tokens=True)
    eos = model.config.eos_token_id
    for ir in (enc, dec):
        if eos is not None:
            ir.set_rt_info(int(eos), "eos_token_id")
    ov.save_model(enc, str(folder / "openvino_tokenizer.xml"))
    ov.save_model(dec, str(folder / "openvino_detokenizer.xml"))
    return ["openvino_tokenizer.xml", "openvino_tokenizer.bin", "openvino_detokenizer.xml", "openvino_detokenizer.bin"]
