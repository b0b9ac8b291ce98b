"""curmoe.models.twin: the torch twin of the NumPy reference (training, fast inference, healing).

Imports torch, :mod:`curmoe.reference` and :mod:`curmoe.routing`.
"""

from __future__ import annotations

from curmoe.models.twin._attention import TorchKVCache
from curmoe.models.twin._model import TorchMoE, TrainOutput, load_torch, train_only_u

__all__ = ["TorchMoE", "TorchKVCache", "TrainOutput", "load_torch", "train_only_u"]
