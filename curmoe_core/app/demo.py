"""``curmoe demo``: the main job, staged on what is available here.

1. Decompositions on one matrix of a realistic shape: every method side by side at 50% (time, weight and output
   error).
2. The shipped model (``models/wt2-moe-8x``), when present: neuron CUR (global budget) at 50% and 70% of expert
   parameters (one calibration, read back from a cache for the second ratio), ONNX export validated on every
   runtime here, perplexity on WikiText-2 valid (or on a short built-in sample, clearly labelled, when the data is
   not available), Core ML and OpenVINO bf16 checks of the most compressed model, a few generated lines each.

Each table is printed as soon as it is ready (stdout); every step starts with a timed status line, and long steps
show tqdm bars (stderr); third-party progress bars (coremltools) are kept out.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from curmoe.decompose import (
    compare,
    format_table,
    synthetic_activations,
    synthetic_weight,
)

__all__ = ["decomposition_demo", "format_model_demo", "model_demo", "quiet_third_party", "run_cli",
           "shipped_model_dir"]

log = logging.getLogger(__name__)


def decomposition_demo(m: int = 1024, n: int = 2816, ratios: tuple[float, ...] = (0.5, 0.7), n_tokens: int = 4096,
                       say: Callable[[str], None] = log.info,
                       on_table: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every decomposition method on one synthetic (m, n) weight with anisotropic activations; ``say`` gets a line
    before each method, ``on_table`` the table of each ratio as soon as its methods have run."""
    say(f"building the synthetic {m}x{n} weight and {n_tokens} activations")
    W = synthetic_weight(m, n)
    X = synthetic_activations(n_tokens, n)
    rows = []
    for i, r in enumerate(ratios):
        part = compare(W, X, [r], progress=lambda s: say(f"  {s}"))
        rows += part
        if on_table is not None:
            table = format_table(part).splitlines()
            on_table("\n".join(table if i == 0 else table[2:]))  # one header for the whole table
    return {"shape": [m, n], "n_tokens": n_tokens, "rows": [r.__dict__ for r in rows], "table": format_table(rows)}


DEMO_DECOMPOSITION_RATIOS = (0.5,)


def run_cli(args: Any) -> int:
    """``curmoe demo``: tables on stdout as soon as each is ready; a status line per step (with the elapsed time)
    and tqdm bars on stderr; ``--json``: one JSON object at the end and nothing else."""
    import json
    from pathlib import Path

    t0 = time.perf_counter()
    quiet = bool(args.json)
    out_line = (lambda s: None) if quiet else (lambda s: print(s, flush=True))
    status = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    out: dict[str, Any] = {}
    if not args.skip_decompositions:
        m, n = (int(v) for v in args.shape.lower().split("x"))
        out_line(f"[1] decompositions of one {m}x{n} weight (power-law spectrum + noise; 4096 anisotropic "
                 "activations)")
        # one ratio: the 0.7 rows told the same story and doubled this step (~19% of the whole demo); the model
        # stage below compresses at 50% and 70%
        out["decompositions"] = decomposition_demo(
            m, n, ratios=DEMO_DECOMPOSITION_RATIOS,
            say=lambda s: status(f"[{time.perf_counter() - t0:6.1f} s] {s.strip()}"), on_table=out_line)
        out_line("times are wall-clock on this machine, measured in one run; speed-up is relative to the poster's "
                 "'seed' CUR at the same ratio. Errors: ||W - W'||_F / ||W||_F and ||(W - W') X^T||_F / ||W X^T||_F.")
    model_dir = Path(args.model) if args.model else shipped_model_dir()
    if (model_dir / "config.json").is_file():
        out_line(f"[2] {model_dir}: compress -> export ONNX -> validate on every runtime -> perplexity -> generate")
        out["model"] = model_demo(model_dir, data_dir=args.data_dir, max_eval_tokens=args.max_eval_tokens,
                                  say=out_line, status=status, on_row=out_line, progress=not quiet, t0=t0)
    else:
        out_line(f"[2] skipped: no model at {model_dir}")
    out["total_s"] = round(time.perf_counter() - t0, 1)
    status(f"demo done in {out['total_s']:.0f} s")
    if quiet:
        print(json.dumps(out, default=str))
    return 0


# Stage 2: the shipped model. (cli/demo are the application layer: they import curmoe.exporters / curmoe.runtimes
# lazily, inside functions; the library modules of curmoe_core never do.)

