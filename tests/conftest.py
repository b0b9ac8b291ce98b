"""Shared pytest set-up: hypothesis profiles ("ci" is derandomised; .ci/run selects it)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


import pytest  # noqa: E402


@pytest.fixture
def wikitext2() -> None:
    """Skip the test unless WikiText-2 is available (``$CURMOE_DATA_DIR``; .ci/run sets it)."""
    import curmoe

    try:
        curmoe.data_dir()
    except curmoe.DataNotFoundError:
        pytest.skip("WikiText-2 not available (set CURMOE_DATA_DIR)")
