"""Peak resident memory of every curmoe command on a model of a few GB, as a multiple of its float32 bytes.

Each command runs as its own process (``python -m curmoe.app.cli ...``); its peak RSS is the kernel's ``ru_maxrss``
for that child (``os.wait4``), which counts every page it touched, file-backed (memory-mapped weights) included.
The model is random (memory does not depend on the values) with OLMoE's layer shape (issue 19): d_model 2048,
16 heads, 16 KV heads, d_ff 1024, 64 experts top-8, 2 layers, vocab 8192, max_seq_len 1024; the shipped
WikiText-2 tokenizer (vocab 8192) is attached so that calibration, eval and generate run.

    python benchmarks/memory.py --model /tmp/olmoe-2l --make --out docs/results/data/memory.json
    python benchmarks/memory.py --model /tmp/olmoe-2l --only validate-ort --validate-runs 10

``--validate-runs N`` also runs ``curmoe validate`` N times on ORT CPU and OpenVINO CPU, plus N times on a
deliberately corrupted export (one expert matrix perturbed by 1% relative noise), and records pass counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"compress": 2.0, "export": 2.0, "eval": 2.0, "generate": 2.0, "validate": 2.5, "bench": 3.0,
           "serve": None}  # issue 19 sets no number for serve


def olmoe_config() -> Any:
    import curmoe

    router = curmoe.RouterConfig(kind="topk", top_k=8, normalize=False)
    moe = curmoe.MoEConfig(n_experts=64, d_ff=1024, router=router)
    return curmoe.ModelConfig(vocab_size=8192, d_model=2048, n_layers=2, n_heads=16, n_kv_heads=16,
                              max_seq_len=1024, qk_norm="full", moe=moe, eos_token_id=1)


def make_model(out: Path) -> None:
    """Write the random OLMoE-shaped model (float32 safetensors) with the shipped tokenizer, once."""
    import curmoe

    if (out / "config.json").is_file():
        return
    m = curmoe.Model.random(olmoe_config(), seed=0, dtype=np.float32)
    m.tokenizer_path = ROOT / "models" / "wt2-moe-8x" / "tokenizer.json"
    m.save(out)


def corrupt_model(src: Path, out: Path) -> None:
    """A copy of ``src`` with one expert matrix perturbed by 1% relative (Frobenius) noise."""
    import curmoe
    from curmoe.reference import DenseLinear

    if (out / "config.json").is_file():
        return
    m = curmoe.load(src)
    key = "layers.1.experts.5.up"
    W = m.experts[key].W
    noise = np.random.default_rng(0).standard_normal(W.shape).astype(W.dtype)
    m.experts[key] = DenseLinear(W + 0.01 * noise * (np.linalg.norm(W) / np.linalg.norm(noise)))
    m.save(out)


def run(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one command; its wall time, exit code, peak RSS (bytes) and the tail of its output."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    out = p.stdout.read().decode(errors="replace") if p.stdout else ""
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": p.returncode, "wall_s": round(time.perf_counter() - t0, 1), "peak_rss": ru.ru_maxrss * 1024,
            "tail": out.strip().splitlines()[-3:]}


def serve_run(cmd: list[str], env: dict[str, str], port: int, requests: int = 4) -> dict[str, Any]:
    """Start ``curmoe serve``, wait for /health, send ``requests`` completions 4 at a time, stop it (SIGTERM)."""
    import signal
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    ok = 0
    try:
        for _ in range(1200):  # up to 20 min for the first export and session load under load
            if p.poll() is not None:
                break
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except OSError:
                time.sleep(1)

        def one(i: int) -> bool:
            body = json.dumps({"model": "m", "prompt": "the history of", "max_tokens": 8, "temperature": 0}).encode()
            req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as r:
                return r.status == 200

        if p.poll() is None:
            with ThreadPoolExecutor(4) as ex:
                ok = sum(ex.map(one, range(requests)))
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        _, status, ru = os.wait4(p.pid, 0)
    rc = 0 if ok == requests else 1
    return {"rc": rc, "wall_s": round(time.perf_counter() - t0, 1), "peak_rss": ru.ru_maxrss * 1024,
            "tail": [f"{ok}/{requests} requests answered 200"] + err.strip().splitlines()[-2:]}


def commands(model: Path, work: Path, threads: int) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "curmoe.app.cli"]
    m, t = str(model), ["--threads", str(threads)]
    return {
        "compress": cli + ["compress", m, "--method", "cur-neuron", "--ratio", "0.7", "--calib", "wikitext2:train",
                           "--calib-tokens", "4096", "-o", str(work / "cur-neuron70"), "--force"],
        "compress-stream": cli + ["compress", m, "--method", "cur-neuron", "--allocation", "uniform", "--ratio", "0.7",
                                  "--calib", "wikitext2:train", "--calib-tokens", "4096", "--stream",
                                  "-o", str(work / "cur-neuron70-stream"), "--force"],
        "export-onnx": cli + ["export", m, "--format", "onnx", "-o", str(work / "m.onnx"), "--force"],
        "export-openvino": cli + ["export", m, "--format", "openvino", "-o", str(work / "m.xml"), "--force"],
        "validate-ort": cli + ["validate", str(work / "m.onnx"), "--model", m, "--runtime", "onnxruntime:cpu"] + t,
        "validate-openvino": cli + ["validate", str(work / "m.xml"), "--model", m, "--runtime", "openvino:cpu"] + t,
        "eval-ort": cli + ["eval", str(work / "m.onnx"), "--max-tokens", "4096", "--context", "512"] + t,
        "eval-reference": cli + ["eval", m, "--max-tokens", "1024", "--context", "512"],
        "generate-ort": cli + ["generate", str(work / "m.onnx"), "--prompt", "the history of", "--max-new-tokens",
                               "16"],
        "generate-reference": cli + ["generate", m, "--prompt", "the history of", "--max-new-tokens", "8"],
        "bench": cli + ["bench", "--model", m, "--steps", "16", "--repeats", "2", "--skip-numpy"] + t,
        "serve-ort": cli + ["serve", str(work / "m.onnx"), "--runtime", "onnxruntime:cpu", "--port", "8719",
                            "--served-model-name", "m", "--log-level", "warning"] + t,
    }


def validate_seeds(file: Path, model_dir: Path, runtime: str, n: int, threads: int) -> list[dict[str, Any]]:
    """``curmoe.runtimes.validate_seeds`` of ``file`` with input seeds 0..n-1: one session, one reference."""
    from curmoe.runtimes import validate_seeds as run_seeds

    out = []
    for seed, rep in enumerate(run_seeds(file, model_dir, runtime, range(n), threads=threads)):
        out.append({k: getattr(rep, k) for k in ("passed", "max_rel_err", "routing_agreement", "hard_flips",
                                                   "diverged_sequences", "router_max_rel_err")}
                   | {"near_tie_flips": len(rep.near_tie_flips), "failures": list(rep.failures)})
        print(f"  validate {runtime} {file.name} seed {seed}: {'PASS' if rep.passed else 'FAIL'} "
              f"max_rel_err {rep.max_rel_err:.2e} hard flips {rep.hard_flips} near ties {len(rep.near_tie_flips)}",
              flush=True)
    return out


def validate_runs(model: Path, work: Path, n: int, threads: int, env: dict[str, str],
                  runtimes: tuple[str, ...] = ("onnxruntime:cpu", "openvino:cpu")) -> dict[str, Any]:
    """n validations each of the correct and the corrupted export on ORT and OpenVINO CPU (pass counts), each
    (runtime, export) in a process of its own that loads the model once."""
    bad = work / "corrupted"
    corrupt_model(model, bad)
    cli = [sys.executable, "-m", "curmoe.app.cli"]
    for fmt, out in (("onnx", "bad.onnx"), ("openvino", "bad.xml")):
        if not (work / out).is_file():
            r = run(cli + ["export", str(bad), "--format", fmt, "-o", str(work / out), "--force"], env)
            assert r["rc"] == 0, r
    res: dict[str, Any] = {}
    for rt, good, corrupt in (("onnxruntime:cpu", "m.onnx", "bad.onnx"), ("openvino:cpu", "m.xml", "bad.xml")):
        if rt not in runtimes:
            continue
        for label, f in (("correct", good), ("corrupted", corrupt)):
            code = ("import json, sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; import memory; "
                    f"print(json.dumps(memory.validate_seeds(Path({str(work / f)!r}), Path({str(model)!r}), "
                    f"{rt!r}, {n}, {threads})))")
            r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
            print(r.stdout.strip().rsplit("\n", 1)[0] if r.stdout.strip() else r.stderr[-2000:], flush=True)
            details = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else []
            res[f"{rt}, {label} export"] = {"runs": n, "passed": sum(d["passed"] for d in details),
                                            "completed": len(details), "details": details}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model directory (made with --make if missing)")
    ap.add_argument("--make", action="store_true", help="write the random OLMoE-shaped model first")
    ap.add_argument("--work", default=None, help="folder for outputs (default: MODEL-work)")
    ap.add_argument("--only", default=None, help="comma-separated command names (default: all; none: only --validate-runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--validate-runs", type=int, default=0)
    ap.add_argument("--validate-runtimes", default="onnxruntime:cpu,openvino:cpu")
    ap.add_argument("--out", default=None, help="results JSON (merged into an existing file by command name)")
    args = ap.parse_args(argv)

    model = Path(args.model)
    if args.make:
        make_model(model)
    work = Path(args.work or f"{model}-work")
    work.mkdir(parents=True, exist_ok=True)
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), framework="numpy") as f:
        n_params = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    fp32 = 4 * n_params
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    cmds = commands(model, work, args.threads)
    names = list(cmds) if not args.only else [] if args.only == "none" else args.only.split(",")
    rows: dict[str, Any] = {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()  # per row: a results file may merge several runs
    print(f"model {model}: {n_params / 1e6:.1f} M parameters, {fp32 / 2**30:.2f} GiB in float32", flush=True)
    print(f"{'command':<20} {'rc':>3} {'peak RSS GiB':>12} {'x fp32':>7} {'target':>7} {'wall s':>7}", flush=True)
    for name in names:
        if name not in cmds:
            raise SystemExit(f"unknown command {name!r}; choose from {', '.join(cmds)}")
        r = serve_run(cmds[name], env, 8719) if name.startswith("serve") else run(cmds[name], env)
        ratio = r["peak_rss"] / fp32
        target = TARGETS[name.split("-")[0]]
        met = None if target is None else r["rc"] == 0 and ratio <= target
        rows[name] = r | {"x_fp32": round(ratio, 3), "target": target, "met": met, "commit": commit,
                          "command": " ".join(["curmoe"] + cmds[name][3:])}
        print(f"{name:<20} {r['rc']:>3} {r['peak_rss'] / 2**30:>12.2f} {ratio:>7.2f} {target or 0:>7.1f} "
              f"{r['wall_s']:>7.1f}" + ("" if r["rc"] == 0 else f"   {r['tail']}"), flush=True)
    from curmoe.app.results import provenance, read_results, write_results

    result: dict[str, Any] = {
        "provenance": provenance(),
        "machine_mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "model": {"n_params": n_params, "fp32_bytes": fp32, "config": "OLMoE layer shape, 2 layers (issue 19)"},
        "threads": args.threads, "rows": [{"name": k} | v for k, v in rows.items()],
    }
    if args.validate_runs:
        result["validation"] = validate_runs(model, work, args.validate_runs, args.threads, env,
                                             tuple(args.validate_runtimes.split(",")))
    if args.out:
        out = Path(args.out)
        if out.is_file():  # merge: a partial run (--only) replaces its rows and keeps the others
            old = read_results(out)
            mine = {r["name"] for r in result["rows"]}
            result["rows"] = [r for r in old["rows"] if r["name"] not in mine] + result["rows"]
            order = list(commands(model, work, args.threads))
            result["rows"].sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
            result["validation"] = old.get("validation", {}) | result.get("validation", {})
        write_results(out, result)
        print(f"wrote {out}")
    shutil.rmtree(work / "tmp", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
