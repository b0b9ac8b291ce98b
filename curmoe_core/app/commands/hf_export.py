"""``curmoe export MODEL --format hf -o FOLDER``: a Hugging Face folder that ``transformers`` loads with
``AutoModelForCausalLM.from_pretrained(FOLDER, trust_remote_code=True)`` (and ``AutoTokenizer``), so existing
evaluation tools (lm-eval, ...) run on a compressed model. See docs/hf_export.md."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from curmoe.app.cli import folder_format
from curmoe.common.errors import InvalidInputError


@folder_format("hf", "a Hugging Face folder (AutoModelForCausalLM with trust_remote_code=True, AutoTokenizer); "
                     "factorised experts stay factorised; --dtype is the compute dtype (weights keep the "
                     "checkpoint's dtype unless narrower)")
def write_hf(model: Any, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    from curmoe.exporters.hf import write_hf_folder

    # graph options that have no meaning for a torch folder: refuse them instead of ignoring them silently
    for flag, given in (("--fold-u", getattr(args, "fold_u", None) is True),
                        ("--fused-moe", getattr(args, "fused_moe", False)),
                        ("--no-cache", getattr(args, "no_cache", False)),
                        ("--dispatch dense", getattr(args, "dispatch", "sparse") == "dense")):
        if given:
            raise InvalidInputError(f"{flag} applies to graph exports, not --format hf (the folder keeps the model's "
                                    "factors as stored and decodes with a KV cache); drop it")
    return write_hf_folder(model, folder, dtype=getattr(args, "dtype", None) or "float32")
