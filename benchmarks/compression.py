"""Compression quality on the shipped model: WikiText-2 perplexity of every method at several ratios (issue 7, part 1).

Methods: CUR `seed` (the poster's: full-SVD leverage sampling, U = pinv of the intersection), CUR `leverage`,
CUR `deim`, CUR `deim` activation-aware, SVD, SVD-LLM (activation-aware). Calibration: the first
``--calib-tokens`` tokens of WikiText-2 train. Perplexity through ONNX Runtime CPU (validated against the
reference elsewhere). Rows are appended to ``--out`` (JSON lines) as they finish, so a partial run keeps its rows.

    python benchmarks/compression.py --split test --ratios 0.3,0.5,0.7,0.8 --out compression.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import curmoe
from curmoe._calibdata import calibration_ids
from curmoe._demo import shipped_model_dir
from curmoe.exporters import OnnxExportConfig, export
from curmoe.runtimes import load
from curmoe.runtimes.evaluate import evaluate_wikitext2

METHODS = {
    "cur-seed (poster)": lambda r: curmoe.CURConfig(ratio=r, selection="seed", u="intersection", randomized=False),
    "cur-leverage": lambda r: curmoe.CURConfig(ratio=r, selection="leverage"),
    "cur-deim": lambda r: curmoe.CURConfig(ratio=r, selection="deim"),
    "cur-deim aware": lambda r: curmoe.CURConfig(ratio=r, selection="deim", activation_aware=True),
    "svd": lambda r: curmoe.SVDConfig(ratio=r),
    "svd-llm": lambda r: curmoe.SVDConfig(ratio=r, activation_aware=True),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--ratios", default="0.3,0.5,0.7,0.8")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="compression.jsonl")
    args = p.parse_args(argv)
    model = curmoe.load(args.model or shipped_model_dir())
    calib = calibration_ids("wikitext2:train", model, data_dir=args.data_dir, n_tokens=args.calib_tokens)
    tmp = Path(tempfile.mkdtemp(prefix="curmoe-compression-"))
    out = Path(args.out)

    def evaluate(m: curmoe.Model, name: str) -> dict:
        path = export(m, OnnxExportConfig(), tmp / f"{name}.onnx")
        r = evaluate_wikitext2(load(path, "onnxruntime:cpu"), model.tokenizer_path, split=args.split,
                               data_dir=args.data_dir)
        return {"ppl_token": r.ppl_token, "ppl_word": r.ppl_word, "tokens": r.tokens}

    dense = {"method": "dense", "ratio_target": 0.0, "split": args.split} | evaluate(model, "dense")
    rows = [dense]
    out.write_text(json.dumps(dense) + "\n")
    print(f"dense: {dense}", flush=True)
    for ratio in (float(x) for x in args.ratios.split(",")):
        for name in args.methods.split(","):
            t0 = time.perf_counter()
            small = curmoe.compress(model, METHODS[name](ratio), calib_ids=calib, progress=False)
            dt = time.perf_counter() - t0
            rec = small.config.compression
            oe = [m["output_error"] for m in rec["matrices"].values() if m["output_error"] is not None]
            row = {"method": name, "ratio_target": ratio, "split": args.split,
                   "ratio_expert_params": rec["ratio_expert_params"], "ratio_all_params": rec["ratio_all_params"],
                   "mean_output_error": float(np.mean(oe)), "compress_s": dt} | evaluate(small, f"{name}-{ratio}")
            row["ppl_vs_dense"] = row["ppl_token"] / dense["ppl_token"]
            rows.append(row)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name} @ {ratio}: ppl {row['ppl_token']:.2f} ({row['ppl_vs_dense']:.2f}x dense), "
                  f"output err {row['mean_output_error']:.3f}, {dt:.1f} s", flush=True)
    print("| method | ratio | expert params removed | all params removed | mean output err | "
          f"{args.split} ppl token | {args.split} ppl word | x dense | compress s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['method']} | {r['ratio_target']:.1f} | {100 * r.get('ratio_expert_params', 0):.1f}% | "
              f"{100 * r.get('ratio_all_params', 0):.1f}% | {r.get('mean_output_error', 0):.3f} | "
              f"{r['ppl_token']:.2f} | {r['ppl_word']:.2f} | {r['ppl_token'] / dense['ppl_token']:.2f} | "
              f"{r.get('compress_s', 0):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
