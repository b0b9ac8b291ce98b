"""The gating zoo: one entry point, :func:`route`, for every router an MoE block can use.

Routers (maths in each implementation's docstring and in docs/gating.md):

- ``topk``: softmax then top-k, optionally renormalised (Shazeer et al. 2017; Mixtral, Qwen-MoE, OLMoE).
- ``select``: top-k by logit, every gate exactly 1 (MoEfication, Zhang et al. 2022): an FFN split into experts by
  its neurons is reproduced exactly when every expert is selected.
- ``switch``: top-1 with a per-expert capacity; overflow tokens are dropped (Fedus et al. 2021).
- ``expert_choice``: each expert takes its top tokens up to capacity; non-causal (Zhou et al. 2022).
- ``hash``: expert fixed by a hash of the token id (Roller et al. 2021).
- ``sigmoid_bias``: sigmoid scores, selection-only bias, auxiliary-loss-free balancing (DeepSeek-V3, 2024).
- ``random``: uniform random experts, a baseline.

Ties always break toward the lower expert index (ONNX ``TopK``). A routing group is what the router sees at once:
one sequence's valid tokens in a full forward, one new token while decoding with a KV cache.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from curmoe.common.checks import check_bool, check_finite, check_int, check_number
from curmoe.common.errors import DecodingNotSupportedError, InvalidInputError
from curmoe.routing._capacity import route_expert_choice, route_switch
from curmoe.routing._fixed import route_hash, route_random
from curmoe.routing._score import route_select, route_sigmoid_bias, route_topk

__all__ = ["ROUTER_KINDS", "DECODE_FALLBACKS", "RouterConfig", "Routing", "route", "update_bias"]

logger = logging.getLogger(__name__)

ROUTER_KINDS: tuple[str, ...] = ("topk", "switch", "expert_choice", "hash", "sigmoid_bias", "random", "select")
DECODE_FALLBACKS: tuple[str, ...] = ("topk",)
_DEFAULT_CAPACITY = {"switch": 1.25, "expert_choice": 1.0}
_MAX_SEED = 1 << 31


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclass(frozen=True)
class RouterConfig:
    """How an MoE layer picks experts; frozen, validated, JSON round-trip via :meth:`to_dict` / :meth:`from_dict`.

    Attributes:
        kind: one of :data:`ROUTER_KINDS`.
        top_k: experts per token. ``switch`` forces 1 (any value given is replaced by 1); for ``expert_choice`` it
            is the average number of experts per token that sizes the capacity; ``hash`` and ``random`` give each
            token ``top_k`` distinct experts with gates ``1 / top_k``; ``select`` gives each of its ``top_k`` gates 1.
        normalize: ``topk`` / ``sigmoid_bias`` (and the ``expert_choice`` decode fallback): renormalise the k
            gates to sum to 1. Ignored by the other kinds.
        capacity_factor: ``switch`` and ``expert_choice`` only. None selects the kind's default (1.25 for switch
            as in Fedus et al., 1.0 for expert choice as in Zhou et al.) and is stored resolved; ``math.inf``
            means no capacity limit (serialised as the string ``"inf"``).
        routed_scaling: ``sigmoid_bias`` only: the gates are multiplied by it (DeepSeek-V3 uses 2.5).
        decode_fallback: ``expert_choice`` only: None refuses incremental decoding; ``"topk"`` routes each new token
            to its ``top_k`` experts by softmax while decoding.
        seed: ``hash`` / ``random``: 0 <= seed < 2**31.
    """

    kind: str = "topk"
    top_k: int = 2
    normalize: bool = True
    capacity_factor: float | None = None
    routed_scaling: float = 1.0
    decode_fallback: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ROUTER_KINDS:
            raise InvalidInputError(f"router kind={self.kind!r} is unknown; pass one of {', '.join(ROUTER_KINDS)}")
        top_k = check_int(self.top_k, "top_k", lo=1, fix="experts per token")
        object.__setattr__(self, "top_k", 1 if self.kind == "switch" else top_k)
        object.__setattr__(self, "normalize", check_bool(self.normalize, "normalize"))
        self._check_capacity()
        rs = self.routed_scaling
        object.__setattr__(self, "routed_scaling",
                           check_number(rs, "routed_scaling", lo=0, lo_open=True, fix="DeepSeek-V3 uses 2.5"))
        if self.routed_scaling != 1.0 and self.kind != "sigmoid_bias":
            raise InvalidInputError(
                f"routed_scaling={rs!r} applies only to kind='sigmoid_bias' (got kind={self.kind!r}); leave it at 1.0"
            )
        if self.decode_fallback is not None:
            if self.decode_fallback not in DECODE_FALLBACKS:
                raise InvalidInputError(
                    f"decode_fallback={self.decode_fallback!r} is unknown; pass None (refuse to decode) or 'topk'"
                )
            if self.kind != "expert_choice":
                raise InvalidInputError(
                    f"decode_fallback={self.decode_fallback!r} applies only to kind='expert_choice' "
                    f"(got kind={self.kind!r}, which decodes causally); pass decode_fallback=None"
                )
        object.__setattr__(self, "seed", check_int(self.seed, "seed", lo=0, hi=_MAX_SEED - 1))

    def _check_capacity(self) -> None:
        cf = self.capacity_factor
        if self.kind not in _DEFAULT_CAPACITY:
            if cf is not None:
                raise InvalidInputError(
                    f"capacity_factor={cf!r} applies only to kind='switch' or 'expert_choice' "
                    f"(got kind={self.kind!r}); pass capacity_factor=None"
                )
            return
        if cf is None:
            cf = _DEFAULT_CAPACITY[self.kind]
        if isinstance(cf, str) and cf.lower() in ("inf", "infinity"):
            cf = math.inf
        if isinstance(cf, bool) or not isinstance(cf, (int, float, np.integer, np.floating)) or not cf > 0:
            raise InvalidInputError(
                f"capacity_factor={cf!r} must be a number > 0 (e.g. 1.25), math.inf for no limit, "
                f"or None for the default of kind={self.kind!r} ({_DEFAULT_CAPACITY[self.kind]})"
            )
        object.__setattr__(self, "capacity_factor", float(cf))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the fields (an infinite capacity factor is written as ``"inf"``)."""
        d = asdict(self)
        if d["capacity_factor"] is not None and math.isinf(d["capacity_factor"]):
            d["capacity_factor"] = "inf"
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RouterConfig:
        """Build from :meth:`to_dict` output; unknown keys are ignored (logged at debug level)."""
        if not isinstance(d, Mapping):
            raise InvalidInputError(f"RouterConfig.from_dict needs a mapping, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        extra = sorted(set(d) - names)
        if extra:
            logger.debug("RouterConfig.from_dict ignores unknown keys %s", extra)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True, eq=False)
