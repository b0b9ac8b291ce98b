"""Interpretability helpers: kept columns/rows and Jaccard overlap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import curmoe
from tests.decomp_cases import random_matrix


def test_kept_columns_and_rows_are_the_sorted_indices():
    W = random_matrix(15, 25, 0, np.float32)
    res = curmoe.cur(W, rank=5, oversample=1.4)
    cols, rows = curmoe.kept_columns(res), curmoe.kept_rows(res)
    np.testing.assert_array_equal(cols, np.sort(res.cols))
    np.testing.assert_array_equal(rows, np.sort(res.rows))
    np.testing.assert_array_equal(curmoe.kept_columns(res.folded_u()), cols)
    with pytest.raises(curmoe.InvalidInputError, match=r"kept_columns needs a CURResult .*got SVDResult"):
        curmoe.kept_columns(curmoe.svd(W, rank=3))


@given(a=st.lists(st.integers(0, 30), max_size=20), b=st.lists(st.integers(0, 30), max_size=20))
def test_jaccard_matches_set_formula(a, b):
    j = curmoe.jaccard(np.array(a, dtype=np.int64), b)
    sa, sb = set(a), set(b)
    assert j == (len(sa & sb) / len(sa | sb) if sa | sb else 1.0)
    assert j == curmoe.jaccard(b, a) and 0.0 <= j <= 1.0
    assert curmoe.jaccard(a, a) == 1.0


def test_jaccard_bad_input():
    with pytest.raises(curmoe.InvalidInputError, match=r"a must be a 1-D collection of indices, got shape \(2, 2\)"):
        curmoe.jaccard(np.zeros((2, 2), dtype=int), [1])
    with pytest.raises(curmoe.InvalidInputError, match=r"b must hold non-negative integer indices"):
        curmoe.jaccard([1], [-1, 2])
    with pytest.raises(curmoe.InvalidInputError, match=r"b must hold non-negative integer indices, got dtype float64"):
        curmoe.jaccard([1], [0.5])


@given(seed=st.integers(0, 2**16), r1=st.integers(1, 6), extra=st.integers(0, 5))
def test_deim_kept_sets_are_nested_across_ranks_with_the_exact_svd(seed, r1, extra):
    """DEIM picks index j from the first j singular vectors only, so on one exact basis a smaller rank keeps a
    subset of what a larger rank keeps (docs/results/interpretability.md measures how far the randomized basis
    strays from this)."""
    W = random_matrix(14, 18, seed, np.float64)
    small = curmoe.cur(W, rank=r1, randomized=False)
    big = curmoe.cur(W, rank=r1 + extra, randomized=False)
    assert set(small.rows) <= set(big.rows)
    assert set(small.cols) <= set(big.cols)
