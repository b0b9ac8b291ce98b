"""curmoe report and the results files it reads: formatting, errors, atomic writes, and the committed pages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import curmoe
from curmoe.app.cli import main as cli
from curmoe.app.report import README_BEGIN, README_END, SOURCES, headline, report
from curmoe.app.results import provenance, read_results, write_results

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def _ppl(tok: float) -> dict:
    return {"ppl_token": tok, "ppl_word": 2 * tok, "tokens": 1000, "eval_s": 1.0}


def _prov(cmd: str) -> dict:
    return {"command": cmd, "utc": "2026-01-01 00:00", "commit": "abc1234", "machine": "x86_64, 2 CPUs"}


def compression_data() -> dict:
    rows = [{"method": "dense", "ratio_target": 0.0, "ratio_expert_params": 0.0, "ratio_all_params": 0.0,
             "mean_output_error": 0.0, "compress_s": 0.0, "valid": _ppl(11.0), "test": _ppl(10.0),
             "samples": ["a b", "c d"]}]
    for ratio in (0.5, 0.7):
        for method, mult in (("svd", 1.5), ("cur-deim aware", 4.0), ("cur-seed (poster)", 1000.0)):
            f = mult * (2 if ratio == 0.7 else 1)
            rows.append({"method": method, "ratio_target": ratio, "ratio_expert_params": ratio + 0.001,
                         "ratio_all_params": ratio / 2, "mean_output_error": 0.1 * f, "compress_s": 3.0,
                         "valid": _ppl(11.0 * f), "test": _ppl(10.0 * f), "samples": ["x | y", "z"]})
    return {"provenance": _prov("python benchmarks/compression.py"), "model": "m", "n_params": 123,
            "splits": ["valid", "test"], "prompts": ["The", "In"], "sample_tokens": 2, "rows": rows}


def gating_data() -> dict:
    def load(cv: float) -> dict:
        lay = {"fractions": [0.25] * 4, "cv": cv, "max_vio": cv, "entropy": 1.0, "dropped_fraction": 0.0}
        return {"layers": [lay, lay], "cv": cv, "max_vio": cv, "entropy": 1.0, "dropped_fraction": 0.0}

    rows = []
    for router, mode, ppl, cv in (("topk", "causal", 100.0, 0.1), ("expert_choice", "teacher-forced", 50.0, 0.0),
                                  ("expert_choice", "causal decoding (topk fallback)", 300.0, 0.7)):
        rows.append({"router": router, "mode": mode, "params": 1000, "steps": 10, "tokens": 2000,
                     "train_wall_s": 5.0, "best_step": 10, "train_command": f"-m curmoe.models.train --router {router}",
                     "valid": _ppl(ppl * 1.1), "test": _ppl(ppl) | {"load": load(cv)}})
    rows = [r | {"seed": 0} for r in rows]
    rows.append(rows[0] | {"seed": 1, "test": _ppl(110.0) | {"load": load(0.3)}})  # a second seed of topk
    return {"provenance": _prov("python benchmarks/gating.py"), "preset": "gating", "splits": ["valid", "test"],
            "load_split": "test", "rows": rows}


def runtime_data() -> dict:  # measured from a working tree with a change: the page must say so
    rows = [{"row": name, "model": "dense", "decode_tok_s": tps, "roofline_tok_s": 1000.0, "roofline_frac": tps / 1e3,
             "prefill_16_ms": 2.0, "prefill_256_ms": 20.0}
            for name, tps in (("ORT cpu dense sparse dispatch", 500.0), ("torch eager (dense)", 125.0))]
    prov = _prov("python benchmarks/runtime.py") | {"uncommitted": ["runtimes/bench.py"]}
    return {"provenance": prov, "model": "m", "threads": 2, "decode_steps": 8, "repeats": 1, "prefill_lengths": [16, 256], "bandwidth": 1e10, "rows": rows}


def interpret_data() -> dict:
    methods, ratios = ("cur-deim", "cur-deim aware"), [0.5, 0.7]
    energy = [{"method": m, "ratio": r, "side": side, "energy_share": 0.4, "uniform_share": 0.25,
               "energy_share_min": 0.3} for m in methods for r in ratios for side in ("columns", "rows")]
    jac = [{"method": m, "ratio": r, "what": w, "layer": layer, "matrix": [[1.0, 0.5], [0.5, 1.0]],
            "mean_offdiag": 0.5 if layer else 0.25, "chance": 0.111, "kept": 2, "of": 8}
           for m in methods for r in ratios for w in ("up columns", "down rows") for layer in (0, 1)]
    nest = [{"method": m, "from": 0.5, "to": 0.7, "side": side, "contained": 0.875, "contained_min": 0.5}
            for m in methods for side in ("columns", "rows")]
    kept = {f"{m}@{r}": {"cols": [0, 3], "rows": [1]} for m in methods for r in ratios}
    feat = [{"layer": 1, "expert": 0, "matrix": "up", "shape": [4, 8], "col_energy": [1.0 * i + 1 for i in range(8)],
             "row_energy": [1.0, 2.0, 3.0, 4.0], "kept": kept}]
    return {"provenance": _prov("python benchmarks/interpret.py"), "ratios": ratios, "rows": energy,
            "jaccard": jac, "nesting": nest, "featured": feat}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "results" / "data"
    write_results(d / "compression.json", compression_data())
    write_results(d / "gating.json", gating_data())
    write_results(d / "runtime.json", runtime_data())
    write_results(d / "interpret.json", interpret_data())
    return d


def test_pages_state_the_numbers_and_commands(data_dir: Path) -> None:
    out = report(data_dir)
    res = data_dir.parent
    assert out["missing"] == []
    comp = (res / "compression.md").read_text()
    assert "**8.00x**" in comp  # cur-deim aware at 0.7: test ppl 80 / dense 10
    assert "**2,000.00x**" in comp  # the poster's seed at 0.7: 20,000 / 10 (thousands separated)
    assert "| 80.00 | 160.00 |" in comp  # test token and word ppl
    assert "`python benchmarks/compression.py` at commit `abc1234`" in comp
    assert "best method chosen on valid is **svd** at 3.00x" in comp  # 0.7: svd 30/10
    assert "x \\| y" in comp  # a '|' in a sample cannot break the Markdown
    gat = (res / "gating.md").read_text()
    assert "causal decoding (topk fallback)" in gat and "CV 0.000" in gat
    assert "test perplexity is **300.00**" in gat and "against 105.00 for the best causal router on valid (topk)" in gat
    assert "| topk | causal | 110.00 | 105.00 | 100.00, 110.00 | 210.00 | 0.200 |" in gat  # means over seeds
    assert "moves by up to 10.0%" in gat
    run = (res / "runtime.md").read_text()
    assert "| torch eager (dense) | 125.0 | 0.25 |" in run
    assert "at commit `abc1234` with uncommitted changes to `runtimes/bench.py`" in run
    assert "uncommitted" not in comp
    interp = (res / "interpretability.md").read_text()
    assert "| cur-deim aware | up columns | 0.250 | 0.500 | 0.111 |" in interp  # layers side by side, at 70%
    assert "| cur-deim | 50% | 70% | rows | 0.875 | 0.500 |" in interp
    for png in ("compression.png", "gating_load.png", "runtime.png", "interpret_profile.png",
                "interpret_jaccard.png", "interpret_ratio.png"):
        assert (res / png).read_bytes()[:8] == PNG
    index = (res / "README.md").read_text()
    assert "compression.md" in index and "(not run yet)" not in index
    (data_dir / "interpret.json").unlink()
    assert report(data_dir)["missing"] == ["interpret"]
    assert "Not measured yet: `python benchmarks/interpret.py`" in (res / "interpretability.md").read_text()
    assert "(not run yet)" in (res / "README.md").read_text()
    assert not list(res.glob(".*")), "temporary files left behind"


def test_readme_block_is_replaced_and_the_rest_kept(data_dir: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{README_BEGIN}\nold\n{README_END}\n\nafter\n")
    report(data_dir, readme=readme)
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old" not in text and "compress s" not in text  # headline: compact columns
    assert "**8.00x**" in text  # cur-deim aware at 0.7 in the compact table: 80 / 10
    readme.write_text("# no markers\n")
    with pytest.raises(curmoe.InvalidInputError, match="no results block"):
        report(data_dir, readme=readme)
    assert readme.read_text() == "# no markers\n"


def test_bad_results_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(curmoe.InvalidInputError, match="nope.json' is missing: a benchmark's results file"):
        read_results(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"provenance": {"command": "x"}, "rows": [1, 2')  # truncated
    with pytest.raises(curmoe.InvalidInputError, match="not valid JSON"):
        read_results(bad)
    bad.write_text('{"rows": []}')
    with pytest.raises(curmoe.InvalidInputError, match="provenance"):
        read_results(bad)
    with pytest.raises(curmoe.InvalidInputError, match="'provenance' and a 'rows'"):
        write_results(tmp_path / "x.json", {"rows": []})
    with pytest.raises(curmoe.InvalidInputError, match="no results folder"):
        report(tmp_path / "missing")
    d = tmp_path / "data"
    c = compression_data()
    del c["rows"][1]["test"]
    write_results(d / "compression.json", c)
    with pytest.raises(curmoe.InvalidInputError, match="without the test split"):
        report(d)


def test_cli_report_and_provenance(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["report", "--data", str(data_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["missing"] == [] and any(p.endswith("gating.md") for p in out["written"])
    assert cli(["report", "--data", str(data_dir / "nowhere")]) == 2
    assert "no results folder" in capsys.readouterr().err
    p = provenance(["--ratios", "0.5 0.7"], script="curmoe")
    assert p["command"] == "curmoe --ratios '0.5 0.7'"
    p = provenance([], script=str(ROOT / "benchmarks/gating.py"))
    assert p["command"] == "python benchmarks/gating.py"
    assert isinstance(p["uncommitted"], list) and isinstance(p["commit"], (str, type(None)))


@pytest.mark.skipif(not (ROOT / "docs/results/data").is_dir(), reason="no committed results")
def test_committed_pages_match_the_committed_measurements(tmp_path: Path) -> None:
    """docs/results/*.md are exactly what `curmoe report` writes from docs/results/data (regenerated, not edited)."""
    out = tmp_path / "results"
    report(ROOT / "docs/results/data", out, readme=None)
    for page in sorted(out.glob("*.md")):
        assert page.read_text() == (ROOT / "docs/results" / page.name).read_text(), (
            f"docs/results/{page.name} differs from the data; run `curmoe report --readme README.md`")
    readme = (ROOT / "README.md").read_text()
    results = {n: read_results(ROOT / "docs/results/data" / f) for n, (f, _) in SOURCES.items()
               if (ROOT / "docs/results/data" / f).exists()}
    assert headline(results) in readme, "README results block is stale; run `curmoe report --readme README.md`"
