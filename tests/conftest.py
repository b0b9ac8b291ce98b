"""Shared pytest set-up: hypothesis profiles ("ci" is derandomised; .ci/run selects it)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never write the user's cache (~/.cache/curmoe): one temporary $CURMOE_CACHE_DIR for the session
    (shared, so a converted pretrained model or an exported serve model is made once per run)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CURMOE_CACHE_DIR", str(tmp_path_factory.mktemp("curmoe-cache")))
    yield
    mp.undo()


@pytest.fixture
def wikitext2() -> None:
    """Skip the test unless WikiText-2 is available (``$CURMOE_DATA_DIR``; .ci/run sets it)."""
    import curmoe

    try:
        curmoe.data_dir()
    except curmoe.DataNotFoundError:
        pytest.skip("WikiText-2 not available (set CURMOE_DATA_DIR)")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved baby model directory with its own small BPE tokenizer (the CLI tests' model)."""
    pytest.importorskip("tokenizers")
    import curmoe
    from curmoe.models.tokenizer import save_tokenizer, train_bpe_tokenizer
    from tests.babies import TEXT, baby_config

    d = tmp_path_factory.mktemp("cli")
    tok = train_bpe_tokenizer(TEXT, vocab_size=80, min_frequency=1)
    tpath = save_tokenizer(tok, d / "tok.json")
    cfg = baby_config(vocab_size=tok.get_vocab_size(), eos_token_id=tok.token_to_id("<eos>"))
    model = curmoe.Model.random(cfg, seed=0, std=0.3)
    model.tokenizer_path = tpath
    return model.save(d / "dense")
