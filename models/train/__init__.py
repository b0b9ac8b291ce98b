"""curmoe.models.train: train a Mixtral-style MoE LM on WikiText-2 on CPU (``python -m curmoe.models.train``).

Imports torch (on import), the torch twin and the tokenizer.
"""

from __future__ import annotations

from curmoe.models.train._run import PRESETS, build_parser, main, run

__all__ = ["main", "run", "build_parser", "PRESETS"]
