"""Decomposition benchmark: time, weight error and output error of the CUR rules and the SVD baselines.

Matrices: W (out_features, in_features) float32 with power-law singular values ``s_i = i^-alpha`` in random
orthonormal bases plus Gaussian noise (``--noise`` of the signal's Frobenius norm). 4096x14336 is the Mixtral
expert down-projection w2 (out x in = d_model x d_ff). Activations: ``--tokens`` tokens, ``X = Z diag(scale)`` with
Z standard normal and a lognormal per-feature scale (sigma ``--act-sigma``), i.e. anisotropic inputs. The
calibration statistics of X feed the activation-aware rows; "out err" is ``||(W - W') X^T|| / ||W X^T||`` on
those calibration tokens, "held-out" the same on fresh tokens with the same scales.

Every row of a shape runs in one process; "/ seed" divides by the `seed` row (the poster's method: full SVD,
leverage-proportional sampling, U = pinv(W[rows, cols])) at the same ratio. Times exclude the error metrics
(``errors=False``) and the per-calibration work shared by every matrix with that input: the Gram, its float32
copy and its Cholesky factor (SVD-LLM).

    python benchmarks/decompose.py [--quick] [--shapes 1024x2816,4096x14336] [--ratios 0.3,0.5,0.7]
                                   [--threads 1] [--json out.json]

Time is CPU seconds of this process (``time.process_time``) with ``--threads`` BLAS threads (default 1): on a
shared machine, wall-clock numbers of multi-threaded BLAS swing by several x with other jobs' load, and spinning
BLAS threads inflate CPU time, so one thread is the reproducible setting. Wall seconds are printed alongside.
Not a test.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small shapes (256x704, 512x1408) and 1024 tokens")
    p.add_argument("--shapes", default=None, help="comma-separated MxN list (default 1024x2816,4096x14336)")
    p.add_argument("--ratios", default="0.3,0.5,0.7", help="comma-separated compression ratios")
    p.add_argument("--tokens", type=int, default=None, help="calibration tokens (default 4096; 1024 with --quick)")
    p.add_argument("--alpha", type=float, default=0.6, help="power-law exponent of the singular values")
    p.add_argument("--noise", type=float, default=0.1, help="noise Frobenius norm relative to the signal")
    p.add_argument("--act-sigma", type=float, default=1.0, help="sigma of the lognormal per-feature scales")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (0: leave the library default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the rows as JSON to this path")
    p.add_argument("--methods", default=None,
                   help="'|'-separated row labels to run (default: all), e.g. 'seed (poster)|deim aware (rand)'")
    p.add_argument("--neuron", default=None,
                   help="also time neuron CUR of W as an expert's down projection (d x I), comma-separated rules "
                        "(greedy,energy,leverage,qdeim): selection + refit of W_down on the calibration H")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads > 0:  # must precede the NumPy import
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.linalg  # noqa: E402

import curmoe  # noqa: E402

# (label, function, keyword arguments, activation-aware)
METHODS: list[tuple[str, str, dict, bool]] = [
    ("seed (poster)", "cur", dict(selection="seed", u="intersection", randomized=False), False),
    ("seed + optimal U", "cur", dict(selection="seed", u="optimal", randomized=False), False),
    ("leverage (rand)", "cur", dict(selection="leverage", randomized=True), False),
    ("deim (exact)", "cur", dict(selection="deim", randomized=False), False),
    ("deim (rand)", "cur", dict(selection="deim", randomized=True), False),
    ("qdeim (rand)", "cur", dict(selection="qdeim", randomized=True), False),
    ("deim aware (exact)", "cur", dict(selection="deim", randomized=False), True),
    ("deim aware (rand)", "cur", dict(selection="deim", randomized=True), True),
    ("deim aware (rand, q=0)", "cur", dict(selection="deim", randomized=True, n_power_iter=0), True),
    ("svd (exact)", "svd", dict(randomized=False), False),
    ("svd (rand)", "svd", dict(randomized=True), False),
    ("svd-llm (exact)", "svd", dict(randomized=False), True),
]
TARGET = dict(shape=(4096, 14336), ratio=0.7, method="deim aware (rand)", baseline="deim aware (exact)",
              speedup=10.0, error_factor=1.05)


def synthetic_weight(m: int, n: int, alpha: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """float32 (m, n): U diag(i^-alpha) V^T with random orthonormal U, V, plus Gaussian noise."""
    k = min(m, n)
    U = scipy.linalg.qr(rng.standard_normal((m, k), dtype=np.float32), mode="economic")[0]  # (m, k)
    V = scipy.linalg.qr(rng.standard_normal((n, k), dtype=np.float32), mode="economic")[0]  # (n, k)
    s = np.arange(1, k + 1, dtype=np.float32) ** -alpha
    W = (U * s) @ V.T  # (m, k) @ (k, n)
    W += rng.standard_normal((m, n), dtype=np.float32) * np.float32(noise * np.linalg.norm(s) / np.sqrt(m * n))
    return W


def activations(N: int, scale: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((N, scale.size), dtype=np.float32) * scale  # (N, n)


def evaluate(res, W: np.ndarray, X: np.ndarray, WX: np.ndarray, X2: np.ndarray, WX2: np.ndarray) -> dict:
    """Weight and output errors from the factors (float32 products, float64 norms)."""
    W_hat = res.reconstruct()  # (m, n)
    w_err = float(np.linalg.norm((W - W_hat).astype(np.float64)) / np.linalg.norm(W.astype(np.float64)))

    def out(Xs: np.ndarray, WXs: np.ndarray) -> float:
        Y = res.apply(Xs).T.astype(np.float64)  # (m, N) through the factors
        return float(np.linalg.norm(WXs - Y) / np.linalg.norm(WXs))

    return dict(weight_error=w_err, output_error=out(X, WX), heldout_error=out(X2, WX2))


def run_shape(m: int, n: int, ratios: list[float], args: argparse.Namespace) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    W = synthetic_weight(m, n, args.alpha, args.noise, rng)
    scale = np.exp(args.act_sigma * rng.standard_normal(n)).astype(np.float32)
    X, X2 = activations(args.tokens, scale, rng), activations(args.tokens, scale, rng)
    stats = curmoe.CalibStats(n).update(X)
    stats.gram_as(np.float32)  # per-calibration work, shared by every matrix with this input:
    stats.whitening()  # the float32 Gram copy and the Cholesky factor are built once, outside the timings
    WX = W.astype(np.float64) @ X.T.astype(np.float64)  # (m, N)
    WX2 = W.astype(np.float64) @ X2.T.astype(np.float64)
    print(f"[{m}x{n}: data ready in {time.perf_counter() - t0:.1f} s]", file=sys.stderr, flush=True)

    rows = []
    methods = METHODS if not args.methods else [m for m in METHODS if m[0] in args.methods.split("|")]
    for ratio in ratios:
        for label, fn, kw, aware in methods:
            call = getattr(curmoe, fn)
            c0, w0 = time.process_time(), time.perf_counter()
            res = call(W, ratio=ratio, calib=stats if aware else None, seed=args.seed, errors=False, **kw)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            row = dict(shape=[m, n], ratio=ratio, method=label, rank=int(res.rank),
                       n_cols=int(len(res.cols)) if fn == "cur" else int(res.rank), achieved=float(res.ratio),
                       cpu_s=cpu, wall_s=wall, **evaluate(res, W, X, WX, X2, WX2))
            rows.append(row)
            print(f"  {m}x{n} ratio {ratio} {label}: {cpu:.2f} s cpu, output error {row['output_error']:.4f}",
                  file=sys.stderr, flush=True)
        for rule in (args.neuron.split(",") if args.neuron else []):
            rows.append(neuron_row(W, stats, ratio, rule, X, WX, X2, WX2))
            print(f"  {m}x{n} ratio {ratio} neuron {rule}: {rows[-1]['cpu_s']:.2f} s cpu, output error "
                  f"{rows[-1]['output_error']:.4f}", file=sys.stderr, flush=True)
        seed_cpu = next((r["cpu_s"] for r in rows if r["ratio"] == ratio and r["method"] == METHODS[0][0]), None)
        for r in rows:
            if r["ratio"] == ratio:
                r["vs_seed"] = r["cpu_s"] / seed_cpu if seed_cpu else None
    return rows


def neuron_row(W: np.ndarray, stats, ratio: float, rule: str, X: np.ndarray, WX: np.ndarray, X2: np.ndarray,
               WX2: np.ndarray) -> dict:
    """Neuron CUR of W read as W_down (d, I) with H = X^T X (ungated): keep k = floor((1 - ratio) I) columns of
    the activations and refit W_down on them; the same output errors as the CUR rows (down's output on X, X2).
    Only W_down is compressed here (gate and up lose the same rows for free: real rows, nothing to compute)."""
    from curmoe.decompose import refit_down, select_neurons

    d, I = W.shape
    k = int(np.floor((1.0 - ratio) * I + 1e-9))
    c0, w0 = time.process_time(), time.perf_counter()
    J = np.sort(select_neurons(stats.gram, W, k, rule))
    W_new = refit_down(stats.gram, W, J).astype(W.dtype)  # (d, k)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0

    def out(Xs: np.ndarray, WXs: np.ndarray) -> float:
        Y = (Xs[:, J] @ W_new.T).T.astype(np.float64)  # (d, N)
        return float(np.linalg.norm(WXs - Y) / np.linalg.norm(WXs))

    return dict(shape=[d, I], ratio=ratio, method=f"neuron {rule}", rank=k, n_cols=k, achieved=1.0 - k / I,
                cpu_s=cpu, wall_s=wall, weight_error=None, output_error=out(X, WX),
                heldout_error=out(X2, WX2))


def table(rows: list[dict], m: int, n: int) -> str:
    head = ("| ratio | method | r | c | achieved | CPU s | / seed | wall s | weight err | out err | held-out |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [f"**{m}x{n}** (out x in)", "", head]
    for r in rows:
        lines.append(
            f"| {r['ratio']} | {r['method']} | {r['rank']} | {r['n_cols']} | {r['achieved']:.3f} | "
            f"{r['cpu_s']:.2f} | {'-' if r['vs_seed'] is None else format(r['vs_seed'], '.3f')} | {r['wall_s']:.2f} | "
            f"{'-' if r['weight_error'] is None else format(r['weight_error'], '.4f')} | "
            f"{r['output_error']:.4f} | {r['heldout_error']:.4f} |"
        )
    return "\n".join(lines)


def target_line(rows: list[dict]) -> str | None:
    t = TARGET
    sel = {r["method"]: r for r in rows if tuple(r["shape"]) == t["shape"] and r["ratio"] == t["ratio"]}
    if t["method"] not in sel:
        return None
    if t["baseline"] not in sel or METHODS[0][0] not in sel:
        return None
    ours, base, seed = sel[t["method"]], sel[t["baseline"]], sel[METHODS[0][0]]
    speedup = seed["cpu_s"] / ours["cpu_s"]
    factor = ours["output_error"] / base["output_error"]
    ok_s, ok_e = speedup >= t["speedup"], factor <= t["error_factor"]
    return (f"Target at {t['shape'][0]}x{t['shape'][1]}, ratio {t['ratio']}: {t['method']} is {speedup:.1f}x "
            f"faster than seed (target >= {t['speedup']:g}x: {'met' if ok_s else 'MISSED'}); output error "
            f"{factor:.4f} x {t['baseline']} (target <= {t['error_factor']}: {'met' if ok_e else 'MISSED'}).")


def main(args: argparse.Namespace) -> None:
    if args.tokens is None:
        args.tokens = 1024 if args.quick else 4096
    shapes_arg = args.shapes or ("256x704,512x1408" if args.quick else "1024x2816,4096x14336")
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in shapes_arg.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]
    print(f"numpy {np.__version__}, scipy {scipy.__version__}, BLAS threads "
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default')}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} at start; W float32 with s_i = i^-{args.alpha} + {args.noise:g} noise; "
          f"{args.tokens} tokens, lognormal(0, {args.act_sigma:g}) feature scales")
    every = []
    for m, n in shapes:
        rows = run_shape(m, n, ratios, args)
        every += rows
        print()
        print(table(rows, m, n), flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    line = target_line(every)
    if line:
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(every, f, indent=1)


if __name__ == "__main__":
    main(ARGS)
