"""curmoe.compress: one verb, ``compress(model, config)``, with a handler registered per config type.

Owns: the compression configs (CUR, SVD/SVD-LLM, neuron CUR), calibration of a model's expert inputs, the
global budget, healing. Imports :mod:`curmoe.decompose`, :mod:`curmoe.reference` and :mod:`curmoe.common`.
"""

from __future__ import annotations

from curmoe.compress._compress import (
    CURConfig,
    SVDConfig,
    calibrate,
    compress,
    register_compression,
)

__all__ = ["compress", "CURConfig", "SVDConfig", "calibrate", "register_compression"]
