"""The quantisation results page (docs/results/quantize.md) from docs/results/data/quantize.json
(benchmarks/quantize.py): the table a user reads to pick "CUR 50% + int8" against "dense int4".

:func:`quantize_page` formats the stored rows; it measures nothing. Whether a quantised row is within budget is
judged here again from its stored measures with the budgets of :mod:`curmoe.runtimes.quantized` as they are now
(so a page never shows a verdict of an older budget).
"""

from __future__ import annotations

from typing import Any

from curmoe.app.report_tables import source
from curmoe.app.report_tables import table as _table

__all__ = ["QUANTIZE_SOURCE", "quantize_page", "quantize_targets", "within_budget"]

QUANTIZE_SOURCE = ("quantize.json", ("python benchmarks/quantize.py --threads 1 --max-tokens 65536 "
                                    "--out docs/results/data/quantize.json"))
TARGET_BYTES, TARGET_PPL = 0.10, 0.02  # issue 15: 70% factorised + int8 <= 0.1x dense fp32 bytes, ppl within 2%
_RT = {"onnxruntime": "ORT", "openvino": "OpenVINO"}


def within_budget(row: dict[str, Any]) -> tuple[bool, list[str]]:
    """(passed, failures) of a stored row: fp32 rows as validated (float32 tolerance), int rows against
    :data:`curmoe.runtimes.quantized.QUANT_BUDGETS`."""
    from curmoe.runtimes.quantized import QUANT_BUDGETS

    v = row["validation"]
    if row["precision"] == "fp32":
        return bool(v["passed"]), list(v.get("failures", []))
    b = QUANT_BUDGETS[int(row["precision"][3:])]
    fails = []
    if not v["max_rel_err"] <= b.max_rel_err:
        fails.append(f"max_rel_err {v['max_rel_err']:.3g} > {b.max_rel_err:g}")
    if v["routing_agreement"] is not None and not v["routing_agreement"] >= b.routing_agreement:
        fails.append(f"routing agreement {v['routing_agreement']:.3f} < {b.routing_agreement:g}")
    if v.get("hard_flips"):
        fails.append(f"{v['hard_flips']} hard routing flips")
    if not v["ppl_rel_diff"] <= b.ppl_rel:
        fails.append(f"ppl ratio - 1 {v['ppl_rel_diff']:.3g} > {b.ppl_rel:g}")
    if not v["top1_agreement"] >= b.top1_agreement:
        fails.append(f"top-1 agreement {v['top1_agreement']:.3f} < {b.top1_agreement:g}")
    return not fails, fails


def _mb(x: float) -> str:
    return f"{x / 1e6:.2f}"


def _rows(data: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["variant"], r["runtime"], r["precision"]): r for r in data["rows"]}


