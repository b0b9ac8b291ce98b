"""Real-size runtime benchmark (issue 15 item 1): decode tok/s at batch 1 and 8 (KV cache) and prefill at T = 128
and 1024 of dense vs SVD / per-matrix CUR / neuron CUR experts at 50% and 70%, on ONNX Runtime CPU and OpenVINO CPU,
each decode row against its byte roofline. All rows of one shape come from one run.

Models have random weights (speed does not depend on their values) and real layer shapes:

- ``olmoe``: d_model 2048, 16 heads (MHA, head_dim 128, full q/k norm), 64 experts of d_ff 1024, top-8;
- ``mixtral``: d_model 4096, 32 query / 8 KV heads (head_dim 128), 8 experts of d_ff 14336, top-2;

with a small vocabulary (8192) so that the experts dominate the bytes, and as many layers as ``--layers`` says.
Compressed rows are not compressed from the dense weights: their expert matrices are random factors of exactly
the shapes curmoe's compression gives at that ratio (``curmoe.decompose.rank_for_ratio`` for CUR and SVD; ``floor((1
- ratio) * d_ff)`` neurons per expert for neuron CUR with the uniform budget), because decomposing 1.4 G random
parameters
takes longer than measuring them and the values do not change the time. The non-expert weights (embedding,
attention, norms, router, LM head) are the dense model's.

Roofline of a decode step (``curmoe.app.bench.decode_bytes`` generalised to a batch): the non-expert weights (the
embedding table excepted: one row per token), plus per MoE layer the experts the batch touches (expected number
of distinct experts when each of B tokens picks top_k of E uniformly: ``E (1 - (1 - k/E)^B)``) at their average
size, times the bytes per weight read: 4, and 2 for float16 exports on OpenVINO (it keeps f16 constants; counted
as read at 2 bytes). ONNX Runtime's CPU provider casts float16 initializers to float32 at load (no x86 float16
GEMM), so its float16 rows read 4 bytes per weight and are counted so; divided by the measured single-thread copy bandwidth
(``curmoe.app.bench.copy_bandwidth``). Every runtime runs with ``--threads`` intra-op threads (default 1, the
bandwidth is measured with one thread too).

    python benchmarks/runtime_scale.py --shape olmoe --layers 2 --out docs/results/data/runtime_scale.json
    python benchmarks/runtime_scale.py --shape mixtral --layers 1 --out docs/results/data/runtime_scale.json

A second shape merges into the same file (each shape keeps its own provenance). This machine is shared and noisy:
compare rows of one shape (one run), not runs. Processes above 4 GiB must run under
``flock /tmp/curmoe-bigmem.lock`` on the shared machine. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import curmoe
from curmoe.app.bench import copy_bandwidth
from curmoe.decompose import rank_for_ratio
from curmoe.reference import CURLinear, NeuronLinear, SVDLinear
from curmoe.reference.names import expert_prefix

METHODS = ("dense", "svd", "cur", "cur-neuron")


def shape_config(shape: str, layers: int, vocab: int) -> curmoe.ModelConfig:
    """The OLMoE- or Mixtral-shaped config (real layer shapes, small vocabulary)."""
    if shape == "olmoe":
        moe = curmoe.MoEConfig(n_experts=64, d_ff=1024, router=curmoe.RouterConfig(kind="topk", top_k=8,
                                                                                    normalize=False))
        return curmoe.ModelConfig(vocab_size=vocab, d_model=2048, n_layers=layers, n_heads=16, n_kv_heads=16,
                                  max_seq_len=2048, qk_norm="full", moe=moe, eos_token_id=1)
    if shape == "mixtral":
        moe = curmoe.MoEConfig(n_experts=8, d_ff=14336, router=curmoe.RouterConfig(kind="topk", top_k=2))
        return curmoe.ModelConfig(vocab_size=vocab, d_model=4096, n_layers=layers, n_heads=32, n_kv_heads=8,
                                  max_seq_len=2048, moe=moe, eos_token_id=1)
    if shape == "baby":  # a few-second smoke shape for tests (not a real layer shape)
        moe = curmoe.MoEConfig(n_experts=8, d_ff=48, router=curmoe.RouterConfig(kind="topk", top_k=2))
        return curmoe.ModelConfig(vocab_size=vocab, d_model=32, n_layers=layers, n_heads=4, n_kv_heads=2,
                                  max_seq_len=256, moe=moe, eos_token_id=1)
    raise SystemExit(f"--shape {shape!r}: choose olmoe or mixtral")


def _rand(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype = np.float32) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype)


def factor_like(shape: tuple[int, int], method: str, ratio: float, rng: np.random.Generator
                ) -> tuple[Any, dict[str, Any]]:
    """A random (m, n) expert matrix in the exact stored shapes ``method`` gives at ``ratio``, and its factor spec."""
    m, n = shape  # (out, in)
    if method == "svd":
        r = rank_for_ratio(m, n, ratio, "svd")
        return SVDLinear(_rand(rng, (m, r)), _rand(rng, (r, n))), {"kind": "svd", "rank": r}
    if method == "cur":
        r = rank_for_ratio(m, n, ratio, "cur")
        rows = np.sort(rng.choice(m, r, replace=False)).astype(np.int64)
        cols = np.sort(rng.choice(n, r, replace=False)).astype(np.int64)
        return (CURLinear(_rand(rng, (m, r)), _rand(rng, (r, r)), _rand(rng, (r, n)), rows, cols),
                {"kind": "cur", "rank": r, "n_cols": r, "folded": False})
    raise ValueError(method)


def compressed_model(cfg: curmoe.ModelConfig, tensors: dict[str, np.ndarray], shapes: dict[str, tuple[int, int]],
                     method: str, ratio: float, seed: int = 1) -> curmoe.Model:
    """The dense model (``cfg``, non-expert ``tensors``, expert matrix ``shapes`` (out, in) by key) with every routed
    expert replaced by random factors of the shapes ``method`` keeps at ``ratio``."""
    rng = np.random.default_rng(seed)
    experts: dict[str, Any] = {}
    factors: dict[str, dict[str, Any]] = {}
    k = math.floor((1 - ratio) * cfg.moe.d_ff)  # neurons kept per expert (uniform budget)
    for key, shape in shapes.items():
        if method == "cur-neuron":
            J = np.sort(rng.choice(cfg.moe.d_ff, k, replace=False)).astype(np.int64)
            role = "refit" if key.endswith(".down") else "rows"
            W = _rand(rng, (shape[0], k) if role == "refit" else (k, shape[1]))
            experts[key] = NeuronLinear(W, J, role)
            factors[key] = {"kind": "neuron", "n_neurons": k, "role": role}
        else:
            experts[key], factors[key] = factor_like(shape, method, ratio, rng)
    before = sum(a * b for a, b in shapes.values())
    after = sum(m.n_params for m in experts.values())
    comp = {"method": method, "target_ratio": ratio, "ratio_expert_params": 1 - after / before,
            "calibration": "none (random factors of the compressed shapes)"}
    return curmoe.Model(replace(cfg, factors=factors, compression=comp), tensors, experts)


def step_bytes(model: curmoe.Model, batch: int, bytes_per: int) -> int:
    """Weights one decode step of ``batch`` tokens must read (see the module docstring)."""
    c = model.config
    total = sum(v.size for k, v in model.tensors.items() if k != "embed.weight") + batch * c.d_model
    if c.tie_embeddings:
        total += model.tensors["embed.weight"].size
    E, K = c.moe.n_experts, min(c.moe.router.top_k, c.moe.n_experts)
    touched = E * (1 - (1 - K / E) ** batch)  # expected distinct experts per layer under uniform routing
    for l in range(c.n_layers):
        per = [sum(m.n_params for kk, m in model.experts.items() if kk.startswith(expert_prefix(l, e) + "."))
               for e in range(E)]
        total += touched * float(np.mean(per))
    return int(total * bytes_per)


class Runner:
    """Timings through the public Session API: decode(batch, steps) and prefill(T) in seconds."""

    def __init__(self, session: Any, vocab: int, seed: int = 0) -> None:
        from curmoe.runtimes.generate import empty_cache

        self.s, self.empty, self.V = session, empty_cache, vocab
        self.rng = np.random.default_rng(seed)

    def prefill(self, T: int) -> float:
        ids = self.rng.integers(0, self.V, size=(1, T))
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)} | self.empty(self.s, 1)
        t0 = time.perf_counter()
        self.s.run(feeds, ["logits"])
        return time.perf_counter() - t0

    def decode(self, batch: int, steps: int, prompt: int = 16) -> float:
        ids = self.rng.integers(0, self.V, size=(batch, prompt))
        mask = np.ones_like(ids)
        res = self.s.run({"input_ids": ids, "attention_mask": mask} | self.empty(self.s, batch))
        t0 = time.perf_counter()
        for _ in range(steps):
            past = {n.replace("present", "past"): v for n, v in res.items() if n.startswith("present")}
            nxt = np.argmax(res["logits"][:, -1], -1)[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], 1)
            res = self.s.run({"input_ids": nxt, "attention_mask": mask} | past)
        return time.perf_counter() - t0


# (label, model key, runtime, export options, runtime options)
def plan(args: argparse.Namespace) -> list[tuple[str, str, str, dict[str, Any], dict[str, Any]]]:
    keys = ["dense"] + [f"{m}{r}" for m in ("svd", "cur", "cur-neuron") for r in args.ratios]
    rows = []
    for key in keys:
        per_cur = key.startswith("cur") and not key.startswith("cur-neuron")
        # layouts compared: U kept or folded into C (per-matrix CUR), the fused com.microsoft.MoE (dense and
        # neuron-pruned experts, ORT only); fp16 and OpenVINO f16 rows use the fastest fp32 layout (fold_u)
        layouts = [("", {})] if not per_cur else [("", {"fold_u": False}), (" fold_u", {"fold_u": True})]
        best = {"fold_u": True} if per_cur else {}
        ort = list(layouts)
        if (key == "dense" and args.fused_dense) or key.startswith("cur-neuron"):
            ort.append((" fused MoE", {"fused_moe": True}))
        for layout, opts in ort:
            rows.append((f"ORT cpu fp32 {key}{layout}", key, "onnxruntime:cpu", opts, {}))
        if args.fp16:
            rows.append((f"ORT cpu fp16 {key}{' fold_u' if per_cur else ''}", key, "onnxruntime:cpu",
                         best | {"dtype": "float16"}, {}))
        if not args.skip_openvino and (args.openvino_models is None or key in args.openvino_models.split(",")):
            for layout, opts in layouts:
                rows.append((f"OpenVINO cpu f32 {key}{layout}", key, "openvino:cpu", opts, {"precision": "f32"}))
            if args.fp16:
                rows.append((f"OpenVINO cpu f32, f16 weights {key}{' fold_u' if per_cur else ''}", key,
                             "openvino:cpu", best | {"dtype": "float16"}, {"precision": "f32"}))
    return rows


def measure(row: tuple[str, str, str, dict[str, Any], dict[str, Any]], path: Path, info: dict[str, Any],
            args: argparse.Namespace, cfg: curmoe.ModelConfig, bw: float, batches: list[int], prefills: list[int]
            ) -> dict[str, Any]:
    """Open one export on one runtime (public ``curmoe.runtimes.load``) and time it; the session is closed after."""
    from curmoe.runtimes import load

    label, key, runtime, opts, ropts = row
    t1 = time.perf_counter()
    extra = {"low_memory": True} if args.low_memory and runtime.startswith("onnxruntime") else {}
    try:
        sess = load(path, runtime, threads=args.threads, **ropts, **extra)
    except (curmoe.CurmoeError, RuntimeError) as e:  # a runtime that cannot open a layout: recorded, not fatal
        print(f"  {label}: {type(e).__name__}: {e}", file=sys.stderr)
        return {"row": label, "model": key, "runtime": runtime, "export": opts,
                "error": f"{type(e).__name__}: {str(e)[:300]}"}
    # ONNX Runtime's CPU provider has no x86 float16 GEMM: it casts float16 initializers to float32 at load
    # (InsertCastTransformer), so its float16 rows read float32 weights; OpenVINO keeps f16 weights compressed
    bytes_per = 2 if opts.get("dtype") == "float16" and runtime.startswith("openvino") else 4
    out: dict[str, Any] = {"row": label, "model": key, "runtime": runtime, "export": opts, "runtime_options": ropts
                           | extra, "load_s": time.perf_counter() - t1, "bytes_per_weight_read": bytes_per}
    out["bandwidth_row"] = copy_bandwidth()  # the machine is shared: the page uses the best seen in the run
    r = Runner(sess, cfg.vocab_size)
    r.decode(1, 2)  # warm-up
    for b in batches:
        dec = min(r.decode(b, args.steps) for _ in range(args.repeats))
        tps = b * args.steps / dec
        nbytes = info["step_bytes_fp32"][b] * bytes_per // 4
        roof = b * bw / nbytes
        out |= {f"decode_b{b}_tok_s": tps, f"roofline_b{b}_tok_s": roof, f"roofline_b{b}_frac": tps / roof,
                f"step_bytes_b{b}": nbytes}
    for T in prefills:
        n = args.long_repeats if T >= 512 else args.repeats
        out[f"prefill_{T}_ms"] = 1e3 * min(r.prefill(T) for _ in range(n))
    del r, sess
    gc.collect()
    print(f"  {label}: b1 {out['decode_b1_tok_s']:.2f} tok/s ({100 * out['roofline_b1_frac']:.0f}% of "
          f"{out['roofline_b1_tok_s']:.2f}) in {time.perf_counter() - t1:.0f} s", file=sys.stderr)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=("olmoe", "mixtral", "baby"), default="olmoe")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--ratios", default="50,70", help="expert-parameter ratios in percent")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=8, help="decode steps after a 16-token prompt")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prefill", default="128,1024")
    p.add_argument("--repeats", type=int, default=5, help="best of N for every decode / T=128 timing")
    p.add_argument("--long-repeats", type=int, default=1, help="best of N for prefill at T >= 512")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--skip-openvino", action="store_true")
    p.add_argument("--openvino-models", default=None, help="OpenVINO rows for these model keys only (default all)")
    p.add_argument("--fused-dense", action=argparse.BooleanOptionalAction, default=True,
                   help="the dense model through com.microsoft.MoE (a second stacked copy of its experts on disk)")
    p.add_argument("--only", default=None, help="comma-separated model keys to run (e.g. dense,cur-neuron70)")
    p.add_argument("--paired", default=None,
                   help="instead of the table: batch-1 decode of these models (e.g. svd70,cur70,cur-neuron70) "
                        "against dense, alternating in every round (--repeats rounds) on ORT CPU")
    p.add_argument("--dense-experts", type=int, default=None,
                   help="make the dense row from a model with this many experts (same top-k, same layer shapes): a "
                        "batch-1 decode step and a prefill do the same work as with all experts (each token runs "
                        "top-k experts), batch-8 decode does not, so it is not measured. For a dense model that does "
                        "not fit in memory (Mixtral-shaped: 5.6 GB a layer)")
    p.add_argument("--low-memory", action="store_true", help="ORT without weight pre-packing (one weight copy)")
    p.add_argument("--tmp", default=None, help="folder for the exports (default: a temporary folder)")
    p.add_argument("--out", default=None, help="results JSON (merged by shape)")
    return p


def save(args: argparse.Namespace, cfg: curmoe.ModelConfig, bw: float, batches: list[int], prefills: list[int],
         info: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """Merge this shape's run into ``args.out`` (other shapes' runs kept, each with its own provenance)."""
    if not args.out:
        return
    from curmoe.app.results import provenance, read_results, write_results

    run = {"provenance": provenance(args.argv), "shape": args.shape, "config": json.loads(cfg.to_json()),
           "layers": args.layers, "vocab": args.vocab, "threads": args.threads, "decode_steps": args.steps,
           "repeats": args.repeats, "long_repeats": args.long_repeats, "batches": batches,
           "prefill_lengths": prefills, "bandwidth": bw,
           "bandwidth_end": getattr(args, "bandwidth_end", None), "low_memory": args.low_memory, "models": info,
           "rows": results}
    out = Path(args.out)
    data = read_results(out) if out.exists() else {}
    runs = data.get("shapes", {}) | {args.shape: run}
    write_results(out, data | {"provenance": run["provenance"], "shapes": runs,  # other keys ("paired") kept
                               "rows": [dict(r, shape=s) for s, v in runs.items() for r in v["rows"]]})


def paired(args: argparse.Namespace, cfg: curmoe.ModelConfig, tmp: Path) -> dict[str, Any]:
    """Batch-1 decode of each compressed model in each of its ORT fp32 layouts against the dense model: the dense
    session and one compressed session open together and timed alternately in every round, so that the other jobs
    of a shared machine slow both sides of a ratio alike. Returns {"rounds", "steps", "pairs": [{model,
    layout, export, dense_tok_s, tok_s, ratio_median, ratio_best, ratios}]}."""
    from curmoe.exporters import OnnxExportConfig, export
    from curmoe.runtimes import load

    keys = args.paired.split(",")
    small = replace(cfg, moe=replace(cfg.moe, d_ff=1))
    tensors = curmoe.Model.random(small, seed=0, dtype=np.float32).tensors
    shapes = {f"{expert_prefix(l, e)}.{n}": (cfg.d_model, cfg.moe.d_ff) if n == "down" else (cfg.moe.d_ff, cfg.d_model)
              for l in range(cfg.n_layers) for e in range(cfg.moe.n_experts) for n in ("gate", "up", "down")}
    dcfg = replace(cfg, moe=replace(cfg.moe, n_experts=args.dense_experts)) if args.dense_experts else cfg
    layouts: dict[str, list[tuple[str, dict[str, Any]]]] = {r[1]: [] for r in plan(args)}
    for label, key, runtime, exp, _ in plan(args):
        if runtime == "onnxruntime:cpu" and "dtype" not in exp:
            layouts[key].append((label, exp))
    # every export first, one model in memory at a time, then the sessions (memory: never a model beside them)
    paths: dict[str, list[Path]] = {}
    for key in ["dense"] + keys:
        if key == "dense":
            m = curmoe.Model.random(dcfg, seed=0, dtype=np.float32)
            todo = [("dense", {})]
        else:
            method, ratio = key.rstrip("0123456789"), int(key[len(key.rstrip("0123456789")):]) / 100
            m = compressed_model(cfg, tensors, shapes, method, ratio)
            todo = layouts[key]
        paths[key] = [export(m, OnnxExportConfig(**exp, external_data=True), tmp / f"paired-{key}-{i}.onnx")
                      for i, (_, exp) in enumerate(todo)]
        del m
        gc.collect()
    opts = {"low_memory": True} if args.low_memory else {}
    dense = Runner(load(paths["dense"][0], "onnxruntime:cpu", threads=args.threads, **opts), cfg.vocab_size)
    dense.decode(1, 2)
    pairs = []
    for key in keys:
        for (label, exp), p in zip(layouts[key], paths[key]):  # one compressed session open beside the dense one
            comp = Runner(load(p, "onnxruntime:cpu", threads=args.threads, **opts), cfg.vocab_size)
            comp.decode(1, 2)
            td: list[float] = []
            tc: list[float] = []
            for _ in range(args.repeats):  # alternate: each round's two timings see the same machine load
                td.append(dense.decode(1, args.steps))
                tc.append(comp.decode(1, args.steps))
            del comp
            gc.collect()
            p.unlink()
            Path(str(p) + ".data").unlink(missing_ok=True)
            ratios = [d / c for d, c in zip(td, tc)]
            pairs.append({"model": key, "layout": label, "export": exp, "dense_tok_s": args.steps / min(td),
                          "tok_s": args.steps / min(tc), "ratio_best": min(td) / min(tc),
                          "ratio_median": float(np.median(ratios)), "ratios": ratios})
            print(f"  paired {label}: x{pairs[-1]['ratio_median']:.2f} dense (median of {len(ratios)} rounds)",
                  file=sys.stderr)
    return {"rounds": args.repeats, "steps": args.steps, "low_memory": args.low_memory,
            "dense_experts": args.dense_experts, "pairs": pairs}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="curmoe-scale-"))
    # a killed run (SIGTERM) still removes its exports: they are GBs on a shared disk
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return _main(args, argv, tmp)
    finally:
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _main(args: argparse.Namespace, argv: list[str] | None, tmp: Path) -> int:
    args.argv = argv
    args.ratios = [int(r) for r in args.ratios.split(",")]
    from curmoe.exporters import OnnxExportConfig, export

    cfg = shape_config(args.shape, args.layers, args.vocab)
    if args.paired:  # a separate measurement, stored beside the shape's table
        from curmoe.app.results import provenance, read_results, write_results

        res = {"provenance": provenance(argv), "layers": args.layers, "threads": args.threads} | paired(args, cfg, tmp)
        if args.out:
            out = Path(args.out)
            data = read_results(out) if out.exists() else {"provenance": res["provenance"], "shapes": {}, "rows": []}
            data["paired"] = data.get("paired", {}) | {args.shape: res}
            write_results(out, data)
        return 0
    rows = plan(args)
    if args.only:
        keep = set(args.only.split(","))
        rows = [r for r in rows if r[1] in keep]
    batches = [int(b) for b in args.batches.split(",")]
    prefills = [int(t) for t in args.prefill.split(",")]
    tmp.mkdir(parents=True, exist_ok=True)
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e9:.2f} GB/s (1 thread)", file=sys.stderr)

    # One model at a time: build it, export its layouts, drop it, measure its rows, delete its exports (a dense
    # 2-layer OLMoE-shaped export is 3.6 GB; all of them at once would not fit the shared disk).
    # The compressed models take the non-expert weights of a model whose experts have one neuron (cheap to make;
    # the same shapes elsewhere) and random factors; the dense model is made only for the dense row.
    small = replace(cfg, moe=replace(cfg.moe, d_ff=1))
    tensors = curmoe.Model.random(small, seed=0, dtype=np.float32).tensors
    shapes = {f"{expert_prefix(l, e)}.{n}": (cfg.d_model, cfg.moe.d_ff) if n == "down" else (cfg.moe.d_ff, cfg.d_model)
              for l in range(cfg.n_layers) for e in range(cfg.moe.n_experts) for n in ("gate", "up", "down")}
    info: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    for key in dict.fromkeys(r[1] for r in rows):
        if key == "dense":
            dcfg = cfg
            if args.dense_experts:  # a surrogate with fewer experts, same top-k (see --dense-experts)
                dcfg = replace(cfg, moe=replace(cfg.moe, n_experts=args.dense_experts))
            t0 = time.perf_counter()
            m = curmoe.Model.random(dcfg, seed=0, dtype=np.float32)
            print(f"random model {m!r} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        else:
            method, ratio = key.rstrip("0123456789"), int(key[len(key.rstrip("0123456789")):]) / 100
            m = compressed_model(cfg, tensors, shapes, method, ratio)
        info[key] = {"expert_params": sum(x.n_params for x in m.experts.values()), "params": m.n_params(),
                     "ratio_expert_params": (m.config.compression or {}).get("ratio_expert_params", 0.0),
                     "step_bytes_fp32": {b: step_bytes(m, b, 4) for b in batches}}
        paths: dict[str, Path] = {}
        for label, k, _, opts, _ in rows:
            tag = json.dumps(opts, sort_keys=True)
            if k == key and tag not in paths:
                t1 = time.perf_counter()
                # weights streamed to an external data file: the export never holds a second copy of them
                paths[tag] = export(m, OnnxExportConfig(**opts, external_data=True), tmp / f"{key}-{len(paths)}.onnx")
                print(f"  exported {key} {tag} in {time.perf_counter() - t1:.0f} s", file=sys.stderr)
        del m
        gc.collect()
        for row in rows:
            if row[1] == key:
                # a surrogate dense model reads what the real one reads at batch 1 only (see --dense-experts)
                bs = [1] if key == "dense" and args.dense_experts else batches
                results.append(measure(row, paths[json.dumps(row[3], sort_keys=True)], info[key], args, cfg, bw,
                                       bs, prefills))
                if key == "dense" and args.dense_experts:
                    results[-1]["dense_experts"] = args.dense_experts
        for p in paths.values():
            p.unlink(missing_ok=True)
            Path(str(p) + ".data").unlink(missing_ok=True)
        save(args, cfg, bw, batches, prefills, info, results)  # after every model: a cut-off run keeps its rows
    args.bandwidth_end = copy_bandwidth()  # the machine is shared: how much the bandwidth moved during the run
    save(args, cfg, bw, batches, prefills, info, results)
    for r in results:
        print(json.dumps(r), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
