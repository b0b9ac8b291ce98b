"""``curmoe report``: docs/results/ (Markdown + PNG figures) from the stored measurements of ``benchmarks/``.

Inputs, in ``data_dir`` (default docs/results/data), each written by one benchmark script (see curmoe.app.results):

=================  ==========================================  ==========================
file               measurement                                 written by
=================  ==========================================  ==========================
compression.json   perplexity / output error / time / samples  benchmarks/compression.py
gating.json        routers trained alike: quality and balance  benchmarks/gating.py
runtime.json       decode tok/s, prefill, roofline per runtime  benchmarks/runtime.py
interpret.json     what CUR keeps against activation energy    benchmarks/interpret.py
=================  ==========================================  ==========================

Outputs: one Markdown page per measurement plus an index (``README.md``) in ``out_dir``, the figures beside them,
and optionally the headline block of the project README (between ``<!-- results:begin -->`` and
``<!-- results:end -->``). Every table states the command (and commit) that produced its numbers. A missing
input is not an error: its page says which command makes it. The report only formats: it measures nothing.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from curmoe.app.report_memory import memory_page
from curmoe.app.report_pretrained import pretrained_page
from curmoe.app.report_quantize import quantize_page
from curmoe.app.report_runtime_scale import runtime_scale_figure, runtime_scale_page
from curmoe.app.report_upcycle import upcycle_page
from curmoe.app.report_serve import serve_figure, serve_page
from curmoe.app.report_tables import source as _source
from curmoe.app.report_tables import table as _table
from curmoe.app.results import read_results
from curmoe.common.errors import InvalidInputError
from curmoe.common.io import atomic_write

__all__ = ["README_BEGIN", "README_END", "SOURCES", "load_results", "report"]

log = logging.getLogger(__name__)

SOURCES = {
    "compression": ("compression.json", "python benchmarks/compression.py"),
    "gating": ("gating.json", "python benchmarks/gating.py"),
    "runtime": ("runtime.json", "python benchmarks/runtime.py --json-file docs/results/data/runtime.json"),
    "interpret": ("interpret.json", "python benchmarks/interpret.py"),
    "memory": ("memory.json", "python benchmarks/memory.py --model /tmp/olmoe-2l --make "
                              "--out docs/results/data/memory.json"),
    "serve": ("serve.json", "python benchmarks/serve.py --json-file docs/results/data/serve.json"),
    "pretrained": ("pretrained.json", "python benchmarks/pretrained.py"),
    "quantize": ("quantize.json", "python benchmarks/quantize.py --threads 1 --max-tokens 65536 "
                                  "--out docs/results/data/quantize.json"),
    "upcycle": ("upcycle.json", "python benchmarks/upcycle.py"),
    "runtime_scale": ("runtime_scale.json", "python benchmarks/runtime_scale.py --shape olmoe --layers 1 --low-memory "
                                            "--paired svd70,cur70,cur-neuron70 (and the table runs in "
                                            "docs/runtime_scale.md)"),
}
# Healed rows may come from a second run of benchmarks/compression.py (--methods "... +heal"), merged into the
# compression page when present.
HEALING = ("healing.json", 'python benchmarks/compression.py --methods "cur-neuron global +heal,svd-llm +heal,'
                           'svd-llm global +heal" --out docs/results/data/healing.json')


def load_results(data_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every stored measurement in ``data_dir`` by source name (healed rows merged into "compression")."""
    data_dir = Path(data_dir)
    results = {name: read_results(data_dir / file) for name, (file, _) in SOURCES.items()
               if (data_dir / file).exists()}
    if "compression" in results and (data_dir / HEALING[0]).exists():
        results["compression"] = merge_healing(results["compression"], read_results(data_dir / HEALING[0]))
    return results


def merge_healing(comp: dict[str, Any], heal: dict[str, Any]) -> dict[str, Any]:
    """The compression results with the healed rows of a second run appended (same protocol: its dense row must
    equal the first run's, or the multiples would not compare)."""
    dense = [next((r for r in d["rows"] if r["method"] == "dense"), None) for d in (comp, heal)]
    splits = [s for s in comp.get("splits", []) if dense[0] and dense[1] and s in dense[0] and s in dense[1]]
    if not splits or any(abs(dense[0][s]["ppl_token"] / dense[1][s]["ppl_token"] - 1) > 1e-6 for s in splits):
        raise InvalidInputError("healing.json's dense row differs from compression.json's (another model, prefix or "
                                "data?); rerun both with the same options")
    rows = comp["rows"] + [r for r in heal["rows"] if r["method"].endswith("+heal")]
    return comp | {"rows": rows, "healing_provenance": heal["provenance"]}
README_BEGIN = "<!-- results:begin (written by curmoe report; edits here are overwritten) -->"
README_END = "<!-- results:end -->"


