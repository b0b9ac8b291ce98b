"""Layout micro-benchmark for the ONNX export (issue 15 item 2): the candidate layouts of one expert linear map and
of one MoE layer's routed experts, timed on ONNX Runtime CPU at OLMoE's shapes, side by side in one run.

Rows (each a tiny ONNX graph built here, weights random: time does not depend on values):

- ``linear``: y = x W.T for 16 different W (1024, 2048) per run (134 MB, beyond the caches) as ``MatMul(x, W.T)`` (what the exporter writes: the transpose of an
  initializer is folded at load) against ``Gemm(x, W, transB=1)``, with ORT weight pre-packing on and off, for
  M = 1, 8, 128 rows.
- ``experts``: the top-8 of 64 OLMoE experts' up maps for one token, CUR-70% folded factors R (r, 2048) and
  C (1024, r): (a) per-expert MatMul chains (the exporter's sparse dispatch: 64 branches, the 56 unrouted ones
  with zero rows) against (b) the factors stacked (E, ...) with one Gather of the active experts' factors and one
  batched MatMul per factor. Each run routes the token to a fresh random top-8, as decoding does.

    python benchmarks/onnx_layouts.py --out docs/results/data/onnx_layouts.json

Not a test; the machine is shared: compare rows of one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from curmoe.decompose import rank_for_ratio


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> bytes:
    g = helper.make_graph(nodes, "layout", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def _session(proto: bytes, threads: int, prepack: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(proto, so, providers=["CPUExecutionProvider"])


def _time(sess: ort.InferenceSession, feeds: list[dict[str, np.ndarray]], repeats: int) -> float:
    """Best time of ``repeats`` runs, cycling through ``feeds`` (fresh routing each run: no weights stay cached)."""
    sess.run(None, feeds[0])
    best = np.inf
    for i in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds[i % len(feeds)])
        best = min(best, time.perf_counter() - t0)
    return best


def linear_rows(threads: int, repeats: int, rng: np.random.Generator, bank: int = 16) -> list[dict[str, Any]]:
    """``bank`` different (1024, 2048) weights per run (134 MB: more than the last-level cache), as decode reads."""
    m, n = 1024, 2048  # OLMoE expert up: (d_ff, d_model)
    Ws = [(rng.standard_normal((m, n)) * 0.02).astype(np.float32) for _ in range(bank)]
    x_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", n])
    y_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", bank * m])
    inits = [numpy_helper.from_array(W, f"W{i}") for i, W in enumerate(Ws)]
    mm = [helper.make_node("Transpose", [f"W{i}"], [f"Wt{i}"], perm=[1, 0]) for i in range(bank)]
    mm += [helper.make_node("MatMul", ["x", f"Wt{i}"], [f"y{i}"]) for i in range(bank)]
    gm = [helper.make_node("Gemm", ["x", f"W{i}"], [f"y{i}"], transB=1) for i in range(bank)]
    cat = helper.make_node("Concat", [f"y{i}" for i in range(bank)], ["y"], axis=1)
    matmul = _model(mm + [cat], [x_in], [y_out], inits)
    gemm = _model(gm + [cat], [x_in], [y_out], inits)
    nbytes = sum(W.nbytes for W in Ws)
    rows = []
    for M in (1, 8, 128):
        feeds = [{"x": rng.standard_normal((M, n)).astype(np.float32)}]
        for prepack in (True, False):
            t = {name: _time(_session(p, threads, prepack), feeds, repeats) for name, p in
                 (("MatMul", matmul), ("Gemm transB=1", gemm))}
            for name, s in t.items():
                rows.append({"bench": "linear", "layout": name, "prepack": prepack, "M": M, "ms": 1e3 * s,
                             "GB_s": nbytes / s / 1e9, "x_matmul": t["MatMul"] / s})
    return rows


def expert_rows(threads: int, repeats: int, rng: np.random.Generator, ratio: float = 0.7) -> list[dict[str, Any]]:
    E, k, d, f = 64, 8, 2048, 1024
    r = rank_for_ratio(f, d, ratio, "cur")
    R = (rng.standard_normal((E, r, d)) * 0.02).astype(np.float32)  # per expert (r, d_model)
    C = (rng.standard_normal((E, f, r)) * 0.02).astype(np.float32)  # per expert (d_ff, r), U folded in
    x = rng.standard_normal((1, d)).astype(np.float32)
    actives = [np.sort(rng.choice(E, k, replace=False)) for _ in range(repeats)]  # fresh routing every run
    # (a) per-expert chains: Split the token rows by expert counts (zero rows for unrouted experts), 2 MatMuls each
    nodes, inits, outs = [], [], []
    xs = helper.make_tensor_value_info("xs", TensorProto.FLOAT, ["M", d])  # the k routed copies of the token
    cnt = helper.make_tensor_value_info("counts", TensorProto.INT64, [E])
    nodes.append(helper.make_node("Split", ["xs", "counts"], [f"x{e}" for e in range(E)], axis=0))
    for e in range(E):
        inits += [numpy_helper.from_array(np.ascontiguousarray(R[e].T), f"Rt{e}"),
                  numpy_helper.from_array(np.ascontiguousarray(C[e].T), f"Ct{e}")]
        nodes += [helper.make_node("MatMul", [f"x{e}", f"Rt{e}"], [f"h{e}"]),
                  helper.make_node("MatMul", [f"h{e}", f"Ct{e}"], [f"y{e}"])]
        outs.append(f"y{e}")
    nodes.append(helper.make_node("Concat", outs, ["y"], axis=0))
    y_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", f])
    per_expert = _model(nodes, [xs, cnt], [y_out], inits)
    # (b) stacked: Gather the active experts' factors, batched MatMul (k, 1, d) @ (k, d, r) @ (k, r, f)
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["k"])
    xk = helper.make_tensor_value_info("xk", TensorProto.FLOAT, ["k", 1, d])
    yk = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["k", 1, f])
    stacked = _model([helper.make_node("Gather", ["Rt", "idx"], ["Rg"], axis=0),
                      helper.make_node("Gather", ["Ct", "idx"], ["Cg"], axis=0),
                      helper.make_node("MatMul", ["xk", "Rg"], ["h"]),
                      helper.make_node("MatMul", ["h", "Cg"], ["y"])], [idx, xk], [yk],
                     [numpy_helper.from_array(np.ascontiguousarray(R.transpose(0, 2, 1)), "Rt"),
                      numpy_helper.from_array(np.ascontiguousarray(C.transpose(0, 2, 1)), "Ct")])
    nbytes = k * (R[0].nbytes + C[0].nbytes)  # the active experts' factors
    feeds_a = [{"xs": np.repeat(x, k, 0), "counts": np.isin(np.arange(E), a).astype(np.int64)} for a in actives]
    feeds_b = [{"idx": a.astype(np.int64), "xk": np.repeat(x, k, 0)[:, None, :]} for a in actives]
    rows = []
    for prepack in (True, False):
        ta = _time(_session(per_expert, threads, prepack), feeds_a, repeats)
        tb = _time(_session(stacked, threads, prepack), feeds_b, repeats)
        for name, s in (("per-expert MatMul chains (sparse dispatch)", ta), ("stacked factors, Gather + batched MatMul", tb)):
            rows.append({"bench": "experts", "layout": name, "prepack": prepack, "M": 1, "rank": r, "ms": 1e3 * s,
                         "GB_s": nbytes / s / 1e9, "x_per_expert": ta / s})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from curmoe.app.bench import copy_bandwidth

    rng = np.random.default_rng(0)
    bw = copy_bandwidth()
    rows = linear_rows(args.threads, args.repeats, rng) + expert_rows(args.threads, args.repeats, rng)
    for r in rows:
        print(r, file=sys.stderr)
    if args.out:
        from curmoe.app.results import provenance, write_results

        write_results(args.out, {"provenance": provenance(argv), "threads": args.threads, "repeats": args.repeats,
                                 "onnxruntime": ort.__version__, "bandwidth": bw, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
