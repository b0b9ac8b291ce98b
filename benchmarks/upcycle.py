"""An upcycled MoE with real weights: SmolLM2-135M-Instruct split into E experts per layer (``curmoe upcycle``), then
the MoE pipeline on it. Two parts, each updating its own block of one results file (``--out``, read by
``curmoe.app.report_upcycle.upcycle_page``):

``routers``: upcycle at E experts and each top-k of ``--ks`` (balanced k-means neuron partition, ``select`` router,
routers trained on ``--calib-tokens`` tokens of calibration text for ``--steps`` steps per layer; k = E is exact and
is not trained), record the router training cost (seconds, steps, tokens) and the distillation loss before/after
on held-out calibration tokens, export ONNX and measure WikiText-2 raw valid perplexity on ONNX Runtime CPU
(``curmoe.runtimes.evaluate.evaluate_wikitext2``: the model's own tokenizer, the sliding-window protocol, a fixed
prefix of ``--tokens`` tokens), and the dense model's on the same prefix. ``--keep DIR`` keeps the upcycled folders.

``pipeline``: on one upcycled model (``--moe DIR``): calibrate once (cached), compress with every method at each
ratio (expert parameters removed), export ONNX, validate on ONNX Runtime CPU and OpenVINO CPU against the float64
reference, and measure the same perplexity on ORT.

Calibration (both parts): the word-level WikiText-2 train text tokenised with the model's tokenizer
(``curmoe.app.calibdata``: raw train is not in the shared data), rows of 512 tokens.

    python benchmarks/upcycle.py routers --ks 2,4,8 --tokens 2048 --calib-tokens 4096 --steps 200 --keep /tmp/up
    python benchmarks/upcycle.py pipeline --moe /tmp/up/k4 --ratios 0.5,0.7 --tokens 2048 --calib-tokens 2048
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import curmoe
from curmoe.app.results import provenance, write_results

NAME = "smollm2-135m"
METHODS: dict[str, Callable[[float], Any]] = {
    "cur-neuron global": lambda r: curmoe.NeuronConfig(ratio=r, allocation="global"),
    "cur-deim aware": lambda r: curmoe.CURConfig(ratio=r, selection="deim", activation_aware=True),
    "svd-llm": lambda r: curmoe.SVDConfig(ratio=r, activation_aware=True),
    "svd": lambda r: curmoe.SVDConfig(ratio=r),
}


def _results(path: str) -> dict[str, Any]:
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else {"model": NAME, "rows": []}


def _save(path: str, key: str, block: dict[str, Any], prov: dict[str, Any]) -> None:
    """Write ``block`` as ``key`` of the results file, re-reading it first: the two parts may run at once."""
    out = _results(path)
    out[key], out["provenance"] = block, prov
    write_results(path, out)


def _calib(model: curmoe.Model, args: argparse.Namespace) -> np.ndarray:
    from curmoe.app.calibdata import calibration_ids

    return calibration_ids("wikitext2:train", model, data_dir=args.data_dir, n_tokens=args.calib_tokens,
                           seq_len=min(512, model.config.max_seq_len))


def _ppl(model: curmoe.Model, folder: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Export ``model`` to ONNX, score the raw valid prefix on ONNX Runtime CPU; the files are removed after."""
    from curmoe.exporters import OnnxExportConfig, export
    from curmoe.runtimes import load
    from curmoe.runtimes.evaluate import evaluate_wikitext2

    t0 = time.perf_counter()
    path = export(model, OnnxExportConfig(), folder / f"{name}.onnx")
    export_s = time.perf_counter() - t0
    out: dict[str, Any] = {"export_s": round(export_s, 1)}
    if args.validate:
        out["validation"] = _validate(path, model, args)
    t0 = time.perf_counter()
    sess = load(path, "onnxruntime:cpu", threads=args.threads)
    res = evaluate_wikitext2(sess, model.tokenizer_path, split="valid", data_dir=args.data_dir, context=args.context,
                             stride=args.stride, max_tokens=args.tokens)
    del sess
    out |= {"ppl_token": res.ppl_token, "ppl_word": res.ppl_word, "tokens": res.tokens,
            "eval_s": round(time.perf_counter() - t0, 1), "protocol": res.protocol}
    for f in folder.glob(f"{name}.onnx*"):
        f.unlink()
    return out