class Routing:
    """What a router decided for one routing group of N tokens over E experts.

    Attributes:
        experts: (N, k) int64 experts per slot, by gate descending (ties to the lower index); -1 = empty/dropped.
        gates: (N, k) gate of each slot, 0 where ``experts == -1``.
        probs: (N, E) router probabilities: softmax (topk, switch, expert_choice), sigmoid scores (sigmoid_bias),
            uniform 1/E (hash, random).
        logits: (N, E) the router logits as passed in.
        dropped: (N,) True where the token lost an assignment it would have had without capacity (switch), or was
            chosen by no expert (expert_choice).
        capacity: tokens per expert in this group (switch, expert_choice), else None (also for no limit).
    """

    experts: np.ndarray
    gates: np.ndarray
    probs: np.ndarray
    logits: np.ndarray
    dropped: np.ndarray
    capacity: int | None = None

    def __post_init__(self) -> None:
        n = self.probs.shape[0] if self.probs.ndim == 2 else -1
        shapes = (self.experts.shape, self.gates.shape, self.probs.shape, self.logits.shape, self.dropped.shape)
        if (
            n < 0
            or self.experts.ndim != 2
            or self.gates.shape != self.experts.shape
            or self.experts.shape[0] != n
            or self.logits.shape != self.probs.shape
            or self.dropped.shape != (n,)
        ):
            raise InvalidInputError(
                "Routing arrays disagree: need experts/gates (N, k), probs/logits (N, E), dropped (N,); "
                f"got experts, gates, probs, logits, dropped shapes {shapes}"
            )

    @property
    def n_tokens(self) -> int:
        """N, the tokens in the group."""
        return int(self.probs.shape[0])

    @property
    def n_experts(self) -> int:
        """E, the experts the router scored."""
        return int(self.probs.shape[1])

    @property
    def n_dropped(self) -> int:
        """Number of tokens with ``dropped`` True."""
        return int(self.dropped.sum())

    def combine(self, n_experts: int | None = None) -> np.ndarray:
        """Dense (N, E) gate matrix: ``G[t, e] = gate`` of token t's slot on expert e, 0 where not routed.

        The MoE output of token t is ``sum_e G[t, e] * expert_e(x_t)``.
        """
        e = self.n_experts if n_experts is None else n_experts
        top = int(self.experts.max(initial=-1))
        if not _is_int(e) or e <= top or e < 1:
            raise InvalidInputError(f"n_experts={e!r} is too small for expert index {top}; pass n_experts > {top}")
        dense = np.zeros((self.n_tokens, int(e)), dtype=self.gates.dtype)  # (N, E)
        rows, slots = np.nonzero(self.experts >= 0)
        dense[rows, self.experts[rows, slots]] = self.gates[rows, slots]  # experts are distinct within a row
        return dense


