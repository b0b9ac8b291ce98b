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
from curmoe._calib import CalibStats
from curmoe._cur import CURResult, cur
from curmoe._interpret import jaccard, kept_columns, kept_rows
from curmoe._params import n_params, rank_for_ratio
from curmoe._svd import SVDResult, svd
# --- gating and metrics (issue 3) ---
from curmoe._gating import ROUTER_KINDS, RouterConfig, Routing, route, update_bias
from curmoe._causal import causal_twin
from curmoe._metrics import (
    LoadStats,
    coefficient_of_variation,
    dropped_fraction,
    load_counts,
    load_fractions,
    max_violation,
    router_z_loss,
    routing_entropy,
    switch_aux_loss,
)
from curmoe._routers_capacity import expert_capacity
from curmoe._routers_fixed import hash_experts
# --- model, checkpoints, compression (issue 3) ---
from curmoe._attention import KVCache
from curmoe._checkpoint import load
from curmoe._compress import CURConfig, SVDConfig, calibrate, compress, register_compression
from curmoe._config import ModelConfig, MoEConfig
from curmoe._linear import CURLinear, DenseLinear, SVDLinear
from curmoe._model import Model, ModelOutput
# --- data and perplexity (issue 4) ---
from curmoe._data import DataNotFoundError, WikiText2Split, data_dir, load_wikitext2, wikitext2_vocab
from curmoe._perplexity import PerplexityResult, perplexity, perplexity_windows

__all__ = [
    "causal_twin",
    "cur",
    "svd",
    "CURResult",
    "SVDResult",
    "CalibStats",
    "rank_for_ratio",
    "n_params",
    "kept_columns",
    "kept_rows",
    "jaccard",
    "ROUTER_KINDS",
    "RouterConfig",
    "Routing",
    "route",
    "update_bias",
    "expert_capacity",
    "hash_experts",
    "LoadStats",
    "load_counts",
    "load_fractions",
    "coefficient_of_variation",
    "max_violation",
    "routing_entropy",
    "dropped_fraction",
    "switch_aux_loss",
    "router_z_loss",
    "compress",
    "CURConfig",
    "SVDConfig",
    "calibrate",
    "register_compression",
    "load",
    "Model",
    "ModelOutput",
    "ModelConfig",
    "MoEConfig",
    "KVCache",
    "DenseLinear",
    "CURLinear",
    "SVDLinear",
    "CheckpointError",
    "CurmoeError",
    "DecodingNotSupportedError",
    "InvalidInputError",
    "MissingExtraError",
    "__version__",
    "DataNotFoundError",
    "WikiText2Split",
    "data_dir",
    "load_wikitext2",
    "wikitext2_vocab",
    "PerplexityResult",
    "perplexity",
    "perplexity_windows",
]