SAMPLE_TEXT = """\
 The game 's development began in 2008 , when the team started work on a new engine .
 The city was founded in the early 19th century and grew quickly after the railway arrived .
 He played for the club for six seasons , scoring 45 goals in 120 appearances .
 The album received positive reviews from critics , who praised its production and lyrics .
 During the war , the ship served as an escort in the Atlantic and was later sold for scrap .
 The species is found in forests across the region , where it feeds mainly on insects .
"""  # a built-in sample in WikiText-2's style, used only when the data set is not available (labelled so)

PROMPTS = ("The history of the city", "In 1990 , the band")


def shipped_model_dir(name: str = "wt2-moe-8x") -> Any:
    """A checkpoint shipped inside the curmoe.models package (works for editable and wheel installs)."""
    from pathlib import Path

    import curmoe.models  # light: imports neither torch nor transformers

    return Path(curmoe.models.__file__).resolve().parent / name


class _Clock:
    """Wall-clock seconds per demo step (summed over models), for the closing line and the JSON record."""

    def __init__(self, status: Callable[[str], None], t0: float | None = None) -> None:
        self.t0, self.status, self.steps = time.perf_counter() if t0 is None else t0, status, {}

    @contextmanager
    def step(self, name: str, what: str) -> Iterator[None]:
        self.status(f"[{time.perf_counter() - self.t0:6.1f} s] {what}")
        t = time.perf_counter()
        try:
            yield
        finally:
            self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - t


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """Keep third-party progress output (coremltools' "Running MIL ... pipeline" tqdm bars, written to
    ``sys.stderr``) out of the demo's output; it is shown only if the block fails."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield
    except BaseException:
        sys.stderr.write(buf.getvalue())
        raise


def model_demo(model_dir: Any = None, *, ratios: tuple[float, ...] = (0.5, 0.7), data_dir: str | None = None,
               calib_tokens: int = 16384, max_eval_tokens: int | None = None, workdir: Any = None,
               say: Callable[[str], None] = log.info, status: Callable[[str], None] = log.info,
               on_row: Callable[[str], None] | None = None, progress: bool = False,
               t0: float | None = None) -> dict[str, Any]:
    """Compress (neuron CUR, one global budget: the best interpretable method, see docs/results/compression.md)
    -> export ONNX -> validate on every runtime here -> perplexity -> text.

    ``say`` gets notices, ``status`` a line at the start of every step (with the elapsed time), ``on_row`` each
    line of the results table as soon as it is known (the header first, then one row per model, then the extra
    checks and the generated text); ``progress`` shows tqdm bars (stderr) inside the long steps; ``t0`` (a
    ``time.perf_counter()`` value) is where the status lines count from (default: now).
    """
    import tempfile
    from pathlib import Path

    import numpy as np

    import curmoe
    from curmoe.app.calibdata import calibration_ids
    from curmoe.eval import DataNotFoundError
    from curmoe.exporters import OnnxExportConfig, export
    from curmoe.models.tokenizer import encode_lines, load_tokenizer
    from curmoe.runtimes import available, generate, load, validate
    from curmoe.runtimes.evaluate import evaluate_text, evaluate_wikitext2

    emit = on_row or (lambda line: None)
    clock = _Clock(status, t0)
    start = time.perf_counter()
    model_dir = Path(model_dir or shipped_model_dir())
    work = Path(workdir or tempfile.mkdtemp(prefix="curmoe-demo-"))
    with clock.step("load", f"loading {model_dir.name} and the calibration text"):
        dense = curmoe.load(model_dir)
        tok = load_tokenizer(dense.tokenizer_path)
        try:
            curmoe.data_dir(data_dir)
            calib = calibration_ids("wikitext2:train", dense, data_dir=data_dir, n_tokens=calib_tokens)
            have_data = True
            calib_src = f"WikiText-2 train, first {calib.size} tokens"
        except DataNotFoundError as e:
            have_data = False
            say(f"WikiText-2 not found ({str(e).splitlines()[0]}); using the built-in sample text instead. "
                "Set CURMOE_DATA_DIR=/path/to/data (with wikitext-2/{train,valid,test}.txt) for real figures.")
            ids = encode_lines(tok, SAMPLE_TEXT.splitlines())
            calib = ids[: ids.size // 64 * 64].reshape(-1, 64)
            calib_src = f"built-in sample text ({calib.size} tokens)"
    # every runtime usable here, except the reference itself and aliases of one device (openvino:auto = cpu here)
    runtimes = [n for n, _ in available() if not n.startswith(("reference", "coreml")) and n != "openvino:auto"]
    eval_split = "wikitext2:valid" if have_data else "built-in sample (not WikiText-2)"
    for line in _table_head(str(model_dir), calib_src, eval_split, runtimes):
        emit(line)
    names = ["dense"] + [f"cur-neuron{int(100 * r)}" for r in ratios]
    rows: list[dict[str, Any]] = []
    cache = work / "calibration-cache"  # one calibration serves every ratio (the second compression reads it)
    for name, r in zip(names, (None, *ratios)):
        if r is None:
            m = dense
        else:
            with clock.step("compress", f"compressing: neuron CUR (global budget), {int(100 * r)}% of expert "
                                        "parameters (calibration on the first ratio only; then read from the cache)"):
                m = curmoe.compress(dense, curmoe.NeuronConfig(ratio=r, allocation="global"), calib_ids=calib,
                                    progress=progress, calib_cache=cache, calib_source=calib_src)
        with clock.step("export", f"exporting {name} to ONNX"):
            m.save(work / name)
            onnx_path = export(m, OnnxExportConfig(), work / f"{name}.onnx")
        row: dict[str, Any] = {"model": name, "params": m.n_params(), "onnx": str(onnx_path)}
        if m.config.compression:
            row["ratio_expert_params"] = m.config.compression["ratio_expert_params"]
            row["ratio_all_params"] = m.config.compression["ratio_all_params"]
            row["calibration_cache"] = m.config.compression["calibration_cache"]["status"]
        row["validation"] = {}
        for rt in runtimes:
            with clock.step("validate", f"validating {name} on {rt} against the float64 reference"):
                row["validation"][rt] = _validate_row(validate, onnx_path, m, rt)
        sess = load(onnx_path, "onnxruntime:cpu")
        with clock.step("perplexity", f"perplexity of {name} on {eval_split} (ONNX Runtime CPU)"):
            if have_data:
                res = evaluate_wikitext2(sess, m.tokenizer_path, split="valid", data_dir=data_dir,
                                         max_tokens=max_eval_tokens, progress=progress)
            else:
                res = evaluate_text(sess, m.tokenizer_path, SAMPLE_TEXT, label="built-in sample (NOT WikiText-2)")
        row["ppl"] = res.to_dict()
        emit(_table_row(row, runtimes))  # the main table grows as each model is done
        row["m"], row["sess"] = m, sess
        rows.append(row)
    emit("")
    for row in rows:  # secondary checks, after the main table
        m, sess, onnx_path = row.pop("m"), row.pop("sess"), Path(row["onnx"])
        # Core ML (a NumPy evaluation of the MIL program off macOS: ~40% of the model stage per model) and the
        # OpenVINO bf16 option run on the most compressed model only: every model's graph is built by the same
        # code (neuron-CUR experts are plain smaller experts), so checking all three showed nothing new.
        extras = row is rows[-1]
        if extras and "openvino:cpu" in runtimes:  # bf16 is an explicit option: report what it does to routing
            with clock.step("validate", f"OpenVINO CPU bf16 check of {row['model']}"):
                row["validation"]["openvino:cpu bf16"] = _validate_row(validate, onnx_path, m, "openvino:cpu",
                                                                      precision="bf16")
                try:
                    row["openvino_moe_fusion"] = load(onnx_path, "openvino:cpu").moe_fusion()["fused"]
                except curmoe.CurmoeError as e:
                    row["openvino_moe_fusion"] = f"unknown ({e})"
        if extras:
            with clock.step("coreml", f"Core ML export and check of {row['model']}"):
                row["coreml"] = _coreml_check(m, work / f"{row['model']}.mlpackage")
        with clock.step("generate", f"generating text with {row['model']}"):
            row["samples"] = []
            for prompt in PROMPTS:
                ids = np.asarray(tok.encode(prompt, add_special_tokens=False).ids, np.int64)
                out = generate(sess, ids, 24, eos_token_id=m.config.eos_token_id)
                row["samples"].append(prompt + " " + tok.decode(out[ids.size:].tolist()))
        for line in _row_extras(row) + [f"[{row['model']}] {s}" for s in row["samples"]]:
            emit(line)
    total = time.perf_counter() - start
    status(f"[{time.perf_counter() - clock.t0:6.1f} s] model stage done in {total:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in clock.steps.items()))
    return {"model_dir": str(model_dir), "calibration": calib_src, "runtimes": runtimes, "rows": rows,
            "eval_split": eval_split, "workdir": str(work),
            "timings_s": {k: round(v, 2) for k, v in clock.steps.items()} | {"total": round(total, 2)}}


def _validate_row(validate: Callable[..., Any], onnx_path: Any, m: Any, rt: str, **kw: Any) -> dict[str, Any]:
    import curmoe

    try:
        rep = validate(onnx_path, m, rt, **kw)
        return {k: rep.to_dict()[k] for k in ("passed", "max_abs_err", "max_rel_err", "routing_agreement",
                                             "ppl_rel_diff")}
    except curmoe.CurmoeError as e:  # a runtime that cannot take this graph: say so, go on
        return {"passed": False, "error": str(e)}


def _coreml_check(m: Any, pkg: Any) -> dict[str, Any]:
    """Export Core ML and validate it: real prediction on macOS, NumPy evaluation of the MIL program elsewhere."""
    import importlib.util

    if importlib.util.find_spec("coremltools") is None:
        return {"skipped": "coremltools is not installed (pip install 'curmoe[coreml]')"}
    from curmoe.exporters import export
    from curmoe.exporters.coreml import CoreMLExportConfig
    from curmoe.runtimes.adapters.coreml import can_predict, validate_coreml

    runtime = "coreml" if can_predict() else "coreml:mil"
    with quiet_third_party():  # coremltools' pipeline progress bars
        path = export(m, CoreMLExportConfig(), pkg)
        rep = validate_coreml(path, m, runtime)
    d = rep.to_dict()
    return {"runtime": runtime, "passed": d["passed"], "max_rel_err": d["max_rel_err"],
            "routing_agreement": d["routing_agreement"],
            "apple_kernels_run": bool(d["info"].get("extra", {}).get("apple_kernels_run", can_predict()))}


def _table_head(model_dir: str, calib_src: str, eval_split: str, rts: list[str]) -> list[str]:
    return [f"model {model_dir}; calibration: {calib_src}; perplexity on {eval_split} (ONNX Runtime CPU)", "",
            "| model | expert params removed | all params removed | ppl token | ppl word | "
            + " | ".join(f"{rt} (max rel err, routing)" for rt in rts) + " |",
            "|" + " --- |" * (5 + len(rts))]


def _table_row(r: dict[str, Any], rts: list[str]) -> str:
    ex = f"{100 * r['ratio_expert_params']:.1f}%" if "ratio_expert_params" in r else "0%"
    al = f"{100 * r['ratio_all_params']:.1f}%" if "ratio_all_params" in r else "0%"
    val = []
    for rt in rts:
        v = r["validation"][rt]
        val.append(f"{'PASS' if v['passed'] else 'FAIL'} {v.get('max_rel_err', float('nan')):.1e}, "
                   f"{v.get('routing_agreement') or 0:.3f}" if "error" not in v else f"ERROR {v['error'][:60]}")
    return (f"| {r['model']} | {ex} | {al} | {r['ppl']['ppl_token']:.2f} | {r['ppl']['ppl_word']:.2f} | "
            + " | ".join(val) + " |")


def _row_extras(r: dict[str, Any]) -> list[str]:
    extra = []
    if "openvino:cpu bf16" in r["validation"]:
        v = r["validation"]["openvino:cpu bf16"]
        extra.append(f"OpenVINO CPU bf16 (explicit option): max rel err {v.get('max_rel_err', float('nan')):.1e}, "
                     f"routing agreement {v.get('routing_agreement') or 0:.3f}; MoE fused by OpenVINO: "
                     f"{r.get('openvino_moe_fusion')}")
    c = r.get("coreml", {})
    if "skipped" in c:
        extra.append(f"Core ML: skipped ({c['skipped']})")
    elif c:
        extra.append(f"Core ML ({c['runtime']}): {'PASS' if c['passed'] else 'FAIL'}, max rel err "
                     f"{c['max_rel_err']:.1e}, routing {c['routing_agreement'] or 0:.3f}"
                     + ("" if c["apple_kernels_run"] else " -- MIL program evaluated with NumPy; Apple's kernels "
                        "were NOT run (Core ML predicts only on macOS)"))
    return [f"{r['model']}: " + "; ".join(extra)] if extra else []


def format_model_demo(out: dict[str, Any]) -> str:
    """The whole model-stage output at once (what ``curmoe demo`` prints piece by piece as it goes)."""
    rts = out["runtimes"]
    lines = _table_head(out["model_dir"], out["calibration"], out["eval_split"], rts)
    lines += [_table_row(r, rts) for r in out["rows"]] + [""]
    for r in out["rows"]:
        lines += _row_extras(r) + [f"[{r['model']}] {s}" for s in r["samples"]]
    return "\n".join(lines)
