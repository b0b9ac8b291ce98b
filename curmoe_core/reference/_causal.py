"""The causal twin of a non-causal (``expert_choice``) model: what incremental decoding with its fallback computes.

``expert_choice`` routes a whole sequence at once: every expert ranks all N tokens and keeps its top
``capacity`` of them, so whether token t reaches an expert depends on tokens after t. A language model scored that
way (teacher forcing over the full sequence) sees the future through the router, and its perplexity is not that of
a model that can generate. When such a model decodes with a KV cache, each new token is routed alone by the
``decode_fallback`` (``topk``: its own top-k experts by router score). Routing every token that way, the prompt
included, is exactly the full forward of the same weights with a ``topk`` router of the same ``top_k`` and
``normalize``; :func:`causal_twin` builds that model, so the perplexity of causal decoding costs one batched pass
(tests/test_causal.py checks it against token-by-token decoding).
"""

from __future__ import annotations

import dataclasses

from curmoe.common.errors import InvalidInputError
from curmoe.reference._model import Model
from curmoe.routing import RouterConfig

__all__ = ["causal_twin"]


def causal_twin(model: Model) -> Model:
    """The same weights with every ``expert_choice`` router replaced by its decode fallback (``topk``).

    Raises:
        InvalidInputError: the model's router is not ``expert_choice`` (it is causal already), or it has no
            ``decode_fallback`` (it refuses to decode, so it has no causal behaviour to reproduce).
    """
    if not isinstance(model, Model):
        raise InvalidInputError(f"causal_twin needs a curmoe.Model, got {type(model).__name__}")
    moe = model.config.moe
    if moe is None or moe.router.kind != "expert_choice":
        kind = None if moe is None else moe.router.kind
        raise InvalidInputError(f"causal_twin applies to expert_choice routers; this model's router is {kind!r}, "
                                "which routes causally already: use the model as it is")
    r = moe.router
    if r.decode_fallback is None:
        raise InvalidInputError("this expert_choice model has decode_fallback=None, so it cannot decode; set "
                                'decode_fallback="topk" in its RouterConfig to define causal decoding')
    router = RouterConfig(kind=r.decode_fallback, top_k=r.top_k, normalize=r.normalize)
    config = dataclasses.replace(model.config, moe=dataclasses.replace(moe, router=router))
    return Model(config, model.tensors, model.experts, model.tokenizer_path)
