"""The curmoe CLI end to end on a baby model with a real (small) tokenizer: compress -> export -> validate ->
eval -> generate, each through `curmoe.app.cli.main` and checked for the documented JSON fields."""

from __future__ import annotations

import json

import pytest

from curmoe.app.cli import main
from tests.babies import TEXT

pytest.importorskip("onnxruntime")
tokenizers = pytest.importorskip("tokenizers")





def run_json(capsys, *argv):
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out.strip().splitlines()[-1])


def test_compress_export_validate_eval_generate(model_dir, tmp_path, capsys):
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(TEXT))
    code, rec = run_json(capsys, "compress", str(model_dir), "--method", "cur", "--ratio", "0.5",
                         "--calib", str(calib), "-o", str(tmp_path / "cur50"))
    assert code == 0 and rec["ratio_expert_params"] >= 0.5 and rec["config"]["activation_aware"]
    assert (tmp_path / "cur50" / "tokenizer.json").is_file()

    code, rec = run_json(capsys, "export", str(tmp_path / "cur50"), "--format", "onnx", "-o", str(tmp_path / "x" / "m.onnx"))
    assert code == 0 and (tmp_path / "x" / "tokenizer.json").is_file()

    code, rep = run_json(capsys, "validate", str(tmp_path / "x" / "m.onnx"), "--model", str(tmp_path / "cur50"),
                         "--runtime", "onnxruntime:cpu")
    assert code == 0
    for k in ("max_abs_err", "max_rel_err", "routing_agreement", "passed"):
        assert k in rep
    assert rep["passed"] and rep["routing_agreement"] == 1.0

    code, gen_ref = run_json(capsys, "generate", str(tmp_path / "cur50"), "--prompt", "the cat", "--max-new-tokens", "6")
    code2, gen_ort = run_json(capsys, "generate", str(tmp_path / "x" / "m.onnx"), "--prompt", "the cat",
                              "--max-new-tokens", "6")
    assert code == code2 == 0
    assert gen_ref["completion"] == gen_ort["completion"]  # greedy: reference and ORT agree


def test_eval_reference_and_runtime_agree(model_dir, tmp_path, capsys, wikitext2):
    code, ref = run_json(capsys, "eval", str(model_dir), "--split", "valid", "--max-tokens", "300")
    assert code == 0
    for k in ("ppl_token", "ppl_word", "tokens", "protocol"):
        assert k in ref
    assert ref["protocol"]["split"] == "wikitext2:valid"
    main(["export", str(model_dir), "-o", str(tmp_path / "d.onnx"), "--json"])
    capsys.readouterr()
    code, rt = run_json(capsys, "eval", str(tmp_path / "d.onnx"), "--runtime", "onnxruntime:cpu", "--split", "valid",
                        "--max-tokens", "300", "--tokenizer", str(model_dir / "tokenizer.json"))
    assert code == 0 and rt["tokens"] == ref["tokens"]
    assert rt["ppl_token"] == pytest.approx(ref["ppl_token"], rel=1e-4)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "does not exist" in err and "Traceback" not in err
    assert main(["eval", str(tmp_path), "--runtime", "nonsense"]) == 2
    assert "known runtimes" in capsys.readouterr().err


def test_runtimes_lists_reference_and_ort(capsys):
    code, rec = run_json(capsys, "runtimes")
    avail = {r["name"] for r in rec["runtimes"] if r["available"]}
    assert {"reference", "onnxruntime:cpu"} <= avail
    assert not any(r["available"] for r in rec["runtimes"] if r["name"] == "onnxruntime:cuda")


def test_bench_prints_one_json_object_with_every_row(model_dir, capsys):
    pytest.importorskip("torch")
    code, rec = run_json(capsys, "bench", "--model", str(model_dir), "--steps", "1", "--repeats", "1",
                         "--prefill", "8", "--calib-tokens", "256", "--skip-numpy", "--skip-openvino")
    assert code == 0 and rec["bandwidth"] > 0
    rows = {r["row"]: r for r in rec["rows"]}
    assert {"torch eager (dense)", "ORT cpu dense sparse dispatch", "ORT cpu cur70 sparse dispatch"} <= set(rows)
    for r in rows.values():
        assert r["decode_tok_s"] > 0 and r["prefill_8_ms"] > 0 and 0 < r["roofline_frac"]
