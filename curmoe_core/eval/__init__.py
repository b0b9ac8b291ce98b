"""curmoe.eval: WikiText-2 data and the one perplexity harness (any ``logits_fn``: reference, torch, runtimes).

Imports only NumPy and :mod:`curmoe.common`.
"""

from __future__ import annotations

from curmoe.eval._data import (
           EOS,
           DataNotFoundError,
           WikiText2Split,
           data_dir,
           load_wikitext2,
           wikitext2_vocab,
)
from curmoe.eval._perplexity import PerplexityResult, perplexity, perplexity_windows, token_nll

__all__ = ["DataNotFoundError", "WikiText2Split", "EOS", "data_dir", "load_wikitext2", "wikitext2_vocab",
           "PerplexityResult", "perplexity", "perplexity_windows", "token_nll"]
