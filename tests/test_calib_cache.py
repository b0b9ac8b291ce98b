"""Issue 13 item 8: the calibration cache. One-pass statistics are stored per (model checksum, token ids, batch
size, max_sample) and reused across methods and ratios; a hit gives the same compressed model bit for bit; another
model, text or token count misses; an unreadable entry is recomputed; sequential per-layer statistics are not
cached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import curmoe
from curmoe.compress import cached_calibrate, calibrate, model_checksum
from tests.babies import baby_model, random_ids

ROOT = Path(__file__).resolve().parents[1]


def _same_model(a: curmoe.Model, b: curmoe.Model) -> None:
    assert a.experts.keys() == b.experts.keys()
    for k in a.experts:
        ta, tb = a.experts[k].tensors(), b.experts[k].tensors()
        assert ta.keys() == tb.keys()
        for n in ta:
            np.testing.assert_array_equal(ta[n], tb[n], err_msg=f"{k}.{n}")
    ra, rb = (dict(m.config.compression) for m in (a, b))
    for r in (ra, rb):
        r.pop("time_s"), r.pop("calibration_cache")
    assert ra == rb


def _calib_equal(a: curmoe.compress.Calibration, b: curmoe.compress.Calibration) -> None:
    assert a.n_tokens == b.n_tokens and a.layers.keys() == b.layers.keys()
    for l in a.layers:
        la, lb = a.layers[l], b.layers[l]
        for kind in ("inputs", "hidden"):
            da, db = getattr(la, kind), getattr(lb, kind)
            assert da.keys() == db.keys()
            for k in da:
                assert da[k].n_tokens == db[k].n_tokens
                np.testing.assert_array_equal(da[k].gram, db[k].gram)
        np.testing.assert_array_equal(la.block.gram, lb.block.gram)
        np.testing.assert_array_equal(np.concatenate(la.sample).astype(np.float32),
                                      np.concatenate(lb.sample).astype(np.float32))


@pytest.fixture
def model() -> curmoe.Model:
    return baby_model(seed=3, dtype=np.float32)


def test_a_second_compression_reads_the_cache_and_gives_the_same_model(model, tmp_path):
    ids = random_ids(model, 4, 16)
    cfg = curmoe.NeuronConfig(ratio=0.5, min_tokens=1)
    first = curmoe.compress(model, cfg, calib_ids=ids, progress=False, calib_cache=tmp_path)
    assert first.config.compression["calibration_cache"]["status"] == "stored"
    assert len(list(tmp_path.glob("*.json"))) == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers
    # another ratio and other methods: all hit the one entry, and equal a compression without the cache
    for other in (curmoe.NeuronConfig(ratio=0.7, min_tokens=1), cfg,
                  curmoe.SVDConfig(ratio=0.5, activation_aware=True, min_tokens=1),
                  curmoe.CURConfig(ratio=0.5, activation_aware=True, min_tokens=1)):
        hit = curmoe.compress(model, other, calib_ids=ids, progress=False, calib_cache=tmp_path)
        assert hit.config.compression["calibration_cache"]["status"] == "hit", other
        fresh = curmoe.compress(model, other, calib_ids=ids, progress=False)
        assert fresh.config.compression["calibration_cache"]["status"] == "off"
        _same_model(hit, fresh)
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_the_stored_calibration_is_bit_identical(model, tmp_path):
    ids = random_ids(model, 3, 16)
    computed, info = cached_calibrate(model, ids, cache_dir=tmp_path, progress=False, max_sample=20)
    loaded, info2 = cached_calibrate(model, ids, cache_dir=tmp_path, progress=False, max_sample=20)
    assert (info["status"], info2["status"]) == ("stored", "hit") and info["digest"] == info2["digest"]
    _calib_equal(computed, loaded)
    _calib_equal(calibrate(model, ids, progress=False, max_sample=20), loaded)
    assert sum(len(s) for s in loaded.layers[0].sample) == 20  # max_sample kept


def test_another_model_text_or_token_count_misses(model, tmp_path):
    ids = random_ids(model, 4, 16)
    assert cached_calibrate(model, ids, cache_dir=tmp_path, progress=False)[1]["status"] == "stored"
    misses = {
        "other token count": (model, ids[:3]),
        "other text": (model, random_ids(model, 4, 16, seed=9)),
        "other row length": (model, ids.reshape(8, 8)),
        "other weights": (baby_model(seed=4, dtype=np.float32), ids),
        "other dtype": (model.astype(np.float64), ids),
    }
    for what, (m, i) in misses.items():
        assert cached_calibrate(m, i, cache_dir=tmp_path, progress=False)[1]["status"] == "stored", what
    assert cached_calibrate(model, ids, cache_dir=tmp_path, progress=False, batch_size=2)[1]["status"] == "stored"
    assert len(list(tmp_path.glob("*.json"))) == 1 + len(misses) + 1


def test_model_checksum_sees_one_changed_weight(model):
    before = model_checksum(model)
    assert model_checksum(model) == before
    k = next(iter(model.experts))
    W = model.experts[k].W.copy()
    W[0, 0] = np.nextafter(W[0, 0], np.float32(1))
    model.experts[k] = type(model.experts[k])(W)
    assert model_checksum(model) != before


def test_an_unreadable_entry_is_recomputed_and_rewritten(model, tmp_path, caplog):
    ids = random_ids(model, 2, 16)
    _, info = cached_calibrate(model, ids, cache_dir=tmp_path, progress=False)
    (tmp_path / f"{info['digest']}.safetensors").write_bytes(b"not safetensors")
    calib, info2 = cached_calibrate(model, ids, cache_dir=tmp_path, progress=False)
    assert info2["status"] == "stored" and "unreadable" in caplog.text
    _calib_equal(calib, cached_calibrate(model, ids, cache_dir=tmp_path, progress=False)[0])


def test_sequential_calibration_says_it_is_not_cached(model, tmp_path):
    ids = random_ids(model, 2, 16)
    out = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5, allocation="uniform", sequential=True, min_tokens=1),
                          calib_ids=ids, progress=False, calib_cache=tmp_path)
    rec = out.config.compression["calibration_cache"]
    assert rec["status"] == "no one-pass calibration" and "not cacheable" in rec["sequential"]
    assert not list(tmp_path.iterdir())
    # a global budget decides sizes on the one-pass (dense) calibration: that part is cached
    g = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5, allocation="global", sequential=True, min_tokens=1),
                        calib_ids=ids,
                        progress=False, calib_cache=tmp_path)
    assert g.config.compression["calibration_cache"]["status"] == "stored"


def test_cli_reuses_the_cache_across_methods_and_ratios(model_dir, tmp_path):
    pytest.importorskip("tokenizers")
    from tests.babies import TEXT

    text = tmp_path / "calib.txt"
    text.write_text("\n".join(TEXT))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CURMOE_CACHE_DIR=str(tmp_path / "cache"))

    def run(*argv: str) -> dict:
        r = subprocess.run([sys.executable, "-m", "curmoe.app.cli", "compress", str(model_dir), "--calib", str(text),
                            "--calib-tokens", "512", "--json", *argv], check=False, capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        return json.loads(r.stdout)

    a = run("--ratio", "0.5", "-o", str(tmp_path / "a"))
    b = run("--ratio", "0.7", "--method", "svd-llm", "-o", str(tmp_path / "b"))
    c = run("--ratio", "0.7", "--method", "svd-llm", "--no-calib-cache", "-o", str(tmp_path / "c"))
    assert [r["calibration_cache"]["status"] for r in (a, b, c)] == ["stored", "hit", "off"]
    assert a["calibration_cache"]["digest"] == b["calibration_cache"]["digest"]
    # saved from the cache == calibrated again, tensor for tensor, bit for bit
    from safetensors.numpy import load_file

    tb, tc = (load_file(tmp_path / x / "model.safetensors") for x in "bc")
    assert tb.keys() == tc.keys()
    for k in tb:
        np.testing.assert_array_equal(tb[k], tc[k], err_msg=k)
    stored = json.loads((tmp_path / "b" / "config.json").read_text())["compression"]["calibration_cache"]
    assert stored["status"] == "hit"
    key = json.loads((tmp_path / "cache" / "calib" / f"{a['calibration_cache']['digest']}.json").read_text())["key"]
    assert key["source"] == str(text) and key["n_tokens"] == a["calib_tokens"]


def test_calibration_ids_encode_only_the_prefix_they_need(model_dir, tmp_path):
    pytest.importorskip("tokenizers")
    from curmoe.app.calibdata import calibration_ids, text_token_stream
    from tests.babies import TEXT

    text = tmp_path / "long.txt"
    text.write_text("\n".join(TEXT * 30))  # 2400 lines: several chunks
    model = curmoe.load(model_dir)
    full = text_token_stream(str(text), model)
    for k in (1, 700, full.size - 1, full.size, 10 * full.size):
        part = text_token_stream(str(text), model, max_tokens=k)
        assert part.size >= min(k, full.size)
        np.testing.assert_array_equal(part, full[: part.size])
    ids = calibration_ids(str(text), model, n_tokens=1000, seq_len=64)
    np.testing.assert_array_equal(ids, full[: 1000 // 64 * 64].reshape(-1, 64))
