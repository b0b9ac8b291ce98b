"""Load-balance metrics of a router, per layer, over a corpus.

With ``c_i`` the number of token->expert assignments expert i received (E experts), ``f_i = c_i / sum_j c_j``
and ``mean(c) = sum_j c_j / E``:

- coefficient of variation ``CV = std(c) / mean(c)`` (population std); 0 = perfectly balanced.
- MaxVio ``(max_i c_i - mean(c)) / mean(c)`` (Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing"); 0 = balanced.
- normalised routing entropy ``H(f) / log E = -sum_i f_i log f_i / log E`` (0 log 0 = 0; 1 when E = 1);
  1 = perfectly balanced, 0 = one expert takes everything.
- dropped fraction = tokens with ``Routing.dropped`` / tokens.
- Switch auxiliary loss ``E * sum_i f_i * P_i`` with ``P_i`` the mean router probability of expert i over tokens
  (Fedus et al. 2021, eq. 4; f_i here counts all k assignments so it also covers top-k); 1 when uniform.
- router z-loss ``mean_t (log sum_i exp z_ti)^2`` over tokens t (Zoph et al. 2022, ST-MoE, eq. 5).

Each is a plain function on arrays, and :class:`LoadStats` accumulates what they need over many routings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import logsumexp

from curmoe.common.checks import check_int
from curmoe.common.errors import InvalidInputError
from curmoe.routing._gating import Routing

__all__ = [
    "LoadStats",
    "load_counts",
    "load_fractions",
    "coefficient_of_variation",
    "max_violation",
    "routing_entropy",
    "dropped_fraction",
    "switch_aux_loss",
    "router_z_loss",
]


def _counts(counts: object) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise InvalidInputError(f"counts must be a 1-D array with one entry per expert, got shape {c.shape}")
    if not np.isfinite(c).all() or (c < 0).any():
        raise InvalidInputError("counts must be finite and >= 0 (assignments per expert)")
    if c.sum() == 0:
        raise InvalidInputError("counts sum to 0: load metrics are undefined without any routed token")
    return c


def load_counts(experts: np.ndarray, n_experts: int) -> np.ndarray:
    """Assignments per expert: ``c_i = #{(t, s) : experts[t, s] == i}``; empty slots (-1) are not counted.

    Args:
        experts: int array of any shape (usually (N, k) from :class:`curmoe.Routing`), -1 for empty slots.
        n_experts: E.

    Returns:
        (E,) int64 counts.
    """
    x = np.asarray(experts)
    if x.size and x.dtype.kind not in "iu":
        raise InvalidInputError(f"experts have dtype {x.dtype}; pass integer expert indices (-1 = empty slot)")
    x = x.astype(np.int64).ravel()
    if x.size and (x.min() < -1 or x.max() >= n_experts):
        raise InvalidInputError(
            f"expert indices span [{x.min()}, {x.max()}], outside [-1, {n_experts - 1}] for n_experts={n_experts}"
        )
    return np.bincount(x[x >= 0], minlength=n_experts).astype(np.int64)


def load_fractions(counts: np.ndarray) -> np.ndarray:
    """``f_i = c_i / sum_j c_j``: the share of assignments each expert got (sums to 1)."""
    c = _counts(counts)
    return c / c.sum()


def coefficient_of_variation(counts: np.ndarray) -> float:
    """``CV = std(c) / mean(c)`` with the population std ``sqrt(mean((c - mean(c))^2))``; 0 = balanced."""
    c = _counts(counts)
    return float(c.std() / c.mean())


def max_violation(counts: np.ndarray) -> float:
    """MaxVio ``= (max_i c_i - mean(c)) / mean(c)``; 0 = balanced, E - 1 = one expert takes all."""
    c = _counts(counts)
    return float((c.max() - c.mean()) / c.mean())


def routing_entropy(counts: np.ndarray) -> float:
    """Normalised entropy ``-sum_i f_i log f_i / log E`` of the load fractions (0 log 0 = 0; 1.0 if E = 1)."""
    f = load_fractions(counts)
    if f.size == 1:
        return 1.0
    nz = f[f > 0]
    return float(-(nz * np.log(nz)).sum() / np.log(f.size))


def dropped_fraction(dropped: np.ndarray) -> float:
    """Share of tokens dropped by capacity: ``#{t : dropped_t} / N``."""
    d = np.asarray(dropped)
    if d.ndim != 1 or d.size == 0 or d.dtype != bool:
        raise InvalidInputError(
            f"dropped must be a non-empty 1-D bool array (one flag per token), got dtype {d.dtype}, shape {d.shape}"
        )
    return float(d.mean())


def _aux(counts: np.ndarray, mean_probs: np.ndarray) -> float:
    f = load_fractions(counts)
    return float(f.size * np.dot(f, mean_probs))


