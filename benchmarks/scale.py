"""Scale benchmark: stream-compress a synthetic Mixtral-shaped bf16 checkpoint; peak memory, wall time, bytes.

A generator writes a sharded checkpoint with Mixtral-8x7B's true dimensions (d_model 4096, d_ff 14336, 8 experts,
top-2, 32 query / 8 key-value heads of 128, vocabulary 32000) for ``--layers`` layers, in bfloat16, Hugging
Face-style: ``model-0000i-of-0000N.safetensors`` (the embedding, head and final norm, then one shard per layer)
and ``model.safetensors.index.json``, under curmoe's tensor names. Weights are N(0, 0.02) (norms 1): a flat
spectrum, the worst case for CUR's error but irrelevant to its time and memory, which is what is measured. The
generator writes tensor by tensor in row chunks, so it never holds a layer either.

Then ``curmoe compress SRC --method cur --ratio R --stream -o OUT --json`` runs as a child process (data-free
per-matrix CUR: randomized DEIM and the optimal U; no calibration text, since the synthetic model has no
tokenizer) and ``os.wait4`` returns its peak resident set (``ru_maxrss``), with the wall time and the bytes it
wrote. The same for an import-only child gives the interpreter's own baseline.

    python benchmarks/scale.py [--layers 1,2] [--ratio 0.7] [--threads 1] [--workdir /tmp/curmoe-scale]
                               [--json docs/results/data/scale.json] [--small]

``--small`` uses d_model 256 / d_ff 896 (a smoke run in seconds). The synthetic folders are kept in --workdir
(several GB) and reused when complete; remove them afterwards. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

MIXTRAL = {"d_model": 4096, "d_ff": 14336, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 32000}
SMALL = {"d_model": 256, "d_ff": 896, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 1000}


def model_config(layers: int, dims: dict[str, int]) -> dict:
    """A curmoe config.json dict with Mixtral's architecture (head_dim = d_model / n_heads)."""
    return {
        "attn_bias": False, "compression": None, "d_model": dims["d_model"], "dense_d_ff": 0, "eos_token_id": 2,
        "factors": {}, "head_dim": None, "layer_types": None, "max_seq_len": 4096,
        "moe": {"activation": "swiglu", "d_ff": dims["d_ff"], "n_experts": 8, "n_shared": 0, "shared_d_ff": 0,
                "shared_gate": False,
                "router": {"capacity_factor": None, "decode_fallback": None, "kind": "topk", "normalize": True,
                           "routed_scaling": 1.0, "seed": 0, "top_k": 2}},
        "n_heads": dims["n_heads"], "n_kv_heads": dims["n_kv_heads"], "n_layers": layers, "norm_eps": 1e-5,
        "pad_token_id": 0, "qk_norm": None, "rope_theta": 1e6, "tie_embeddings": False, "version": 1,
        "vocab_size": dims["vocab_size"],
    }


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (no NaNs in this data)."""
    u = x.view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def write_shard(path: Path, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator,
                chunk_elems: int = 1 << 24) -> int:
    """One bf16 safetensors file, header first, then each tensor generated and written in row chunks."""
    head, off = {}, 0
    for name in sorted(shapes):
        nbytes = 2 * int(np.prod(shapes[name]))
        head[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [off, off + nbytes]}
        off += nbytes
    h = json.dumps(head, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for name in sorted(shapes):
            shape = shapes[name]
            if name.endswith("norm.weight"):
                f.write(bf16_bits(np.ones(shape, np.float32)).tobytes())
                continue
            rows_per = max(1, chunk_elems // shape[-1])
            for s in range(0, shape[0], rows_per):
                block = rng.standard_normal((min(rows_per, shape[0] - s), shape[-1]), dtype=np.float32)
                block *= np.float32(0.02)
                f.write(bf16_bits(block).tobytes())
    os.replace(tmp, path)
    return path.stat().st_size


def generate(folder: Path, layers: int, dims: dict[str, int], seed: int = 0) -> dict:
    """The synthetic sharded checkpoint (reused when its marker says it is complete)."""
    from curmoe.reference import ModelConfig
    from curmoe.reference.names import expected_tensors

    marker = folder / "generated.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cfg_dict = model_config(layers, dims)
    want = expected_tensors(ModelConfig.from_dict(cfg_dict))
    groups: dict[int, dict[str, tuple[int, ...]]] = {}
    for name, (shape, _) in want.items():
        g = int(name.split(".")[1]) + 1 if name.startswith("layers.") else 0
        groups.setdefault(g, {})[name] = shape
    n = len(groups)
    rng = np.random.default_rng(seed)
    wmap, total, t0 = {}, 0, time.perf_counter()
    for g in sorted(groups):
        file = f"model-{g + 1:05d}-of-{n:05d}.safetensors"
        total += write_shard(folder / file, groups[g], rng)
        wmap |= {name: file for name in groups[g]}
        print(f"  wrote {file} ({total / 1e9:.2f} GB so far, {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": wmap}, indent=1))
    (folder / "config.json").write_text(json.dumps(cfg_dict, indent=2, sort_keys=True))
    largest = max(want.items(), key=lambda kv: int(np.prod(kv[1][0])))
    info = {"layers": layers, "bytes": total, "files": n + 2, "n_tensors": len(want),
            "largest_tensor": {"name": largest[0], "shape": list(largest[1][0]),
                               "bytes_bf16": 2 * int(np.prod(largest[1][0])),
                               "bytes_float32": 4 * int(np.prod(largest[1][0]))},
            "largest_shard_bytes": max(f.stat().st_size for f in folder.glob("model-*.safetensors")),
            "generate_s": time.perf_counter() - t0}
    marker.write_text(json.dumps(info, indent=1))
    return info


def start_child(cmd: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, float]:
    """Start one child with stdout to ``log`` (read back when it ends)."""
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.DEVNULL), time.perf_counter()


def wait_child(p: subprocess.Popen, t0: float, log: Path) -> tuple[int, float, float, int, str]:
    """(return code, wall s, CPU s (user + system), peak RSS bytes, stdout) of a child, via os.wait4."""
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return p.returncode, time.perf_counter() - t0, cpu, usage.ru_maxrss * 1024, log.read_text()  # maxrss: KiB


def run_child(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, float, float, int, str]:
    return wait_child(*start_child(cmd, env, log), log)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="1,2", help="comma-separated layer counts (default: %(default)s)")
    p.add_argument("--ratio", type=float, default=0.7)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads of the compression child")
    p.add_argument("--workdir", default="/tmp/curmoe-scale")
    p.add_argument("--small", action="store_true", help="d_model 256, d_ff 896: a smoke run")
    p.add_argument("--keep", action="store_true", help="keep the compressed outputs")
    p.add_argument("--concurrent", action="store_true",
                   help="run the compression jobs (one per layer count, each serial) at the same time: on a shared "
                        "machine this gets them done sooner; peak RSS and CPU seconds are per job either way")
    p.add_argument("--json", default=None, help="write the results here (e.g. docs/results/data/scale.json)")
    args = p.parse_args()
    dims = SMALL if args.small else MIXTRAL
    work = Path(args.workdir) / ("small" if args.small else "mixtral")
    threads = str(args.threads)
    env = os.environ | {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    code = "import sys; from curmoe.app.cli import main; sys.exit(main(sys.argv[1:]))"
    work.mkdir(parents=True, exist_ok=True)
    rc, _, _, base_rss, _ = run_child([sys.executable, "-c", "import curmoe, curmoe.app.cli"], env, work / "base.log")
    counts = [int(v) for v in args.layers.split(",")]
    infos = {}
    for layers in counts:
        print(f"[{layers} layer(s)] generating {work / f'src-{layers}L'}", file=sys.stderr, flush=True)
        infos[layers] = generate(work / f"src-{layers}L", layers, dims)

    def launch(layers: int) -> tuple:
        src, out = work / f"src-{layers}L", work / f"out-{layers}L"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out.parent / f"{out.name}.partial", ignore_errors=True)
        cmd = [sys.executable, "-c", code, "compress", str(src), "--method", "cur", "--ratio", str(args.ratio),
               "--stream", "-o", str(out), "--json"]
        print(f"[{layers} layer(s)] compressing: {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
        return (*start_child(cmd, env, work / f"out-{layers}L.log"), os.getloadavg()[0])

    started = {n: launch(n) for n in counts} if args.concurrent else {}
    runs = []
    for layers in counts:
        src, out = work / f"src-{layers}L", work / f"out-{layers}L"
        info = infos[layers]
        proc, t0, load0 = started[layers] if args.concurrent else launch(layers)
        rc, wall, cpu, rss, stdout = wait_child(proc, t0, work / f"out-{layers}L.log")
        if rc != 0:
            raise SystemExit(f"compression of {src} failed with exit code {rc}")
        rec = json.loads(stdout.strip().splitlines()[-1])
        written = sum(f.stat().st_size for f in out.iterdir())
        run = {"layers": layers, "source": info, "wall_s": wall, "cpu_s": cpu, "peak_rss_bytes": rss,
               "bytes_written": written, "n_output_files": len(list(out.iterdir())),
               "ratio_expert_params": rec["ratio_expert_params"], "ratio_all_params": rec["ratio_all_params"],
               "mean_weight_error": rec["mean_weight_error"], "load_average": [load0, os.getloadavg()[0]]}
        runs.append(run)
        print(f"[{layers} layer(s)] {wall:.0f} s wall, {cpu:.0f} s CPU, peak RSS {rss / 2**30:.2f} GiB, wrote {written / 1e9:.2f} GB",
              file=sys.stderr, flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    result = {
        "benchmark": "scale",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_commit": git_commit(),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "blas_threads": args.threads,
                    "note": "shared machine (other jobs running); wall times are under load"},
        "concurrent_jobs": args.concurrent,
        "dims": dims, "method": "cur (data-free: randomized DEIM, optimal U)", "ratio": args.ratio,
        "interpreter_baseline_rss_bytes": base_rss,
        "runs": runs,
    }
    if len(runs) >= 2:
        a, b = runs[0], runs[-1]
        ext = {}
        for key in ("cpu_s", "wall_s"):
            per_layer = (b[key] - a[key]) / (b["layers"] - a["layers"])
            fixed = a[key] - per_layer * a["layers"]
            ext[key] = {"per_layer": per_layer, "fixed": fixed, "32_layers": fixed + 32 * per_layer}
        result["extrapolation_32_layers"] = ext | {
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
            "note": "t(L) = fixed + L * per_layer from the first and last runs; peak RSS does not grow with L",
        }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
