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
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from curmoe.app.results import read_results
from curmoe.common.errors import InvalidInputError
from curmoe.common.io import atomic_write

__all__ = ["report", "SOURCES", "README_BEGIN", "README_END"]

log = logging.getLogger(__name__)

SOURCES = {
    "compression": ("compression.json", "python benchmarks/compression.py"),
    "gating": ("gating.json", "python benchmarks/gating.py"),
    "runtime": ("runtime.json", "python benchmarks/runtime.py --json-file docs/results/data/runtime.json"),
    "interpret": ("interpret.json", "python benchmarks/interpret.py"),
}
README_BEGIN = "<!-- results:begin (written by curmoe report; edits here are overwritten) -->"
README_END = "<!-- results:end -->"


def _write(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _table(head: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(head) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _source(data: dict[str, Any], file: str) -> str:
    p = data["provenance"]
    dirty = p.get("uncommitted") or []
    state = f" with uncommitted changes to {', '.join(f'`{f}`' for f in dirty)}" if dirty else ""
    note = f" {p['note']}" if p.get("note") else ""
    return (f"Measured by `{p['command']}` at commit `{p.get('commit') or '?'}`{state} on {p.get('utc', '?')} UTC "
            f"({p.get('machine', '?')}); numbers in [data/{file}](data/{file}).{note}")


def _g(x: float) -> str:
    """Perplexities and ratios: 4 significant digits, plain notation up to 1e6."""
    return f"{x:,.2f}" if x < 1e4 else f"{x:,.0f}" if x < 1e6 else f"{x:.3g}"


# compression ----------------------------------------------------------------------------------------------------
def _compression_rows(data: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rows = data["rows"]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    if dense is None:
        raise InvalidInputError("compression.json has no 'dense' row; rerun benchmarks/compression.py")
    if any("test" not in r for r in rows):
        raise InvalidInputError("compression.json has rows without the test split (the reported one); rerun "
                                "benchmarks/compression.py with --splits valid,test")
    return dense, [r for r in rows if r["method"] != "dense"]


def compression_table(data: dict[str, Any], ratios: list[float] | None = None, full: bool = True) -> str:
    dense, rows = _compression_rows(data)
    splits = data.get("splits", ["test"])
    rows = [r for r in rows if ratios is None or r["ratio_target"] in ratios]
    rows.sort(key=lambda r: (r["ratio_target"], r["test"]["ppl_token"]))
    head = ["method", "expert params removed"]
    if full:
        head += ["all params removed", "mean output error"]
    head += [f"{s} ppl (token)" for s in splits if s != "test"] + ["test ppl (token)", "test ppl (word)",
                                                                   "test ppl / dense"]
    if full:
        head += ["compress s"]
    out = []
    for r in [dense] + rows:
        line = [r["method"], f"{100 * r['ratio_expert_params']:.1f}%"]
        if full:
            line += [f"{100 * r['ratio_all_params']:.1f}%", f"{r['mean_output_error']:.3f}"]
        line += [_g(r[s]["ppl_token"]) for s in splits if s != "test"]
        line += [_g(r["test"]["ppl_token"]), _g(r["test"]["ppl_word"]),
                 f"**{_g(r['test']['ppl_token'] / dense['test']['ppl_token'])}x**"]
        if full:
            line += [f"{r['compress_s']:.1f}"]
        out.append(line)
    return _table(head, out, "l" + "r" * (len(head) - 1))


def _best_at(data: dict[str, Any], ratio: float) -> dict[str, Any] | None:
    _, rows = _compression_rows(data)
    at = [r for r in rows if r["ratio_target"] == ratio]
    return min(at, key=lambda r: r["valid"]["ppl_token"] if "valid" in r else r["test"]["ppl_token"]) if at else None


def _cur_vs_svd(rows: list[dict[str, Any]], dense_ppl: float) -> str:
    out = []
    for ratio in sorted({r["ratio_target"] for r in rows}):
        at = [r for r in rows if r["ratio_target"] == ratio]
        best = {fam: min((r for r in at if r["method"].startswith(fam)), key=lambda r: r["test"]["ppl_token"],
                         default=None) for fam in ("cur", "svd")}
        if best["cur"] is None or best["svd"] is None:
            continue
        c, v = best["cur"]["test"]["ppl_token"], best["svd"]["test"]["ppl_token"]
        out.append([f"{int(round(100 * ratio))}%", f"{best['svd']['method']}: {_g(v / dense_ppl)}x",
                    f"{best['cur']['method']}: {_g(c / dense_ppl)}x", f"{_g(c / v)}x"])
    return _table(["expert params removed", "best SVD", "best CUR", "CUR ppl / SVD ppl"], out)


def compression_page(data: dict[str, Any], fig: str) -> str:
    dense, rows = _compression_rows(data)
    ratios = sorted({r["ratio_target"] for r in rows})
    d = dense["test"]["ppl_token"]
    lines = [
        "# Compression quality on the shipped model", "",
        f"Model `{Path(str(data.get('model', '?'))).name}` ({data.get('n_params', 0):,} parameters). Every expert "
        "matrix is replaced by its factors at the target ratio. **Ratio**: the share of expert parameters removed (all "
        "factors of all experts against their dense matrices), and, beside it, the share of all parameters "
        "(embeddings and attention included, which are not compressed). Activation-aware methods calibrate on "
        f"{data.get('calib', 'WikiText-2 train')}; no hyperparameter was tuned (every method runs with its "
        "defaults; valid is shown beside test). **Mean output error**: mean over expert matrices of "
        "`||(W - W') X^T||_F / ||W X^T||_F` on each expert's routed calibration tokens. **Compress s**: wall time "
        "of `curmoe.compress`, including its calibration pass (every method calibrates, to report the output "
        "error), on a machine shared with other jobs. Perplexity through ONNX Runtime CPU, context 256, "
        "non-overlapping windows (protocol: docs/perplexity.md). No fine-tuning after compression.", "",
        f"![perplexity relative to dense]({fig})", "",
        compression_table(data), "",
        _source(data, "compression.json"), "",
        "## Is CUR comparable to SVD?", "",
        "The best CUR and the best SVD variant at each ratio (test perplexity / dense):", "",
        _cur_vs_svd(rows, d), "",
        "## The poster's \"35.29 perplexity at 70% compression\"", "",
    ]
    at70, seed70 = _best_at(data, 0.7), next((r for r in rows if r["ratio_target"] == 0.7
                                               and r["method"].startswith("cur-seed")), None)
    if at70 is not None:
        cur70 = min((r for r in rows if r["ratio_target"] == 0.7 and r["method"].startswith("cur")),
                    key=lambda r: r["test"]["ppl_token"])
        text = (f"The poster's base model and its dense perplexity are not stated, so 35.29 cannot be compared "
                f"with any number here; only ratios to the dense model carry over. On this model, at 70% of "
                f"expert parameters removed, the best method chosen on valid is **{at70['method']}** at "
                f"{_g(at70['test']['ppl_token'] / d)}x the dense test perplexity; the best CUR variant is "
                f"**{cur70['method']}** at {_g(cur70['test']['ppl_token'] / d)}x")
        if seed70 is not None:
            text += (f", and the poster's method (`seed` selection, U = pinv of the intersection) is at "
                     f"{_g(seed70['test']['ppl_token'] / d)}x")
        within = cur70["test"]["ppl_token"] / d <= 2.0
        text += (". For 35.29 to be a modest loss at 70%, the poster's dense model would need a perplexity near 35 "
                 "already; " + ("here the best CUR variant stays within 2x of dense at 70%." if within else
                                "here no CUR variant stays within 2x of dense at 70%."))
        lines += [text, ""]
    prompts = data.get("prompts", [])
    if prompts:
        lines += ["## Generated samples", "",
                  f"Greedy continuations ({data.get('sample_tokens', '?')} tokens) of fixed prompts. A compressed "
                  "model can keep a fair perplexity and still write broken text; these show it.", ""]
        for ratio in [0.0] + ratios:
            sel = [dense] if ratio == 0.0 else [r for r in rows if r["ratio_target"] == ratio]
            lines += [f"### {'dense' if ratio == 0.0 else f'{int(round(ratio * 100))}% of expert parameters removed'}",
                      ""]
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


def interpret_page(data: dict[str, Any], figs: dict[str, str]) -> str:
    lines = [
        "# What CUR keeps", "",
        "C holds real columns of W (input features) and R real rows (output units), so each compressed expert "
        "can say what it kept. Activation energy of a column: `E[x_j^2]` of the matrix input on the expert's "
        "routed calibration tokens; of a row: `E[y_i^2]`, the mean square of that output unit "
        f"({data.get('calib', 'WikiText-2 train')}).", "",
        *_interpret_summary(data),
        "## Kept indices against activation energy", "",
        "Share of the total energy held by the kept indices, averaged over all expert matrices, against the share "
        "a random choice of the same size holds on average:", "",
        _table(["method", "removed", "side", "kept energy share", "random choice", "lowest matrix"],
               [[r["method"], f"{int(round(100 * r['ratio']))}%", r["side"], f"{r['energy_share']:.3f}",
                 f"{r['uniform_share']:.3f}", f"{r['energy_share_min']:.3f}"] for r in data["rows"]], "lrlrrr"), "",
        f"![kept indices against energy]({figs['profile']})", "",
        "## Overlap across the experts of a layer", "",
        "Jaccard index of kept sets between experts, in the index spaces they share (the residual stream: "
        "input features of `up`, output rows of `down`), against the Jaccard of two random sets of the same size:",
        "",
        _jaccard_table(data, 0.7), "",
        f"![Jaccard heat maps]({figs['jaccard']})", "",
        "## Kept sets as the ratio grows", "",
        "Share of the set kept at the higher ratio that is inside the set kept at the next lower ratio (1 = "
        "nested: compressing further only drops indices):", "",
        _table(["method", "from", "to", "side", "contained (mean)", "contained (lowest)"],
               [[r["method"], f"{int(round(100 * r['from']))}%", f"{int(round(100 * r['to']))}%", r["side"],
                 f"{r['contained']:.3f}", f"{r['contained_min']:.3f}"] for r in data["nesting"]], "lrrlrr"), "",
        f"![kept sets against ratio]({figs['ratio']})", "",
        _source(data, "interpret.json"), "",
    ]
    return "\n".join(lines)


# driver -----------------------------------------------------------------------------------------------------------
def _missing(name: str) -> str:
    file, cmd = SOURCES[name]
    return f"*Not measured yet: `{cmd}` writes `data/{file}`, then rerun `curmoe report`.*"


def headline(results: dict[str, dict[str, Any]], link: str = "docs/results", intro: bool = True) -> str:
    """The README block: the compression table at 50% and 70%, the router table and the figures, with links."""
    parts = [README_BEGIN, ""]
    if intro:
        parts += [f"Written by `curmoe report --readme README.md` from the stored measurements; every page in "
                  f"[{link}/]({link}/README.md) names the command that made its numbers.", ""]
    if "compression" in results:
        d = results["compression"]
        parts += ["**Compression** (WikiText-2 test, ratio = share of expert parameters removed; "
                  f"[all ratios, samples]({link}/compression.md)):", "",
                  compression_table(d, ratios=[0.5, 0.7], full=False), "",
                  f"![compression]({link}/compression.png)", ""]
    if "gating" in results:
        parts += [f"**Routers trained alike** ([details]({link}/gating.md)):", "",
                  gating_table(results["gating"], full=False), ""]
    if "runtime" in results:
        parts += [f"**Runtimes** ([all rows]({link}/runtime.md)):", "", f"![runtimes]({link}/runtime.png)", ""]
    if "interpret" in results:
        parts += [f"**What CUR keeps** ([details]({link}/interpretability.md)):", "",
                  f"![Jaccard]({link}/interpret_jaccard.png)", ""]
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
    results = {name: read_results(data_dir / file) for name, (file, _) in SOURCES.items()
               if (data_dir / file).exists()}
    missing = [n for n in SOURCES if n not in results]
    for n in missing:
        log.warning("no %s results (%s); its page says how to make them", n, SOURCES[n][0])
    written: list[Path] = []
    pages = {"compression": "compression.md", "gating": "gating.md", "runtime": "runtime.md",
             "interpret": "interpretability.md"}
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
        else:
            text = interpret_page(d, {"profile": "interpret_profile.png", "jaccard": "interpret_jaccard.png",
                                      "ratio": "interpret_ratio.png"})
            written += [figs.profile_figure(d, out / "interpret_profile.png"),
                        figs.jaccard_figure(d, out / "interpret_jaccard.png"),
                        figs.ratio_figure(d, out / "interpret_ratio.png")]
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
