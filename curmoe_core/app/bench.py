"""Runtime benchmark: decode tokens/s (batch 1, KV cache) and prefill latency, every row in one run, as ratios.

Rows: the NumPy reference, the torch twin in eager mode, ONNX Runtime (CPU) for the dense model (sparse and
dense dispatch, and ORT's fused com.microsoft.MoE) and for activation-aware CUR at 50% and 70% of expert
parameters, and OpenVINO CPU (f32 and bf16; sparse and dense dispatch; dense and CUR 70%). A decode roofline per row: bytes of the weights one decode step must read (attention, router, the
top-k experts a token uses, the LM head; float32) divided by the measured memory-copy bandwidth.

    curmoe bench [--model models/wt2-moe-8x] [--threads 2] [--steps 32] [--repeats 3] [--json]
    python benchmarks/runtime.py ...            (the same, as a script)

This machine is shared and noisy: compare rows of one run, not runs. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import curmoe
from curmoe.reference.names import expert_prefix


def copy_bandwidth(n_bytes: int = 256 << 20, repeats: int = 5) -> float:
    """Measured memory bandwidth in bytes/s: a large array copy reads and writes n_bytes each."""
    a = np.ones(n_bytes // 8)
    b = np.empty_like(a)
    best = min(_time(lambda: np.copyto(b, a)) for _ in range(repeats))
    return 2 * n_bytes / best


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def decode_bytes(model: curmoe.Model, bytes_per: int = 4) -> int:
    """Weights read for one decoded token: non-expert tensors except the embedding table (one row is read), plus
    top_k routed experts (their average size) and every shared expert per MoE layer."""
    c = model.config
    total = sum(v.size for k, v in model.tensors.items() if k != "embed.weight") + c.d_model
    if c.tie_embeddings:
        total += model.tensors["embed.weight"].size  # the LM head reads the whole (tied) table
    for l in range(c.n_layers):
        if c.layer_type(l) != "moe":
            continue
        per = [sum(m.n_params for k, m in model.experts.items() if k.startswith(expert_prefix(l, e) + "."))
               for e in range(c.moe.n_experts)]
        total += min(c.moe.router.top_k, c.moe.n_experts) * float(np.mean(per))
        total += sum(m.n_params for k, m in model.experts.items() if k.startswith(f"layers.{l}.shared."))
    return int(total * bytes_per)


class Runner:
    """decode(prompt, steps) -> seconds for the decode steps; prefill(ids) -> seconds."""

    def __init__(self, session):
        from curmoe.runtimes.generate import empty_cache

        self.s, self.empty = session, empty_cache

    def prefill(self, ids: np.ndarray) -> float:
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)} | self.empty(self.s, ids.shape[0])
        return _time(lambda: self.s.run(feeds, ["logits"]))

    def decode(self, prompt: np.ndarray, steps: int) -> float:
        mask = np.ones_like(prompt)
        res = self.s.run({"input_ids": prompt, "attention_mask": mask} | self.empty(self.s, 1))
        past = {n.replace("present", "past"): v for n, v in res.items() if n.startswith("present")}
        nxt = np.argmax(res["logits"][:, -1], -1)[:, None].astype(np.int64)
        t0 = time.perf_counter()
        for _ in range(steps):
            mask = np.concatenate([mask, np.ones((1, 1), np.int64)], 1)
            res = self.s.run({"input_ids": nxt, "attention_mask": mask} | past)
            past = {n.replace("present", "past"): v for n, v in res.items() if n.startswith("present")}
            nxt = np.argmax(res["logits"][:, -1], -1)[:, None].astype(np.int64)
        return time.perf_counter() - t0


class TorchRunner:
    def __init__(self, model: curmoe.Model, threads: int):
        import torch

        from curmoe.models.twin import TorchMoE

        torch.set_num_threads(threads)
        self.torch = torch
        self.m = TorchMoE.from_reference(model).eval()

    def prefill(self, ids: np.ndarray) -> float:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(ids)
            return _time(lambda: self.m(x))

    def decode(self, prompt: np.ndarray, steps: int) -> float:
        t = self.torch
        with t.inference_mode():
            cache = self.m.new_cache()
            logits = self.m(t.from_numpy(prompt), cache=cache)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            t0 = time.perf_counter()
            for _ in range(steps):
                nxt = self.m(nxt, cache=cache)[:, -1].argmax(-1, keepdim=True)
            return time.perf_counter() - t0


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: the shipped models/wt2-moe-8x)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=32, help="decode steps after a 16-token prompt")
    p.add_argument("--prefill", default="16,256")
    p.add_argument("--repeats", type=int, default=3, help="best of N for every timing")
    p.add_argument("--calib-tokens", type=int, default=8192)
    p.add_argument("--skip-numpy", action="store_true")
    p.add_argument("--skip-openvino", action="store_true")
    p.add_argument("--json-file", default=None, help="also write the rows to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = False
    run(args)
    return 0


def run(args: argparse.Namespace) -> dict:
    """Measure every row; prints the table unless ``args.json``; returns {"bandwidth", "rows", ...}."""
    from curmoe.app.demo import shipped_model_dir

    args.model = args.model or str(shipped_model_dir())
    say = (lambda *a, **k: None) if args.json else print

    from curmoe.exporters import OnnxExportConfig, export
    from curmoe.runtimes import load

    # Memory: one model and one runtime session alive at a time. Compressed models are made by streamed compression
    # (compress_checkpoint: one layer at a time), exported and dropped (only their decode bytes are kept); each
    # row's session is opened, measured and closed before the next one opens.
    model = curmoe.load(args.model)
    described = repr(model)
    rng = np.random.default_rng(0)
    V = model.config.vocab_size
    calib = rng.integers(0, V, size=(args.calib_tokens // 256, 256))
    try:
        from curmoe.app.calibdata import calibration_ids

        calib = calibration_ids("wikitext2:train", model, n_tokens=args.calib_tokens)
    except Exception as e:  # no data or tokenizer: random ids are fine for timing
        print(f"(calibration on random tokens: {e})", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="curmoe-bench-"))
    variants = {"dense": [("sparse", False), ("dense", False), ("sparse", True)], "cur50": [("sparse", False)],
                "cur70": [("sparse", False), ("dense", False)]}
    nbytes: dict[str, int] = {}
    paths: dict[tuple[str, str, bool], Path] = {}
    for key, dispatches in variants.items():
        if key == "dense":
            m = model
        else:  # streamed: one layer's weights and calibration statistics at a time, then the result loaded
            from curmoe.compress import compress_checkpoint

            if key == "cur50":
                del model  # not needed beside the compressed models
                gc.collect()
            compress_checkpoint(args.model, tmp / key, curmoe.CURConfig(ratio=int(key[3:]) / 100,
                                                                         activation_aware=True),
                                calib_ids=calib, progress=False)
            m = curmoe.load(tmp / key)
        nbytes[key] = decode_bytes(m)
        for dispatch, fused in dispatches:
            paths[key, dispatch, fused] = export(m, OnnxExportConfig(dispatch=dispatch, fused_moe=fused),
                                                 tmp / f"{key}-{dispatch}-{fused}.onnx")
        del m
        gc.collect()
        print(f"  exported {key}", file=sys.stderr)

    Row = tuple[str, str, Callable[[], Any]]  # (label, model key, make the runner)
    rows: list[Row] = []
    if not args.skip_numpy:
        rows.append(("numpy reference (dense)", "dense", lambda: Runner(load(args.model, "reference"))))
    try:
        import torch  # noqa: F401

        rows.append(("torch eager (dense)", "dense", lambda: TorchRunner(curmoe.load(args.model), args.threads)))
    except ImportError as e:
        print(f"(torch row skipped: {e})", file=sys.stderr)
    for (key, dispatch, fused), path in paths.items():
        label = f"ORT cpu {key} {'fused MoE' if fused else dispatch + ' dispatch'}"
        rows.append((label, key, lambda p=path: Runner(load(p, "onnxruntime:cpu", threads=args.threads))))
    if not args.skip_openvino:
        try:
            from curmoe.common.errors import require

            require("openvino", "openvino")
            for key, dispatch in (("dense", "sparse"), ("dense", "dense"), ("cur70", "sparse"), ("cur70", "dense")):
                for prec in ("f32", "bf16"):
                    rows.append((f"OpenVINO cpu {prec} {key} {dispatch} dispatch", key,
                                 lambda p=paths[key, dispatch, False], q=prec: Runner(
                                     load(p, "openvino:cpu", precision=q, threads=args.threads))))
        except curmoe.CurmoeError as e:  # not installed here: say so, keep the other rows
            print(f"(OpenVINO rows skipped: {e})", file=sys.stderr)

    bw = copy_bandwidth()
    prefills = [int(t) for t in args.prefill.split(",")]
    prompt = rng.integers(0, V, size=(1, 16))
    results = []
    for label, key, make in rows:
        runner = make()
        runner.decode(prompt, 2)  # warm-up
        dec = min(runner.decode(prompt, args.steps) for _ in range(args.repeats))
        pre = {T: min(runner.prefill(rng.integers(0, V, size=(1, T))) for _ in range(args.repeats)) for T in prefills}
        del runner  # close the session before the next one opens
        gc.collect()
        tps = args.steps / dec
        roof = bw / nbytes[key]
        results.append(dict(row=label, model=key, decode_tok_s=tps, roofline_tok_s=roof, roofline_frac=tps / roof,
                            **{f"prefill_{T}_ms": 1e3 * v for T, v in pre.items()}))
        if not args.json:
            print(f"  measured {label}", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)

    base = next(r for r in results if r["row"] == "ORT cpu dense sparse dispatch")
    torch_row = next((r for r in results if r["row"].startswith("torch")), None)
    say(f"model {args.model}: {described}")
    say(f"threads {args.threads}, decode {args.steps} steps after a 16-token prompt (batch 1, KV cache), "
          f"best of {args.repeats}; copy bandwidth {bw / 1e9:.1f} GB/s")
    head = ("| row | decode tok/s | x ORT dense | x torch eager | roofline tok/s | % roofline | "
            + " | ".join(f"prefill T={T} ms" for T in prefills) + f" | prefill T={prefills[-1]} x ORT dense |")
    say(head)
    say("|" + " --- |" * (6 + len(prefills) + 1))
    for r in results:
        vs_t = f"{r['decode_tok_s'] / torch_row['decode_tok_s']:.2f}" if torch_row else "-"
        pre = " | ".join(f"{r[f'prefill_{T}_ms']:.1f}" for T in prefills)
        sp = base[f"prefill_{prefills[-1]}_ms"] / r[f"prefill_{prefills[-1]}_ms"]
        say(f"| {r['row']} | {r['decode_tok_s']:.1f} | {r['decode_tok_s'] / base['decode_tok_s']:.2f} | {vs_t} | "
              f"{r['roofline_tok_s']:.0f} | {100 * r['roofline_frac']:.0f}% | {pre} | {sp:.2f} |")
    out = {"model": args.model, "threads": args.threads, "decode_steps": args.steps, "repeats": args.repeats,
           "prefill_lengths": prefills, "bandwidth": bw, "rows": results}
    if args.json_file:  # with the command that made it, for curmoe report
        from curmoe.app.results import provenance, write_results

        write_results(args.json_file, {"provenance": provenance(getattr(args, "argv", None))} | out)
    return out


if __name__ == "__main__":
    sys.exit(main())
