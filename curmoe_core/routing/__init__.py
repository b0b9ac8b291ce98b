"""curmoe.routing: the gating zoo (one entry point, :func:`route`) and load-balance metrics.

Owns: router configs and every router's maths, expert capacity, hash routing, the metrics of docs/gating.md.
Imports only NumPy and :mod:`curmoe.common`; the reference model, the torch twin and the exporters build on it.
"""

from __future__ import annotations

from curmoe.routing._capacity import expert_capacity
from curmoe.routing._fixed import KNUTH_MULTIPLIER, hash_experts, route_random
from curmoe.routing._gating import (
    ROUTER_KINDS,
    RouterConfig,
    Routing,
    route,
    update_bias,
)
from curmoe.routing._metrics import (
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

__all__ = ["ROUTER_KINDS", "RouterConfig", "Routing", "route", "update_bias", "expert_capacity", "hash_experts",
           "route_random", "KNUTH_MULTIPLIER", "LoadStats", "load_counts", "load_fractions",
           "coefficient_of_variation", "max_violation", "routing_entropy", "dropped_fraction", "switch_aux_loss",
           "router_z_loss"]
