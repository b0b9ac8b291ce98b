"""curmoe: compress Mixture-of-Experts models with interpretable CUR (SVD and SVD-LLM as the baselines).

The core package (imported as ``curmoe``) needs only NumPy/SciPy (+ safetensors for checkpoints, tqdm for
progress bars). It never imports torch, onnx, onnxruntime, openvino or coremltools: those live behind
``curmoe.models``, ``curmoe.exporters`` and ``curmoe.runtimes`` and are optional extras.

Layout (docs/architecture.md): ``common`` (errors, checks, atomic I/O) <- ``decompose`` (one matrix) and
``routing`` (gating) <- ``reference`` (the NumPy model) <- ``compress`` (whole models); ``eval`` (data,
perplexity); ``app`` (CLI, demo, reports) is the only part of the core that imports the other packages.
"""

from __future__ import annotations

from curmoe.common.errors import (
    CheckpointError,
    CurmoeError,
    DecodingNotSupportedError,
    InvalidInputError,
    MissingExtraError,
)

__version__ = "0.1.0"

from curmoe.compress import (
    CURConfig,
    NeuronConfig,
    SVDConfig,
    calibrate,
    compress,
    compress_checkpoint,
    register_compression,
)
from curmoe.decompose import (
    CalibStats,
    CURResult,
    SVDResult,
    cur,
    jaccard,
    kept_columns,
    kept_rows,
    n_params,
    rank_for_ratio,
    svd,
)
from curmoe.eval import (
    DataNotFoundError,
    PerplexityResult,
    WikiText2Split,
    data_dir,
    load_wikitext2,
    perplexity,
    perplexity_windows,
    wikitext2_vocab,
)
from curmoe.reference import (
    CURLinear,
    DenseLinear,
    KVCache,
    Model,
    ModelConfig,
    ModelOutput,
    MoEConfig,
    SVDLinear,
    causal_twin,
    load,
)
from curmoe.routing import (
    ROUTER_KINDS,
    LoadStats,
    RouterConfig,
    Routing,
    coefficient_of_variation,
    dropped_fraction,
    expert_capacity,
    hash_experts,
    load_counts,
    load_fractions,
    max_violation,
    route,
    router_z_loss,
    routing_entropy,
    switch_aux_loss,
    update_bias,
)

__all__ = [
    # one verb per package
    "compress", "compress_checkpoint", "CURConfig", "SVDConfig", "NeuronConfig", "calibrate", "register_compression",
    # one matrix
    "cur", "svd", "CURResult", "SVDResult", "CalibStats", "rank_for_ratio", "n_params", "kept_columns", "kept_rows",
    "jaccard",
    # the reference model
    "load", "Model", "ModelOutput", "ModelConfig", "MoEConfig", "KVCache", "DenseLinear", "CURLinear", "SVDLinear",
    "causal_twin",
    # routing
    "ROUTER_KINDS", "RouterConfig", "Routing", "route", "update_bias", "expert_capacity", "hash_experts",
    "LoadStats", "load_counts", "load_fractions", "coefficient_of_variation", "max_violation", "routing_entropy",
    "dropped_fraction", "switch_aux_loss", "router_z_loss",
    # data and perplexity
    "DataNotFoundError", "WikiText2Split", "data_dir", "load_wikitext2", "wikitext2_vocab", "PerplexityResult",
    "perplexity", "perplexity_windows",
    # errors
    "CurmoeError", "InvalidInputError", "CheckpointError", "MissingExtraError", "DecodingNotSupportedError",
    "__version__",
]
