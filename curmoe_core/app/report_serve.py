"""The serving results page (docs/results/serve.md) and its figure, from docs/results/data/serve.json
(benchmarks/serve.py).

``serve_page(data, fig)`` returns the Markdown; ``serve_figure(data, path)`` draws throughput against concurrent
clients per model and runtime (matplotlib, extra ``plot``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curmoe.app.report_tables import table as _table
from curmoe.common.errors import require
from curmoe.common.io import atomic_write

__all__ = ["serve_figure", "serve_page", "serve_targets"]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _yes(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def serve_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target and model/runtime: name, measured value, threshold, met."""
    out = []
    for t in data.get("targets", []):
        who = f"{t['model']} {t['runtime']}"
        if t.get("scaling_16_vs_1") is not None:
            out.append({"target": "16 clients >= 4x one client (output tok/s)", "row": who,
                        "value": f"{t['scaling_16_vs_1']:.2f}x", "met": t["scaling_16_vs_1"] >= 4})
        if t.get("overhead_ratio") is not None:
            out.append({"target": "one client >= 0.8x curmoe bench decode tok/s", "row": who,
                        "value": f"{t['overhead_ratio']:.2f}x ({t['single_tok_s']:.0f} vs {t['bench_decode_tok_s']:.0f})",
                        "met": t["overhead_ratio"] >= 0.8})
        b = t["burst"]
        mem_ok = b["rss_after_mib"] <= b["rss_baseline_mib"] * 1.05 + 4
        out.append({"target": f"{b['requests']}-client burst: only 200/429/503, none lost, RSS back", "row": who,
                    "value": (", ".join(f"{k}: {v}" for k, v in sorted(b["statuses"].items()))
                              + f"; RSS {b['rss_baseline_mib']:.0f} -> {b['rss_peak_mib']:.0f} -> "
                                f"{b['rss_after_mib']:.0f} MiB"
                              + (f" (after a second burst {b['rss_after_second_mib']:.0f})"
                                 if "rss_after_second_mib" in b else "")),
                    "met": not b["unexpected"] and b["idle_after"] and mem_ok})
    return out


def serve_page(data: dict[str, Any], fig: str | None = "serve.png") -> str:
    """Markdown for docs/results/serve.md."""
    rows = data.get("rows", [])
    p = data.get("provenance", {})
    la, lb = data.get("load_avg_start"), data.get("load_avg_end")
    load = (f" Load average (1/5/15 min) {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f} at the start and "
            f"{lb[0]:.1f}/{lb[1]:.1f}/{lb[2]:.1f} at the end:" if la and lb else "")
    parts = [
        "# Serving: `curmoe serve` under concurrent clients", "",
        f"One run of `benchmarks/serve.py` on `{Path(str(data.get('model', '?'))).name}` (dense) and its neuron-CUR "
        f"compression, each on ONNX Runtime CPU and OpenVINO CPU with {data.get('threads', '?')} runtime thread(s). "
        f"Every request: a {data.get('prompt_tokens', '?')}-token prompt, greedy, exactly "
        f"{data.get('max_tokens', '?')} output tokens (`ignore_eos`). Throughput = output tokens of all answered "
        "requests / wall time; latency = one whole (non-streamed) request. "
        f"{_sentence(data.get('machine_note', ''))}.{load} compare rows of this run, not runs.", "",
    ]
    if fig:
        parts += [f"![throughput against concurrent clients]({fig})", ""]
    parts += ["## Targets", "", _table(["target", "model / runtime", "measured", ""],
                                       [[t["target"], t["row"], t["value"], _yes(t["met"])]
                                        for t in serve_targets(data)]), ""]
    kept = [t for t in data.get("targets", []) if "rss_after_second_mib" in t["burst"]
            and t["burst"]["rss_after_mib"] > t["burst"]["rss_baseline_mib"] * 1.05 + 4]
    if kept:
        flat = all(abs(t["burst"]["rss_after_second_mib"] - t["burst"]["rss_after_mib"]) <= 2 for t in kept)
        parts += [
            "Memory after the burst: " + ", ".join(
                f"{t['model']} {t['runtime']} keeps {t['burst']['rss_after_mib'] - t['burst']['rss_baseline_mib']:+.0f}"
                f" MiB" for t in kept)
            + (" after the first burst, and a second identical burst adds at most 2 MiB: memory kept for the largest "
               "batch run so far, not a per-request leak. Most likely the runtimes' own caches (ONNX Runtime's CPU "
               "memory arena does not shrink; OpenVINO caches kernels compiled per input shape); a glibc "
               "`malloc_trim` when the server went idle did not lower it (tried, not kept)." if flat else
               " after the first burst, and it grew again after a second burst: look for a leak."), ""]
    parts += ["## Throughput and latency", "", _table(
        ["model", "runtime", "clients", "requests", "output tok/s", "p50 ms", "p99 ms", "statuses"],
        [[r["model"], r["runtime"], r["concurrency"], r["requests"], f"{r['tok_s']:.0f}", f"{r['p50_ms']:.0f}",
          f"{r['p99_ms']:.0f}", ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())] for r in rows]), ""]
    parts += [
        "How it is counted: the overhead target compares the best of 12 single-client requests (64 tokens / the "
        "request's latency, prefill and HTTP included) with the best of 9 runs of `curmoe bench`'s decode loop "
        "(`curmoe.app.bench.Runner`, batch 1, decode steps only), alternating in 3 rounds while the server is "
        "otherwise idle (the load drifts). The burst sends all requests at once to a server with `--max-batch 16 "
        "--max-queue 16`: requests past the 32 it can hold get 429 at once; RSS is read from /proc after a "
        "warm-up request, at the burst's end, and 2 s after the server is idle (target: within 5% + 4 MiB), then "
        "2 s after a second identical burst (a leak would grow again; memory the allocator kept is reused).", "",
    ]
    if p:
        parts += [f"Measured by `{p.get('command', '?')}` at commit `{p.get('commit') or '?'}` on "
                  f"{p.get('utc', '?')} UTC ({p.get('machine', '?')}); numbers in [data/serve.json](data/serve.json).",
                  ""]
    return "\n".join(parts)


def serve_figure(data: dict[str, Any], path: str | Path) -> Path:
    """Output tokens/s against concurrent clients (log-log), one line per model and runtime."""
    mpl = require("matplotlib", "plot")
    mpl.use("Agg")  # type: ignore[attr-defined]
    plt = require("matplotlib.pyplot", "plot")
    fig, ax = plt.subplots(figsize=(6.0, 3.6))  # type: ignore[attr-defined]
    series: dict[str, list[tuple[int, float]]] = {}
    for r in data.get("rows", []):
        series.setdefault(f"{r['model']} {r['runtime']}", []).append((r["concurrency"], r["tok_s"]))
    for label, pts in series.items():
        pts.sort()
        ax.plot([c for c, _ in pts], [v for _, v in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    levels = sorted({r["concurrency"] for r in data.get("rows", [])})
    ax.set_xticks(levels, [str(c) for c in levels])
    vals = [v for pts in series.values() for _, v in pts if v > 0]
    if vals:
        ticks = [t for t in (12.5, 25, 50, 100, 200, 400, 800, 1600, 3200, 6400) if min(vals) / 2 <= t <= max(vals) * 2]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_formatter(mpl.ticker.NullFormatter())  # type: ignore[attr-defined]
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("output tokens/s (all clients)")
    ax.set_title("curmoe serve: continuous batching (one run, shared 2-core machine)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    try:
        return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight",
                                                                metadata={"Software": None}))
    finally:
        plt.close(fig)  # type: ignore[attr-defined]
