"""curmoe: compress Mixture-of-Experts models with CUR decomposition (SVD as the baseline).

The core package (imported as ``curmoe``) needs only NumPy/SciPy (+ safetensors for checkpoints, tqdm for
progress bars). It never imports torch, onnx, onnxruntime, openvino or coremltools: those live behind
``curmoe.models``, ``curmoe.exporters`` and ``curmoe.runtimes`` and are optional extras.
"""

from __future__ import annotations

from curmoe._errors import (
    CheckpointError,
    CurmoeError,
    DecodingNotSupportedError,
    InvalidInputError,
    MissingExtraError,
)

__version__ = "0.1.0"

# --- decompositions (issue 2) ---
# --- gating and metrics (issue 3) ---
# --- model, checkpoints, compression (issue 3) ---
# --- data and perplexity (issue 4) ---

__all__ = [
    "CheckpointError",
    "CurmoeError",
    "DecodingNotSupportedError",
    "InvalidInputError",
    "MissingExtraError",
    "__version__",
]