def _write(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _g(x: float) -> str:
    """Perplexities and ratios: 4 significant digits, plain notation up to 1e6."""
    return f"{x:,.2f}" if x < 1e4 else f"{x:,.0f}" if x < 1e6 else f"{x:.3g}"


# compression ----------------------------------------------------------------------------------------------------
HEAL = " +heal"  # benchmarks/compression.py: a healed row is its one-shot method's name plus this suffix
SVD_LLM = ("svd-llm", "svd-llm global")  # the baselines of issue 12: uniform and allocated SVD-LLM
TARGET_RATIOS = (0.3, 0.5, 0.7, 0.8)  # issue 12: "below SVD-LLM at every ratio" of the benchmark
TARGETS_ONE_SHOT = ((0.5, 1.05), (0.7, 1.20), (0.8, 1.60))  # (ratio, best interpretable one-shot test / dense <=)
TARGET_HEALED = (0.7, 1.10)
TIME_PAIR = ("cur-neuron global", "svd-llm")  # compress time of the new method against SVD-LLM's, <= 1
# What a base method name means (the suffixes " global", " seq" and " +heal" are explained apart).
METHOD_NOTES = {
    "cur-neuron": "neuron CUR: keep k real neurons of each expert (rows of W_gate, W_up), refit W_down",
    "svd-llm": "SVD of the whitened matrix (SVD-LLM), per matrix",
    "svd": "plain truncated SVD, per matrix",
    "cur-deim aware": "per-matrix CUR, DEIM on the column-scaled matrix (activation-aware)",
    "cur-deim whitened": "per-matrix CUR, DEIM on the whitened matrix W L (L: Cholesky of the input second moment)",
    "cur-deim": "per-matrix CUR, DEIM on W",
    "cur-leverage": "per-matrix CUR, leverage-score sampling on W",
    "cur-seed (poster)": "per-matrix CUR as on the poster (seed selection, U = pinv of the intersection)",
}


def _compression_rows(data: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rows = data["rows"]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    if dense is None:
        raise InvalidInputError("compression.json has no 'dense' row; rerun benchmarks/compression.py")
    if any("test" not in r for r in rows):
        raise InvalidInputError("compression.json has rows without the test split (the reported one); rerun "
                                "benchmarks/compression.py with --splits valid,test")
    return dense, [r for r in rows if r["method"] != "dense"]


def _healed(r: dict[str, Any]) -> bool:
    return r["method"].endswith(HEAL)


def _interpretable(r: dict[str, Any]) -> bool:
    """CUR of any kind keeps real rows/columns/neurons; SVD does not."""
    return r["method"].startswith("cur")


def _pct(x: float) -> str:
    return f"{int(round(100 * x))}%"


def _mult(r: dict[str, Any] | None, dense_ppl: float) -> str:
    return "-" if r is None else f"{_g(r['test']['ppl_token'] / dense_ppl)}x"


def _pick(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best row chosen on valid (on test only where a row has no valid split)."""
    return min(rows, key=lambda r: (r["valid"] if "valid" in r else r["test"])["ppl_token"], default=None)


def _at(rows: list[dict[str, Any]], ratio: float, method: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["ratio_target"] == ratio and r["method"] == method), None)


def _size(n: float | None, unit: str) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} {unit}"


def _params(data: dict[str, Any], r: dict[str, Any]) -> float | None:
    n = data.get("n_params")
    return None if not n else round(n * (1 - r["ratio_all_params"]))


def compression_table(data: dict[str, Any], ratios: list[float] | None = None, full: bool = True,
                      healed: bool = False) -> str:
    """One row per method and ratio (dense first): the one-shot rows, or (``healed``) the ``+heal`` rows."""
    dense, rows = _compression_rows(data)
    splits = data.get("splits", ["test"])
    rows = [r for r in rows if (ratios is None or r["ratio_target"] in ratios) and _healed(r) == healed]
    rows.sort(key=lambda r: (r["ratio_target"], r["test"]["ppl_token"]))
    head = ["method"] + (["calibration"] if full and not healed else []) + ["expert params removed"]
    if full:
        head += ["all params removed", "params"]
    head += ["on disk"]
    if full and not healed:
        head += ["mean output error"]
    if healed:
        head += ["trained params", "held-out KL before", "held-out KL after", "steps"]
    head += [f"{s} ppl (token)" for s in splits if s != "test"] + ["test ppl (token)", "test ppl (word)",
                                                                   "test ppl / dense"]
    if healed:
        head += ["one-shot test ppl / dense"]
    if full:
        head += ["heal s" if healed else "compress s"]
    d = dense["test"]["ppl_token"]
    one_shot = {(r["method"], r["ratio_target"]): r for r in data["rows"] if not _healed(r)}
    out = []
    for r in ([] if healed else [dense]) + rows:
        line = [r["method"]] + ([r.get("calibration", "-")] if full and not healed else []) + [
            f"{100 * r['ratio_expert_params']:.1f}%"]
        if full:
            line += [f"{100 * r['ratio_all_params']:.1f}%", _size(_params(data, r), "M")]
        line += [_size(r.get("bytes_on_disk"), "MB")]
        if full and not healed:
            line += [f"{r['mean_output_error']:.3f}"]
        if healed:
            h = r.get("heal") or {}
            line += [f"{h['trainable_params']:,}" if "trainable_params" in h else "-",
                     f"{h['kl_before']:.4f}" if "kl_before" in h else "-",
                     f"{h['kl_after']:.4f}" if "kl_after" in h else "-", str(h.get("steps", "-"))]
        line += [_g(r[s]["ppl_token"]) if s in r else "-" for s in splits if s != "test"]
        line += [_g(r["test"]["ppl_token"]), _g(r["test"]["ppl_word"]), f"**{_g(r['test']['ppl_token'] / d)}x**"]
        if healed:
            line += [_mult(one_shot.get((r["method"].removesuffix(HEAL), r["ratio_target"])), d)]
        if full:
            t = r.get("heal_s") if healed else r.get("compress_s")
            line += [f"{t:.1f}" if t is not None else "-"]
        out.append(line)
    return _table(head, out, "l" + ("l" if full and not healed else "") + "r" * (len(head) - 1 - (full and not healed)))


def multiples_table(data: dict[str, Any], healed: bool = False) -> str:
    """Test perplexity / dense, one row per method, one column per target ratio ("-": not measured)."""
    dense, rows = _compression_rows(data)
    rows = [r for r in rows if _healed(r) == healed]
    ratios = sorted({r["ratio_target"] for r in rows})
    d = dense["test"]["ppl_token"]
    logs: dict[str, list[float]] = {}
    for r in rows:
        logs.setdefault(r["method"], []).append(math.log(r["test"]["ppl_token"] / d))
    # best first: the most ratios measured, then the geometric mean of the multiples
    methods = sorted(logs, key=lambda m: (-len(logs[m]), sum(logs[m]) / len(logs[m])))
    out = [[m] + [_mult(_at(rows, x, m), d) for x in ratios] for m in methods]
    return _table(["method"] + [f"{_pct(x)} removed" for x in ratios], out)


def _best_per_ratio(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target ratio of the one-shot rows: the best interpretable and the best SVD row (chosen on valid) and
    the two SVD-LLM baselines."""
    rows = [r for r in rows if not _healed(r)]
    out = []
    for ratio in sorted({r["ratio_target"] for r in rows}):
        at = [r for r in rows if r["ratio_target"] == ratio]
        out.append({"ratio": ratio, "cur": _pick([r for r in at if _interpretable(r)]),
                    "svd": _pick([r for r in at if r["method"].startswith("svd")]),
                    **{m: _at(at, ratio, m) for m in SVD_LLM}})
    return out


def _cur_vs_svd(rows: list[dict[str, Any]], dense_ppl: float) -> str:
    """Best interpretable (CUR) one-shot method at each ratio, chosen on valid, against SVD-LLM and the best SVD."""
    out = []
    for b in _best_per_ratio(rows):
        if b["cur"] is None:
            continue
        c = b["cur"]["test"]["ppl_token"]
        line = [_pct(b["ratio"]), f"{b['cur']['method']}: **{_mult(b['cur'], dense_ppl)}**"]
        line += [_mult(b[m], dense_ppl) for m in SVD_LLM]
        line += [f"{b['svd']['method']}: {_mult(b['svd'], dense_ppl)}" if b["svd"] else "-",
                 f"{_g(c / b['svd']['test']['ppl_token'])}x" if b["svd"] else "-"]
        out.append(line)
    return _table(["expert params removed", "best interpretable (on valid): test / dense"]
                  + [f"{m}: test / dense" for m in SVD_LLM] + ["best SVD (on valid)", "interpretable / best SVD"],
                  out)


def compression_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 12's targets, each ``{"target", "measured", "status"}`` with status "met" | "missed" | "not measured".

    The best interpretable row is chosen on valid among the one-shot (or healed) CUR rows; figures are WikiText-2
    test token perplexity / dense."""
    dense, rows = _compression_rows(data)
    d = dense["test"]["ppl_token"]

    def _mult(r: dict[str, Any] | None, dense_ppl: float) -> str:  # 3 decimals: a target is missed by a hair
        return "-" if r is None else f"{r['test']['ppl_token'] / dense_ppl:.3f}x"

    one = [r for r in rows if not _healed(r)]
    heal = [r for r in rows if _healed(r)]
    best = {b["ratio"]: b for b in _best_per_ratio(rows)}
    out = []

    def add(target: str, measured: str, ok: bool | None) -> None:
        out.append({"target": target, "measured": measured,
                    "status": "not measured" if ok is None else "met" if ok else "missed"})

    for ratio, limit in TARGETS_ONE_SHOT:
        c = _pick([r for r in one if r["ratio_target"] == ratio and _interpretable(r)])
        add(f"best interpretable one-shot <= {limit:.2f}x at {_pct(ratio)}",
            "-" if c is None else f"{c['method']}: {_mult(c, d)}",
            None if c is None else c["test"]["ppl_token"] / d <= limit)
    for ratio in sorted(set(TARGET_RATIOS) | set(best)):
        b = best.get(ratio, {})
        c = b.get("cur")
        svds = {m: b.get(m) for m in SVD_LLM}
        measured = "; ".join([f"{c['method']}: {_mult(c, d)}" if c else "interpretable: not measured"]
                             + [f"{m}: {_mult(r, d)}" if r else f"{m}: not measured" for m, r in svds.items()])
        if c is None:
            ok = None
        elif any(r is not None and r["test"]["ppl_token"] <= c["test"]["ppl_token"] for r in svds.values()):
            ok = False
        else:
            ok = None if any(r is None for r in svds.values()) else True
        add(f"best interpretable one-shot below SVD-LLM (uniform and allocated) at {_pct(ratio)}", measured, ok)
    ratio, limit = TARGET_HEALED
    c = _pick([r for r in heal if r["ratio_target"] == ratio and _interpretable(r)])
    svd_h = {m + HEAL: _at(heal, ratio, m + HEAL) for m in SVD_LLM}
    add(f"best interpretable healed <= {limit:.2f}x at {_pct(ratio)}",
        "-" if c is None else f"{c['method']}: {_mult(c, d)}", None if c is None else c["test"]["ppl_token"] / d <= limit)
    measured = "; ".join([f"{c['method']}: {_mult(c, d)}" if c else "interpretable healed: not measured"]
                         + [f"{m}: {_mult(r, d)}" for m, r in svd_h.items() if r is not None])
    present = [r for r in svd_h.values() if r is not None]
    add(f"best interpretable healed below SVD-LLM healed alike at {_pct(ratio)}", measured,
        None if c is None or not present else all(r["test"]["ppl_token"] > c["test"]["ppl_token"] for r in present))
    new, ref = TIME_PAIR
    for ratio in sorted({r["ratio_target"] for r in one}):
        a, b = _at(one, ratio, new), _at(one, ratio, ref)
        ok = None if a is None or b is None else a["compress_s"] <= b["compress_s"]
        measured = "-" if ok is None else (f"{a['compress_s']:.1f} s / {b['compress_s']:.1f} s = "
                                           f"{a['compress_s'] / b['compress_s']:.2f}x")
        add(f"compress time {new} <= {ref} at {_pct(ratio)}", measured, ok)
    return out


def _targets_table(targets: list[dict[str, Any]]) -> str:
    return _table(["target (issue 12)", "measured (test ppl / dense; best chosen on valid)", "status"],
                  [[t["target"], t["measured"], f"**{t['status']}**"] for t in targets], "lll")


def _variant_pairs(rows: list[dict[str, Any]], suffix: str) -> list[tuple[str, str, float, dict, dict]]:
    """(base method, variant, ratio, base row, variant row) for every variant = base + ``suffix`` measured alike."""
    by = {(r["method"], r["ratio_target"]): r for r in rows}
    return [(m[: -len(suffix)], m, x, by[m[: -len(suffix)], x], r) for (m, x), r in by.items()
            if m.endswith(suffix) and (m[: -len(suffix)], x) in by]


def _conclusions(data: dict[str, Any]) -> list[str]:
    """Findings computed from the rows (no number in this function is typed by hand)."""
    dense, rows = _compression_rows(data)
    d = dense["test"]["ppl_token"]
    out = []
    for b in _best_per_ratio(rows):
        c = b["cur"]
        if c is None:
            continue
        ref = [(m, b[m]) for m in SVD_LLM if b[m] is not None]
        vs = ", ".join(f"{'below' if c['test']['ppl_token'] < r['test']['ppl_token'] else 'above'} {m} "
                       f"({_mult(r, d)})" for m, r in ref)
        out.append(f"- At {_pct(b['ratio'])} removed the best interpretable one-shot method on valid is "
                   f"**{c['method']}** at {_mult(c, d)} the dense test perplexity" + (f": {vs}." if vs else "."))
    for suffix, what in ((" global", "one global budget instead of uniform sizes"),
                         (" seq", "sequential instead of one-pass calibration"), (HEAL, "healing")):
        pairs = _variant_pairs(rows, suffix)
        for base in dict.fromkeys(p[0] for p in pairs):
            ps = sorted((x, a["test"]["ppl_token"] / d, v["test"]["ppl_token"] / d) for b0, _, x, a, v in pairs
                        if b0 == base)
            better = sum(v < a for _, a, v in ps)
            out.append(f"- {what.capitalize()} for {base}: lower test perplexity at {better} of {len(ps)} ratios ("
                       + ", ".join(f"{_pct(x)}: {_g(a)}x -> {_g(v)}x" for x, a, v in ps) + ").")
    sized = [b["cur"] for b in _best_per_ratio(rows) if b["cur"] is not None and "bytes_on_disk" in b["cur"]]
    if sized and "bytes_on_disk" in dense:
        out.append("- On disk, the best interpretable checkpoint is " + ", ".join(
            f"{100 * c['bytes_on_disk'] / dense['bytes_on_disk']:.0f}% of dense at {_pct(c['ratio_target'])}"
            for c in sized) + f" (dense: {_size(dense['bytes_on_disk'], 'MB')}).")
    t = compression_targets(data)
    n = {s: [x["target"] for x in t if x["status"] == s] for s in ("met", "missed", "not measured")}
    out.append(f"- Issue 12 targets: {len(n['met'])} met, {len(n['missed'])} missed, {len(n['not measured'])} not "
               "measured ([Targets](#targets-issue-12)).")
    return out


def _method_legend(rows: list[dict[str, Any]]) -> str:
    names = {r["method"] for r in rows}
    bases = {m.removesuffix(HEAL).removesuffix(" seq").removesuffix(" global") for m in names}
    lines = [f"- `{m}`: {METHOD_NOTES.get(m, '(no description)')}" for m in sorted(bases)]
    for word, note in ((" global", "one budget spent across layers and experts (and matrices) by error reduction "
                                   "per parameter; without it every expert (matrix) keeps the same share (uniform)"),
                       (" seq", "sequential calibration (layer l calibrated on the model whose layers < l are already "
                                "compressed); without it one pass of the dense model (column *calibration*)"),
                       (HEAL, "healed after compression (own table)")):
        if any(word in m for m in names):
            lines.append(f"- `... {word.strip()}`: {note}.")
    return "\n".join(lines)


def _eval_tokens(data: dict[str, Any]) -> str:
    what = data.get("eval_tokens", "all")
    return ("the full splits" if what == "all" else
            f"the {what} (a prefix, the same for every row: compare rows and ratios to dense, not with full-split "
            "numbers elsewhere)")


def compression_page(data: dict[str, Any], fig: str) -> str:
    dense, rows = _compression_rows(data)
    one = [r for r in rows if not _healed(r)]
    heal = [r for r in rows if _healed(r)]
    ratios = sorted({r["ratio_target"] for r in rows})
    d = dense["test"]["ppl_token"]
    lines = [
        "# Compression quality on the shipped model", "",
        f"Model `{Path(str(data.get('model', '?'))).name}` ({data.get('n_params', 0):,} parameters). Every expert "
        "matrix is replaced by its compressed form at the target ratio. **Ratio**: the share of expert parameters "
        "removed (all factors of all experts against their dense matrices), and, beside it, the share of all "
        "parameters (embeddings and attention included, which are not compressed). **Params**: parameters left; "
        "**on disk**: bytes of the saved checkpoint (`model.safetensors`, in the source model's dtype; \"-\" where "
        "the run predates this column). Activation-aware methods calibrate on "
        f"{data.get('calib', 'WikiText-2 train')}; no hyperparameter was tuned (every method runs with its "
        "defaults; valid is shown beside test, and every \"best\" below is chosen on valid). **Mean output "
        "error**: mean over expert matrices of the relative output error on each expert's routed calibration "
        "tokens. **Compress s**: wall time of `curmoe.compress`, including its calibration pass, on a machine "
        "shared with other jobs. Perplexity through ONNX Runtime CPU, context 256, non-overlapping windows "
        f"(protocol: docs/perplexity.md), on {_eval_tokens(data)}. The one-shot rows have no fine-tuning; healed rows (`+heal`: only the "
        "non-interpretable small parts trained, KL to the dense model on held-out calibration text, never on "
        "valid or test) are kept in their own table.", "",
        "Methods:", "", _method_legend(rows), "",
        f"![perplexity relative to dense]({fig})", "",
        "## Conclusions (computed from the rows below)", "",
        *_conclusions(data), "",
        "## One-shot (no healing)", "",
        compression_table(data), "",
        _source(data, "compression.json"), "",
        *([_source({"provenance": data["healing_provenance"]}, "healing.json")
           + " (the healed rows: a separate run of the same script and protocol; its dense row matched).", ""]
          if "healing_provenance" in data else []),
        "Test perplexity / dense, per method and target ratio:", "",
        multiples_table(data), "",
    ]
    if heal:
        lines += ["## Healed", "",
                  "Held-out KL: mean nats per token against the dense model on the held-out calibration sequences, "
                  "before and after healing; *trained params*: the scalars healing changed.", "",
                  compression_table(data, healed=True), "",
                  "Test perplexity / dense, per method and target ratio:", "",
                  multiples_table(data, healed=True), ""]
    lines += [
        "## Best interpretable method at each ratio", "",
        "Interpretable = a CUR of any kind (it keeps real neurons, rows or columns); chosen on valid among the "
        "one-shot rows, reported on test, against the two SVD-LLM baselines (uniform and allocated) and the best "
        "SVD variant on valid:", "",
        _cur_vs_svd(one, d), "",
        "## Targets (issue 12)", "",
        "Computed from the rows above: *met*, *missed*, or *not measured* (the rows it needs are not in "
        "compression.json yet). Compress times come from one run on a shared machine.", "",
        _targets_table(compression_targets(data)), "",
        "## The poster's \"35.29 perplexity at 70% compression\"", "",
    ]
    at70 = _pick([r for r in one if r["ratio_target"] == 0.7])
    cur70 = _pick([r for r in one if r["ratio_target"] == 0.7 and _interpretable(r)])
    seed70 = next((r for r in one if r["ratio_target"] == 0.7 and r["method"].startswith("cur-seed")), None)
    if at70 is not None:
        text = (f"The poster's base model and its dense perplexity are not stated, so 35.29 cannot be compared "
                f"with any number here; only ratios to the dense model carry over. On this model, at 70% of "
                f"expert parameters removed, the best one-shot method chosen on valid is **{at70['method']}** at "
                f"{_mult(at70, d)} the dense test perplexity")
        if cur70 is at70:
            text += ", an interpretable one"
        elif cur70 is not None:
            text += f"; the best interpretable one is **{cur70['method']}** at {_mult(cur70, d)}"
        if seed70 is not None:
            text += (f", and the poster's method (`seed` selection, U = pinv of the intersection) is at "
                     f"{_mult(seed70, d)}")
        if cur70 is not None:
            within = cur70["test"]["ppl_token"] / d <= 2.0
            text += (". For 35.29 to be a modest loss at 70%, the poster's dense model would need a perplexity near "
                     "35 already; " + ("here the best interpretable method stays within 2x of dense at 70%."
                                       if within else "here no interpretable method stays within 2x of dense at 70%."))
        lines += [text + ("" if text.endswith(".") else "."), ""]
    prompts = data.get("prompts", [])
    if prompts:
        lines += ["## Generated samples", "",
                  f"Greedy continuations ({data.get('sample_tokens', '?')} tokens) of fixed prompts. A compressed "
                  "model can keep a fair perplexity and still write broken text; these show it.", ""]
        for ratio in [0.0] + ratios:
            sel = [dense] if ratio == 0.0 else [r for r in rows if r["ratio_target"] == ratio]
            lines += [f"### {'dense' if ratio == 0.0 else f'{_pct(ratio)} of expert parameters removed'}", ""]
            for r in sel:
                for p, s in zip(prompts, r.get("samples", [])):
                    s = s.replace("|", "\\|").replace("\n", " ")
                    lines.append(f"- **{r['method']}**: *{p}* {s}")
            lines.append("")
    return "\n".join(lines)


# gating -----------------------------------------------------------------------------------------------------------
def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def gating_groups(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per (router, evaluation mode), in file order, averaging over the seeds that trained it."""
    split = data.get("load_split", "test")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in data["rows"]:
        groups.setdefault((r["router"], r["mode"]), []).append(r)
    out = []
    for (router, mode), rs in groups.items():
        g: dict[str, Any] = {"router": router, "mode": mode, "seeds": [r.get("seed", 0) for r in rs], "rows": rs,
                             "test_ppl": [r["test"]["ppl_token"] for r in rs],
                             "train_wall_s": _mean([r["train_wall_s"] for r in rs])}
        for k in ("ppl_token", "ppl_word"):
            g[f"test_{k}"] = _mean([r["test"][k] for r in rs])
        g["valid_ppl_token"] = _mean([r["valid"]["ppl_token"] for r in rs]) if all("valid" in r for r in rs) else None
        for k in ("cv", "max_vio", "entropy", "dropped_fraction"):
            g[k] = _mean([r[split]["load"][k] for r in rs])
        out.append(g)
    return out


def _python(cmd: str) -> str:
    """Commands stored without the interpreter (``-m curmoe.models.train ...``) read as ``python -m ...``."""
    return f"python {cmd}" if cmd.startswith("-m ") else cmd


def gating_table(data: dict[str, Any], full: bool = True) -> str:
    groups = gating_groups(data)
    n_seeds = max(len(g["seeds"]) for g in groups)
    mean = " (mean)" if n_seeds > 1 else ""
    head = ["router", "evaluation", f"valid ppl{mean}", f"test ppl (token){mean}"]
    if n_seeds > 1:
        head += ["test ppl per seed"]
    head += [f"test ppl (word){mean}", "CV", "MaxVio", "norm. entropy", "dropped"]
    if full:
        head += ["train s"]
    out = []
    for g in groups:
        line = [g["router"], g["mode"], _g(g["valid_ppl_token"]) if g["valid_ppl_token"] is not None else "-",
                _g(g["test_ppl_token"])]
        if n_seeds > 1:
            line += [", ".join(_g(x) for x in g["test_ppl"])]
        line += [_g(g["test_ppl_word"]), f"{g['cv']:.3f}", f"{g['max_vio']:.3f}", f"{g['entropy']:.4f}",
                 f"{100 * g['dropped_fraction']:.2f}%"]
        if full:
            line += [f"{g['train_wall_s']:.0f}"]
        out.append(line)
    return _table(head, out, "ll" + "r" * (len(head) - 2))


def gating_page(data: dict[str, Any], fig: str) -> str:
    groups = gating_groups(data)
    split = data.get("load_split", "test")
    r0 = data["rows"][0]
    seeds = sorted({s for g in groups for s in g["seeds"]})
    lines = [
        "# Routers trained alike: quality and load balance", "",
        f"One architecture (preset `{data.get('preset', 'gating')}`, {r0['params']:,} parameters, 8 experts of "
        f"which 2 per token, 1 for switch) trained with each router for the same {r0['steps']} steps "
        f"({r0['tokens']:,} tokens) on the same batches, once per seed ({', '.join(map(str, seeds))}: the seed sets "
        "the initialisation and the batch order); only the router and its balancing mechanism differ "
        "(benchmarks/gating.py lists them). Equal budget means equal steps and tokens: switch (top-1) spends half "
        "the expert compute of the others. The best checkpoint on a fixed valid slice is evaluated with the NumPy "
        "reference on the full valid and test splits (context 128, non-overlapping windows). Load statistics on "
        f"{split}, per MoE layer, averaged over layers and seeds (definitions in docs/gating.md): **CV** of the "
        "per-expert assignment counts (0 = perfectly even), **MaxVio** = max load / mean load - 1, **normalised "
        "entropy** of the load distribution (1 = even), **dropped** = share of tokens that lost an assignment to a "
        "capacity limit (switch) or that no expert chose (expert_choice).", "",
        gating_table(data), "",
        f"![expert load per router]({fig})", "",
        _source(data, "gating.json"), "",
    ]
    if len(seeds) > 1:
        spread = max(max(g["test_ppl"]) / min(g["test_ppl"]) - 1 for g in groups)
        lines += [f"Between seeds, a router's test perplexity moves by up to {100 * spread:.1f}%: smaller "
                  "differences between routers are not evidence of a difference.", ""]
    tf = next((g for g in groups if g["router"] == "expert_choice" and g["mode"] == "teacher-forced"), None)
    ca = next((g for g in groups if g["router"] == "expert_choice" and g["mode"] != "teacher-forced"), None)
    if tf is not None and ca is not None:
        best = min((g for g in groups if g["router"] != "expert_choice"),
                   key=lambda g: g["valid_ppl_token"] or g["test_ppl_token"], default=None)
        lines += [
            "## ExpertChoice: balanced by construction, and non-causal", "",
            f"Teacher-forced, expert_choice has CV {tf['cv']:.3f}: every expert takes exactly its "
            "capacity, so its balance is perfect by construction, not learned. But each expert ranks the whole "
            "sequence, so whether token t reaches an expert depends on tokens after t: its teacher-forced test "
            f"perplexity ({_g(tf['test_ppl_token'])}) is computed with information from the future and is not "
            "that of a model that can generate. Generating, the model routes each new token alone with its top-k "
            f"fallback (`curmoe.causal_twin`); scored that way its test perplexity is "
            f"**{_g(ca['test_ppl_token'])}** with CV {ca['cv']:.3f} and MaxVio {ca['max_vio']:.3f}"
            + (f", against {_g(best['test_ppl_token'])} for the best causal router on valid ({best['router']})."
               if best else ".")
            + " So the poster's \"ExpertChoice achieves optimal load balancing\" holds only for the non-causal "
              "full-sequence pass (training, scoring); it says nothing about decoding, where the balance and the "
              "quality are those of the fallback.", "",
        ]
    lines += ["## Training commands", ""] + [f"- `{_python(r['train_command'])}`" for r in data["rows"]
                                              if r["mode"] != "causal decoding (topk fallback)"] + [""]
    return "\n".join(lines)


# runtime ----------------------------------------------------------------------------------------------------------
def runtime_table(data: dict[str, Any], rows_filter: Callable[[dict[str, Any]], bool] | None = None) -> str:
    rows = [r for r in data["rows"] if rows_filter is None or rows_filter(r)]
    pre = data.get("prefill_lengths") or sorted(int(k.split("_")[1]) for k in data["rows"][0]
                                                 if k.startswith("prefill_"))
    base = next((r for r in data["rows"] if r["row"] == "ORT cpu dense sparse dispatch"), data["rows"][0])
    head = ["row", "decode tok/s", f"x {base['row']}", "roofline tok/s", "% roofline"] + [
        f"prefill T={t} ms" for t in pre]
    out = [[r["row"], f"{r['decode_tok_s']:.1f}", f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}",
            f"{r['roofline_tok_s']:.0f}", f"{100 * r['roofline_frac']:.0f}%"]
           + [f"{r[f'prefill_{t}_ms']:.1f}" for t in pre] for r in rows]
    return _table(head, out)


def runtime_page(data: dict[str, Any], fig: str) -> str:
    return "\n".join([
        "# Runtimes", "",
        f"Model `{Path(str(data.get('model', '?'))).name}`, {data.get('threads', '?')} threads, decode "
        f"{data.get('decode_steps', '?')} "
        f"steps after a 16-token prompt (batch 1, KV cache), best of {data.get('repeats', '?')}. Roofline: bytes a "
        "decode step must read (attention, router, the experts a token uses, LM head; float32) over the measured "
        f"copy bandwidth ({data['bandwidth'] / 1e9:.1f} GB/s). All rows come from one run on a shared machine: "
        "compare rows, not runs. Only the runtimes available on this machine (Linux, CPU) appear; GPU providers, "
        "Core ML and Intel GPU were not measured.", "",
        f"![decode tokens/s]({fig})", "",
        runtime_table(data), "",
        _source(data, "runtime.json"), "",
    ])


# interpretability -----------------------------------------------------------------------------------------------
def _jaccard_table(data: dict[str, Any], ratio: float) -> str:
    """Mean off-diagonal Jaccard per (method, index space) and layer, at one ratio."""
    rows = [r for r in data["jaccard"] if r["ratio"] == ratio]
    layers = sorted({r["layer"] for r in rows})
    keys = list(dict.fromkeys((r["method"], r["what"]) for r in rows))
    out = []
    for method, what in keys:
        sel = {r["layer"]: r for r in rows if r["method"] == method and r["what"] == what}
        out.append([method, what] + [f"{sel[layer]['mean_offdiag']:.3f}" for layer in layers]
                   + [f"{next(iter(sel.values()))['chance']:.3f}"])
    return (f"At {int(round(100 * ratio))}% removed, mean Jaccard between the experts of each layer:\n\n"
            + _table(["method", "index space"] + [f"layer {x}" for x in layers] + ["chance"], out,
                     "ll" + "r" * (len(layers) + 1)))


def _interpret_summary(data: dict[str, Any], ratio: float = 0.7) -> list[str]:
    """Computed one-line findings at ``ratio``: energy kept against random, overlap against chance, nesting."""
    out = []
    for r in data["rows"]:
        if r["ratio"] == ratio and r["side"] == "columns":
            out.append(f"- {r['method']} keeps {100 * r['energy_share']:.1f}% of the input energy with "
                       f"{100 * r['uniform_share']:.1f}% of the columns ({r['energy_share'] / r['uniform_share']:.2f}x "
                       "a random choice).")
    jac = [r for r in data["jaccard"] if r["ratio"] == ratio]
    for m in dict.fromkeys(r["method"] for r in jac):
        js = [r["mean_offdiag"] / r["chance"] for r in jac if r["method"] == m]
        out.append(f"- {m}: experts of one layer share {min(js):.2f}x-{max(js):.2f}x the overlap of random sets.")
    for m in dict.fromkeys(r["method"] for r in data["nesting"]):
        cs = [r["contained"] for r in data["nesting"] if r["method"] == m]
        span = f"{100 * min(cs):.0f}%" if round(100 * min(cs)) == round(100 * max(cs)) else \
            f"{100 * min(cs):.0f}-{100 * max(cs):.0f}%"
        out.append(f"- {m}: {span} of the indices kept at one ratio are also kept at the next lower ratio.")
    return ([f"At {int(round(100 * ratio))}% removed (computed from the tables below):", ""] + out + [""]) if out \
        else []


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for t in range(i, j + 1):
            r[order[t]] = (i + j) / 2
        i = j + 1
    return r


def _spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation of two equally long lists (None when one of them is constant)."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = _mean(ra), _mean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else None


def _neuron_global(data: dict[str, Any]) -> str | None:
    """The neuron method with a global budget (the one whose k varies per expert), if measured."""
    return next((m for m in data.get("neuron_methods", []) if "global" in m), None)


def _neuron_k_tables(data: dict[str, Any], method: str) -> list[str]:
    kept = [r for r in data["neuron_kept"] if r["method"] == method]
    ratios = sorted({r["ratio"] for r in kept})
    layers = sorted({r["layer"] for r in kept})
    experts = sorted({r["expert"] for r in kept})
    per_layer = []
    for layer in layers:
        line = [f"layer {layer}"]
        for x in ratios:
            sel = [r for r in kept if r["ratio"] == x and r["layer"] == layer]
            ks = [r["k"] for r in sel]
            line.append(f"{100 * sum(ks) / sum(r['of'] for r in sel):.0f}% ({min(ks)}-{max(ks)})")
        per_layer.append(line)
    corr = []
    for x in ratios:
        sel = [r for r in kept if r["ratio"] == x]
        ks = [float(r["k"]) for r in sel]
        c_tok, c_en = (_spearman(ks, [float(r[f]) for r in sel]) for f in ("n_tokens", "output_energy"))
        corr.append([f"{_pct(x)}", "-" if c_tok is None else f"{c_tok:+.2f}", "-" if c_en is None else f"{c_en:+.2f}"])
    ref = 0.7 if 0.7 in ratios else ratios[len(ratios) // 2]
    by = {(r["layer"], r["expert"]): r["k"] for r in kept if r["ratio"] == ref}
    grid = [[f"layer {layer}"] + [str(by.get((layer, e), "-")) for e in experts] for layer in layers]
    of = kept[0]["of"]
    return [
        f"Share of its layer's neurons the {method} budget keeps, per layer and ratio (fewest-most neurons of one "
        "expert in brackets):", "",
        _table(["layer"] + [f"{_pct(x)} removed" for x in ratios], per_layer), "",
        f"Neurons kept by each expert at {_pct(ref)} removed (of {of}; uniform allocation keeps the same k in "
        "every expert):", "",
        _table(["layer"] + [f"expert {e}" for e in experts], grid), "",
        "Does the budget follow the traffic? Spearman rank correlation, over all experts, of the neurons an expert "
        "keeps with the tokens routed to it and with its dense output energy `tr(W_down H W_down^T)` "
        "(gate-weighted):", "",
        _table(["removed", "k vs routed tokens", "k vs output energy"], corr), "",
    ]


def _neuron_summary(data: dict[str, Any], ratio: float = 0.7) -> list[str]:
    out = []
    for r in data["neuron_rows"]:
        if r["ratio"] == ratio:
            out.append(f"- {r['method']} keeps {100 * r['energy_share']:.1f}% of the experts' output energy with "
                       f"{100 * r['uniform_share']:.1f}% of their neurons ({r['energy_share'] / r['uniform_share']:.2f}x "
                       f"a random choice; the top-k neurons by energy would hold {100 * r['top_energy_share']:.1f}%).")
    for m in data["neuron_methods"]:
        ns = [r for r in data["neuron_nesting"] if r["method"] == m]
        if ns and min(r["nested_experts"] for r in ns) == 1.0:
            out.append(f"- {m}: every neuron an expert keeps at one ratio is also kept at the next lower ratio "
                       "(the kept sets of every expert are nested across all ratios).")
        elif ns:
            out.append(f"- {m}: {100 * min(r['contained'] for r in ns):.1f}%-{100 * max(r['contained'] for r in ns):.1f}% "
                       "of the neurons an expert keeps at one ratio are also kept at the next lower ratio (mean over "
                       f"experts); {100 * min(r['nested_experts'] for r in ns):.0f}%-"
                       f"{100 * max(r['nested_experts'] for r in ns):.0f}% of the experts have exactly nested sets.")
    jac = [r for r in data["neuron_jaccard"] if r["ratio"] == ratio]
    for m in dict.fromkeys(r["method"] for r in jac):
        js = [r["mean_offdiag"] / r["chance"] for r in jac if r["method"] == m]
        out.append(f"- {m}: kept neuron indices of different experts overlap {min(js):.2f}x-{max(js):.2f}x as much "
                   "as random sets (the sanity baseline: indices of different experts are different units).")
    g = _neuron_global(data)
    if g is not None:
        kept = [r for r in data["neuron_kept"] if r["method"] == g and r["ratio"] == ratio]
        share = {layer: sum(r["k"] for r in kept if r["layer"] == layer) / sum(r["of"] for r in kept
                                                                               if r["layer"] == layer)
                 for layer in sorted({r["layer"] for r in kept})}
        if share:
            hi, lo = max(share, key=share.get), min(share, key=share.get)
            ks = [r["k"] for r in kept]
            where = (f"keeps {100 * share[hi]:.0f}% of the neurons of layer {hi} and {100 * share[lo]:.0f}% of layer "
                     f"{lo}" if share[hi] > share[lo] else f"keeps {100 * share[hi]:.0f}% of the neurons of every layer")
            out.append(f"- {g}: the budget {where}; one expert keeps {min(ks)} to {max(ks)} neurons.")
    for a in data.get("neuron_agreement", []):
        if a["ratio"] == ratio:
            out.append(f"- {a['a']} and {a['b']} keep sets with mean Jaccard {a['jaccard']:.3f} in the same expert "
                       f"(lowest {a['jaccard_min']:.3f}).")
    return ([f"At {_pct(ratio)} removed (computed from the tables below):", ""] + out + [""]) if out else []


def _neuron_section(data: dict[str, Any], figs: dict[str, str]) -> list[str]:
    head = ["## Neuron CUR: which neurons each expert keeps", ""]
    if "neuron_rows" not in data:
        return head + ["*Not measured in this file: rerun `python benchmarks/interpret.py`.*", ""]
    g = _neuron_global(data)
    ratio = 0.7 if any(r["ratio"] == 0.7 for r in data["neuron_rows"]) else data["neuron_rows"][0]["ratio"]
    lines = head + [
        "Neuron CUR (`cur-neuron`) keeps k real neurons of each expert: neuron j is row j of W_gate and W_up "
        "(kept bit-identical) and column j of W_down (refit). Its **output energy** is `diag(H)_j * "
        "||W_down[:, j]||^2`, H the expert's gate-weighted intermediate second moment on its routed calibration "
        "tokens (the statistics the method itself uses); the share of an expert's total held by its kept neurons "
        "is compared with k / I, what a random choice of k holds on average, and with the top k by energy, the "
        "most any k neurons hold. `cur-neuron` keeps the same k in every expert; `cur-neuron global` spends one "
        "budget across experts and layers. The kept index sets of every expert at every ratio are in "
        "`neuron_kept` of [data/interpret.json](data/interpret.json).", "",
        *_neuron_summary(data, ratio),
        "### Kept neurons against output energy", "",
        _table(["method", "removed", "neurons kept", "k per expert", "kept energy share", "random choice",
                "top-k by energy", "lowest expert", "mean output error"],
               [[r["method"], _pct(r["ratio"]), f"{r['uniform_share']:.3f}",
                 str(r["k_min"]) if r["k_min"] == r["k_max"] else f"{r['k_min']}-{r['k_max']}",
                 f"{r['energy_share']:.3f}", f"{r['uniform_share']:.3f}", f"{r['top_energy_share']:.3f}",
                 f"{r['energy_share_min']:.3f}", f"{r['output_error']:.3f}"] for r in data["neuron_rows"]],
               "lrrrrrrrr"), "",
        "*Mean output error*: the expert's relative output error `sqrt(err / tr(W_down H W_down^T))` after the "
        "refit, averaged over experts.", "",
    ]
    if "neuron_profile" in figs:
        lines += [f"![kept neurons against output energy]({figs['neuron_profile']})", ""]
    lines += [
        "### Kept sets across ratios (the meaningful overlap)", "",
        "Neurons of one expert are the same units at every ratio, so the overlap that says something is between "
        "ratios: the share of an expert's set at the higher ratio that is inside its set at the next lower ratio "
        "(1 = nested: compressing further only drops neurons), and the share of experts whose sets are exactly "
        "nested. With the default greedy rule an expert's neurons are added in one fixed order, so uniform sets are "
        "nested by construction; under the global budget they stay nested as long as no expert gets more neurons "
        "at a higher ratio. Nesting means one checkpoint's neuron order serves every ratio.", "",
        _table(["method", "from", "to", "contained (mean)", "contained (lowest)", "experts nested"],
               [[r["method"], _pct(r["from"]), _pct(r["to"]), f"{r['contained']:.3f}", f"{r['contained_min']:.3f}",
                 f"{100 * r['nested_experts']:.0f}%"] for r in data["neuron_nesting"]], "lrrrrr"), "",
    ]
    if data.get("neuron_agreement"):
        lines += ["Uniform against global budget, same expert and ratio (mean Jaccard of the two kept sets):", "",
                  _table(["methods", "removed", "Jaccard (mean)", "Jaccard (lowest)"],
                         [[f"{a['a']} / {a['b']}", _pct(a["ratio"]), f"{a['jaccard']:.3f}", f"{a['jaccard_min']:.3f}"]
                          for a in data["neuron_agreement"]], "lrrr"), ""]
    jac = [r for r in data["neuron_jaccard"] if r["ratio"] == ratio]
    layers = sorted({r["layer"] for r in jac})
    lines += [
        "### Across the experts of a layer (a sanity baseline)", "",
        "Neuron j of expert a and neuron j of expert b are different units: the index is only a position, and "
        "nothing ties the experts' intermediate bases together. The Jaccard of kept *indices* across the experts "
        "of a layer should therefore sit at chance (two random sets of the same sizes); a value well above it "
        f"would point to a bias of the selection, not to shared features. At {_pct(ratio)} removed, the "
        "mean Jaccard between the experts of each layer (chance for the same set sizes in brackets):", "",
        _table(["method"] + [f"layer {x}" for x in layers],
               [[m] + [f"{r['mean_offdiag']:.3f} ({r['chance']:.3f})" for x in layers
                       for r in jac if r["method"] == m and r["layer"] == x]
                for m in dict.fromkeys(r["method"] for r in jac)]), "",
    ]
    if g is not None:
        lines += ["### Where the global budget goes", "", *_neuron_k_tables(data, g)]
        if "neuron_k" in figs:
            lines += [f"![neurons kept per expert]({figs['neuron_k']})", ""]
    return lines


def interpret_page(data: dict[str, Any], figs: dict[str, str]) -> str:
    lines = [
        "# What CUR keeps", "",
        "Per-matrix CUR keeps real columns of W (input features) and real rows (output units); neuron CUR keeps "
        "real neurons of each expert. Each compressed expert can therefore say what it kept. Activation energy of "
        "a column: `E[x_j^2]` of the matrix input on the expert's routed calibration tokens; of a row: `E[y_i^2]`, "
        f"the mean square of that output unit ({data.get('calib', 'WikiText-2 train')}).", "",
        "## Per-matrix CUR", "",
        *_interpret_summary(data),
        "### Kept indices against activation energy", "",
        "Share of the total energy held by the kept indices, averaged over all expert matrices, against the share "
        "a random choice of the same size holds on average:", "",
        _table(["method", "removed", "side", "kept energy share", "random choice", "lowest matrix"],
               [[r["method"], f"{int(round(100 * r['ratio']))}%", r["side"], f"{r['energy_share']:.3f}",
                 f"{r['uniform_share']:.3f}", f"{r['energy_share_min']:.3f}"] for r in data["rows"]], "lrlrrr"), "",
        f"![kept indices against energy]({figs['profile']})", "",
        "### Overlap across the experts of a layer", "",
        "Jaccard index of kept sets between experts, in the index spaces they share (the residual stream: "
        "input features of `up`, output rows of `down`), against the Jaccard of two random sets of the same size:",
        "",
        _jaccard_table(data, 0.7), "",
        f"![Jaccard heat maps]({figs['jaccard']})", "",
        "### Kept sets as the ratio grows", "",
        "Share of the set kept at the higher ratio that is inside the set kept at the next lower ratio (1 = "
        "nested: compressing further only drops indices):", "",
        _table(["method", "from", "to", "side", "contained (mean)", "contained (lowest)"],
               [[r["method"], f"{int(round(100 * r['from']))}%", f"{int(round(100 * r['to']))}%", r["side"],
                 f"{r['contained']:.3f}", f"{r['contained_min']:.3f}"] for r in data["nesting"]], "lrrlrr"), "",
        f"![kept sets against ratio]({figs['ratio']})", "",
        *_neuron_section(data, figs),
        _source(data, "interpret.json"), "",
    ]
    return "\n".join(lines)


def interpret_outputs(data: dict[str, Any], out: Path) -> tuple[str, list[Path]]:
    """The interpretability page's text and its figures (written into ``out``): ``(page text, figure paths)``."""
    from curmoe.app import report_figures as figs

    names = {"profile": "interpret_profile.png", "jaccard": "interpret_jaccard.png", "ratio": "interpret_ratio.png"}
    made = [figs.profile_figure(data, out / names["profile"]), figs.jaccard_figure(data, out / names["jaccard"]),
            figs.ratio_figure(data, out / names["ratio"])]
    if "neuron_rows" in data:
        names |= {"neuron_profile": "interpret_neuron_profile.png"}
        made.append(figs.neuron_profile_figure(data, out / names["neuron_profile"]))
        if _neuron_global(data) is not None:
            names |= {"neuron_k": "interpret_neuron_k.png"}
            made.append(figs.neuron_k_figure(data, out / names["neuron_k"], _neuron_global(data)))
    return interpret_page(data, names), made


# driver -----------------------------------------------------------------------------------------------------------
def _missing(name: str) -> str:
    file, cmd = SOURCES[name]
    return f"*Not measured yet: `{cmd}` writes `data/{file}`, then rerun `curmoe report`.*"


def headline(results: dict[str, dict[str, Any]], link: str = "docs/results", intro: bool = True) -> str:
    """The README block: the best interpretable compression per ratio against SVD-LLM, every method's test
    perplexity / dense, issue 12's targets in one line, the router table and the figures, with links."""
    parts = [README_BEGIN, ""]
    if intro:
        parts += [f"Written by `curmoe report --readme README.md` from the stored measurements; every page in "
                  f"[{link}/]({link}/README.md) names the command that made its numbers.", ""]
    if "compression" in results:
        d = results["compression"]
        dense, rows = _compression_rows(d)
        t = compression_targets(d)
        n = {s: sum(x["status"] == s for x in t) for s in ("met", "missed", "not measured")}
        parts += ["**Compression** (WikiText-2 test perplexity / dense, ratio = share of expert parameters removed; "
                  f"one-shot, no healing; [all rows, healed rows, sizes, samples]({link}/compression.md)). Best "
                  "interpretable method (CUR of any kind) at each ratio, chosen on valid, against SVD-LLM:", "",
                  _cur_vs_svd([r for r in rows if not _healed(r)], dense["test"]["ppl_token"]), "",
                  f"Issue 12 targets: {n['met']} met, {n['missed']} missed, {n['not measured']} not measured "
                  f"([targets]({link}/compression.md#targets-issue-12)). Every method:", "",
                  multiples_table(d), "",
                  f"![compression]({link}/compression.png)", ""]
    if "gating" in results:
        parts += [f"**Routers trained alike** ([details]({link}/gating.md)):", "",
                  gating_table(results["gating"], full=False), ""]
    if "runtime" in results:
        parts += [f"**Runtimes** ([all rows]({link}/runtime.md)):", "", f"![runtimes]({link}/runtime.png)", ""]
    if "interpret" in results:
        parts += [f"**What CUR keeps** ([details]({link}/interpretability.md)):", "",
                  f"![Jaccard]({link}/interpret_jaccard.png)", ""]
        if _neuron_global(results["interpret"]) is not None:
            parts += [f"![neurons kept per expert under one global budget]({link}/interpret_neuron_k.png)", ""]
    parts.append(README_END)
    return "\n".join(parts)


def update_readme(readme: Path, block: str) -> Path:
    """Replace the text between the results markers of ``readme`` with ``block`` (markers included)."""
    text = readme.read_text()
    pat = re.compile(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), re.S)
    if not pat.search(text):
        raise InvalidInputError(f"{readme} has no results block; add the two lines\n{README_BEGIN}\n{README_END}\n"
                                "where the headline results should go")
    return _write(readme, pat.sub(lambda _: block, text, count=1))


def report(data_dir: str | os.PathLike[str] = "docs/results/data", out_dir: str | os.PathLike[str] | None = None,
           *, readme: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write the results pages and figures; returns ``{"written": [paths], "missing": [names]}``."""
    from curmoe.app import report_figures as figs

    data_dir = Path(data_dir)
    out = Path(out_dir) if out_dir is not None else data_dir.parent
    if not data_dir.is_dir():
        raise InvalidInputError(f"no results folder at {data_dir}; run the benchmarks (see {__name__}) or pass "
                                "--data DIR")
    results = load_results(data_dir)
    missing = [n for n in SOURCES if n not in results]
    for n in missing:
        log.warning("no %s results (%s); its page says how to make them", n, SOURCES[n][0])
    written: list[Path] = []
    pages = {"compression": "compression.md", "gating": "gating.md", "runtime": "runtime.md",
             "interpret": "interpretability.md", "memory": "memory.md", "serve": "serve.md",
             "pretrained": "pretrained.md", "quantize": "quantize.md", "upcycle": "upcycle.md",
             "runtime_scale": "runtime_scale.md"}
    for name, page in pages.items():
        d = results.get(name)
        if d is None:
            text = f"# {page[:-3].capitalize()}\n\n{_missing(name)}\n"
        elif name == "compression":  # the page first: it checks the data the figure reads
            text = compression_page(d, "compression.png")
            written.append(figs.compression_figure(d, out / "compression.png"))
        elif name == "gating":
            text = gating_page(d, "gating_load.png")
            written.append(figs.gating_figure(d, out / "gating_load.png"))
        elif name == "runtime":
            text = runtime_page(d, "runtime.png")
            written.append(figs.runtime_figure(d, out / "runtime.png"))
        elif name == "memory":
            text = memory_page(d)
        elif name == "serve":
            text = serve_page(d, "serve.png")
            written.append(serve_figure(d, out / "serve.png"))
        elif name == "pretrained":
            text = pretrained_page(d)
        elif name == "quantize":
            text = quantize_page(d)
        elif name == "upcycle":
            text = upcycle_page(d)
        elif name == "runtime_scale":
            text = runtime_scale_page(d, "runtime_scale.png")
            written.append(runtime_scale_figure(d, out / "runtime_scale.png"))
        else:
            text, made = interpret_outputs(d, out)
            written += made
        written.append(_write(out / page, text))
    index = ["# Results", "",
             "Written by `curmoe report` from the measurements in [data/](data/); each page names the command that "
             "made its numbers. Regenerate: run the benchmark, then `curmoe report`.", "",
             _table(["page", "measurement", "made by"],
                    [[f"[{pages[n]}]({pages[n]})", SOURCES[n][0], f"`{SOURCES[n][1]}`"
                      + (" (not run yet)" if n in missing else "")] for n in SOURCES], "lll"), "",
             headline(results, link=".", intro=False).replace(README_BEGIN, "").replace(README_END, "").strip(), ""]
    written.append(_write(out / "README.md", "\n".join(index)))
    if readme is not None:
        written.append(update_readme(Path(readme), headline(results)))
    return {"written": [str(p) for p in written], "missing": missing}
