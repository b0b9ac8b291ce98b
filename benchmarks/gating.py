"""Router study on trained models (issue 7): train one architecture with every router, then evaluate them all.

Every router trains the ``gating`` preset of ``python -m curmoe.models.train`` (2 layers, d_model 96, 8 SwiGLU
experts of d_ff 128, top-2 compute) for the same number of steps on the same batches (same seed, same tokenizer:
the shipped model's 8k BPE). Only the router and its balancing mechanism differ. Every router is trained once per
``--seeds`` value (the seed sets the initialisation and the batch order), so the spread between seeds shows which
differences are noise:

==============  ==========================================================================================
topk            softmax top-2, renormalised, Switch auxiliary loss (coefficient 0.01)
switch          top-1 with capacity factor 1.25 (overflow tokens dropped), Switch auxiliary loss 0.01
expert_choice   each expert takes its top ``capacity = 2 N / E`` tokens of the sequence (non-causal)
hash            fixed token-id hash to 2 experts (no learned router)
sigmoid_bias    sigmoid scores, top-2 with a selection bias updated after each step (no auxiliary loss)
random          2 experts drawn at random per token (no learned router)
==============  ==========================================================================================

Then each best checkpoint is evaluated with the NumPy reference on WikiText-2 valid and test (token and word
perplexity, the protocol of docs/perplexity.md) with the load statistics of docs/gating.md gathered on test:
CV, MaxVio, normalised entropy, dropped assignments. ``expert_choice`` is evaluated twice: teacher-forced (the full
sequence is routed at once, so a token's experts depend on later tokens) and causally, as incremental decoding with
its ``topk`` fallback routes every token (see :func:`causal_config`).

    python benchmarks/gating.py --out docs/results/data/gating.json      # trains what is missing, then evaluates

Runs land in ``--runs`` (default runs/gating/ROUTER-sSEED); a run whose ``train_summary.json`` exists is not
retrained.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import curmoe
from curmoe.app.results import provenance, write_results

ROUTERS = ("topk", "switch", "expert_choice", "hash", "sigmoid_bias", "random")
# Per-router training flags on top of the shared ones; everything else is identical across routers.
ROUTER_FLAGS: dict[str, list[str]] = {
    "topk": ["--aux-coef", "0.01"],
    "switch": ["--aux-coef", "0.01"],
    "expert_choice": ["--aux-coef", "0"],
    "hash": ["--aux-coef", "0"],
    "sigmoid_bias": ["--aux-coef", "0", "--bias-speed", "0.01"],
    "random": ["--aux-coef", "0"],
}
ROOT = Path(__file__).resolve().parent.parent


def train_command(router: str, out: Path, data_dir: str | None, steps: int, threads: int, seed: int = 0) -> list[str]:
    """The training command for one router (recorded in the results)."""
    cmd = [sys.executable, "-m", "curmoe.models.train", "--preset", "gating", "--router", router,
           "--steps", str(steps), "--seed", str(seed), "--tokenizer", str(ROOT / "models/wt2-moe-8x/tokenizer.json"),
           "--threads", str(threads), "--out", str(out), *ROUTER_FLAGS[router]]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    return cmd


def run_dir(runs: Path, router: str, seed: int) -> Path:
    return runs / f"{router}-s{seed}"


def train_all(routers: list[str], seeds: list[int], runs: Path, data_dir: str | None, steps: int,
              threads: int) -> None:
    for seed in seeds:
        for router in routers:
            _train_one(router, seed, runs, data_dir, steps, threads)


def _train_one(router: str, seed: int, runs: Path, data_dir: str | None, steps: int, threads: int) -> None:
    out = run_dir(runs, router, seed)
    if (out / "train_summary.json").exists():
        print(f"{router} seed {seed}: trained already ({out})", flush=True)
        return
    cmd = train_command(router, out, data_dir, steps, threads, seed)
    print(f"{router} seed {seed}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with out.with_suffix(".log").open("w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT,
                       env=os.environ | {"PYTHONUNBUFFERED": "1"})
    print(f"{router} seed {seed}: trained in {time.perf_counter() - t0:.0f} s", flush=True)


def _load_stats(model: curmoe.Model) -> tuple[Any, list]:
    """A logits function for the perplexity harness that also accumulates one LoadStats per MoE layer."""
    cfg = model.config
    stats = [curmoe.LoadStats(cfg.moe.n_experts) for _ in range(cfg.n_layers)]

    def fn(ids: np.ndarray) -> np.ndarray:
        out = model.run(ids)  # every window is one routing group per sequence
        for layer, routings in enumerate(out.routings):
            for r in routings:
                stats[layer].update(r)
        return out.logits

    return fn, stats


def evaluate_model(model: curmoe.Model, splits: list[str], data_dir: str | None,
                   max_tokens: int | None = None) -> dict[str, Any]:
    """Token/word perplexity on each split, and the load statistics of the last split (test)."""
    from curmoe.eval._data import load_wikitext2
    from curmoe.eval._perplexity import perplexity
    from curmoe.models.tokenizer import encode_split, load_tokenizer
    from curmoe.models.train._data import JOINED

    tok = load_tokenizer(model.tokenizer_path)
    row: dict[str, Any] = {}
    for split in splits:
        data = load_wikitext2(split, data_dir=data_dir)
        ids = encode_split(tok, data)
        fn, stats = _load_stats(model)
        t0 = time.perf_counter()
        r = perplexity(fn, ids, n_words=data.n_words, context=model.config.max_seq_len, batch_size=8,
                       split=f"wikitext2:{split}", joined=JOINED, max_tokens=max_tokens)
        row[split] = {"ppl_token": r.ppl_token, "ppl_word": r.ppl_word, "tokens": r.tokens,
                      "eval_s": round(time.perf_counter() - t0, 1)}
        layers = [st.summary() for st in stats if st.n_tokens]
        row[split]["load"] = {
            "layers": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.items()} for s in layers],
            **{k: float(np.mean([s[k] for s in layers])) for k in ("cv", "max_vio", "entropy", "dropped_fraction")},
        }
    return row


def evaluate_all(routers: list[str], seeds: list[int], runs: Path, data_dir: str | None, splits: list[str],
                 out: Path, steps: int, threads: int, argv: list[str] | None, max_tokens: int | None = None) -> None:
    results: dict[str, Any] = {"provenance": provenance(argv), "preset": "gating", "splits": splits,
                               "load_split": splits[-1], "seeds": seeds, "rows": []}
    for router, seed in ((r, s) for s in seeds for r in routers):
        summary = json.loads((run_dir(runs, router, seed) / "train_summary.json").read_text())
        model = curmoe.load(run_dir(runs, router, seed) / "best", dtype=np.float32)
        variants = [("teacher-forced" if router == "expert_choice" else "causal", model)]
        if router == "expert_choice":
            variants.append(("causal decoding (topk fallback)", curmoe.causal_twin(model)))
        for mode, m in variants:
            row = {"router": router, "mode": mode, "seed": seed, "params": summary["params"], "steps": summary["steps"],
                   "tokens": summary["tokens"], "train_wall_s": summary["train_wall_s"],
                   "best_step": summary["best_step"],
                   "train_command": " ".join(train_command(router, run_dir(Path("runs/gating"), router, seed),
                                                           data_dir, steps, threads, seed)[1:]).replace(
                                                               str(ROOT) + "/", ""),
                   } | evaluate_model(m, splits, data_dir, max_tokens)
            results["rows"].append(row)
            write_results(out, results)
            last = row[splits[-1]]
            print(f"{router:14s} {mode:32s} seed {seed} "
                  + "  ".join(f"{s} ppl {row[s]['ppl_token']:8.2f}" for s in splits)
                  + f"  cv {last['load']['cv']:.3f}  max_vio {last['load']['max_vio']:.3f}"
                  f"  entropy {last['load']['entropy']:.3f}  dropped {last['load']['dropped_fraction']:.4f}",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--routers", default=",".join(ROUTERS))
    p.add_argument("--runs", type=Path, default=ROOT / "runs/gating")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seeds", default="0,1", help="one training run per router and seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--splits", default="valid,test", help="load statistics come from the last one")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens (smoke runs)")
    p.add_argument("--out", type=Path, default=ROOT / "docs/results/data/gating.json")
    args = p.parse_args(argv)
    routers = args.routers.split(",")
    args.runs.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    train_all(routers, seeds, args.runs, args.data_dir, args.steps, args.threads)
    if not args.train_only:
        evaluate_all(routers, seeds, args.runs, args.data_dir, args.splits.split(","), args.out, args.steps,
                     args.threads, argv, args.max_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
