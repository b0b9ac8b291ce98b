"""The PNG figures of ``curmoe report`` (matplotlib, Agg backend), one function per figure.

Each takes the parsed results file of one benchmark (see curmoe.app.results) and a path, writes the PNG atomically
and returns the path. matplotlib is imported lazily (the ``plot`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curmoe.common.errors import require
from curmoe.common.io import atomic_write

__all__ = [
    "compression_figure",
    "gating_figure",
    "jaccard_figure",
    "neuron_k_figure",
    "neuron_profile_figure",
    "profile_figure",
    "ratio_figure",
    "runtime_figure",
]

METHOD_ORDER = ("cur-neuron global", "cur-neuron", "cur-neuron global seq", "svd-llm", "svd-llm global", "svd-llm seq",
                "svd", "cur-deim whitened", "cur-deim aware", "cur-deim", "cur-leverage", "cur-seed (poster)")
HEAL = " +heal"


def _plt() -> Any:
    mpl = require("matplotlib", "plot")
    mpl.use("Agg")  # files only, no display
    return require("matplotlib.pyplot", "plot")


def _save(fig: Any, path: Path) -> Path:
    try:  # no version stamp in the file: identical data gives an identical PNG
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight",
                                                          metadata={"Software": None}))
    finally:
        _plt().close(fig)


def compression_figure(data: dict[str, Any], path: Path, split: str = "test") -> Path:
    """Perplexity relative to the dense model against the share of expert parameters removed, per method; the
    healed (``+heal``) rows, if any, in a second panel beside the one-shot rows."""
    plt = _plt()
    rows = data["rows"]
    dense = next(r for r in rows if r["method"] == "dense")[split]["ppl_token"]  # validated by the report
    healed = [r for r in rows if r["method"].endswith(HEAL)]
    panels = [("one-shot", [r for r in rows if not r["method"].endswith(HEAL) and r["method"] != "dense"])]
    if healed:
        panels.append(("healed", healed))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.6), squeeze=False, sharex=True)
    for ax, (title, sel) in zip(axes[0], panels):
        names = {r["method"] for r in sel}
        methods = [m for m in METHOD_ORDER if m in names] + [m + HEAL for m in METHOD_ORDER if m + HEAL in names]
        methods += sorted(names - set(methods))
        for m in methods:
            pts = sorted((r["ratio_expert_params"], r[split]["ppl_token"] / dense) for r in sel if r["method"] == m)
            x, y = zip(*pts)
            base = m.removesuffix(HEAL)
            ax.plot(np.array(x) * 100, y, marker="o" if base.startswith("cur") else "s", label=m,
                    ls="--" if base.startswith("svd") else ":" if base.endswith(" seq") else "-")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("expert parameters removed (%)")
        ax.set_title(f"{title} (dense {split} ppl {dense:.2f})", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if methods:
            ax.legend(fontsize=7)
    for ax in axes[0]:
        ax.set_ylabel(f"WikiText-2 {split} perplexity / dense")
    fig.suptitle("Compression quality (CUR: circles, solid; SVD: squares, dashed; sequential: dotted)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def gating_figure(data: dict[str, Any], path: Path) -> Path:
    """Per router: each layer's share of expert assignments on the load split, against the uniform share."""
    plt = _plt()
    first = min(r.get("seed", 0) for r in data["rows"])
    rows = [r for r in data["rows"] if r.get("seed", 0) == first]  # one training run per router
    split = data.get("load_split", "test")
    n = len(rows)
    cols = min(n, 4)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.6 * ((n + cols - 1) // cols)),
                             sharey=True, squeeze=False)
    for ax, r in zip(axes.flat, rows):
        layers = r[split]["load"]["layers"]
        E = len(layers[0]["fractions"])
        w = 0.8 / len(layers)
        for i, lay in enumerate(layers):
            ax.bar(np.arange(E) + (i - (len(layers) - 1) / 2) * w, lay["fractions"], width=w, label=f"layer {i}")
        ax.axhline(1.0 / E, color="k", lw=0.8, ls=":")
        mode = "" if r["mode"] == "causal" else f"\n({r['mode']})"
        ax.set_title(f"{r['router']}{mode}\nCV {r[split]['load']['cv']:.2f}, test ppl {r['test']['ppl_token']:.0f}",
                     fontsize=8)
        ax.set_xticks(range(E))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].set_ylabel("share of assignments")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"Expert load per router (WikiText-2 {split}, seed {first}; dotted: uniform)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def runtime_figure(data: dict[str, Any], path: Path) -> Path:
    """Decode tokens/s per runtime row, with each row's memory roofline."""
    plt = _plt()
    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(7.0, 0.32 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [r["decode_tok_s"] for r in rows], color="tab:blue", label="measured decode")
    ax.scatter([r["roofline_tok_s"] for r in rows], y, marker="|", s=200, color="tab:red", label="roofline")
    ax.set_yticks(y, [r["row"] for r in rows], fontsize=7)
    ax.set_xlabel("decode tokens/s (batch 1, KV cache)")
    ax.set_xlim(0, None)  # linear from 0: bar lengths are the speeds
    ax.set_title(f"Runtimes on {Path(str(data.get('model', '?'))).name}, {data.get('threads', '?')} threads "
                 "(one run: compare rows, not runs)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def profile_figure(data: dict[str, Any], path: Path, ratio: float = 0.7) -> Path:
    """For each featured expert matrix: index energies sorted, and which indices plain / aware DEIM kept."""
    plt = _plt()
    feats = data["featured"]
    fig, axes = plt.subplots(len(feats), 2, figsize=(9.0, 1.9 * len(feats)), squeeze=False)
    for row_axes, f in zip(axes, feats):
        for ax, (side, key) in zip(row_axes, (("columns (input features)", "cols"), ("rows (output units)", "rows"))):
            e = np.asarray(f["col_energy" if key == "cols" else "row_energy"])
            order = np.argsort(-e)
            rank = np.empty_like(order)
            rank[order] = np.arange(len(e))
            ax.semilogy(np.arange(len(e)), e[order], color="0.6", lw=1)
            for j, (m, c) in enumerate((("cur-deim", "tab:orange"), ("cur-deim aware", "tab:blue"))):
                kept = np.asarray(f["kept"][f"{m}@{ratio}"][key], dtype=int)
                ax.scatter(rank[kept], e[kept] * (1.35 if j else 1 / 1.35), s=5, color=c, label=m)
            ax.set_title(f"layer {f['layer']} expert {f['expert']} {f['matrix']}: {side}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    axes[-1, 0].set_xlabel("index, sorted by activation energy")
    axes[-1, 1].set_xlabel("index, sorted by activation energy")
    fig.suptitle(f"Kept indices at {int(ratio * 100)}% against activation energy (marks offset for legibility)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def jaccard_figure(data: dict[str, Any], path: Path, method: str = "cur-deim aware", ratio: float = 0.7) -> Path:
    """Jaccard index of kept sets between the experts of each layer (shared index spaces only)."""
    plt = _plt()
    rows = [r for r in data["jaccard"] if r["method"] == method and r["ratio"] == ratio]
    whats = sorted({r["what"] for r in rows})
    layers = sorted({r["layer"] for r in rows})
    fig, axes = plt.subplots(len(whats), len(layers), figsize=(2.4 * len(layers), 2.5 * len(whats)), squeeze=False)
    im = None
    for i, w in enumerate(whats):
        for j, layer in enumerate(layers):
            r = next(x for x in rows if x["what"] == w and x["layer"] == layer)
            ax = axes[i, j]
            im = ax.imshow(np.asarray(r["matrix"]), vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"layer {layer}: mean {r['mean_offdiag']:.2f}\n(chance {r['chance']:.2f})", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(w, fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.7, label="Jaccard")
    fig.suptitle(f"Overlap of kept sets across experts ({method}, {int(ratio * 100)}% removed)", fontsize=9)
    return _save(fig, path)


def ratio_figure(data: dict[str, Any], path: Path,
                 methods: tuple[str, ...] = ("cur-deim aware", "cur-deim aware, exact SVD")) -> Path:
    """For the first featured matrix: which columns and rows each method keeps at each ratio (sorted by energy)."""
    plt = _plt()
    f = data["featured"][0]
    ratios = data["ratios"]
    methods = tuple(m for m in methods if f"{m}@{ratios[0]}" in f["kept"]) or (next(iter(f["kept"])).split("@")[0],)
    fig, axes = plt.subplots(len(methods), 2, figsize=(9.0, (0.45 * len(ratios) + 0.9) * len(methods)),
                             squeeze=False)
    for mi, method in enumerate(methods):
        for ax, key, ekey, side in ((axes[mi, 0], "cols", "col_energy", "columns"),
                                    (axes[mi, 1], "rows", "row_energy", "rows")):
            e = np.asarray(f[ekey])
            order = np.argsort(-e)
            rank = np.empty_like(order)
            rank[order] = np.arange(len(e))
            grid = np.zeros((len(ratios), len(e)))
            for i, r in enumerate(ratios):
                grid[i, rank[np.asarray(f["kept"][f"{method}@{r}"][key], dtype=int)]] = 1
            ax.imshow(grid, aspect="auto", cmap="Greys", interpolation="nearest")
            ax.set_yticks(range(len(ratios)), [f"{int(r * 100)}%" for r in ratios], fontsize=7)
            ax.set_title(f"{method}: {side}", fontsize=8)
            ax.set_xlabel(f"{side} of layer {f['layer']} expert {f['expert']} {f['matrix']}, sorted by energy",
                          fontsize=7)
        axes[mi, 0].set_ylabel("removed", fontsize=8)
    fig.suptitle("Kept sets as the ratio grows (black = kept)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _neuron_sets(data: dict[str, Any], layer: int, expert: int) -> dict[tuple[str, float], np.ndarray]:
    return {(r["method"], r["ratio"]): np.asarray(r["neurons"], dtype=int) for r in data["neuron_kept"]
            if r["layer"] == layer and r["expert"] == expert}


def neuron_profile_figure(data: dict[str, Any], path: Path, ratio: float = 0.7) -> Path:
    """Per featured expert: neuron output energies sorted with the neurons each neuron-CUR method keeps at
    ``ratio``, and, per method, the kept sets at every ratio (neurons sorted by energy; black = kept)."""
    plt = _plt()
    feats = data["neuron_featured"]
    methods = data["neuron_methods"]
    ratios = sorted({r["ratio"] for r in data["neuron_rows"]})
    fig, axes = plt.subplots(len(feats), 1 + len(methods), figsize=(4.2 * (1 + len(methods)), 2.1 * len(feats)),
                             squeeze=False)
    colors = ("tab:orange", "tab:blue", "tab:green", "tab:red")
    for row_axes, f in zip(axes, feats):
        e = np.asarray(f["energy"])
        order = np.argsort(-e)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(e))
        sets = _neuron_sets(data, f["layer"], f["expert"])
        ax = row_axes[0]
        ax.semilogy(np.arange(len(e)), np.maximum(e[order], np.finfo(float).tiny), color="0.6", lw=1)
        for j, m in enumerate(methods):
            kept = sets.get((m, ratio))
            if kept is not None:
                ax.scatter(rank[kept], e[kept] * 1.35 ** (j - (len(methods) - 1) / 2), s=5, color=colors[j % 4],
                           label=f"{m} ({len(kept)})")
        ax.set_title(f"layer {f['layer']} expert {f['expert']}: output energy, kept at {int(ratio * 100)}%",
                     fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
        for ax, m in zip(row_axes[1:], methods):
            grid = np.zeros((len(ratios), len(e)))
            for i, x in enumerate(ratios):
                if (m, x) in sets:
                    grid[i, rank[sets[m, x]]] = 1
            ax.imshow(grid, aspect="auto", cmap="Greys", interpolation="nearest")
            ax.set_yticks(range(len(ratios)), [f"{round(x * 100)}%" for x in ratios], fontsize=7)
            ax.set_title(f"{m}: kept neurons per ratio", fontsize=8)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("neuron, sorted by output energy", fontsize=7)
    fig.suptitle("Neuron CUR: kept neurons against output energy diag(H)_j ||W_down[:, j]||^2 (marks offset for "
                 "legibility)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def neuron_k_figure(data: dict[str, Any], path: Path, method: str = "cur-neuron global") -> Path:
    """Neurons each expert keeps under one global budget: a layer x expert map per ratio."""
    plt = _plt()
    kept = [r for r in data["neuron_kept"] if r["method"] == method]
    ratios = sorted({r["ratio"] for r in kept})
    layers = sorted({r["layer"] for r in kept})
    experts = sorted({r["expert"] for r in kept})
    of = max(r["of"] for r in kept)
    fig, axes = plt.subplots(1, len(ratios), figsize=(0.42 * len(experts) * len(ratios) + 1.8,
                                                     0.42 * len(layers) + 1.6), squeeze=False)
    im = None
    for n, (ax, x) in enumerate(zip(axes[0], ratios)):
        grid = np.full((len(layers), len(experts)), np.nan)
        for r in kept:
            if r["ratio"] == x:
                grid[layers.index(r["layer"]), experts.index(r["expert"])] = r["k"]
        im = ax.imshow(grid, vmin=0, vmax=of, cmap="viridis", aspect="auto")
        for i in range(len(layers)):
            for j in range(len(experts)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{int(grid[i, j])}", ha="center", va="center", fontsize=6,
                            color="w" if grid[i, j] < of / 2 else "k")
        ax.set_title(f"{round(x * 100)}% removed (uniform k {int((1 - x) * of + 1e-9)})", fontsize=8)
        ax.set_xticks(range(len(experts)), [str(e) for e in experts], fontsize=7)
        ax.set_yticks(range(len(layers)), [f"layer {layer}" for layer in layers] if n == 0 else [], fontsize=7)
        ax.set_xlabel("expert", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"neurons kept (of {of})")
    fig.suptitle(f"Neurons kept per expert under one global budget ({method})", fontsize=9)
    return _save(fig, path)
