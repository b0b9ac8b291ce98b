"""Parameter accounting and the rank solver (curmoe.decompose._params)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import curmoe
from curmoe.decompose._params import achieved_ratio, n_cols_for
from tests.decomp_cases import random_matrix


@given(
    m=st.integers(1, 300),
    n=st.integers(1, 300),
    ratio=st.floats(0.01, 0.99),
    kind=st.sampled_from(["svd", "cur", "cur_folded"]),
    oversample=st.sampled_from([1.0, 1.5, 2.0]),
)
def test_rank_for_ratio_is_the_largest_feasible_rank(m, n, ratio, kind, oversample):
    def kept(r):
        return curmoe.n_params(m, n, r, kind, n_cols=n_cols_for(r, m, n, oversample))

    try:
        r = curmoe.rank_for_ratio(m, n, ratio, kind, oversample=oversample)
    except curmoe.InvalidInputError as e:
        assert "impossible" in str(e)
        assert achieved_ratio(m, n, kept(1)) < ratio  # rank 1 really is too big
        return
    assert 1 <= r <= min(m, n)
    assert achieved_ratio(m, n, kept(r)) >= ratio - 1e-12
    if r < min(m, n):
        assert achieved_ratio(m, n, kept(r + 1)) < ratio


def test_n_params_matches_factor_sizes():
    W = random_matrix(12, 20, 0, np.float64)
    c = curmoe.cur(W, rank=4, oversample=1.5, randomized=False)
    assert c.n_params == c.C.size + c.U.size + c.R.size
    assert c.n_params == curmoe.n_params(12, 20, 4, "cur", n_cols=len(c.cols))
    assert c.ratio == pytest.approx(1 - c.n_params / W.size, abs=0)
    f = c.folded_u()
    assert f.n_params == f.C.size + f.R.size == curmoe.n_params(12, 20, 4, "cur_folded")
    assert f.ratio == pytest.approx(1 - f.n_params / W.size, abs=0)
    s = curmoe.svd(W, rank=4)
    assert s.n_params == s.A.size + s.B.size == curmoe.n_params(12, 20, 4, "svd")
    assert s.ratio == pytest.approx(1 - s.n_params / W.size, abs=0)


@pytest.mark.parametrize("fn", ["cur", "svd"])
def test_ratio_argument_uses_the_solver(fn):
    W = random_matrix(40, 64, 1, np.float32)
    res = getattr(curmoe, fn)(W, ratio=0.5)
    assert res.rank == curmoe.rank_for_ratio(40, 64, 0.5, fn)
    assert res.ratio >= 0.5


def test_impossible_ratio_names_ratio_and_largest_feasible():
    # 4x4 CUR at rank 1 keeps 4 + 1 + 4 = 9 of 16 parameters: largest feasible ratio 0.4375.
    with pytest.raises(curmoe.InvalidInputError, match=r"ratio=0\.9 is impossible for a 4x4 'cur'.*largest feasible "
                                                       r"ratio 0\.4375.*pass ratio <= 0\.4375"):
        curmoe.rank_for_ratio(4, 4, 0.9, "cur")
    with pytest.raises(curmoe.InvalidInputError, match=r"ratio=0\.5 is impossible for a 1x1 'svd'.*too small"):
        curmoe.rank_for_ratio(1, 1, 0.5, "svd")
    with pytest.raises(curmoe.InvalidInputError, match=r"ratio=0\.9 is impossible"):
        curmoe.cur(random_matrix(4, 4, 0, np.float64), ratio=0.9)


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.2, float("nan"), "half"])
def test_ratio_outside_unit_interval(ratio):
    with pytest.raises(curmoe.InvalidInputError, match=r"ratio=.*(outside \(0, 1\)|must be a number in \(0, 1\))"):
        curmoe.rank_for_ratio(10, 10, ratio, "svd")


def test_bad_kind_and_oversample():
    with pytest.raises(curmoe.InvalidInputError, match=r"kind='tucker'.*\('svd', 'cur', 'cur_folded'\)"):
        curmoe.rank_for_ratio(10, 10, 0.5, "tucker")
    with pytest.raises(curmoe.InvalidInputError, match=r"oversample=0\.5 must be a number >= 1"):
        curmoe.rank_for_ratio(10, 10, 0.5, "cur", oversample=0.5)
