"""Validation tolerances, per export dtype, in one place.

A runtime passes :func:`curmoe.runtimes.validate` when, against the float64 NumPy reference on the same inputs,

- ``max_rel_err = max |z_rt - z_ref| / max |z_ref|`` over the real tokens of every sequence whose routing agreed
  with the reference (full prompts, padded batches and cached decode steps) is at most ``max_rel_err``;
- the routing agreement (share of (token, MoE layer) pairs whose selected expert set is identical) is at least
  ``routing_agreement``;
- the perplexity ratio on the token sample satisfies ``|ppl_rt / ppl_ref - 1| <= ppl_rel``.

float32: a float32 forward pass differs from float64 by ~1e-6 of the logit scale on the test models (measured
6e-7 to 2e-6, perplexity ratio <= 2e-7) and the error grows with depth and width; 2e-4 leaves room for 30-60 layer
models and fused kernels (other summation orders) while any real bug (a wrong sign, position, gate or mask) costs
> 1e-2. A router near-tie can flip an expert in float32; 0.995 allows one flip in 200 routing decisions.
float16: 10-bit mantissa, ~5e-4 relative per operation accumulated over the layers; measured 2e-3 to 7e-3 of the
logit scale and perplexity ratio <= 3.2e-4 on the test models (2 layers), so 3e-2 and 1e-2 leave room for deeper
models; agreement 0.97 (one test sequence showed 1 flip in 260 decisions).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from curmoe.common.errors import InvalidInputError

__all__ = ["Tolerance", "TOLERANCES", "tolerance_for"]


@dataclass(frozen=True)
class Tolerance:
    max_rel_err: float
    routing_agreement: float
    ppl_rel: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(max_rel_err=2e-4, routing_agreement=0.995, ppl_rel=1e-4),
    "float16": Tolerance(max_rel_err=3e-2, routing_agreement=0.97, ppl_rel=1e-2),
}


def tolerance_for(dtype: str) -> Tolerance:
    """The tolerance of an export dtype ("float32" | "float16")."""
    if dtype not in TOLERANCES:
        raise InvalidInputError(f"no tolerance for dtype={dtype!r}; known: {', '.join(TOLERANCES)}")
    return TOLERANCES[dtype]
