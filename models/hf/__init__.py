"""curmoe.models.hf: Hugging Face transformers 5.x MoE models (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) -> curmoe.

Importing this package imports neither torch nor transformers; :func:`from_hf` and :func:`convert` do on use.
"""

from __future__ import annotations

from curmoe.models.hf._convert import convert, from_hf

__all__ = ["from_hf", "convert"]
