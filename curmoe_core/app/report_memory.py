"""The memory page of ``curmoe report``: peak resident memory of every command on a model of a few GB."""

from __future__ import annotations

from typing import Any

from curmoe.app.report_tables import source as _source
from curmoe.app.report_tables import table as _table

__all__ = ["memory_capacity", "memory_page"]

# what each row measures, in the words of a user
_WHAT = {
    "compress": "neuron CUR 70%, global budget, 4,096 calibration tokens, in memory",
    "compress-stream": "the same with a uniform budget, --stream (one layer at a time)",
    "export-onnx": "ONNX, weights in external data",
    "export-openvino": "OpenVINO IR (via a temporary ONNX file)",
    "validate-ort": "ONNX Runtime CPU against the float64 reference",
    "validate-openvino": "OpenVINO CPU against the float64 reference",
    "eval-ort": "WikiText-2 valid perplexity, 4,096 tokens, ORT CPU",
    "eval-reference": "the same through the NumPy reference, 1,024 tokens",
    "generate-ort": "16 new tokens, ORT CPU",
    "generate-reference": "8 new tokens, NumPy reference",
    "bench": "every runtime row, one after another (--skip-numpy)",
    "serve-ort": "curmoe serve on ORT CPU, 4 concurrent completions",
}


def memory_capacity(rows: list[dict[str, Any]], machine_gib: float) -> dict[str, float]:
    """The largest model (float32 GiB, and billions of parameters) each command fits on a machine of
    ``machine_gib`` GiB, from its measured peak as a multiple of the model's float32 bytes (the fixed cost of the
    Python process is part of that multiple, so this slightly understates what fits)."""
    out = {}
    for r in rows:
        if r.get("rc") == 0 and r.get("x_fp32"):
            out[r["name"]] = machine_gib / r["x_fp32"]
    return out


def memory_page(data: dict[str, Any]) -> str:
    m = data["model"]
    gib = m["fp32_bytes"] / 2**30
    rows = data["rows"]
    lines = ["# Memory", "",
             f"Peak resident memory (the kernel's `ru_maxrss` for each command's process: every page it touched, "
             f"memory-mapped file pages included) of each `curmoe` command on a random-weight model with OLMoE's "
             f"layer shape (d_model 2048, 16 heads, d_ff 1024, 64 experts, top-8), 2 layers, vocab 8,192: "
             f"{m['n_params'] / 1e6:,.0f} M parameters, {gib:.2f} GiB in float32. Ratios are to that float32 size; "
             f"targets from issue 19.", "",
             _source(data, "memory.json"), ""]
    table = []
    for r in rows:
        ok = ("stopped" if r.get("rc") in (-15, -2) else "failed" if r.get("rc") else "-" if r.get("target") is None
              else "yes" if r.get("met") else "no")
        target = "none set" if r.get("target") is None else f"<= {r['target']:.1f}x"
        what = _WHAT.get(r["name"], "") + (f" ({r['note']})" if r.get("note") else "")
        table.append([f"`{r['name']}`", what, f"{r['peak_rss'] / 2**30:.2f}",
                      f"{r['x_fp32']:.2f}x", target, ok, f"{r['wall_s']:.0f}"])
    lines += [_table(["command", "what", "peak RSS GiB", "x fp32", "target", "met", "wall s"], table, "llrrrlr"), ""]
    lines += ["Each full command line is in the data file. Where the memory goes and what was removed: "
              "[docs/memory.md](../memory.md).", ""]
    machines = (16, 24, 32, 64, 128)
    cap = {n: memory_capacity(rows, n) for n in machines}
    if rows:
        lines += ["## How large a model each command handles", "",
                  "Float32 model size (GiB) that fits in a machine's memory at the measured multiple (a float16 or "
                  "bfloat16 checkpoint computes in float32, so count its float32 size):", "",
                  _table(["command"] + [f"{n} GiB" for n in machines],
                         [[f"`{name}`"] + [f"{cap[n][name]:.1f}" for n in machines] for name in cap[machines[0]]]),
                  ""]
    v = data.get("validation")
    if v:
        lines += ["## Validation is decisive at this size", "",
                  "`curmoe validate` on ORT CPU and OpenVINO CPU with different input seeds, on the correct export "
                  "and on a corrupted one (one expert matrix, `layers.1.experts.5.up`, perturbed by 1% relative "
                  "noise): a correct export must pass every time and a corrupted one fail every time.", "",
                  _table(["runtime, export", "runs", "passed"],
                         [[k, x["runs"], x["passed"]] for k, x in v.items()]), ""]
    return "\n".join(lines)
