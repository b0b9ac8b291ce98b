"""OpenVINO CPU against ONNX Runtime CPU on the same ONNX file, side by side in one run (issue 15 item 3).

(Not named openvino.py: run as a script, that name would shadow the openvino package.)

For each model (the shipped wt2-moe-8x dense and CUR 70%, and a random 1-layer OLMoE-shaped model: d_model 2048,
d_ff 1024, 64 experts, top-8, vocab 8192) it measures decode tokens/s at batch 1 with the KV cache, and prefill,
for these rows, all with the same thread count:

- ``ORT cpu``: ONNX Runtime, the baseline (sparse dispatch, like every OpenVINO row unless it says dense);
- ``OV infer(list)``: OpenVINO through ``InferRequest.infer([arrays])``, what the adapter did before;
- ``OV``: the adapter (``curmoe.runtimes.load(f, "openvino:cpu")``): zero-copy feeds, only the outputs asked for;
- ``OV no CPU pinning``: the same with ``ENABLE_CPU_PINNING=False`` (the CPU plugin's default hint is already
  LATENCY: one stream, threads pinned; ORT does not pin);
- ``OV stateful``: ``load(..., stateful=True)``: the KV cache inside the compiled model (f32, then bf16 where asked);
- ``OV stateful dense``: the same on the dense-dispatch export (static expert shapes, every expert computed).

Small models keep every session open and interleave the rows in rounds (best of all rounds); the large one runs
each row in its own process (best of 2 inside), the rows again in rounds, and records each row's peak RSS. Each model also gets a per-operator profile of a decode step: OpenVINO's ``PERF_COUNT``
(``InferRequest.profiling_info``) and ONNX Runtime's profiler, summed by operator type, and the step time with the
past length fixed (no shape change between calls) against growing.

    python benchmarks/openvino_speed.py --threads 1 --out docs/results/data/openvino_speed.json
    flock /tmp/curmoe-bigmem.lock python benchmarks/openvino_speed.py --threads 1 --models olmoe \
        --out docs/results/data/openvino_speed_olmoe.json

The OLMoE model runs under ``flock /tmp/curmoe-bigmem.lock`` (1.6 GB of weights: up to ~4 GB with one session).
This machine is shared and noisy: compare rows of one run. Not a test.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import curmoe
from curmoe.app.bench import Runner, copy_bandwidth, decode_bytes

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("wt2-dense", "wt2-cur70", "olmoe")


def olmoe_config(n_layers: int = 1) -> curmoe.ModelConfig:
    """OLMoE's layer shape (as benchmarks/memory.py), one layer by default: 1.6 GB of float32 weights."""
    router = curmoe.RouterConfig(kind="topk", top_k=8, normalize=False)
    moe = curmoe.MoEConfig(n_experts=64, d_ff=1024, router=router)
    return curmoe.ModelConfig(vocab_size=8192, d_model=2048, n_layers=n_layers, n_heads=16, n_kv_heads=16,
                              max_seq_len=1024, qk_norm="full", moe=moe, eos_token_id=1)


class InferListRunner(Runner):
    """The adapter's former ``run``: ``InferRequest.infer([arrays])`` (copies feeds and every output)."""

    def __init__(self, path: Path, threads: int) -> None:
        import openvino as ov

        self.c = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                             "INFERENCE_NUM_THREADS": threads})
        self.req = self.c.create_infer_request()
        self.names = [i.get_any_name() for i in self.c.inputs]
        self.out_names = [next((n for n in sorted(o.get_names()) if n == "logits" or n.startswith("present.")),
                               o.get_any_name()) for o in self.c.outputs]
        from curmoe.runtimes.generate import empty_cache

        self.s, self.empty = self, empty_cache
        shapes = {i.get_any_name(): i.get_partial_shape() for i in self.c.inputs}
        self._cache = {n: (s[1].get_length(), s[3].get_length()) for n, s in shapes.items() if n.startswith("past.")}

    # the two Session members Runner and empty_cache use
    @property
    def inputs(self) -> list[Any]:
        from curmoe.runtimes.base import IOSpec

        return [IOSpec(n, (None, kv, None, hd), np.dtype(np.float32)) for n, (kv, hd) in self._cache.items()]

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        res = self.req.infer([feeds[n] for n in self.names])
        out = {n: res[p] for n, p in zip(self.out_names, self.c.outputs)}
        return {n: out[n] for n in (outputs or self.out_names)}