def _validate(path: Path, model: curmoe.Model, args: argparse.Namespace) -> dict[str, Any]:
    from curmoe.runtimes import validate

    out = {}
    for rt in ("onnxruntime:cpu", "openvino:cpu"):
        t0 = time.perf_counter()
        rep = validate(path, model, rt, threads=args.threads)
        d = rep.to_dict()
        out[rt] = {"passed": bool(rep.passed), "max_rel_err": d["max_rel_err"], "hard_flips": d["hard_flips"],
                   "routing_agreement": d["routing_agreement"], "ppl_rel_diff": d["ppl_rel_diff"],
                   "failures": list(d["failures"]), "noise_floor": d["noise_floor"],
                   "max_rel_err_bound": d["max_rel_err_bound"],
                   "seconds": round(time.perf_counter() - t0, 1)}
        print(f"  validate {rt}: {'pass' if rep.passed else 'FAIL'} (max_rel_err {d.get('max_rel_err')})", flush=True)
    return out


def routers(args: argparse.Namespace) -> int:
    from curmoe.models.pretrained import pretrained_dir
    from curmoe.models.upcycle import UpcycleConfig, upcycle

    folder = pretrained_dir(NAME)
    dense = curmoe.load(folder)
    calib = _calib(dense, args)
    tmp = Path(tempfile.mkdtemp(prefix="curmoe-upcycle-"))
    out = _results(args.out)
    prov = provenance(sys.argv[1:] if args.argv is None else args.argv)
    block = out.get("routers") if args.resume else None
    block = block or {"rows": []}
    block |= {"provenance": prov, "experts": args.experts, "calib": f"word-level WikiText-2 train, first "
              f"{calib.size} tokens (model's tokenizer), {calib.shape[0]} rows of 512", "steps": args.steps,
              "eval": {"split": "valid (raw)", "runtime": "onnxruntime cpu float32", "threads": args.threads,
                       "context": args.context, "stride": args.stride, "tokens": args.tokens},
              "n_params_dense": dense.n_params()}
    done = {r["k"] for r in block["rows"]}
    if "dense" not in done:
        row = {"k": "dense"} | _ppl(dense, tmp, "dense", args)
        block["rows"].append(row)
        _save(args.out, "routers", block, prov)
        print(f"dense: ppl {row['ppl_token']:.3f}", flush=True)
    for k in (int(x) for x in args.ks.split(",")):
        if k in done:
            continue
        cfg = UpcycleConfig(n_experts=args.experts, top_k=k, steps=0 if k == args.experts else args.steps,
                            seed=args.seed)
        t0 = time.perf_counter()
        moe, rep = upcycle(dense, cfg, calib)
        total = time.perf_counter() - t0
        if args.keep:
            moe.save(Path(args.keep) / f"k{k}")
            moe = curmoe.load(Path(args.keep) / f"k{k}")
        r = rep.to_dict()
        row = {"k": k, "upcycle_s": round(total, 1), "report": r, "n_params": moe.n_params(),
               "active_ffn_share": k / args.experts} | _ppl(moe, tmp, f"k{k}", args)
        block["rows"].append(row)
        _save(args.out, "routers", block, prov)
        print(f"k={k}: ppl {row['ppl_token']:.3f}; upcycle {total:.0f} s (train {r['train_s']} s, collect "
              f"{r['collect_s']} s); loss {r.get('mean_loss_before', 0):.3f} -> {r.get('mean_loss_after', 0):.3f}",
              flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def pipeline(args: argparse.Namespace) -> int:
    from curmoe.compress import cached_calibrate

    moe = curmoe.load(args.moe)
    calib = _calib(moe, args)
    tmp = Path(tempfile.mkdtemp(prefix="curmoe-upcycle-"))
    cache = Path(args.calib_cache) if args.calib_cache else tmp / "calib"
    out = _results(args.out)
    prov = provenance(sys.argv[1:] if args.argv is None else args.argv)
    block = out.get("pipeline") if args.resume else None
    block = block or {"rows": []}
    block |= {"provenance": prov, "moe": str(args.moe), "router": moe.config.moe.router.to_dict(),
              "experts": moe.config.moe.n_experts, "calib": f"word-level WikiText-2 train, first {calib.size} "
              f"tokens (model's tokenizer), {calib.shape[0]} rows of 512",
              "ratio_count": f"share of expert parameters removed ({moe.config.n_layers} layers x "
                             f"{moe.config.moe.n_experts} experts = the dense FFNs)",
              "eval": {"split": "valid (raw)", "runtime": "onnxruntime cpu float32", "threads": args.threads,
                       "context": args.context, "stride": args.stride, "tokens": args.tokens},
              "validated_on": ["onnxruntime:cpu", "openvino:cpu"], "expert_params": moe.n_expert_params()}
    done = {(r["method"], r["ratio_target"]) for r in block["rows"]}
    if ("upcycled", 0.0) not in done:
        row = {"method": "upcycled", "ratio_target": 0.0, "ratio_expert_params": 0.0, "compress_s": 0.0}
        block["rows"].append(row | _ppl(moe, tmp, "upcycled", args))
        _save(args.out, "pipeline", block, prov)
        print(f"upcycled: ppl {block['rows'][-1]['ppl_token']:.3f}", flush=True)
    if "calibration_s" not in block:
        t0 = time.perf_counter()
        cached_calibrate(moe, calib, cache_dir=cache, batch_size=4, progress=False, source="wikitext2:train")
        block["calibration_s"] = round(time.perf_counter() - t0, 1)
        print(f"calibration: {block['calibration_s']} s", flush=True)
    for ratio in (float(x) for x in args.ratios.split(",")):
        for name in args.methods.split(","):
            if (name, ratio) in done:
                continue
            t0 = time.perf_counter()
            small = curmoe.compress(moe, METHODS[name](ratio), calib_ids=calib, progress=False, calib_cache=cache)
            dt = time.perf_counter() - t0
            rec = small.config.compression
            oe = [m["output_error"] for m in rec["matrices"].values() if m.get("output_error") is not None]
            row = {"method": name, "ratio_target": ratio, "ratio_expert_params": rec["ratio_expert_params"],
                   "ratio_all_params": rec["ratio_all_params"], "mean_output_error": float(np.mean(oe)) if oe else None,
                   "compress_s": round(dt, 1)}
            row |= _ppl(small, tmp, f"{name}-{ratio}".replace(" ", "_"), args)
            block["rows"].append(row)
            _save(args.out, "pipeline", block, prov)
            print(f"{name} @ {ratio}: ppl {row['ppl_token']:.3f} ({dt:.0f} s)", flush=True)
            del small
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="part", required=True)
    for name in ("routers", "pipeline"):
        s = sub.add_parser(name)
        s.add_argument("--tokens", type=int, default=2048, help="score the first N tokens of raw valid")
        s.add_argument("--context", type=int, default=512)
        s.add_argument("--stride", type=int, default=256)
        s.add_argument("--calib-tokens", type=int, default=4096)
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--data-dir", default=None)
        s.add_argument("--resume", action="store_true", help="keep the rows already in --out, run the missing ones")
        s.add_argument("--out", default="docs/results/data/upcycle.json")
    r = sub.choices["routers"]
    r.add_argument("--experts", type=int, default=8)
    r.add_argument("--ks", default="2,4,8")
    r.add_argument("--steps", type=int, default=200)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--keep", default=None, help="save each upcycled model as DIR/k{K}")
    r.set_defaults(validate=False)
    q = sub.choices["pipeline"]
    q.add_argument("--moe", required=True, help="an upcycled model folder (routers --keep DIR writes DIR/k{K})")
    q.add_argument("--ratios", default="0.5,0.7")
    q.add_argument("--methods", default=",".join(METHODS))
    q.add_argument("--calib-cache", default=None)
    q.add_argument("--no-validate", dest="validate", action="store_false")
    args = p.parse_args(argv)
    args.argv = argv
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    return routers(args) if args.part == "routers" else pipeline(args)


if __name__ == "__main__":
    sys.exit(main())