def _as_logits(logits: object) -> np.ndarray:
    try:
        z = np.asarray(logits)
    except Exception as err:
        raise InvalidInputError(f"router logits could not be read as an array ({err}); pass an (N, E) array") from err
    if z.ndim != 2:
        raise InvalidInputError(
            f"router logits must be 2-D (tokens, experts) for one routing group, got shape {z.shape}; "
            "call route once per sequence (e.g. logits[b, :T_b]) or per new token while decoding"
        )
    if z.shape[1] < 1:
        raise InvalidInputError(f"router logits have shape {z.shape}: no experts; need at least one expert column")
    if z.dtype.kind in "iu":
        z = z.astype(np.float64)
    elif z.dtype.kind != "f":
        raise InvalidInputError(f"router logits have dtype {z.dtype}; pass a float array")
    check_finite(z, "router logits (tokens, experts)",
                 fix="check the router weights and the hidden states feeding the router")
    return z


def _as_token_ids(token_ids: object, n: int) -> np.ndarray:
    t = np.asarray(token_ids)
    if t.ndim != 1 or t.shape[0] != n:
        raise InvalidInputError(
            f"token_ids has shape {t.shape} but the logits have {n} rows; pass one token id per routed token, "
            f"shape ({n},)"
        )
    if t.dtype.kind not in "iu":
        raise InvalidInputError(f"token_ids have dtype {t.dtype}; pass integer token ids")
    if n and (t.min() < 0 or t.max() >= _MAX_SEED):
        raise InvalidInputError(f"token_ids must lie in [0, 2**31), got range [{t.min()}, {t.max()}]")
    return t.astype(np.int64)


def _as_bias(bias: object, kind: str, n_experts: int) -> np.ndarray:
    if bias is None:
        return np.zeros(n_experts)
    if kind != "sigmoid_bias":
        raise InvalidInputError(f"bias is used only by kind='sigmoid_bias' (got kind={kind!r}); pass bias=None")
    b = np.asarray(bias, dtype=np.float64)
    if b.shape != (n_experts,):
        raise InvalidInputError(f"bias must have shape (E,)=({n_experts},), one entry per expert; got {b.shape}")
    if not np.isfinite(b).all():
        raise InvalidInputError("bias contains NaN/Inf; reset it to zeros and re-run update_bias")
    return b