def switch_aux_loss(experts: np.ndarray, probs: np.ndarray) -> float:
    """Switch load-balancing loss ``E * sum_i f_i * P_i`` (Fedus et al. 2021, eq. 4).

    ``f_i`` is expert i's share of the assignments in ``experts`` and ``P_i = (1/N) sum_t probs[t, i]`` its mean
    router probability. It equals 1 under uniform routing with uniform probabilities and grows to E when one expert
    takes every token with probability 1.

    Args:
        experts: (N, k) chosen experts, -1 = empty slot.
        probs: (N, E) router probabilities.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or np.asarray(experts).shape[:1] != p.shape[:1]:
        raise InvalidInputError(
            f"probs must be (N, E) with N >= 1 matching experts (N, k); got {p.shape} and {np.asarray(experts).shape}"
        )
    return _aux(load_counts(experts, p.shape[1]), p.mean(axis=0))


def router_z_loss(logits: np.ndarray) -> float:
    """Router z-loss ``(1/N) sum_t (log sum_i exp z_ti)^2`` (Zoph et al. 2022, ST-MoE, eq. 5), in float64."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise InvalidInputError(f"logits must be (N, E) with N, E >= 1, got shape {z.shape}")
    return float(np.mean(logsumexp(z, axis=1) ** 2))


class LoadStats:
    """Accumulates one layer's routing over a corpus; :meth:`summary` gives every metric of the module docstring.

    Holds only sums (counts, tokens, dropped tokens, router probabilities, squared log-partition), so
    accumulating routings one by one, in any order or split across accumulators joined with :meth:`merge`, gives
    the same summary as one routing over all tokens.
    """

    def __init__(self, n_experts: int) -> None:
        self.n_experts = check_int(n_experts, "n_experts", lo=1)
        self.counts = np.zeros(self.n_experts, dtype=np.int64)  # (E,) assignments
        self.prob_sum = np.zeros(self.n_experts, dtype=np.float64)  # (E,) sum_t probs[t, i]
        self.n_tokens = 0
        self.n_dropped = 0
        self.z_sq_sum = 0.0  # sum_t logsumexp(z_t)^2

    def update(self, routing: Routing) -> LoadStats:
        """Add one :class:`curmoe.Routing` (one routing group); returns ``self``."""
        if not isinstance(routing, Routing):
            raise InvalidInputError(f"update needs a curmoe.Routing, got {type(routing).__name__}")
        if routing.n_experts != self.n_experts:
            raise InvalidInputError(
                f"routing has {routing.n_experts} experts but this LoadStats tracks {self.n_experts}; "
                "use one LoadStats per layer"
            )
        self.counts += load_counts(routing.experts, self.n_experts)
        self.prob_sum += routing.probs.astype(np.float64).sum(axis=0)
        self.n_tokens += routing.n_tokens
        self.n_dropped += routing.n_dropped
        if routing.n_tokens:
            self.z_sq_sum += float((logsumexp(routing.logits.astype(np.float64), axis=1) ** 2).sum())
        return self

    def merge(self, other: LoadStats) -> LoadStats:
        """Add another accumulator's sums into this one (e.g. from another shard of the corpus); returns ``self``."""
        if not isinstance(other, LoadStats) or other.n_experts != self.n_experts:
            raise InvalidInputError(f"merge needs a LoadStats over {self.n_experts} experts, got {other!r}")
        self.counts += other.counts
        self.prob_sum += other.prob_sum
        self.n_tokens += other.n_tokens
        self.n_dropped += other.n_dropped
        self.z_sq_sum += other.z_sq_sum
        return self

    def summary(self) -> dict[str, Any]:
        """Every metric over the accumulated tokens.

        Returns:
            ``counts`` (E,) int64, ``fractions`` (E,) float64, and floats ``cv``, ``max_vio``, ``entropy``,
            ``dropped_fraction``, ``aux_loss``, ``z_loss``; plus ints ``n_tokens``, ``n_assignments``,
            ``n_dropped``. Use ``.tolist()`` on the arrays for JSON.
        """
        if self.n_tokens == 0 or self.counts.sum() == 0:
            raise InvalidInputError("LoadStats has seen no routed token; call update(routing) before summary()")
        c = self.counts
        return {
            "counts": c.copy(),
            "fractions": load_fractions(c),
            "cv": coefficient_of_variation(c),
            "max_vio": max_violation(c),
            "entropy": routing_entropy(c),
            "dropped_fraction": self.n_dropped / self.n_tokens,
            "aux_loss": _aux(c, self.prob_sum / self.n_tokens),
            "z_loss": self.z_sq_sum / self.n_tokens,
            "n_tokens": self.n_tokens,
            "n_assignments": int(c.sum()),
            "n_dropped": self.n_dropped,
        }

    def __repr__(self) -> str:
        return f"LoadStats(n_experts={self.n_experts}, n_tokens={self.n_tokens}, n_dropped={self.n_dropped})"
