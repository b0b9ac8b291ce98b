"""curmoe.compress: one verb, ``compress(model, config)``, with a handler registered per config type.

Owns: the compression configs (``CURConfig``, ``SVDConfig`` incl. SVD-LLM, ``NeuronConfig``), calibration of a
model's expert inputs (one pass or sequential) and its on-disk cache, the global budget. Imports
:mod:`curmoe.decompose`, :mod:`curmoe.reference` and :mod:`curmoe.common`. Healing (torch) lives in :mod:`curmoe.models`.
"""

from __future__ import annotations

from curmoe.compress._calib_cache import cached_calibrate, default_cache_dir, model_checksum
from curmoe.compress._calibration import Calibration, LayerCalibration, calibrate
from curmoe.compress._compress import compress, register_compression
from curmoe.compress._configs import ALLOCATIONS, NEURON_RULES, CURConfig, NeuronConfig, SVDConfig
from curmoe.compress._stream import compress_checkpoint

__all__ = ["compress", "compress_checkpoint", "CURConfig", "SVDConfig", "NeuronConfig", "calibrate", "Calibration",
           "LayerCalibration", "register_compression", "ALLOCATIONS", "NEURON_RULES", "cached_calibrate",
           "default_cache_dir", "model_checksum"]
