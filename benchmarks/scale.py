"""Scale benchmark: stream-compress a synthetic Mixtral-shaped bf16 checkpoint, serially and on Ray workers.

A generator writes a sharded checkpoint with Mixtral-8x7B's true dimensions (d_model 4096, d_ff 14336, 8 experts,
top-2, 32 query / 8 key-value heads of 128, vocabulary 32000) for ``--layers`` layers, in bfloat16, Hugging
Face-style: ``model-0000i-of-0000N.safetensors`` (the embedding, head and final norm, then one shard per layer)
and ``model.safetensors.index.json``, under curmoe's tensor names. Weights are N(0, 0.02) (norms 1): a flat
spectrum, the worst case for CUR's error but irrelevant to its time and memory, which is what is measured. The
generator writes tensor by tensor in row chunks, so it never holds a layer either.

Each job runs ``compress_checkpoint(src, out, config, workers=...)`` in a child process (``CHILD`` below): ``cur``
is data-free per-matrix CUR (randomized DEIM, optimal U), ``cur-neuron`` is neuron CUR (default selection,
uniform allocation) calibrated on random token ids (the synthetic model has no tokenizer). Recorded per job:
wall time; the child's own CPU time and peak RSS (``os.wait4``); and, sampled every second with psutil, the peak
summed RSS and PSS of the child and all its descendants (with ``--workers``, Ray's GCS, raylet and worker
processes: PSS counts the object store's shared pages once) and their CPU time; the load average before and
after; bytes written.

    python benchmarks/scale.py [--layers 1,2] [--methods cur,cur-neuron] [--workers 2] [--ratio 0.7]
                               [--dims mixtral|medium|small] [--threads 1] [--workdir /tmp/curmoe-scale]
                               [--json docs/results/data/scale.json]

Every method runs serially for the first layer count (the first method for every count); ``--workers N`` adds the
first layer count on N Ray workers per method. ``--json`` merges the runs into the results file: a run replaces
an earlier one with the same (dims, layers, method, workers), and every run carries its provenance. The
synthetic folders are kept in --workdir (several GB) and reused when complete; remove them afterwards. Not a test.
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
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

MIXTRAL = {"d_model": 4096, "d_ff": 14336, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 32000}
SMALL = {"d_model": 256, "d_ff": 896, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 1000}
MEDIUM = {"d_model": 1024, "d_ff": 2816, "n_heads": 8, "n_kv_heads": 2, "vocab_size": 32000}
DIMS = {"mixtral": MIXTRAL, "medium": MEDIUM, "small": SMALL}


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


# The compression child: one streamed job through the public API (random calibration ids for activation-aware
# methods: the synthetic model has no tokenizer), printing its record as JSON on the last line.
CHILD = """
import json, sys
import numpy as np
import curmoe
from curmoe.compress import compress_checkpoint
src, out, method, ratio, workers, ids = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5], sys.argv[6]
configs = {"cur": lambda: curmoe.CURConfig(ratio=ratio),
           "cur-neuron": lambda: curmoe.NeuronConfig(ratio=ratio, allocation="uniform")}
cfg = configs[method]()
rec = compress_checkpoint(src, out, cfg, calib_ids=np.load(ids) if ids != "-" else None, progress=False,
                          workers=int(workers) if workers != "-" else None).compression
print(json.dumps({k: rec[k] for k in ("ratio_expert_params", "ratio_all_params", "calibration")}
                 | {"mean_weight_error": float(np.mean([m["weight_error"] for m in rec["matrices"].values()
                                                        if m.get("weight_error") is not None] or [np.nan])),
                    "mean_output_error": float(np.mean([m["output_error"] for m in rec["matrices"].values()
                                                        if m.get("output_error") is not None] or [np.nan]))}))
