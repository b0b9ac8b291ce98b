"""Model configuration: a frozen, validated, JSON-serialisable description of a curmoe MoE transformer.

One config covers the Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE family: RMSNorm pre-norm blocks, RoPE, grouped-query
attention (optional q/k/v biases, optional q/k RMSNorm per head or over the full width), and per layer either a dense
FFN or an MoE block with a router from the gating zoo and optional shared experts.

The config also lists which expert matrices are factorised (``factors``), so a checkpoint's expected tensors and
shapes follow from the config alone, and what compression did (``compression``), for the record.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from curmoe.common.errors import InvalidInputError
from curmoe.routing import RouterConfig

__all__ = ["ACTIVATIONS", "CONFIG_VERSION", "QK_NORMS", "MoEConfig", "ModelConfig"]

CONFIG_VERSION = 1
ACTIVATIONS = ("swiglu", "gelu")
QK_NORMS = (None, "head", "full")
LAYER_TYPES = ("moe", "dense")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name}={value!r} must be a positive integer")


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Keep the keys ``cls`` knows (from_dict ignores unknown keys, so newer files still load)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(frozen=True)
class MoEConfig:
    """An MoE block: ``n_experts`` experts of width ``d_ff``, a router, and optional shared experts.

    Shared experts (Qwen2-MoE, DeepSeek) see every token; with ``shared_gate`` their summed output is scaled by
    ``sigmoid(x @ w_gate)`` (Qwen2-MoE's ``shared_expert_gate``).
    """

    n_experts: int = 8
    d_ff: int = 256
    activation: str = "swiglu"
    router: RouterConfig = field(default_factory=RouterConfig)
    n_shared: int = 0
    shared_d_ff: int = 0
    shared_gate: bool = False

    def __post_init__(self) -> None:
        _positive("n_experts", self.n_experts)
        _positive("d_ff", self.d_ff)
        if self.activation not in ACTIVATIONS:
            raise InvalidInputError(f"activation={self.activation!r} is unknown; choose one of {ACTIVATIONS}")
        if not isinstance(self.router, RouterConfig):
            raise InvalidInputError(f"router must be a RouterConfig, got {type(self.router).__name__}")
        if self.router.kind != "expert_choice" and self.router.top_k > self.n_experts:
            raise InvalidInputError(
                f"router.top_k={self.router.top_k} exceeds n_experts={self.n_experts}; pass top_k <= {self.n_experts}"
            )
        if self.n_shared < 0:
            raise InvalidInputError(f"n_shared={self.n_shared} must be >= 0")
        if self.n_shared and self.shared_d_ff < 1:
            raise InvalidInputError(f"n_shared={self.n_shared} needs shared_d_ff >= 1, got {self.shared_d_ff}")
        if self.shared_gate and not self.n_shared:
            raise InvalidInputError("shared_gate=True needs n_shared >= 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["router"] = self.router.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MoEConfig:
        d = _known(cls, d)
        if "router" in d:
            d["router"] = RouterConfig.from_dict(d["router"])
        return cls(**d)


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only MoE transformer. Weight shapes follow from these fields (see ``curmoe.reference._checkpoint``)."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None  # None = n_heads (plain multi-head attention)
    head_dim: int | None = None  # None = d_model // n_heads
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 256  # the context the model was trained for (perplexity windows use it)
    tie_embeddings: bool = False
    attn_bias: bool = False  # q, k, v biases (Qwen2 style; o has none)
    qk_norm: str | None = None  # None | "head" (Qwen3-MoE, per head) | "full" (OLMoE, over the full width)
    moe: MoEConfig = field(default_factory=MoEConfig)
    dense_d_ff: int = 0  # width of the dense FFN used by layers of type "dense" (SwiGLU)
    layer_types: tuple[str, ...] | None = None  # per layer "moe" | "dense"; None = all MoE
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Which expert matrices are factorised: "layers.{l}.experts.{e}.{gate|up|down}" (or ".shared.{s}.") ->
    # {"kind": "cur" | "svd", "rank": r, "n_cols": c, "folded": bool}. Empty for a dense model.
    factors: dict[str, dict[str, Any]] = field(default_factory=dict)
    compression: dict[str, Any] | None = None  # what compress() did, for the record
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            _positive(name, getattr(self, name))
        if self.n_kv_heads is not None:
            _positive("n_kv_heads", self.n_kv_heads)
            if self.n_heads % self.n_kv_heads:
                raise InvalidInputError(
                    f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads} (grouped-query attention)"
                )
        if self.head_dim is None and self.d_model % self.n_heads:
            raise InvalidInputError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; pass head_dim explicitly"
            )
        if self.head_dim is not None:
            _positive("head_dim", self.head_dim)
        if self.head_dim_ % 2:
            raise InvalidInputError(f"head_dim={self.head_dim_} must be even for RoPE")
        if self.qk_norm not in QK_NORMS:
            raise InvalidInputError(f"qk_norm={self.qk_norm!r} is unknown; choose one of {QK_NORMS}")
        if not (self.norm_eps > 0):
            raise InvalidInputError(f"norm_eps={self.norm_eps!r} must be > 0")
        if not (self.rope_theta > 0):
            raise InvalidInputError(f"rope_theta={self.rope_theta!r} must be > 0")
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
            if len(self.layer_types) != self.n_layers:
                raise InvalidInputError(
                    f"layer_types has {len(self.layer_types)} entries for n_layers={self.n_layers}; give one per layer"
                )
            bad = [t for t in self.layer_types if t not in LAYER_TYPES]
            if bad:
                raise InvalidInputError(f"layer_types contains {bad[0]!r}; each entry must be one of {LAYER_TYPES}")
            if "dense" in self.layer_types and self.dense_d_ff < 1:
                raise InvalidInputError("a layer of type 'dense' needs dense_d_ff >= 1")
        for tok in ("eos_token_id", "pad_token_id"):
            v = getattr(self, tok)
            if v is not None and not 0 <= v < self.vocab_size:
                raise InvalidInputError(f"{tok}={v} is outside the vocabulary [0, {self.vocab_size})")

    # Derived sizes -------------------------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim_(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    def layer_type(self, layer: int) -> str:
        return "moe" if self.layer_types is None else self.layer_types[layer]

    # JSON ----------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["moe"] = self.moe.to_dict()
        d["layer_types"] = None if self.layer_types is None else list(self.layer_types)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = _known(cls, d)
        if "moe" in d:
            d["moe"] = MoEConfig.from_dict(d["moe"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))