def make_models(which: list[str], tmp: Path, calib_tokens: int) -> dict[str, tuple[Path, Path, int, int]]:
    """{model key: (sparse .onnx, dense .onnx or None, decode bytes, vocab)}; each model dropped after export."""
    from curmoe.exporters import OnnxExportConfig, export

    out: dict[str, Any] = {}
    shipped = ROOT / "models" / "wt2-moe-8x"
    for key in which:
        if key == "wt2-dense":
            m = curmoe.load(shipped)
        elif key == "wt2-cur70":
            from curmoe.app.calibdata import calibration_ids

            m = curmoe.load(shipped)
            try:
                calib = calibration_ids("wikitext2:train", m, n_tokens=calib_tokens)
            except Exception as e:  # no data here: random ids are fine for timing
                print(f"(calibration on random tokens: {e})", file=sys.stderr)
                calib = np.random.default_rng(0).integers(0, m.config.vocab_size, size=(calib_tokens // 256, 256))
            m = curmoe.compress(m, curmoe.CURConfig(ratio=0.7, activation_aware=True), calib_ids=calib, progress=False)
        else:
            m = curmoe.Model.random(olmoe_config(), seed=0, dtype=np.float32)
        sparse = export(m, OnnxExportConfig(dispatch="sparse", external_data=key == "olmoe"), tmp / f"{key}-sparse.onnx")
        dense = None if key == "olmoe" else export(m, OnnxExportConfig(dispatch="dense"), tmp / f"{key}-dense.onnx")
        out[key] = (sparse, dense, decode_bytes(m), m.config.vocab_size, repr(m))
        del m
        gc.collect()
        print(f"  exported {key}", file=sys.stderr)
    return out


def rows_for(key: str, sparse: Path, dense: Path | None, threads: int, bf16: bool) -> dict[str, Any]:
    """{row label: a function that opens the session and returns its Runner}."""
    from curmoe.runtimes import load

    ov = lambda p, **k: (lambda: Runner(load(p, "openvino:cpu", threads=threads, **k)))  # noqa: E731
    rows = {
        "ORT cpu": lambda: Runner(load(sparse, "onnxruntime:cpu", threads=threads)),
        "OV infer(list)": lambda: InferListRunner(sparse, threads),
        "OV": ov(sparse),
        "OV no CPU pinning": ov(sparse, properties={"ENABLE_CPU_PINNING": False}),
        "OV stateful": ov(sparse, stateful=True),
    }
    if bf16:
        rows["OV stateful bf16"] = ov(sparse, stateful=True, precision="bf16")
    if dense is not None:
        rows["OV stateful dense dispatch"] = ov(dense, stateful=True)
        rows["ORT cpu dense dispatch"] = lambda: Runner(load(dense, "onnxruntime:cpu", threads=threads))
    return rows


def profile_ov(path: Path, threads: int, prompt: np.ndarray, steps: int, stateful: bool) -> dict[str, Any]:
    """OpenVINO PERF_COUNT of `steps` decode steps: microseconds per step by runtime layer type, node counts."""
    from curmoe.runtimes import load

    s = load(path, "openvino:cpu", threads=threads, stateful=stateful, properties={"PERF_COUNT": True})
    r = Runner(s)
    res = s.run({"input_ids": prompt, "attention_mask": np.ones_like(prompt)} | r.empty(s, 1))
    past = {n.replace("present", "past"): v for n, v in res.items() if n.startswith("present")}
    mask = np.ones_like(prompt)
    by_type: collections.Counter[str] = collections.Counter()
    executed = 0
    for _ in range(steps):
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], 1)
        res = s.run({"input_ids": prompt[:, :1], "attention_mask": mask} | past)
        past = {n.replace("present", "past"): v for n, v in res.items() if n.startswith("present")}
        for pi in s.profiling_info():
            if pi.status == pi.Status.EXECUTED:
                by_type[pi.node_type] += pi.real_time.total_seconds() * 1e6 / steps
                executed += 1
    return {"us_per_step_by_type": dict(by_type.most_common()), "us_per_step": sum(by_type.values()),
            "executed_nodes_per_step": executed / steps}


