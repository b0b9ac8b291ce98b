"""Compression quality on the shipped model: WikiText-2 perplexity of every method at several ratios.

Methods (``METHODS``): neuron CUR (``cur-neuron``: keep real expert neurons, refit W_down), uniform or with one
global budget (``global``), one-pass or sequential calibration (``seq``); SVD-LLM the same ways; per-matrix CUR
(DEIM on the column-scaled matrix, and on the whitened matrix); and the older rows: plain CUR (deim, leverage,
the poster's ``seed``) and plain SVD. A ``+heal`` suffix heals the compressed model (``curmoe.models.heal``: only
the non-interpretable small parts, KL to the dense model on held-out calibration text). Calibration: the first
``--calib-tokens`` tokens of WikiText-2 train. Perplexity on valid and test through ONNX Runtime CPU (validated
against the reference by tests/test_runtime_*), plus greedy continuations of fixed prompts, because a compressed
model can keep a fair perplexity and still write broken text. The ratio is counted as the share of expert
parameters removed (``ratio_expert_params``; factors of all experts against their dense matrices) and as the share
of all parameters (``ratio_all_params``, embeddings and attention included). No hyperparameter was tuned: every
method runs with its defaults, fixed before test was evaluated.

The results file (``--out``, read by ``curmoe report``) is rewritten after every row, so a partial run keeps its rows.

    python benchmarks/compression.py --ratios 0.3,0.5,0.7,0.8 --out docs/results/data/compression.json
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import curmoe
from curmoe.app.calibdata import calibration_ids
from curmoe.app.demo import shipped_model_dir
from curmoe.app.results import provenance, write_results
from curmoe.exporters import OnnxExportConfig, export
from curmoe.runtimes import load
from curmoe.runtimes.evaluate import evaluate_wikitext2
from curmoe.runtimes.generate import generate

METHODS = {
    "cur-neuron global": lambda r: curmoe.NeuronConfig(ratio=r, allocation="global"),
    "svd-llm": lambda r: curmoe.SVDConfig(ratio=r, activation_aware=True),
    "svd-llm global": lambda r: curmoe.SVDConfig(ratio=r, activation_aware=True, allocation="global"),
    "cur-neuron": lambda r: curmoe.NeuronConfig(ratio=r),
    "cur-neuron global seq": lambda r: curmoe.NeuronConfig(ratio=r, allocation="global", sequential=True),
    "svd-llm seq": lambda r: curmoe.SVDConfig(ratio=r, activation_aware=True, sequential=True),
    "cur-deim aware": lambda r: curmoe.CURConfig(ratio=r, selection="deim", activation_aware=True),
    "cur-deim whitened": lambda r: curmoe.CURConfig(ratio=r, selection="deim", activation_aware=True, whiten=True),
    "cur-seed (poster)": lambda r: curmoe.CURConfig(ratio=r, selection="seed", u="intersection", randomized=False),
    "cur-leverage": lambda r: curmoe.CURConfig(ratio=r, selection="leverage"),
    "cur-deim": lambda r: curmoe.CURConfig(ratio=r, selection="deim"),
    "svd": lambda r: curmoe.SVDConfig(ratio=r),
}
HEAL = " +heal"  # suffix: heal the compressed model (rows kept apart from the one-shot rows)
DEFAULT_METHODS = ("cur-neuron global", "svd-llm", "svd-llm global", "cur-neuron", "cur-neuron global seq",
                   "svd-llm seq", "cur-deim aware", "cur-deim whitened")
# WikiText-2 style prompts (its tokenisation: " , " and " @-@ "); the continuations are greedy.
PROMPTS = ("The game was released in", "In the early 19th century , the city", "The album received")
SAMPLE_TOKENS = 24


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--splits", default="valid,test")
    p.add_argument("--ratios", default="0.3,0.5,0.7,0.8")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated, from {', '.join(METHODS)}; append '{HEAL}' to heal")
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="score only the first N tokens of each split (a fixed, stated prefix; default: all)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="docs/results/data/compression.json")
    args = p.parse_args(argv)
    from curmoe.models.tokenizer import load_tokenizer

    model_dir = args.model or shipped_model_dir()
    model = curmoe.load(model_dir)
    tok_path = Path(model.tokenizer_path)  # saving a model re-points its tokenizer_path at the copy
    tok = load_tokenizer(tok_path)
    calib = calibration_ids("wikitext2:train", model, data_dir=args.data_dir, n_tokens=args.calib_tokens)
    tmp = Path(tempfile.mkdtemp(prefix="curmoe-compression-"))
    splits = args.splits.split(",")
    results = {"provenance": provenance(argv), "model": Path(model_dir).name, "n_params": model.n_params(),
               "calib": f"wikitext2:train, first {args.calib_tokens} tokens", "splits": splits,
               "eval_tokens": "all" if args.max_tokens is None else f"first {args.max_tokens} of each split",
               "prompts": list(PROMPTS), "sample_tokens": SAMPLE_TOKENS, "rows": []}

    def evaluate(m: curmoe.Model, name: str) -> dict:
        ckpt = m.save(tmp / f"{name}-ckpt")  # bytes on disk, in the source model's dtype
        disk = (ckpt / "model.safetensors").stat().st_size
        shutil.rmtree(ckpt)
        path = export(m, OnnxExportConfig(), tmp / f"{name}.onnx")
        sess = load(path, "onnxruntime:cpu", threads=args.threads)
        row: dict = {"bytes_on_disk": disk}
        for split in splits:
            t0 = time.perf_counter()
            r = evaluate_wikitext2(sess, tok_path, split=split, data_dir=args.data_dir,
                                   max_tokens=args.max_tokens)
            row[split] = {"ppl_token": r.ppl_token, "ppl_word": r.ppl_word, "tokens": r.tokens,
                          "eval_s": round(time.perf_counter() - t0, 1)}
        row["samples"] = []
        for prompt in PROMPTS:
            ids = np.asarray(tok.encode(prompt).ids, np.int64)
            out = generate(sess, ids, SAMPLE_TOKENS)
            row["samples"].append(tok.decode(out[len(ids):].tolist()))
        path.unlink(missing_ok=True)
        Path(str(path) + ".data").unlink(missing_ok=True)
        return row

    def save(row: dict) -> None:
        results["rows"].append(row)
        write_results(args.out, results)
        ppl = ", ".join(f"{s} ppl {row[s]['ppl_token']:.2f}" for s in splits)
        print(f"{row['method']} @ {row['ratio_target']}: {ppl}; {row['samples'][0]!r}", flush=True)

    dense = {"method": "dense", "ratio_target": 0.0, "ratio_expert_params": 0.0, "ratio_all_params": 0.0,
             "mean_output_error": 0.0, "compress_s": 0.0} | evaluate(model, "dense")
    save(dense)
    names = args.methods.split(",")
    unknown = [n for n in names if n.removesuffix(HEAL) not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)} (optionally with '{HEAL}')")
    for ratio in (float(x) for x in args.ratios.split(",")):
        for name in names:
            base = name.removesuffix(HEAL)
            t0 = time.perf_counter()
            small = curmoe.compress(model, METHODS[base](ratio), calib_ids=calib, progress=False)
            dt = time.perf_counter() - t0
            rec = small.config.compression
            oe = [m["output_error"] for m in rec["matrices"].values() if m.get("output_error") is not None]
            row = {"method": name, "ratio_target": ratio, "ratio_expert_params": rec["ratio_expert_params"],
                   "ratio_all_params": rec["ratio_all_params"], "mean_output_error": float(np.mean(oe)),
                   "compress_s": round(dt, 2), "calibration": rec["calibration"]}
            if name.endswith(HEAL):
                from curmoe.models import heal

                t1 = time.perf_counter()
                small, report = heal(small, model, calib)
                row |= {"heal_s": round(time.perf_counter() - t1, 2),
                        "heal": {k: v for k, v in asdict(report).items() if k not in ("history", "config")}}
            save(row | evaluate(small, f"{name}-{ratio}"))
    by = {(r["method"], r["ratio_target"]): r["compress_s"] for r in results["rows"]}
    for ratio in (float(x) for x in args.ratios.split(",")):
        if ("cur-neuron global", ratio) in by and ("svd-llm", ratio) in by:
            print(f"compress time cur-neuron global / svd-llm @ {ratio}: "
                  f"{by[('cur-neuron global', ratio)] / by[('svd-llm', ratio)]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
