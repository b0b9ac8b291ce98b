"""Issue 13: ``curmoe inspect``: what each expert of a compressed model kept, checked against the dense original
(CUR's rows and columns are real rows and columns of W, neuron CUR's gate/up rows are real rows), the Jaccard of
kept sets computed pairwise, the ratio per matrix from the factor shapes, the bytes on disk, and activation energy
against statistics gathered here with a plain observer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import curmoe
from curmoe.app.commands.inspect import inspect_model
from tests.babies import VARIANTS, baby_model, compressed, random_ids

ROOT = Path(__file__).resolve().parents[1]


def _neuron(model: curmoe.Model, ids: np.ndarray) -> curmoe.Model:
    return curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5, min_tokens=1), calib_ids=ids, progress=False)


METHODS = {
    "cur": lambda m, ids: compressed(m, "cur"),
    "cur-folded": lambda m, ids: compressed(m, "cur", fold_u=True),
    "svd": lambda m, ids: compressed(m, "svd"),
    "cur-neuron": _neuron,
}


@pytest.fixture(scope="module")
def dense() -> curmoe.Model:
    return baby_model(seed=5, **VARIANTS["qwen2_moe"])  # a shared expert too


@pytest.fixture(scope="module")
def ids(dense) -> np.ndarray:
    return random_ids(dense, 4, 16)


def _norm2(a: np.ndarray, axis: int) -> np.ndarray:
    return np.sum(np.asarray(a, np.float64) ** 2, axis=axis)


@pytest.mark.parametrize("method", list(METHODS))
def test_inspect_reports_what_each_matrix_kept(dense, ids, method, tmp_path):
    small = METHODS[method](dense, ids)
    d = small.save(tmp_path / "m")
    r = inspect_model(curmoe.load(d), model_dir=d)
    experts = {ex["expert"]: ex for ex in r["experts"]}
    assert len(experts) == 2 * 4 + 2  # 2 layers x (4 routed + 1 shared)
    assert r["method"] == small.config.compression["method"] and r["energy"] == "weight"
    for key, lin in small.experts.items():
        prefix, name = key.rsplit(".", 1)
        l, kind, e = prefix.split(".")[1:4]
        mat = experts[f"{l}.{e}" if kind == "experts" else f"{l}.s{e}"]["matrices"][name]
        W = dense.experts[key].dense()  # (m, n) the dense original
        m, n = W.shape
        assert mat["kind"] == lin.kind and mat["shape"] == [m, n]
        assert mat["ratio"] == pytest.approx(1 - sum(t.size for k, t in lin.tensors().items()
                                                     if k not in ("rows", "cols", "neurons")) / (m * n), abs=1e-12)
        if lin.kind == "cur":
            assert mat["rows"] == sorted(lin.rows.tolist()) and mat["rank"] == len(lin.rows)
            np.testing.assert_allclose(mat["row_energy"], _norm2(W[mat["rows"], :], 1), rtol=1e-12)
            if method == "cur-folded":
                assert mat["cols"] is None
            else:
                assert mat["cols"] == sorted(lin.cols.tolist())
                np.testing.assert_allclose(mat["col_energy"], _norm2(W[:, mat["cols"]], 0), rtol=1e-12)
        elif lin.kind == "neuron":
            J = small.config.compression["matrices"][f"{prefix}.down"]["neurons"]
            assert mat["neurons"] == J
            if name != "down":  # gate and up keep real rows: bit-identical to the dense ones
                np.testing.assert_array_equal(lin.W, W[J])
        elif lin.kind == "svd":
            assert "rows" not in mat and mat["rank"] == lin.rank
    # expert-level neuron records and energies
    for prefix in {k.rsplit(".", 1)[0] for k in small.experts}:
        down = small.experts[f"{prefix}.down"]
        p = prefix.split(".")
        ex = experts[f"{p[1]}.{p[3]}" if p[2] == "experts" else f"{p[1]}.s{p[3]}"]
        assert ex["params"] == sum(small.experts[f"{prefix}.{n}"].n_params for n in ("gate", "up", "down"))
        if down.kind == "neuron":
            assert ex["neurons"]["kept"] == down.neurons.tolist()
            np.testing.assert_allclose(ex["neurons"]["energy"], _norm2(down.W, 0), rtol=1e-12)
    # Jaccard of kept sets across the routed experts of each layer, pairwise
    for lay in r["layers"]:
        l = lay["layer"]
        routed = [experts[f"{l}.{e}"] for e in range(4)]
        for space, v in lay["jaccard"].items():
            sets = [_space(x, space) for x in routed]
            pairs = [curmoe.jaccard(sets[i], sets[j]) for i in range(4) for j in range(4) if i != j]
            assert v["mean_jaccard"] == pytest.approx(np.mean(pairs), abs=1e-12)
            assert routed[0]["jaccard"][space]["with"][f"{l}.1"] == pytest.approx(curmoe.jaccard(sets[0], sets[1]))
        expected = {"cur": {"gate.rows", "gate.cols", "up.rows", "up.cols", "down.rows", "down.cols"},
                    "cur-folded": {"gate.rows", "up.rows", "down.rows"}, "svd": set(),
                    "cur-neuron": {"neurons"}}[method]
        assert set(lay["jaccard"]) == expected
    # on disk: the checkpoint's bytes against the dense parameters in the stored dtype
    assert r["disk"]["bytes"] == (d / "model.safetensors").stat().st_size
    assert r["disk"]["dense_bytes"] == dense.n_params() * 8
    assert r["ratio_expert_params"] == small.config.compression["ratio_expert_params"]


def _space(ex: dict, space: str) -> list[int]:
    if space == "neurons":
        return ex["neurons"]["kept"]
    name, axis = space.split(".")
    return ex["matrices"][name][axis]


@pytest.mark.parametrize("method", ["cur", "cur-neuron"])
def test_activation_energy_matches_statistics_gathered_here(dense, ids, method):
    small = METHODS[method](dense, ids)
    r = inspect_model(small, calib_ids=ids, calib_source="random ids")
    assert r["energy"].startswith(f"activation ({ids.size} tokens")
    # gather layer 0's expert inputs with a plain observer on the compressed model
    seen: dict[str, list[np.ndarray]] = {}
    small.run(ids, observer=lambda k, X: seen.setdefault(k, []).append(np.asarray(X, np.float64)))
    counts = {e: sum(len(a) for a in seen.get(f"layers.0.experts.{e}.down", [])) for e in range(4)}
    e = max(counts, key=counts.get)
    ex = next(x for x in r["experts"] if x["expert"] == f"0.{e}")
    p = f"layers.0.experts.{e}"
    X = np.concatenate(seen[f"{p}.gate"])  # (N_e, d) this expert's routed inputs
    h = np.concatenate(seen[f"{p}.down"])  # (N_e, I or k)
    if method == "cur":
        up = ex["matrices"]["up"]
        x2 = np.mean(X**2, axis=0)
        np.testing.assert_allclose(up["col_energy"], x2[up["cols"]], rtol=1e-10)
        assert up["col_energy_share"] == pytest.approx(x2[up["cols"]].sum() / x2.sum(), rel=1e-10)
        Wd = small.experts[f"{p}.down"].dense()
        y2 = np.mean((h @ Wd.T) ** 2, axis=0)  # E[y_i^2] of the compressed down's output
        dn = ex["matrices"]["down"]
        np.testing.assert_allclose(dn["row_energy"], y2[dn["rows"]], rtol=1e-10)
    else:
        g = np.concatenate(seen[f"{p}.routing_weights"])  # (N_e,) gate values
        Wd = small.experts[f"{p}.down"].W
        expect = np.sum((g[:, None] * h) ** 2, axis=0) / len(g) * _norm2(Wd, 0)
        np.testing.assert_allclose(ex["neurons"]["energy"], expect, rtol=1e-10)


def test_inspect_refuses_a_dense_model(dense):
    with pytest.raises(curmoe.InvalidInputError, match="not compressed"):
        inspect_model(dense)


def test_cli_inspect_text_json_and_one_expert(dense, ids, tmp_path, capsys):
    from curmoe.app.cli import main

    d = _neuron(dense, ids).save(tmp_path / "m")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "curmoe.app.cli", "inspect", str(d), "--expert", "1.2", "--json"],
                       check=False, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    out = json.loads(r.stdout)
    assert [ex["expert"] for ex in out["experts"]] == ["1.2"]
    assert out["experts"][0]["neurons"]["kept"] == \
        curmoe.load(d).config.compression["matrices"]["layers.1.experts.2.down"]["neurons"]
    assert main(["inspect", str(d)]) == 0  # every expert, as a table
    text = capsys.readouterr().out
    assert "| 1.2 | down | neuron | 16x24 | 12 neurons |" in text and "on disk:" in text and "overlap" in text
    assert main(["inspect", str(d), "--expert", "1.2"]) == 0
    text = capsys.readouterr().out
    assert "expert 1.2:" in text and "neurons: 12 kept; highest energy:" in text
    assert main(["inspect", str(d), "--expert", "9.9"]) == 2
    err = capsys.readouterr().err
    assert "'9.9' is not an expert" in err and len(err.strip().splitlines()) == 1


def test_overlap_helpers_properties():
    from hypothesis import given
    from hypothesis import strategies as st

    from curmoe.decompose import energy_share, jaccard_chance, jaccard_matrix

    sets_st = st.lists(st.sets(st.integers(0, 30), max_size=12), min_size=1, max_size=5)

    @given(sets_st, st.lists(st.floats(0, 10), min_size=31, max_size=31))
    def check(sets, e):
        J = jaccard_matrix([sorted(s) for s in sets])
        assert np.array_equal(J, J.T) and np.all(np.diag(J) == 1)
        for i in range(len(sets)):
            for j in range(len(sets)):
                assert J[i, j] == curmoe.jaccard(sorted(sets[i]), sorted(sets[j]))
        if sum(e) > 0:
            assert energy_share(e, range(31)) == pytest.approx(1.0)
            assert 0 <= energy_share(e, sorted(sets[0])) <= 1 + 1e-12
        a, b = len(sets[0]), len(sets[-1])
        c = jaccard_chance(a, b, 31)
        assert 0 <= c <= 1 and (a == 0 or b == 0 or c > 0)

    check()
    assert jaccard_chance(5, 5, 5) == 1.0
    # the chance level is what random sets give on average (ratio of expectations; checked by simulation)
    rng = np.random.default_rng(0)
    inter = np.mean([len(np.intersect1d(rng.choice(40, 10, replace=False), rng.choice(40, 16, replace=False)))
                     for _ in range(4000)])
    assert jaccard_chance(10, 16, 40) == pytest.approx(inter / (26 - inter), rel=0.03)
