"""Issue 13: the CLI as a new user meets it, each command run as a subprocess: a refused or failed command exits
non-zero with one line on stderr (no traceback) and leaves the disk as it was; nothing is overwritten without
--force; no hidden leftovers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")

ROOT = Path(__file__).resolve().parents[1]


def curmoe_cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "curmoe.app.cli", *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (hidden ones included) -> (size, mtime_ns)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def refused(root: Path, *argv: str, needles: tuple[str, ...] = (), code: int = 2) -> str:
    """Run a command that must fail cleanly; assert nothing under ``root`` changed; return the message."""
    before = snapshot(root)
    r = curmoe_cli(*argv)
    assert_one_line_error(r, *needles, code=code)
    assert snapshot(root) == before
    return r.stderr.strip()




# item 2: never clobber -------------------------------------------------------------------------------------
def test_compress_refuses_an_existing_file_or_folder(model_dir, tmp_path):
    f = tmp_path / "cur70.onnx"
    f.write_bytes(b"precious")
    args = ("compress", model_dir, "--method", "svd", "--ratio", "0.5")
    refused(tmp_path, *args, "-o", f, needles=("is a file",))
    refused(tmp_path, *args, "-o", f, "--force", needles=("is a file",))  # --force never turns a file into a folder
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("mine")
    refused(tmp_path, *args, "-o", notes, "--force", needles=("not a curmoe model directory",))
    assert f.read_bytes() == b"precious" and (notes / "a.txt").read_text() == "mine"


def test_compress_refuses_an_existing_model_unless_force(model_dir, tmp_path):
    out = tmp_path / "svd50"
    args = ("compress", model_dir, "--method", "svd", "--ratio", "0.5", "-o", out)
    r = curmoe_cli(*args)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    refused(tmp_path, *args, needles=("already exists", "--force"))
    r = curmoe_cli(*args, "--ratio", "0.6", "--force", "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svd50"]  # no hidden .old or .tmp leftovers
    assert json.loads((out / "config.json").read_text())["compression"]["config"]["ratio"] == 0.6


def test_export_refuses_existing_outputs_unless_force(model_dir, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"precious")
    refused(tmp_path, "export", model_dir, "-o", out, needles=("already exists", "--force"))
    refused(tmp_path, "export", model_dir, "--format", "openvino", "-o", tmp_path / "m.onnx",
            needles=("ending in .xml",))
    r = curmoe_cli("export", model_dir, "-o", out, "--force")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert out.stat().st_size > 1000 and "tokenizer.json" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "tokenizer.json"]


# item 3: openvino export writes only X.xml + X.bin ---------------------------------------------------------
def test_openvino_export_leaves_no_onnx_beside_the_ir(model_dir, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    mine = tmp_path / "m.onnx"
    mine.write_bytes(b"someone else's file")
    r = curmoe_cli("export", model_dir, "--format", "openvino", "-o", tmp_path / "m.xml")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.onnx", "m.xml", "tokenizer.json"]
    assert mine.read_bytes() == b"someone else's file"
    refused(tmp_path, "export", model_dir, "--format", "openvino", "-o", tmp_path / "m", needles=("m.xml",))


# item 4: one-line errors instead of tracebacks ------------------------------------------------------------
def test_a_text_file_as_a_model_is_refused_in_one_line(model_dir, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello, I am not a model\n")
    tok = model_dir / "tokenizer.json"
    refused(tmp_path, "validate", bad, "--model", model_dir, needles=("not a readable ONNX model",))
    refused(tmp_path, "eval", bad, "--tokenizer", tok, "--max-tokens", "10", needles=("not a readable ONNX model",))
    refused(tmp_path, "generate", bad, "--tokenizer", tok, "--prompt", "the cat",
            needles=("not a readable ONNX model",))
    if importlib.util.find_spec("openvino") is not None:
        refused(tmp_path, "eval", bad, "--runtime", "openvino:cpu", "--tokenizer", tok, "--max-tokens", "10",
                needles=("not a readable ONNX model",))
        xml = tmp_path / "bad.xml"
        xml.write_text("hello\n")
        refused(tmp_path, "eval", xml, "--runtime", "openvino:cpu", "--tokenizer", tok, "--max-tokens", "10",
                needles=("not OpenVINO IR",))


def test_export_below_a_file_is_refused(model_dir, tmp_path):
    (tmp_path / "file.onnx").write_bytes(b"x")
    refused(tmp_path, "export", model_dir, "-o", tmp_path / "file.onnx" / "x.onnx", needles=("is a file, not a folder",))
    refused(tmp_path, "compress", model_dir, "--method", "svd", "--ratio", "0.5", "-o", tmp_path / "file.onnx" / "m",
            needles=("is a file, not a folder",))


def test_ctrl_c_during_compress_stops_cleanly_and_writes_nothing(tmp_path, wikitext2):
    import signal

    from curmoe.app.demo import shipped_model_dir

    out = tmp_path / "cur50"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "curmoe.app.cli", "compress", str(shipped_model_dir("wt2-moe-tiny")),
                          "--ratio", "0.5", "--calib", "wikitext2:train", "--calib-tokens", "262144", "-o", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         # a shell running pytest in the background ignores SIGINT, and the child would inherit that
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = b""
    while b"calibrate" not in seen:  # interrupt once calibration (the long step) has started
        chunk = os.read(p.stderr.fileno(), 4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    err = (seen + err).decode(errors="replace")
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert "curmoe compress: interrupted" in err.strip().splitlines()[-1]  # (after a cut-off progress bar, if any)
    assert list(tmp_path.iterdir()) == []  # no model directory, no hidden temporary folder


# item 5: nothing accepted silently ------------------------------------------------------------------------
def test_config_without_moe_block_is_refused(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    cfg = json.loads((broken / "config.json").read_text())
    del cfg["moe"]
    (broken / "config.json").write_text(json.dumps(cfg))
    for argv in (("info", broken), ("compress", broken, "--method", "svd", "--ratio", "0.5", "-o", tmp_path / "o"),
                 ("export", broken, "-o", tmp_path / "o.onnx"), ("generate", broken, "--prompt", "the cat"),
                 ("eval", broken, "--max-tokens", "10")):
        refused(tmp_path, *argv, needles=("has no 'moe' block",))


def test_generate_refuses_an_empty_prompt_and_zero_tokens(model_dir, tmp_path):
    refused(tmp_path, "generate", model_dir, "--prompt", "", needles=("--prompt is empty",))
    refused(tmp_path, "generate", model_dir, "--prompt", "  ", needles=("--prompt is empty",))
    refused(tmp_path, "generate", model_dir, "--prompt", "the cat", "--max-new-tokens", "0",
            needles=("--max-new-tokens 0",))
    refused(tmp_path, "generate", model_dir, "--prompt", "the cat", "--top-p", "0", needles=("--top-p",))
    r = curmoe_cli("generate", model_dir, "--prompt", "the cat", "--max-new-tokens", "3")
    assert r.returncode == 0 and r.stdout.startswith("the cat"), r.stderr


# item 6: Core ML eval/generate find the tokenizer export wrote beside the package ---------------------------
def test_coreml_generate_and_eval_find_the_tokenizer_beside_the_package(model_dir, tmp_path, wikitext2):
    pytest.importorskip("coremltools")
    pkg = tmp_path / "m.mlpackage"
    r = curmoe_cli("export", model_dir, "--format", "coreml", "-o", pkg)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tokenizer.json").is_file() and not (pkg / "tokenizer.json").exists()
    before = snapshot(tmp_path)
    r = curmoe_cli("generate", pkg, "--prompt", "the cat", "--max-new-tokens", "2", "--json")  # runtime from file
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["runtime"].startswith("coreml")
    r = curmoe_cli("eval", pkg, "--max-tokens", "40", "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["ppl_token"] > 1
    assert snapshot(tmp_path) == before


# item 1: validate every format export writes, the runtime chosen from the file -----------------------------
def test_validate_every_exported_format(model_dir, tmp_path):
    pytest.importorskip("onnx")
    formats = [("onnx", "m.onnx", "onnxruntime:cpu")]
    if importlib.util.find_spec("openvino"):
        formats.append(("openvino", "m.xml", "openvino:cpu"))
    if importlib.util.find_spec("coremltools"):
        formats.append(("coreml", "m.mlpackage", "coreml"))
    for fmt, name, _ in formats:
        r = curmoe_cli("export", model_dir, "--format", fmt, "-o", tmp_path / name)
        assert r.returncode == 0, r.stderr
    before = snapshot(tmp_path)
    for _, name, runtime in formats:
        r = curmoe_cli("validate", tmp_path / name, "--model", model_dir, "--json")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        rep = json.loads(r.stdout.splitlines()[-1])
        assert rep["passed"] and rep["runtime"].startswith(runtime) and rep["routing_agreement"] == 1.0, rep
    assert snapshot(tmp_path) == before
    refused(tmp_path, "validate", tmp_path / "m.onnx", "--model", model_dir, "--runtime", "coreml:mil",
            needles=("does not read .onnx", "curmoe export MODEL --format coreml"))
    refused(tmp_path, "validate", model_dir / "tokenizer.json", "--model", model_dir,
            needles=("not an exported model",))


# item 9: say what runs, why not, and in words -------------------------------------------------------------
def test_runtimes_says_why_not(tmp_path):
    before = snapshot(tmp_path)
    r = curmoe_cli("runtimes", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    rows = [x.split(None, 2) for x in r.stdout.splitlines()]
    assert all(len(x) == 3 and x[2].strip() for x in rows if x[1] == "no"), r.stdout  # every "no" has its reason
    assert any(x[0] == "onnxruntime:cuda" and x[1] == "no" for x in rows)
    assert snapshot(tmp_path) == before


def test_info_is_readable_text_and_eval_names_its_runtime(model_dir, tmp_path, wikitext2):
    r = curmoe_cli("info", model_dir)
    assert r.returncode == 0 and r.stdout.startswith("Model(") and "parameters:" in r.stdout
    assert "{" not in r.stdout.splitlines()[1]
    r = curmoe_cli("eval", model_dir, "--max-tokens", "40")
    assert r.returncode == 0 and "evaluating" in r.stderr and "on reference" in r.stderr, r.stderr
    assert "NumPy reference" in r.stderr and "Traceback" not in r.stderr


def test_every_option_has_help():
    from curmoe.app.cli import build_parser

    p = build_parser()
    sub = next(a for a in p._actions if a.dest == "command")
    missing = [f"{name} {a.option_strings or a.dest}" for name, sp in sub.choices.items() for a in sp._actions
               if a.help is None and a.dest != "help" and name not in ("bench",)]
    assert missing == []


# items 7 and 8: method names users know; bad options fail before any work ---------------------------------
def test_bad_compress_options_fail_before_calibration(model_dir, tmp_path):
    import time

    t0 = time.perf_counter()
    for method in ("cur", "cur-neuron"):
        refused(tmp_path, "compress", model_dir, "--method", method, "--selection", "foo", "--ratio", "0.5",
                "--calib", "wikitext2:train", "--calib-tokens", "10000000", "-o", tmp_path / "o",
                needles=("foo",))
    refused(tmp_path, "compress", model_dir, "--method", "svd-llm", "--ratio", "0.5", "-o", tmp_path / "o",
            needles=("--calib",))
    assert time.perf_counter() - t0 < 60  # no calibration ran (10M tokens would take far longer)
    r = curmoe_cli("compress", "--help")
    assert r.returncode == 0 and all(m in r.stdout for m in ("cur-neuron", "svd-llm", "svd:", "cur:"))


# item 8 (cache) and the inspect command: refusals in one line, nothing written ------------------------------
def test_inspect_refuses_a_dense_model_and_an_unknown_expert_in_one_line(model_dir, tmp_path):
    refused(model_dir.parent, "inspect", model_dir, needles=("not compressed",))
    import curmoe

    small = curmoe.compress(curmoe.load(model_dir), curmoe.SVDConfig(ratio=0.5), progress=False)
    d = small.save(tmp_path / "svd")
    refused(tmp_path, "inspect", d, "--expert", "7.7", needles=("'7.7' is not an expert", "LAYER.EXPERT"))


def test_an_unwritable_calibration_cache_does_not_fail_compress(model_dir, tmp_path):
    import curmoe
    from tests.babies import random_ids

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder would go")
    model = curmoe.load(model_dir)
    out = curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5, min_tokens=1), calib_ids=random_ids(model, 2, 16),
                          progress=False, calib_cache=blocker)
    assert out.config.compression["calibration_cache"]["status"] == "not stored"
    assert blocker.read_text().startswith("a file")
