"""curmoe.exporters.hf: a curmoe model as a Hugging Face folder (``AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)``), factorised experts kept factorised. See docs/hf_export.md.

``configuration_curmoe.py`` and ``modeling_curmoe.py`` here are the remote code copied into every folder: they import
only torch and transformers (never curmoe), and nothing in curmoe imports them (importing this package stays
NumPy-only).
"""

from __future__ import annotations

from curmoe.exporters.hf._export import (
    REMOTE_CODE_FILES,
    SUPPORTED_FACTORS,
    SUPPORTED_ROUTERS,
    export_hf,
    hf_tensor_name,
    write_hf_folder,
)

__all__ = ["export_hf", "write_hf_folder", "hf_tensor_name", "REMOTE_CODE_FILES", "SUPPORTED_ROUTERS",
           "SUPPORTED_FACTORS"]