"""


class TreeSampler(threading.Thread):
    """Samples a process and all its descendants (Ray's GCS, raylet and workers included) every ``period`` s:
    peak of the summed RSS, peak of the summed PSS (shared pages, e.g. Ray's object store, counted once), and
    each process's last CPU time (user + system), summed at the end."""

    def __init__(self, pid: int, period: float = 1.0) -> None:
        super().__init__(daemon=True)
        import psutil

        self.root, self.period, self.stop = psutil.Process(pid), period, threading.Event()
        self.peak_rss = self.peak_pss = self.peak_procs = 0
        self.cpu: dict[int, float] = {}

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            rss = pss = 0
            for q in procs:
                try:
                    m = q.memory_full_info()
                    t = q.cpu_times()
                except psutil.Error:
                    continue
                rss, pss = rss + m.rss, pss + getattr(m, "pss", m.rss)
                self.cpu[q.pid] = max(self.cpu.get(q.pid, 0.0), t.user + t.system)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, len(procs))
            self.stop.wait(self.period)


def run_job(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run one child to the end: wall s, its own CPU s and peak RSS (os.wait4), and the process tree's peaks."""
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    t0, load0 = time.perf_counter(), os.getloadavg()
    sampler = TreeSampler(p.pid)
    sampler.start()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    return {"rc": os.waitstatus_to_exitcode(status), "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_bytes": usage.ru_maxrss * 1024,  # the child (driver) alone; ru_maxrss is in KiB
            "tree_peak_rss_bytes": sampler.peak_rss, "tree_peak_pss_bytes": sampler.peak_pss,
            "tree_processes": sampler.peak_procs, "tree_cpu_s_sampled": sum(sampler.cpu.values()),
            "load_average_1min": [load0[0], os.getloadavg()[0]], "log": log.read_text(errors="replace")}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(args: argparse.Namespace) -> dict:
    return {"command": " ".join(["python benchmarks/scale.py", *sys.argv[1:]]), "git_commit": git_commit(),
            "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                        "numpy": np.__version__, "blas_threads": args.threads,
                        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                        "note": "shared machine (other engineers' jobs running); wall times are under that load"}}


def job_key(run: dict) -> tuple:
    return (run["dims_name"], run["layers"], run["method"], run.get("workers"))


def merge(path: Path, runs: list[dict]) -> dict:
    """The results file with ``runs`` added; an earlier run with the same (dims, layers, method, workers) is
    replaced, the others are kept (each run carries its own provenance)."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    kept = []
    for r in old.get("runs", []):
        if "provenance" not in r:  # the first format: provenance at the top level, data-free CUR, Mixtral dims
            r = r | {"provenance": {k: old[k] for k in ("command", "git_commit", "time_utc", "machine") if k in old}
                     | {"concurrent_jobs": old.get("concurrent_jobs")},
                     "dims_name": "mixtral", "dims": old.get("dims"), "method": "cur", "workers": None,
                     "ratio": old.get("ratio"), "driver_peak_rss_bytes": r.get("peak_rss_bytes")}
        kept.append(r)
    new_keys = {job_key(r) for r in runs}
    all_runs = [r for r in kept if job_key(r) not in new_keys] + runs
    return {"benchmark": "scale", "runs": sorted(all_runs, key=lambda r: (r["dims_name"], r["method"], r["layers"],
                                                                          r.get("workers") or 0))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="1,2", help="comma-separated layer counts, each run serially (default: %(default)s)")
    p.add_argument("--methods", default="cur", help="comma-separated: cur (data-free) and/or cur-neuron "
                   "(calibrated with random token ids, uniform allocation) (default: %(default)s)")
    p.add_argument("--workers", type=int, default=0,
                   help="also run the first layer count with N Ray workers, for each method (default: off)")
    p.add_argument("--workers-only", action="store_true",
                   help="with --workers: run only the worker jobs (their speed-up then uses the serial run already "
                        "in --json)")
    p.add_argument("--ratio", type=float, default=0.7)
    p.add_argument("--calib-tokens", type=int, default=2048, help="random calibration tokens for cur-neuron")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads of the driver (Ray workers use 1 each)")
    p.add_argument("--workdir", default="/tmp/curmoe-scale")
    p.add_argument("--dims", choices=list(DIMS), default="mixtral",
                   help="mixtral (true Mixtral-8x7B sizes), medium (d_model 1024, d_ff 2816), small (smoke run)")
    p.add_argument("--small", action="store_true", help="same as --dims small")
    p.add_argument("--keep", action="store_true", help="keep the compressed outputs")
    p.add_argument("--json", default=None, help="merge the results into this file (docs/results/data/scale.json)")
    args = p.parse_args()
    dims_name = "small" if args.small else args.dims
    dims = DIMS[dims_name]
    work = Path(args.workdir) / dims_name
    threads = str(args.threads)
    env = os.environ | {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    work.mkdir(parents=True, exist_ok=True)
    base = run_job([sys.executable, "-c", "import curmoe, curmoe.compress"], env, work / "base.log")
    counts = [int(v) for v in args.layers.split(",")]
    methods = args.methods.split(",")
    jobs = [] if args.workers_only else [(n, m, None) for m in methods for n in (counts if m == methods[0] else counts[:1])]
    if args.workers:
        jobs += [(counts[0], m, args.workers) for m in methods]
    infos = {}
    for layers in sorted({j[0] for j in jobs}):
        print(f"[{layers} layer(s)] generating {work / f'src-{layers}L'}", file=sys.stderr, flush=True)
        infos[layers] = generate(work / f"src-{layers}L", layers, dims)
    ids_file = work / f"calib-{args.calib_tokens}.npy"
    ids = np.random.default_rng(0).integers(0, dims["vocab_size"], (args.calib_tokens // 256, 256))
    np.save(ids_file, ids)
    prov = provenance(args)
    runs = []
    for layers, method, workers in jobs:
        tag = f"{layers}L-{method}-{'w' + str(workers) if workers else 'serial'}"
        src, out = work / f"src-{layers}L", work / f"out-{tag}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out.parent / f"{out.name}.partial", ignore_errors=True)
        calib = str(ids_file) if method != "cur" else "-"
        cmd = [sys.executable, "-c", CHILD, str(src), str(out), method, str(args.ratio), str(workers or "-"), calib]
        print(f"[{tag}] compressing {src}", file=sys.stderr, flush=True)
        res = run_job(cmd, env, work / f"out-{tag}.log")
        if res["rc"] != 0:
            raise SystemExit(f"[{tag}] failed with exit code {res['rc']}:\n{res['log'][-3000:]}")
        rec = json.loads(res.pop("log").strip().splitlines()[-1])
        files = list(out.iterdir())
        n_units = sum(1 for f in files if ".experts." in f.name)
        run = {"dims_name": dims_name, "dims": dims, "layers": layers, "method": method, "workers": workers,
               "ratio": args.ratio, "calib_tokens": None if method == "cur" else int(ids.size),
               "source": infos[layers], "provenance": prov, "child": "CHILD in benchmarks/scale.py",
               **{k: v for k, v in res.items() if k != "rc"}, "driver_peak_rss_bytes": res["peak_rss_bytes"],
               "bytes_written": sum(f.stat().st_size for f in files), "n_output_files": len(files),
               "expert_units": n_units, "expert_units_per_hour": 3600 * n_units / res["wall_s"], **rec}
        runs.append(run)
        print(f"[{tag}] {res['wall_s']:.0f} s wall, driver {res['cpu_s']:.0f} s CPU / peak RSS "
              f"{res['peak_rss_bytes'] / 2**30:.2f} GiB; process tree peak RSS {res['tree_peak_rss_bytes'] / 2**30:.2f} "
              f"GiB, PSS {res['tree_peak_pss_bytes'] / 2**30:.2f} GiB, CPU {res['tree_cpu_s_sampled']:.0f} s; load "
              f"{res['load_average_1min'][0]:.1f}->{res['load_average_1min'][1]:.1f}", file=sys.stderr, flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    earlier = merge(Path(args.json), [])["runs"] if args.json else []
    for r in runs:
        r["interpreter_baseline_rss_bytes"] = base["peak_rss_bytes"]
        if r["workers"]:
            serial = next((s for s in runs + earlier if job_key(s) == (r["dims_name"], r["layers"], r["method"], None)),
                          None)
            if serial is not None:
                r["speedup_vs_serial"] = serial["wall_s"] / r["wall_s"]
    result = merge(Path(args.json), runs) if args.json else {"benchmark": "scale", "runs": runs}
    text = json.dumps(result, indent=1)
    print(json.dumps(runs, indent=1))
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
