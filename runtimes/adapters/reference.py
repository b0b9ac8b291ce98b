"""The NumPy reference model behind the runtime interface, so one harness (perplexity, generation, benchmarks)
serves the reference and every vendor runtime alike.

``curmoe.runtimes.load(MODEL_DIR, "reference")`` computes in the checkpoint's dtype (float32 for float16 files);
``"reference:float64"`` is the float64 oracle. Feeds and outputs follow the ONNX export's contract: input_ids
(B, T), attention_mask (B, P + T), past.{l}.key/value (B, KV, P, hd) -> logits (B, T, V), present.{l}.key/value.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

import curmoe
from curmoe.common.errors import InvalidInputError
from curmoe.reference import KVCache
from curmoe.runtimes.base import IOSpec, RuntimeInfo, SessionOptions, SpecSession

__all__ = ["ReferenceSession", "load", "devices"]


def devices(target: str) -> list[str]:
    return ["cpu"]


class ReferenceSession(SpecSession):
    def __init__(self, model: curmoe.Model, path: Path, name: str, options: SessionOptions) -> None:
        self.model, self.path, self._name, self._options = model, path, name, options
        c = model.config
        dt = model.dtype
        self._inputs = [IOSpec("input_ids", ("B", "T"), np.dtype(np.int64)),
                        IOSpec("attention_mask", ("B", "P+T"), np.dtype(np.int64))]
        self._outputs = [IOSpec("logits", ("B", "T", c.vocab_size), dt)]
        for l in range(c.n_layers):
            for kv in ("key", "value"):
                self._inputs.append(IOSpec(f"past.{l}.{kv}", ("B", c.kv_heads, "P", c.head_dim_), dt))
                self._outputs.append(IOSpec(f"present.{l}.{kv}", ("B", c.kv_heads, "P+T", c.head_dim_), dt))

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        ids = np.asarray(feeds["input_ids"])
        T = ids.shape[1] if ids.ndim == 2 else 0
        mask = feeds.get("attention_mask")
        mask = np.ones(ids.shape, np.int64) if mask is None else np.asarray(mask)
        P = mask.shape[1] - T
        if P < 0:
            raise InvalidInputError(f"attention_mask has {mask.shape[1]} columns for {T} new tokens; it covers past + new")
        cache = KVCache()
        if P > 0:
            L = self.model.config.n_layers
            cache.keys = [np.asarray(feeds[f"past.{l}.key"]) for l in range(L)]
            cache.values = [np.asarray(feeds[f"past.{l}.value"]) for l in range(L)]
            cache.mask = mask[:, :P].astype(bool)
            cache.n_real = cache.mask.sum(axis=1).astype(np.int64)
        logits = self.model.forward(ids, attention_mask=mask[:, P:], cache=cache)
        out = {"logits": logits}
        for l in range(self.model.config.n_layers):
            out[f"present.{l}.key"], out[f"present.{l}.value"] = cache.keys[l], cache.values[l]
        return out if outputs is None else {k: out[k] for k in outputs}

    def info(self) -> RuntimeInfo:
        return RuntimeInfo(runtime="curmoe-numpy", version=f"{curmoe.__version__} (numpy {np.__version__})",
                           provider="NumPy reference", device=f"cpu ({platform.machine()})", name=self._name,
                           threads=self._options.threads, optimization="n/a")


def load(path: str | os.PathLike[str], target: str, *, name: str = "reference", threads: int | None = None,
         optimization: str = "all", **_: Any) -> ReferenceSession:
    """Load a curmoe model directory; ``target`` is the compute dtype ("native" or "float64")."""
    model = curmoe.load(path, dtype=np.float64 if target == "float64" else None)
    return ReferenceSession(model, Path(path), name, SessionOptions(threads=threads, optimization=optimization))
