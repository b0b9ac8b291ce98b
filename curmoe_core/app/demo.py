"""``curmoe demo``: the main job, staged on what is available here.

1. Decompositions on one matrix of a realistic shape: every method side by side (time, weight and output error).
2. The shipped model (``models/wt2-moe-8x``), when present: activation-aware CUR at 50% and 70% of expert
   parameters, perplexity on WikiText-2 valid (or on a short built-in sample, clearly labelled, when the data is
   not available), and a few generated lines from each model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from curmoe.decompose import (
    compare,
    format_table,
    synthetic_activations,
    synthetic_weight,
)

__all__ = ["decomposition_demo"]

log = logging.getLogger(__name__)


def decomposition_demo(m: int = 1024, n: int = 2816, ratios: tuple[float, ...] = (0.5, 0.7), n_tokens: int = 4096,
                       say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Every decomposition method on one synthetic (m, n) weight with anisotropic activations."""
    W = synthetic_weight(m, n)
    X = synthetic_activations(n_tokens, n)
    rows = compare(W, X, ratios, progress=lambda s: say(f"  {s}"))
    return {"shape": [m, n], "n_tokens": n_tokens, "rows": [r.__dict__ for r in rows], "table": format_table(rows)}


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


def model_demo(model_dir: Any = None, *, ratios: tuple[float, ...] = (0.5, 0.7), data_dir: str | None = None,
               calib_tokens: int = 16384, max_eval_tokens: int | None = None, workdir: Any = None,
               say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Compress (neuron CUR, one global budget: the best interpretable method, see docs/results/compression.md)
    -> export ONNX -> validate on every runtime here -> perplexity -> text."""
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

    model_dir = Path(model_dir or shipped_model_dir())
    work = Path(workdir or tempfile.mkdtemp(prefix="curmoe-demo-"))
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
    models = {"dense": dense}
    for r in ratios:
        say(f"compressing: neuron CUR (global budget), {int(100 * r)}% of expert parameters")
        models[f"cur-neuron{int(100 * r)}"] = curmoe.compress(
            dense, curmoe.NeuronConfig(ratio=r, allocation="global"), calib_ids=calib, progress=False)
    # every runtime usable here, except the reference itself and aliases of one device (openvino:auto = cpu here)
    runtimes = [n for n, _ in available() if not n.startswith(("reference", "coreml")) and n != "openvino:auto"]
    rows = []
    for name, m in models.items():
        mdir = m.save(work / name)
        onnx_path = export(m, OnnxExportConfig(), work / f"{name}.onnx")
        row: dict[str, Any] = {"model": name, "params": m.n_params(), "onnx": str(onnx_path)}
        if m.config.compression:
            row["ratio_expert_params"] = m.config.compression["ratio_expert_params"]
            row["ratio_all_params"] = m.config.compression["ratio_all_params"]
        row["validation"] = {}
        for rt in runtimes:
            say(f"validating {name} on {rt}")
            try:
                rep = validate(onnx_path, m, rt)
                row["validation"][rt] = {k: rep.to_dict()[k] for k in
                                         ("passed", "max_abs_err", "max_rel_err", "routing_agreement", "ppl_rel_diff")}
            except curmoe.CurmoeError as e:  # a runtime that cannot take this graph: say so, go on
                row["validation"][rt] = {"passed": False, "error": str(e)}
        if "openvino:cpu" in runtimes:  # the faster precision is an explicit option: report what it does to routing
            try:
                from curmoe.runtimes import load as rt_load

                rep = validate(onnx_path, m, "openvino:cpu", precision="bf16")
                row["validation"]["openvino:cpu bf16"] = {k: rep.to_dict()[k] for k in
                                                         ("passed", "max_abs_err", "max_rel_err", "routing_agreement",
                                                          "ppl_rel_diff")}
                row["openvino_moe_fusion"] = rt_load(onnx_path, "openvino:cpu").moe_fusion()["fused"]
            except curmoe.CurmoeError as e:
                row["validation"]["openvino:cpu bf16"] = {"passed": False, "error": str(e)}
        row["coreml"] = _coreml_check(m, work / f"{name}.mlpackage", say)
        sess = load(onnx_path, "onnxruntime:cpu")
        say(f"perplexity of {name}")
        if have_data:
            res = evaluate_wikitext2(sess, m.tokenizer_path, split="valid", data_dir=data_dir, max_tokens=max_eval_tokens)
        else:
            res = evaluate_text(sess, m.tokenizer_path, SAMPLE_TEXT, label="built-in sample (NOT WikiText-2)")
        row["ppl"] = res.to_dict()
        row["samples"] = []
        for prompt in PROMPTS:
            p = np.asarray(tok.encode(prompt, add_special_tokens=False).ids, np.int64)
            out = generate(sess, p, 24, eos_token_id=m.config.eos_token_id)
            row["samples"].append(prompt + " " + tok.decode(out[p.size:].tolist()))
        rows.append(row)
        del mdir
    return {"model_dir": str(model_dir), "calibration": calib_src, "runtimes": runtimes, "rows": rows,
            "eval_split": "wikitext2:valid" if have_data else "built-in sample (not WikiText-2)", "workdir": str(work)}


def _coreml_check(m: Any, pkg: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """Export Core ML and validate it: real prediction on macOS, NumPy evaluation of the MIL program elsewhere."""
    import importlib.util

    if importlib.util.find_spec("coremltools") is None:
        return {"skipped": "coremltools is not installed (pip install 'curmoe[coreml]')"}
    from curmoe.exporters import export
    from curmoe.exporters.coreml import CoreMLExportConfig
    from curmoe.runtimes.adapters.coreml import can_predict, validate_coreml

    say(f"Core ML export and check of {pkg.stem}")
    path = export(m, CoreMLExportConfig(), pkg)
    runtime = "coreml" if can_predict() else "coreml:mil"
    rep = validate_coreml(path, m, runtime)
    d = rep.to_dict()
    return {"runtime": runtime, "passed": d["passed"], "max_rel_err": d["max_rel_err"],
            "routing_agreement": d["routing_agreement"],
            "apple_kernels_run": bool(d["info"].get("extra", {}).get("apple_kernels_run", can_predict()))}


def format_model_demo(out: dict[str, Any]) -> str:
    lines = [f"model {out['model_dir']}; calibration: {out['calibration']}; perplexity on {out['eval_split']} "
             "(ONNX Runtime CPU)", ""]
    rts = out["runtimes"]
    lines.append("| model | expert params removed | all params removed | ppl token | ppl word | "
                 + " | ".join(f"{rt} (max rel err, routing)" for rt in rts) + " |")
    lines.append("|" + " --- |" * (5 + len(rts)))
    for r in out["rows"]:
        ex = f"{100 * r['ratio_expert_params']:.1f}%" if "ratio_expert_params" in r else "0%"
        al = f"{100 * r['ratio_all_params']:.1f}%" if "ratio_all_params" in r else "0%"
        val = []
        for rt in rts:
            v = r["validation"][rt]
            val.append(f"{'PASS' if v['passed'] else 'FAIL'} {v.get('max_rel_err', float('nan')):.1e}, "
                       f"{v.get('routing_agreement') or 0:.3f}" if "error" not in v else f"ERROR {v['error'][:60]}")
        lines.append(f"| {r['model']} | {ex} | {al} | {r['ppl']['ppl_token']:.2f} | {r['ppl']['ppl_word']:.2f} | "
                     + " | ".join(val) + " |")
    for r in out["rows"]:
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
        if extra:
            lines.append(f"{r['model']}: " + "; ".join(extra))
    lines.append("")
    for r in out["rows"]:
        for s in r["samples"]:
            lines.append(f"[{r['model']}] {s}")
    return "\n".join(lines)