def profile_ort(path: Path, threads: int, prompt: np.ndarray, steps: int, tmp: Path) -> dict[str, Any]:
    """ONNX Runtime's profiler over `steps` decode steps: microseconds per step by operator type."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / "ort-profile")
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    feeds = {"input_ids": prompt, "attention_mask": np.ones_like(prompt)}
    for i in s.get_inputs():
        if i.name.startswith("past."):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    out = dict(zip(names, s.run(None, feeds)))
    mask = np.ones_like(prompt)
    for _ in range(steps):
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], 1)
        feeds = {"input_ids": prompt[:, :1], "attention_mask": mask}
        feeds |= {n.replace("present", "past"): v for n, v in out.items() if n.startswith("present")}
        out = dict(zip(names, s.run(None, feeds)))
    events = json.loads(Path(s.end_profiling()).read_text())
    by_type: collections.Counter[str] = collections.Counter()
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    # the last `steps` runs are the decode steps: keep the node events inside them
    t0 = runs[-steps]["ts"] if len(runs) >= steps else 0
    n_exec = 0
    for e in nodes:
        if e["ts"] >= t0:
            by_type[e["args"]["op_name"]] += e["dur"] / steps
            n_exec += 1
    return {"us_per_step_by_type": dict(by_type.most_common()), "us_per_step": sum(by_type.values()),
            "executed_nodes_per_step": n_exec / steps,
            "run_us_per_step": float(np.mean([e["dur"] for e in runs[-steps:]]))}


def fixed_vs_growing(make: Any, prompt: np.ndarray, steps: int) -> dict[str, float]:
    """Microseconds per decode step when every call has the same shapes (past length fixed at the prompt's) and
    when the past grows by one per step (real decoding): what shape changes cost."""
    r = make()
    s = r.s
    res = s.run({"input_ids": prompt, "attention_mask": np.ones_like(prompt)} | r.empty(s, 1))
    past = {n.replace("present", "past"): v for n, v in res.items() if n.startswith("present")}
    feeds = {"input_ids": prompt[:, :1], "attention_mask": np.ones((1, prompt.shape[1] + 1), np.int64)} | past
    s.run(feeds, ["logits"])
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            s.run(feeds, ["logits"])
        best = min(best, time.perf_counter() - t0)
    grow = min(r.decode(prompt, steps) for _ in range(3))
    return {"fixed_us": 1e6 * best / steps, "growing_us": 1e6 * grow / steps}


def fc_micro(threads: int, tmp: Path, shapes: tuple[tuple[int, int], ...] = ((256, 256), (256, 8192), (2048, 1024),
                                                                           (2048, 8192))) -> list[dict[str, Any]]:
    """One MatMul (1, K) @ (K, N) with a float32 constant weight, alone in a graph: microseconds per call on ORT
    (``InferenceSession.run``) and OpenVINO through ``infer(list)``, zero-copy ``set_tensor`` + ``infer()`` + copy
    out, and a bare ``infer()`` (input bound once): the Python call cost apart from the FullyConnected kernel."""
    import onnx
    import onnxruntime as ort
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    def best_us(fn: Any, n: int = 100) -> float:
        for _ in range(10):
            fn()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - t0) / n)
        return 1e6 * best

    out = []
    for K, N in shapes:
        W = np.random.default_rng(0).standard_normal((K, N)).astype(np.float32)
        g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])],
                              [numpy_helper.from_array(W, "W")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
        m.ir_version = 9
        path = tmp / f"mm_{K}_{N}.onnx"
        onnx.save(m, str(path))
        x = np.random.default_rng(1).standard_normal((1, K)).astype(np.float32)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        c = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                        "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True})
        r = c.create_infer_request()
        row = {"K": K, "N": N, "weight_mb": W.nbytes / 1e6, "ort_run_us": best_us(lambda: s.run(None, {"x": x})),
               "ov_infer_list_us": best_us(lambda: r.infer([x])),
               "ov_zero_copy_us": best_us(lambda: (r.set_input_tensor(ov.Tensor(x, shared_memory=True)), r.infer(),
                                                   r.get_output_tensor().data.copy()))}
        r.set_input_tensor(ov.Tensor(x))
        row["ov_bare_infer_us"] = best_us(lambda: r.infer())
        row["ov_exec_type"] = [pi.exec_type for pi in r.profiling_info if pi.node_type == "FullyConnected"]
        out.append(row)
        print(f"  MatMul ({K}, {N}): " + ", ".join(f"{k} {v:.0f}" for k, v in row.items() if k.endswith("_us")),
              file=sys.stderr)
        del s, c, r
    return out


def _row_in_child(label: str, sparse: Path, dense: Path | None, args: argparse.Namespace, steps: int,
                  tmp: Path) -> dict[str, float]:
    """Measure one row in a fresh Python process (--one-row); returns its seconds and peak RSS."""
    import os
    import subprocess

    out = tmp / "row.json"
    cmd = [sys.executable, __file__, "--one-row", label, "--onnx", str(sparse), "--onnx-dense", str(dense or ""),
           "--threads", str(args.threads), "--steps", str(steps), "--repeats", "2",
           "--prefill", str(args.prefill), "--row-out", str(out)] + (["--bf16"] if args.bf16 else [])
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"row {label!r} failed (status {status}): {' '.join(cmd)}")
    return json.loads(out.read_text()) | {"peak_rss_gb": usage.ru_maxrss / 2**20}  # ru_maxrss: KiB on Linux


def one_row(args: argparse.Namespace) -> None:
    """The --one-row child: open one row's session, time decode and prefill, write the seconds."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(args.onnx, load_external_data=False).metadata_props}
    V = json.loads(meta["curmoe.config"])["vocab_size"]
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, V, size=(1, 16))
    pre_ids = rng.integers(0, V, size=(1, args.prefill))
    sparse = Path(args.onnx)
    if args.one_row.startswith("profile:"):
        what, n = args.one_row.removeprefix("profile:"), min(args.steps, 16)
        prof = (profile_ort(sparse, args.threads, prompt, n, Path(args.row_out).parent) if what == "ORT cpu" else
                profile_ov(sparse, args.threads, prompt, n, what == "OV stateful"))
        Path(args.row_out).write_text(json.dumps(prof))
        return
    rows = rows_for("olmoe", sparse, Path(args.onnx_dense) if args.onnx_dense else None, args.threads, args.bf16)
    r = rows[args.one_row]()
    r.decode(prompt, 2)
    dec = min(r.decode(prompt, args.steps) for _ in range(args.repeats))
    pre = min(r.prefill(pre_ids) for _ in range(args.repeats))
    Path(args.row_out).write_text(json.dumps({"decode_s": dec, "prefill_s": pre}))


