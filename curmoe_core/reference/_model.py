"""The NumPy reference MoE transformer: the oracle every torch model, exporter and runtime is checked against.

Block l:  h = x + Attn(RMSNorm(x));  x' = h + FFN_l(RMSNorm(h)),  FFN_l = MoE block or dense SwiGLU.
Logits = RMSNorm(x_L) @ lm_head.T (lm_head = embedding when tied). Computes in the dtype of its weights
(``Model.astype(np.float64)`` gives the float64 oracle).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curmoe.common.errors import InvalidInputError
from curmoe.reference._attention import KVCache, attention
from curmoe.reference._checkpoint import (
    TOKENIZER_FILE,
    read_checkpoint,
    read_config,
    write_checkpoint,
)
from curmoe.reference._config import ModelConfig
from curmoe.reference._linear import DenseLinear, Linear
from curmoe.reference._moe import Observer, expert_forward, moe_block
from curmoe.reference._ops import rms_norm
from curmoe.reference._upcast import Float64Experts, Float64Tensors
from curmoe.reference.names import expected_tensors
from curmoe.routing import Routing

__all__ = ["LAZY_ORACLE_BYTES", "Model", "ModelOutput", "is_large", "load", "read_config"]

log = logging.getLogger(__name__)

# Above this many bytes of float64 weights, Model.oracle() upcasts layer by layer instead of copying the model.
LAZY_ORACLE_BYTES = 1 << 30


def is_large(n_params: int) -> bool:
    """More than ``LAZY_ORACLE_BYTES`` of weights in float64: the size above which the oracle upcasts layer by
    layer and validation asks runtimes not to keep second copies of the weights."""
    return 8 * n_params > LAZY_ORACLE_BYTES


@dataclass(frozen=True)
class ModelOutput:
    logits: np.ndarray  # (B, T, vocab)
    routings: list[list[Routing]]  # per layer, one Routing per sequence (empty list for dense layers)


class Model:
    """A curmoe MoE language model held as NumPy arrays.

    Args:
        config: the architecture (and, for compressed models, which expert matrices are factorised).
        tensors: every non-expert weight by checkpoint name ("embed.weight", "layers.0.attn.q.weight", ...).
        experts: every expert matrix by key "layers.{l}.experts.{e}.{gate|up|down}" (shared experts:
            "layers.{l}.shared.{s}.{name}") as a dense, CUR or SVD linear map.
        tokenizer_path: a tokenizer.json that belongs to the model, if any (copied on save).
        storage_dtype: the float dtype ``save`` writes (default: the compute dtype). A float16 checkpoint computes
            in float32 but is saved as float16 again, compressed or not, so compression never grows a file.
    """

    def __init__(
        self,
        config: ModelConfig,
        tensors: dict[str, np.ndarray],
        experts: dict[str, Linear],
        tokenizer_path: Path | None = None,
        storage_dtype: np.dtype | None = None,
    ) -> None:
        self.config = config
        self.tensors = tensors
        self.storage_dtype = np.dtype(storage_dtype) if storage_dtype is not None else None
        self.experts = experts
        self.tokenizer_path = tokenizer_path

    # Construction ---------------------------------------------------------------------------------------------
    @classmethod
    def random(cls, config: ModelConfig, seed: int = 0, dtype: np.dtype = np.float32, std: float = 0.02) -> Model:
        """Randomly initialised dense model (normal(0, std) weights, unit norms, zero biases)."""

        if config.factors:
            raise InvalidInputError("Model.random builds dense models; drop config.factors or use curmoe.compress")
        rng = np.random.default_rng(seed)
        tensors: dict[str, np.ndarray] = {}
        experts: dict[str, Linear] = {}
        for name, (shape, kind) in expected_tensors(config).items():
            if name.endswith("norm.weight"):
                t = np.ones(shape, dtype)
            elif name.endswith(".bias"):
                t = (rng.standard_normal(shape) * std).astype(dtype) if name.endswith("router.bias") else np.zeros(shape, dtype)
            else:
                t = (rng.standard_normal(shape) * std).astype(dtype)
            if ".experts." in name or ".shared." in name:  # "shared_gate" has no ".shared." in it
                experts[name.removesuffix(".weight")] = DenseLinear(t)
            else:
                tensors[name] = t
        return cls(config, tensors, experts)

    @property
    def dtype(self) -> np.dtype:
        if isinstance(self.tensors, Float64Tensors):
            return np.dtype(np.float64)
        return self.tensors["embed.weight"].dtype

    def is_large(self) -> bool:
        """:func:`is_large` of this model's parameter count."""
        return is_large(self.n_params())

    def oracle(self, *, lazy: bool | None = None) -> Model:
        """This model computing in float64: the oracle runtimes are validated against.

        A small model (or ``lazy=False``) is copied with :meth:`astype`. A large one (more than
        ``LAZY_ORACLE_BYTES`` of float64 weights, or ``lazy=True``) gets read-only views that upcast each weight
        when a layer reads it and drop it afterwards: the same float64 values (identical outputs) for one layer's
        float64 weights of extra memory instead of the whole model's, at the cost of re-casting on every call.
        """
        if self.dtype == np.float64:
            return self
        if lazy is None:
            lazy = self.is_large()
        if not lazy:
            return self.astype(np.float64)
        return Model(self.config, Float64Tensors(self.tensors), Float64Experts(self.experts),  # type: ignore[arg-type]
                     self.tokenizer_path, self.storage_dtype)

    def astype(self, dtype: np.dtype) -> Model:
        """A copy computing in ``dtype`` (e.g. np.float64 for the oracle). Index vectors stay int64."""
        t = {k: v.astype(dtype) for k, v in self.tensors.items()}
        e = {k: v.astype(dtype) for k, v in self.experts.items()}
        return Model(self.config, t, e, self.tokenizer_path, self.storage_dtype)

    # Parameter accounting -----------------------------------------------------------------------------------
    def n_expert_params(self, shared: bool = False) -> int:
        """Parameters of the routed expert matrices (plus shared experts if ``shared``)."""
        return sum(m.n_params for k, m in self.experts.items() if ".experts." in k or (shared and ".shared." in k))

    def n_params(self) -> int:
        """All parameters: tensors + expert factors (CUR index vectors are not counted: they are metadata)."""
        return sum(int(v.size) for v in self.tensors.values()) + sum(m.n_params for m in self.experts.values())

    # Forward ------------------------------------------------------------------------------------------------
    def new_cache(self) -> KVCache:
        return KVCache()

    def forward(
        self, input_ids: np.ndarray, *, attention_mask: np.ndarray | None = None, cache: KVCache | None = None
    ) -> np.ndarray:
        """Logits (B, T, vocab) for ``input_ids`` (B, T). With ``cache``, the tokens continue the cached ones
        and the cache is extended in place (incremental decoding)."""
        return self.run(input_ids, attention_mask=attention_mask, cache=cache).logits

    __call__ = forward

    def run(
        self,
        input_ids: np.ndarray,
        *,
        attention_mask: np.ndarray | None = None,
        cache: KVCache | None = None,
        observer: Observer | None = None,
    ) -> ModelOutput:
        """Forward pass returning logits and each MoE layer's routing decisions.

        ``attention_mask`` (B, T): 1 for real tokens, 0 for padding (left or right). ``observer(key, X)`` sees
        the input of every expert matrix (used to gather calibration statistics).
        """
        cfg = self.config
        ids, mask = self._check_inputs(input_ids, attention_mask, cache)
        B, T = ids.shape
        past = 0 if cache is None else cache.length
        if cache is not None and past and cache.mask.shape[0] != B:
            raise InvalidInputError(f"batch size {B} differs from the cache's {cache.mask.shape[0]}; start a new cache")
        n_real_past = np.zeros(B, np.int64) if cache is None or cache.n_real is None else cache.n_real
        key_mask = mask if cache is None or not past else np.concatenate([cache.mask, mask], axis=1)
        positions = n_real_past[:, None] + np.cumsum(mask, axis=1) - 1
        positions = np.where(mask, positions, 0)  # padding positions are irrelevant (masked out)
        decoding = past > 0

        x = self.embed(ids)  # (B, T, d)
        routings: list[list[Routing]] = []
        for l in range(cfg.n_layers):
            pk = cache.keys[l] if cache is not None and past else None
            pv = cache.values[l] if cache is not None and past else None
            x, k, v, r = self._block(l, x, ids, mask, positions, key_mask, pk, pv, decoding, observer)
            if cache is not None:
                if past:
                    cache.keys[l], cache.values[l] = k, v
                else:
                    cache.keys.append(k)
                    cache.values.append(v)
            routings.append(r)
        x = rms_norm(x, self.tensors["norm.weight"], cfg.norm_eps)
        head = self.tensors["embed.weight"] if cfg.tie_embeddings else self.tensors["lm_head.weight"]
        logits = x @ head.T  # (B, T, d) @ (d, V)
        if cache is not None:
            cache.mask = key_mask
            cache.n_real = n_real_past + mask.sum(axis=1)
        return ModelOutput(logits, routings)

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """Token embeddings (B, T, d): the input of layer 0."""
        return self.tensors["embed.weight"][input_ids]

    def block(self, l: int, x: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
              observer: Observer | None = None) -> np.ndarray:
        """Layer ``l`` alone on full sequences (no cache): hidden states (B, T, d) in, (B, T, d) out.

        ``embed`` then ``block`` for every layer equals :meth:`run` before the final norm; layer-by-layer work
        (sequential calibration) uses it to run each layer once on the outputs of the layers before it."""
        ids, mask = self._check_inputs(input_ids, attention_mask, None)
        positions = np.where(mask, np.cumsum(mask, axis=1) - 1, 0)
        return self._block(l, x, ids, mask, positions, mask, None, None, False, observer)[0]

    def _block(self, l: int, x: np.ndarray, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray,
               key_mask: np.ndarray, pk: np.ndarray | None, pv: np.ndarray | None, decoding: bool,
               observer: Observer | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Routing]]:
        """One transformer block: (x out (B, T, d), this step's keys, values, routing per sequence)."""
        cfg, t = self.config, self._layer(l)
        a, k, v = attention(rms_norm(x, t["attn_norm.weight"], cfg.norm_eps), t, cfg, positions, key_mask, pk, pv)
        x = x + a
        hn = rms_norm(x, t["ffn_norm.weight"], cfg.norm_eps)
        routing: list[Routing] = []
        if cfg.layer_type(l) == "moe":
            y, routing = moe_block(
                hn, ids, mask, l, cfg.moe, t["router.weight"], t.get("router.bias"), self.experts,
                t.get("shared_gate.weight"), decoding, observer,
            )
        else:
            mats = {n: DenseLinear(t[f"mlp.{n}.weight"]) for n in ("gate", "up", "down")}
            y = expert_forward(hn, mats, "swiglu")
        return x + y, k, v, routing

    def _layer(self, l: int) -> dict[str, np.ndarray]:
        """This layer's tensors with the "layers.{l}." prefix (and "attn.") stripped, built once and cached
        (for a lazy float64 oracle, built on every call so that the casts die with the call)."""
        pre = f"layers.{l}."
        if isinstance(self.tensors, Float64Tensors):
            return {k[len(pre):].removeprefix("attn."): self.tensors[k] for k in self.tensors if k.startswith(pre)}
        cache = self.__dict__.setdefault("_layer_cache", {})
        if l not in cache:
            cache[l] = {
                k[len(pre):].removeprefix("attn."): v for k, v in self.tensors.items() if k.startswith(pre)
            }
        return cache[l]

    def _check_inputs(
        self, input_ids: np.ndarray, attention_mask: np.ndarray | None, cache: KVCache | None
    ) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise InvalidInputError(f"input_ids must be an int array of shape (B, T) with T >= 1, got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise InvalidInputError(f"input_ids must hold integers, got dtype {ids.dtype}")
        V = self.config.vocab_size
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            bad = ids[(ids < 0) | (ids >= V)][0]
            raise InvalidInputError(f"input_ids contains token id {int(bad)} outside the vocabulary [0, {V})")
        total = ids.shape[1] + (0 if cache is None else cache.length)
        if total > self.config.max_seq_len:
            log.debug("sequence length %d exceeds max_seq_len=%d (RoPE extrapolates)", total, self.config.max_seq_len)
        if attention_mask is None:
            mask = np.ones(ids.shape, dtype=bool)
        else:
            mask = np.asarray(attention_mask)
            if mask.shape != ids.shape:
                raise InvalidInputError(
                    f"attention_mask has shape {mask.shape} but input_ids has {ids.shape}; they must match"
                )
            mask = mask.astype(bool)
        return ids.astype(np.int64, copy=False), mask

    def save(self, path: str | Path) -> Path:
        """Write config.json + model.safetensors (+ tokenizer.json) atomically into directory ``path``."""
        path = write_checkpoint(path, self.config, self.tensors, self.experts, self.tokenizer_path,
                                dtype=self.storage_dtype if self.storage_dtype is not None else self.dtype)
        if self.tokenizer_path is not None:
            self.tokenizer_path = Path(path) / TOKENIZER_FILE
        return path

    def __repr__(self) -> str:
        c = self.config
        kind = "compressed" if c.factors else "dense"
        return (
            f"Model({kind}, layers={c.n_layers}, d_model={c.d_model}, experts={c.moe.n_experts}, "
            f"router={c.moe.router.kind}, params={self.n_params():,}, dtype={self.dtype})"
        )


def load(path: str | Path, *, dtype: np.dtype | None = None) -> Model:
    """Load a model directory (config.json + model.safetensors + tokenizer.json), checking every tensor against the
    config. ``dtype`` casts floats (e.g. ``np.float64`` for the oracle)."""
    return Model(*read_checkpoint(path, dtype=dtype))
