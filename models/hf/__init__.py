"""curmoe.models.hf: Hugging Face transformers 5.x models -> curmoe: MoE (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) and
dense (Llama, Mistral, Qwen2, Qwen3) from instances or safetensors folders, and dense GGUF files (dequantised once).

Importing this package imports neither torch nor transformers; :func:`from_hf` and :func:`convert` do on use.
"""

from __future__ import annotations

from curmoe.models.hf._config import DENSE_ARCHITECTURES, MOE_ARCHITECTURES, SUPPORTED_ARCHITECTURES, dense_placeholder
from curmoe.models.hf._convert import convert, from_hf
from curmoe.models.hf._gguf import GGUF_ARCHITECTURES, GGUF_TYPES, GGUFSource, read_gguf, sha256_file

__all__ = ["from_hf", "convert", "read_gguf", "GGUFSource", "sha256_file", "dense_placeholder",
           "SUPPORTED_ARCHITECTURES", "MOE_ARCHITECTURES", "DENSE_ARCHITECTURES", "GGUF_ARCHITECTURES", "GGUF_TYPES"]