def quantize_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's quantisation target, per 70% method and runtime: expert bytes at int8 on the real-size shapes
    <= 0.1x dense fp32 (total bytes reported beside), and shipped-model test ppl within 2% of the fp32 model."""
    rows, out = _rows(data), []
    real = {(r["method"], r["precision"], r["runtime"]): r for r in data.get("real_size", {}).get("rows", [])}
    pairs = [("cur-neuron global 70%", "cur-neuron 70%"), ("cur-deim whitened 70%", "cur 70%"),
             ("svd-llm 70%", "svd 70%")]
    for variant, shape_name in pairs:
        for rt in ("onnxruntime", "openvino"):
            q, f = rows.get((variant, rt, "int8")), rows.get((variant, rt, "fp32"))
            rs = real.get((shape_name, "int8", rt))
            if q is None or f is None or rs is None:
                continue
            ppl = q["test"]["ppl_token"] / f["test"]["ppl_token"] - 1
            out.append({"variant": variant, "runtime": rt, "expert_bytes_ratio": rs["expert_bytes_vs_dense_fp32"],
                        "total_bytes_ratio": rs["total_bytes_vs_dense_fp32"], "ppl_vs_fp32": ppl,
                        "total_all_ratio": rs.get("total_bytes_what_all_vs_dense_fp32", float("nan")),
                        "met_bytes": rs["expert_bytes_vs_dense_fp32"] <= TARGET_BYTES,
                        "met_ppl": abs(ppl) <= TARGET_PPL})
    return out


def quantize_page(data: dict[str, Any]) -> str:
    """The Markdown page."""
    from curmoe.runtimes.quantized import QUANT_BUDGETS

    rows = _rows(data)
    variants = list(dict.fromkeys(r["variant"] for r in data["rows"]))
    dense = rows.get(("dense", "onnxruntime", "fp32"))
    dense_ppl = dense["test"]["ppl_token"] if dense else None
    dense_eb = dense["expert_bytes"] if dense else None
    lines = [
        "# Weight quantisation stacked on factorisation",
        "",
        source(data, QUANTIZE_SOURCE[0]),
        "",
        (f"Model `{data['model']}`; compressed with calibration {data['calib']}; perplexity on WikiText-2 "
        f"{data['split']}, {data['eval_tokens']} tokens (the protocol of [compression](compression.md)). Quantised: "
        f"the {data['what']} matrices only (attention, router, embedding and LM head stay float32), weight-only, "
        f"round to nearest, asymmetric, block/group {data['block_size']} along K (smaller where a factor's K "
        "is small): ONNX Runtime's `MatMulNBitsQuantizer` (-> `MatMulNBits`) and OpenVINO NNCF "
        "`compress_weights` (int8 per output channel; int4 per group). `curmoe quantize` makes each file."),
        "",
        "## Which to pick",
        "",
        ("Bytes: the ONNX Runtime file (OpenVINO's differ by its float16 scales, in the next tables). Expert bytes: "
        "every constant an expert MatMul reads (weights, scales, zero points), counted from the file."),
        "",
    ]
    body = []
    for v in variants:
        for prec in ("fp32", "int8", "int4"):
            o, ov = rows.get((v, "onnxruntime", prec)), rows.get((v, "openvino", prec))
            if o is None and ov is None:
                continue
            base = o or ov
            ppl_o = o["test"]["ppl_token"] if o else None
            ppl_v = ov["test"]["ppl_token"] if ov else None
            f32 = rows.get((v, "onnxruntime", "fp32"))
            cells = [f"{v} + {prec}",
                     f"{ppl_o:.2f}" if ppl_o else "-",
                     f"{ppl_o / dense_ppl:.3f}x" if ppl_o and dense_ppl else "-",
                     f"{(ppl_o / f32['test']['ppl_token'] - 1) * 100:+.2f}%" if ppl_o and f32 else "-",
                     f"{ppl_v:.2f}" if ppl_v else "-",
                     _mb(base["bytes_on_disk"]), _mb(base["expert_bytes"]),
                     f"{base['expert_bytes'] / dense_eb:.3f}x" if dense_eb else "-",
                     " / ".join(("yes" if within_budget(r)[0] else "**no**") if r else "-" for r in (o, ov))]
            body.append(cells)
    lines += [_table(["model + weights", "ORT test ppl", "/ dense fp32", "vs its fp32", "OpenVINO test ppl",
                      "file MB", "expert MB", "expert bytes / dense fp32", "validated (ORT / OV)"], body), ""]
    lines += ["## Validation against the float64 reference", "",
              "Each file against the NumPy float64 reference of the (compressed) model it was exported from "
              "(`curmoe.runtimes.quantized.validate_quantized`; fp32 rows: `curmoe.runtimes.validate` with the "
              "float32 tolerance). max rel err: max |z - z_ref| / max |z_ref| over sequences whose routing agreed "
              "(all sequences: in brackets); routing: share of (token, layer) decisions with the reference's "
              "experts; ppl: |ppl / ppl_ref - 1| on the 64-token sample; top-1: arg-max agreement on 4 x 64 random "
              "tokens. Budgets: " + "; ".join(f"int{b}: max rel err <= {q.max_rel_err:g}, routing >= "
                                               f"{q.routing_agreement:g}, ppl <= {q.ppl_rel:g}, top-1 >= "
                                               f"{q.top1_agreement:g}" for b, q in QUANT_BUDGETS.items()) + ".", ""]
    vb = []
    for r in data["rows"]:
        v = r["validation"]
        ok, fails = within_budget(r)
        vb.append([r["variant"], _RT[r["runtime"]], r["precision"],
                   f"{v['max_rel_err']:.2g} ({v['max_rel_err_all']:.2g})",
                   f"{v['routing_agreement']:.3f}" if v["routing_agreement"] is not None else "-",
                   f"{v['ppl_rel_diff']:.2g}", f"{v['top1_agreement']:.3f}" if "top1_agreement" in v else "-",
                   "yes" if ok else "**no**: " + "; ".join(fails), _mb(r["bytes_on_disk"]), _mb(r["expert_bytes"])])
    lines += [_table(["model", "runtime", "weights", "max rel err (all)", "routing", "ppl", "top-1", "within budget",
                      "file MB", "expert MB"], vb), ""]
    real = data.get("real_size")
    if real:
        lines += ["## Real-size shapes (OLMoE)", "",
                  (f"Shapes {real['shapes']}; bytes {real['counted']}. Ranks at 70%: {real['ranks']} (neuron CUR "
                  "with the same k in every expert; the global budget moves k between experts, same total). "
                  "Attention, router, norms, embedding and LM head stay float32 (they are the 'total' column's rest)."),
                  ""]
        rr = [[r["method"], r["precision"], _RT[r["runtime"]], f"{r['expert_bytes'] / 1e9:.3f}",
               f"{r['expert_bytes_vs_dense_fp32']:.3f}x", f"{r['total_bytes'] / 1e9:.3f}",
               f"{r['total_bytes_vs_dense_fp32']:.3f}x",
               f"{r['total_bytes_what_all_vs_dense_fp32']:.3f}x" if "total_bytes_what_all_vs_dense_fp32" in r else "-"]
              for r in real["rows"]]
        lines += [_table(["method", "weights", "runtime", "expert GB", "expert / dense fp32", "total GB",
                          "total / dense fp32", "total / dense fp32 with --what all"], rr), "",
                  ("With `--what all` attention and the LM head are quantised too (the embedding, router and norms "
                   "stay float32); counted from shapes only (the shipped-model runs quantise the experts)."), ""]
    tg = quantize_targets(data)
    if tg:
        lines += ["## Target (issue 15)", "",
                  (f"70% factorised + int8 factors: expert bytes <= {TARGET_BYTES:g}x the dense fp32 expert bytes "
                  f"(real-size shapes), with test ppl within {TARGET_PPL:.0%} of the fp32 factorised model (shipped "
                  "model)."), ""]
        lines += [_table(["method", "runtime", "expert bytes / dense fp32", "total bytes / dense fp32 (--what all)",
                          "ppl vs fp32", "bytes (experts)", "ppl"],
                         [[t["variant"], _RT[t["runtime"]], f"{t['expert_bytes_ratio']:.3f}x",
                           f"{t['total_bytes_ratio']:.3f}x ({t['total_all_ratio']:.3f}x)",
                           f"{t['ppl_vs_fp32'] * 100:+.2f}%",
                           "**met**" if t["met_bytes"] else "**missed**",
                           "**met**" if t["met_ppl"] else "**missed**"] for t in tg]), ""]
    return "\n".join(lines)