def route(
    logits: np.ndarray,
    config: RouterConfig,
    *,
    token_ids: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    decoding: bool = False,
) -> Routing:
    """Route one group of N tokens to E experts with the router ``config.kind``.

    The maths is computed in float64 whatever the input dtype; ``gates``, ``probs`` and ``logits`` come back in
    the input's float dtype (float64 for integer input).

    Capacity at inference: ``switch`` and ``expert_choice`` size capacity per routing group, so a full forward
    (one call per sequence, N = its valid tokens) gets ``C = ceil(cf * N / E)``, and while decoding (N = 1)
    ``C = ceil(cf / E) >= 1`` so ``switch`` never drops a decoded token; decoded tokens can therefore route
    differently from the same tokens in a full forward whenever the full forward dropped some.

    Args:
        logits: (N, E) router logits for one group (for ``hash`` / ``random`` only the shape is used; pass zeros
            if the layer has no router weights).
        config: the router.
        token_ids: (N,) token ids; required for ``hash``, length-checked when given.
        bias: (E,) selection bias for ``sigmoid_bias`` (None = zeros); must be None for other kinds.
        decoding: True when routing one new token with a KV cache. ``expert_choice`` then raises
            :class:`curmoe.DecodingNotSupportedError` unless ``decode_fallback="topk"``.

    Returns:
        The :class:`Routing`.
    """
    if not isinstance(config, RouterConfig):
        raise InvalidInputError(f"config must be a RouterConfig, got {type(config).__name__}")
    z_in = _as_logits(logits)
    n, e = z_in.shape
    out_dtype = z_in.dtype
    z = z_in.astype(np.float64)
    kind, k = config.kind, config.top_k
    ids = None if token_ids is None else _as_token_ids(token_ids, n)
    b = _as_bias(bias, kind, e)
    if kind == "expert_choice" and decoding:
        if config.decode_fallback is None:
            raise DecodingNotSupportedError(
                "router kind='expert_choice' is non-causal (each expert ranks the whole sequence), so it cannot "
                "route tokens one at a time with a KV cache; run the full forward instead, or set "
                'decode_fallback="topk" in RouterConfig to route each decoded token to its top_k experts'
            )
        kind = config.decode_fallback
    if k > e and kind != "expert_choice":  # expert choice only uses top_k to size the capacity
        raise InvalidInputError(f"top_k={k} is out of range for {e} experts; pass 1 <= top_k <= {e}")

    capacity = None
    if kind == "topk":
        experts, gates, probs, dropped, capacity = route_topk(z, k, config.normalize)
    elif kind == "select":
        experts, gates, probs, dropped, capacity = route_select(z, k)
    elif kind == "switch":
        experts, gates, probs, dropped, capacity = route_switch(z, config.capacity_factor)
    elif kind == "expert_choice":
        experts, gates, probs, dropped, capacity = route_expert_choice(z, k, config.capacity_factor)
    elif kind == "sigmoid_bias":
        experts, gates, probs, dropped, capacity = route_sigmoid_bias(z, k, config.normalize, config.routed_scaling, b)
    else:  # hash / random: logits ignored, uniform probs
        if kind == "hash":
            if ids is None:
                raise InvalidInputError(
                    "router kind='hash' needs the token ids: pass route(logits, config, token_ids=ids) with ids of "
                    f"shape ({n},)"
                )
            experts, gates = route_hash(e, ids, k, config.seed)
        else:
            experts, gates = route_random(n, e, k, config.seed)
        probs, dropped = np.full((n, e), 1.0 / e), np.zeros(n, dtype=bool)
    return Routing(
        experts=experts.astype(np.int64),
        gates=gates.astype(out_dtype),
        probs=probs.astype(out_dtype),
        logits=z_in,
        dropped=dropped,
        capacity=capacity,
    )


def update_bias(bias: np.ndarray, counts: np.ndarray, speed: float) -> np.ndarray:
    """One step of DeepSeek-V3's auxiliary-loss-free balancing: ``b_i <- b_i + speed * sign(mean(c) - c_i)``.

    An overloaded expert (``c_i`` above the mean load) has its selection bias lowered, an underloaded one raised;
    experts exactly at the mean keep theirs. ``counts`` are the tokens each expert received over the last batch.

    Args:
        bias: (E,) current bias.
        counts: (E,) expert loads (non-negative).
        speed: the bias update speed gamma >= 0 (DeepSeek-V3 uses 0.001).

    Returns:
        The new (E,) float64 bias; the inputs are not modified.
    """
    b = np.asarray(bias, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    if b.ndim != 1 or c.shape != b.shape:
        raise InvalidInputError(f"bias and counts must both have shape (E,); got {b.shape} and {c.shape}")
    if not (np.isfinite(b).all() and np.isfinite(c).all()) or (c < 0).any():
        raise InvalidInputError("bias must be finite and counts finite and >= 0 (tokens per expert)")
    speed = check_number(speed, "speed", lo=0, fix="DeepSeek-V3 uses 0.001")
    return b + speed * np.sign(c.mean() - c)
