"""Weight quantisation stacked on factorisation: perplexity, validation error and bytes, one table.

Part 1, the shipped model (``models/wt2-moe-8x``): dense, neuron CUR (global budget) at 50% and 70%, per-matrix
CUR (DEIM on the whitened matrix, the better per-matrix CUR at 70% in docs/results/compression.md) at 70% and
SVD-LLM at 70% of expert parameters removed, compressed with one calibration (the first ``--calib-tokens`` tokens of
WikiText-2 train, as benchmarks/compression.py), each exported to ONNX (float32) and then

- fp32: the export itself (ONNX Runtime) / its IR (OpenVINO);
- int8 / int4: ``curmoe.exporters.quantize`` (ORT MatMulNBits; OpenVINO NNCF) of the expert matrices only;

on ONNX Runtime CPU and OpenVINO CPU: WikiText-2 test perplexity (the first ``--max-tokens`` tokens, the protocol
of docs/results/compression.md), the validation against the float64 reference of the compressed model it came
from (``curmoe.runtimes.quantized.validate_quantized`` for int8/int4, ``curmoe.runtimes.validate`` for fp32), bytes
on disk (file + weights) and bytes of expert weights only (counted from the file: every constant an expert MatMul
reads, scales and zero points included).

Part 2, real-size shapes: the same byte counts for an OLMoE-shaped model (d_model 2048, d_ff 1024, 64 experts,
top-8, 16 layers, vocab 50304, untied LM head, GQA 16/16), counted exactly from the shapes with the formulas of
``curmoe.exporters.quantize.sizes`` (checked against the files the tools write in tests/test_quantize.py), with the
ranks / neuron counts ``curmoe.compress`` gives at each ratio.

    python benchmarks/quantize.py --threads 1 --max-tokens 65536 --out docs/results/data/quantize.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import curmoe
from curmoe.app.calibdata import calibration_ids
from curmoe.app.demo import shipped_model_dir
from curmoe.app.results import provenance, write_results
from curmoe.decompose import rank_for_ratio
from curmoe.exporters import OnnxExportConfig, export, export_openvino_ir
from curmoe.exporters.quantize import QuantizeConfig, disk_bytes, quantize
from curmoe.exporters.quantize.sizes import float_bytes, matmulnbits_bytes, nncf_bytes, weight_bytes
from curmoe.runtimes import load, validate
from curmoe.runtimes.evaluate import evaluate_wikitext2
from curmoe.runtimes.quantized import validate_quantized

VARIANTS = {
    "dense": None,
    "cur-neuron global 50%": lambda: curmoe.NeuronConfig(ratio=0.5, allocation="global"),
    "cur-neuron global 70%": lambda: curmoe.NeuronConfig(ratio=0.7, allocation="global"),
    "cur-deim whitened 70%": lambda: curmoe.CURConfig(ratio=0.7, selection="deim", activation_aware=True,
                                                       whiten=True),
    "svd-llm 70%": lambda: curmoe.SVDConfig(ratio=0.7, activation_aware=True),
}
PRECISIONS = ("fp32", "int8", "int4")
RUNTIMES = {"onnxruntime": "onnxruntime:cpu", "openvino": "openvino:cpu"}
# OLMoE-1B-7B's shapes (allenai/OLMoE-1B-7B-0924 config.json)
OLMOE = {"d_model": 2048, "d_ff": 1024, "n_experts": 64, "top_k": 8, "n_layers": 16, "vocab": 50304,
         "n_heads": 16, "n_kv_heads": 16}


def real_size(block: int) -> dict:
    """Bytes of the OLMoE-shaped model per method x precision x runtime, exactly from the shapes."""
    d, f, E, L, V = (OLMOE[k] for k in ("d_model", "d_ff", "n_experts", "n_layers", "vocab"))
    attn = L * 4 * d * d  # q, k, v, o (16 heads of 128, no GQA in OLMoE)
    router = L * E * d
    embed, head = V * d, V * d
    # each expert's matrices as (K, N) MatMul weights (K: the input dimension), per method
    methods: dict[str, list[tuple[int, int]]] = {"dense": [(d, f), (d, f), (f, d)]}
    for r in (0.5, 0.7):
        k = round(f * (1 - r))  # neuron CUR keeps k of d_ff neurons (uniform k; the global budget moves k around)
        methods[f"cur-neuron {int(r * 100)}%"] = [(d, k), (d, k), (k, d)]
    rc = rank_for_ratio(f, d, 0.7, "cur")  # gate/up (f, d) and down (d, f) share min(m, n) = 1024
    # as exported: x -> R -> (C @ U) (fold_u, the ONNX export's default; the checkpoint keeps C, U, R)
    methods["cur 70%"] = [(d, rc), (rc, f)] * 2 + [(f, rc), (rc, d)]
    rs = rank_for_ratio(f, d, 0.7, "svd")
    methods["svd 70%"] = [(d, rs), (rs, f)] * 2 + [(f, rs), (rs, d)]
    rows = []
    for name, mats in methods.items():
        params = sum(K * N for K, N in mats)
        for prec in PRECISIONS:
            for rt in RUNTIMES:
                if prec == "fp32":
                    per = sum(float_bytes(K, N) for K, N in mats)
                elif rt == "onnxruntime":
                    per = sum(matmulnbits_bytes(K, N, int(prec[3:]), block) for K, N in mats)
                else:
                    per = sum(nncf_bytes(K, N, int(prec[3:]), block) for K, N in mats)
                experts = per * E * L
                rest = 4 * (attn + router + embed + head + L * 2 * d + d)  # float32 attention, router, norms
                # --what all: attention and the LM head quantised too; embedding (a Gather), router, norms float32
                if prec == "fp32":
                    others = 0
                else:
                    fn = matmulnbits_bytes if rt == "onnxruntime" else nncf_bytes
                    others = L * 4 * fn(d, d, int(prec[3:]), block) + fn(d, V, int(prec[3:]), block)
                rest_all = rest if prec == "fp32" else others + 4 * (router + embed + L * 2 * d + d)
                rows.append({"method": name, "precision": prec, "runtime": rt, "expert_params": params * E * L,
                             "expert_bytes": experts, "total_bytes": experts + rest,
                             "total_bytes_what_all": experts + rest_all})
    dense = {r["runtime"]: r for r in rows if r["method"] == "dense" and r["precision"] == "fp32"}
    for r in rows:
        r["expert_bytes_vs_dense_fp32"] = r["expert_bytes"] / dense[r["runtime"]]["expert_bytes"]
        r["total_bytes_vs_dense_fp32"] = r["total_bytes"] / dense[r["runtime"]]["total_bytes"]
        r["total_bytes_what_all_vs_dense_fp32"] = r["total_bytes_what_all"] / dense[r["runtime"]]["total_bytes"]
    return {"shapes": OLMOE, "counted": "exactly from the shapes (curmoe.exporters.quantize.sizes formulas, checked "
                                       "against the tools' files in tests/test_quantize.py)",
            "ranks": {"cur 70%": rc, "svd 70%": rs, "cur-neuron 50%": round(f * 0.5),
                      "cur-neuron 70%": round(f * 0.3)},
            "block_size": block, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--runtimes", default=",".join(RUNTIMES))
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--what", choices=["experts", "all"], default="experts", help="what curmoe quantize --what takes")
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--max-tokens", type=int, default=65536, help="score the first N tokens of test")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="docs/results/data/quantize.json")
    p.add_argument("--real-size-only", action="store_true",
                   help="only (re)count the real-size bytes into the existing --out (its own provenance)")
    args = p.parse_args(argv)
    if args.real_size_only:
        from curmoe.app.results import read_results

        results = read_results(args.out)
        results["real_size"] = real_size(args.block_size) | {"provenance": provenance(argv)}
        write_results(args.out, results)
        return 0

    model_dir = args.model or shipped_model_dir()
    model = curmoe.load(model_dir)
    tok_path = Path(model.tokenizer_path)
    calib = calibration_ids("wikitext2:train", model, data_dir=args.data_dir, n_tokens=args.calib_tokens)
    tmp = Path(tempfile.mkdtemp(prefix="curmoe-quantize-"))
    results = {"provenance": provenance(argv), "model": Path(model_dir).name, "n_params": model.n_params(),
               "calib": f"wikitext2:train, first {args.calib_tokens} tokens", "split": "test",
               "eval_tokens": f"first {args.max_tokens} of test", "block_size": args.block_size,
               "what": args.what, "real_size": real_size(args.block_size), "rows": []}
    write_results(args.out, results)
    opts = {} if args.threads is None else {"threads": args.threads}
    try:
        for name in args.variants.split(","):
            t0 = time.perf_counter()
            m = model if VARIANTS[name] is None else curmoe.compress(model, VARIANTS[name](), calib_ids=calib,
                                                                     progress=False)
            rec = m.config.compression or {}
            base = {"variant": name, "ratio_expert_params": rec.get("ratio_expert_params", 0.0),
                    "compress_s": round(time.perf_counter() - t0, 1)}
            onnx_path = export(m, OnnxExportConfig(), tmp / f"{name}.onnx")
            for rt in args.runtimes.split(","):
                for prec in args.precisions.split(","):
                    row = base | {"runtime": rt, "precision": prec}
                    t1 = time.perf_counter()
                    suffix = ".onnx" if rt == "onnxruntime" else ".xml"
                    if prec == "fp32":
                        path = onnx_path if rt == "onnxruntime" else export_openvino_ir(
                            onnx_path, tmp / f"{name}.xml", routing_outputs=True)
                        v = validate(path, m, RUNTIMES[rt], **opts)
                        row["validation"] = {"passed": v.passed, "max_rel_err": v.max_rel_err,
                                             "max_rel_err_all": v.max_rel_err_all,
                                             "routing_agreement": v.routing_agreement, "ppl_rel_diff": v.ppl_rel_diff,
                                             "hard_flips": v.hard_flips, "failures": list(v.failures)}
                    else:
                        path = tmp / f"{name}-{prec}{suffix}"
                        qr = quantize(onnx_path, QuantizeConfig(bits=int(prec[3:]), runtime=rt, what=args.what,
                                                                block_size=args.block_size), path)
                        row["int8_backup"] = len(qr.info.get("int8_backup", []))
                        v = validate_quantized(path, m, RUNTIMES[rt], **opts)
                        row["validation"] = {"passed": v.passed, "max_rel_err": v.max_rel_err,
                                             "max_rel_err_all": v.max_rel_err_all,
                                             "routing_agreement": v.routing_agreement, "ppl_rel_diff": v.ppl_rel_diff,
                                             "top1_agreement": v.top1_agreement, "hard_flips": v.hard_flips,
                                             "failures": list(v.failures)}
                    wb = weight_bytes(path)
                    row |= {"bytes_on_disk": disk_bytes(path), "expert_bytes": wb["expert"],
                            "other_matmul_bytes": wb["other"] + wb["never"]}
                    sess = load(path, RUNTIMES[rt], **opts)
                    t2 = time.perf_counter()
                    r = evaluate_wikitext2(sess, tok_path, split="test", data_dir=args.data_dir,
                                           max_tokens=args.max_tokens)
                    del sess
                    row["test"] = {"ppl_token": r.ppl_token, "ppl_word": r.ppl_word, "tokens": r.tokens,
                                   "eval_s": round(time.perf_counter() - t2, 1)}
                    row["total_s"] = round(time.perf_counter() - t1, 1)
                    results["rows"].append(row)
                    write_results(args.out, results)
                    print(f"{name} {rt} {prec}: ppl {r.ppl_token:.3f}, {row['bytes_on_disk']} B, experts "
                          f"{row['expert_bytes']} B, valid {row['validation']['passed']} "
                          f"({row['validation']['max_rel_err']:.3g}), {row['total_s']} s", flush=True)
                    if path != onnx_path:
                        for f in (path, path.with_suffix(".bin")):
                            if f.suffix in (".xml", ".bin", ".onnx") and f.exists():
                                f.unlink()
            onnx_path.unlink(missing_ok=True)
            Path(str(onnx_path) + ".data").unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
