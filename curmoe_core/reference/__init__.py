"""curmoe.reference: the NumPy reference MoE transformer, the oracle every other engine is checked against.

Owns: the model config, attention with KV cache, the MoE block, the expert linear maps (dense, CUR, SVD, neuron),
checkpoints (safetensors + config.json), tensor names (:mod:`curmoe.reference.names`) and the causal twin.
Imports NumPy, safetensors, :mod:`curmoe.common` and :mod:`curmoe.routing`.
"""

from __future__ import annotations

from curmoe.reference._attention import KVCache
from curmoe.reference._checkpoint import TOKENIZER_SIDE_FILES
from curmoe.reference._causal import causal_twin
from curmoe.reference._config import ModelConfig, MoEConfig
from curmoe.reference._linear import CURLinear, DenseLinear, Linear, NeuronLinear, SVDLinear
from curmoe.reference._model import Model, ModelOutput, is_large, load, read_config
from curmoe.reference._moe import expert_forward
from curmoe.reference.names import expected_tensors, expert_keys

__all__ = [
           "CURLinear",
           "DenseLinear",
           "KVCache",
           "Linear",
           "MoEConfig",
           "Model",
           "ModelConfig",
           "ModelOutput",
           "NeuronLinear",
           "SVDLinear",
           "TOKENIZER_SIDE_FILES",
           "causal_twin",
           "expected_tensors",
           "expert_forward",
           "expert_keys",
           "is_large",
           "load",
           "read_config",
]
