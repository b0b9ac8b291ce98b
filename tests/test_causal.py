"""causal_twin: the full forward of the twin equals token-by-token decoding of the expert_choice model."""

from __future__ import annotations

import numpy as np
import pytest

import curmoe
from tests.babies import baby_model, random_ids

EC = dict(kind="expert_choice", top_k=2, decode_fallback="topk")


@pytest.mark.parametrize("normalize", [True, False])
def test_twin_equals_decoding_with_fallback(normalize: bool) -> None:
    ec = baby_model(router=EC | {"normalize": normalize})
    twin = curmoe.causal_twin(ec)
    ids = random_ids(ec, 1, 12)
    full = twin.forward(ids)  # (1, T, V): every token routed by top-k
    for t in range(1, ids.shape[1]):
        cache = twin.new_cache()
        twin.forward(ids[:, :t], cache=cache)  # history routed causally
        step = ec.forward(ids[:, t:t + 1], cache=cache)  # the expert_choice model decodes token t: its fallback
        np.testing.assert_allclose(step[0, 0], full[0, t], rtol=1e-12, atol=1e-12)


def test_twin_differs_from_teacher_forced_expert_choice() -> None:
    """Otherwise the test above could pass with a twin that is the expert_choice model itself."""
    ec = baby_model(router=EC)
    ids = random_ids(ec, 1, 16)
    assert not np.allclose(ec.forward(ids), curmoe.causal_twin(ec).forward(ids))
    assert curmoe.causal_twin(ec).config.moe.router.kind == "topk"
    assert ec.config.moe.router.kind == "expert_choice"  # the original is untouched


def test_twin_refuses_causal_and_undecodable_models() -> None:
    with pytest.raises(curmoe.InvalidInputError, match="routes causally already"):
        curmoe.causal_twin(baby_model())
    with pytest.raises(curmoe.InvalidInputError, match="decode_fallback"):
        curmoe.causal_twin(baby_model(router=dict(kind="expert_choice", top_k=2)))
    with pytest.raises(curmoe.InvalidInputError, match="curmoe.Model"):
        curmoe.causal_twin("model")  # type: ignore[arg-type]