def measure(key: str, spec: tuple, args: argparse.Namespace, bw: float, tmp: Path) -> dict[str, Any]:
    sparse, dense, nbytes, V, described = spec
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, V, size=(1, 16))
    pre_ids = rng.integers(0, V, size=(1, args.prefill))
    rows = rows_for(key, sparse, dense, args.threads, args.bf16)
    if args.rows:
        rows = {k: v for k, v in rows.items() if k in args.rows.split(",") or k == "ORT cpu"}
    big = key == "olmoe"
    steps = args.steps if not big else max(8, args.steps // 4)
    decode: dict[str, float] = collections.defaultdict(lambda: float("inf"))
    prefill: dict[str, float] = collections.defaultdict(lambda: float("inf"))
    peak: dict[str, float] = {}  # GB, rows run in child processes only
    if big:  # one session per process (a closed session's memory is not given back), rows in rounds
        for _ in range(args.repeats):
            for label in rows:
                got = _row_in_child(label, sparse, dense, args, steps, tmp)
                decode[label] = min(decode[label], got["decode_s"])
                prefill[label] = min(prefill[label], got["prefill_s"])
                peak[label] = max(peak.get(label, 0.0), got["peak_rss_gb"])
                print(f"  {key}: {label} {steps / got['decode_s']:.1f} tok/s (peak RSS {got['peak_rss_gb']:.2f} GB)",
                      file=sys.stderr)
    else:  # every session open, rows interleaved round by round
        runners = {label: make() for label, make in rows.items()}
        for r in runners.values():
            r.decode(prompt, 2)
        for _ in range(args.repeats):
            for label, r in runners.items():
                decode[label] = min(decode[label], r.decode(prompt, steps))
                prefill[label] = min(prefill[label], r.prefill(pre_ids))
        del runners
        gc.collect()
    base = steps / decode["ORT cpu"]
    out_rows = []
    for label in rows:
        tps = steps / decode[label]
        out_rows.append(dict(row=label, decode_tok_s=tps, x_ort=tps / base, roofline_tok_s=bw / nbytes,
                             roofline_frac=tps / (bw / nbytes), prefill_ms=1e3 * prefill[label])
                        | ({"peak_rss_gb": peak[label]} if label in peak else {}))
        print(f"  {key}: {label:28s} {tps:8.1f} tok/s  x ORT {tps / base:.2f}  prefill T={args.prefill} "
              f"{1e3 * prefill[label]:.1f} ms", file=sys.stderr)
    res: dict[str, Any] = {"model": key, "described": described, "decode_steps": steps, "decode_bytes": nbytes,
                           "rows": out_rows}
    if args.profile and big:
        res["profile"] = {w: _row_in_child(f"profile:{w}", sparse, dense, args, steps, tmp)
                          for w in ("ORT cpu", "OV", "OV stateful")}
    elif args.profile:
        from curmoe.runtimes import load

        n = min(steps, 16)
        res["profile"] = {"ORT cpu": profile_ort(sparse, args.threads, prompt, n, tmp),
                          "OV": profile_ov(sparse, args.threads, prompt, n, False),
                          "OV stateful": profile_ov(sparse, args.threads, prompt, n, True)}
        res["shape_change"] = {
            "ORT cpu": fixed_vs_growing(lambda: Runner(load(sparse, "onnxruntime:cpu", threads=args.threads)),
                                        prompt, n),
            "OV": fixed_vs_growing(lambda: Runner(load(sparse, "openvino:cpu", threads=args.threads)), prompt, n)}
        gc.collect()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="wt2-dense,wt2-cur70", help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of every runtime (the same for all)")
    ap.add_argument("--steps", type=int, default=32, help="decode steps after a 16-token prompt")
    ap.add_argument("--prefill", type=int, default=128, help="prefill length")
    ap.add_argument("--repeats", type=int, default=5, help="rounds (best of)")
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--bf16", action="store_true", help="add a stateful bf16 row (native on AMX / AVX512-BF16 only)")
    ap.add_argument("--rows", default=None, help="comma list of row labels to run (ORT cpu always runs)")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--no-micro", dest="micro", action="store_false", help="skip the one-MatMul call-cost timings")
    ap.add_argument("--out", default=None, help="write the results (with provenance) to this JSON file")
    ap.add_argument("--one-row", default=None, help=argparse.SUPPRESS)  # internal: one row in a child process
    ap.add_argument("--onnx", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--onnx-dense", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--row-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one_row:
        one_row(args)
        return 0
    which = [m for m in args.models.split(",") if m]
    bad = [m for m in which if m not in MODELS]
    if bad:
        ap.error(f"unknown model {bad[0]!r}; choose from {', '.join(MODELS)}")
    import openvino

    tmp = Path(tempfile.mkdtemp(prefix="curmoe-ovbench-"))
    try:
        bw = copy_bandwidth()
        micro = fc_micro(args.threads, tmp) if args.micro else []
        specs = make_models(which, tmp, args.calib_tokens)
        results = [measure(k, specs[k], args, bw, tmp) for k in which]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    caps = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    import onnxruntime

    from curmoe.app.results import provenance

    record = {"provenance": provenance(argv),
              "threads": args.threads, "bandwidth": bw, "prefill_length": args.prefill, "repeats": args.repeats,
              "openvino": openvino.__version__, "onnxruntime": onnxruntime.__version__,
              "cpu_capabilities": list(caps), "matmul_micro": micro,
              "rows": [{"model": res["model"]} | r for res in results for r in res["rows"]],
              "models": [{k: v for k, v in res.items() if k != "rows"} for res in results]}
    if args.out:
        from curmoe.app.results import write_results

        write_results(args.out, record)
    for res in results:
        print(f"{res['model']}: " + ", ".join(f"{r['row']} {r['decode_tok_s']:.0f} tok/s ({r['x_ort']:.2f}x)"
                                              for r in res["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
