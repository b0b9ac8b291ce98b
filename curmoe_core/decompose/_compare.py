"""Side-by-side comparison of the decomposition methods on one matrix (used by ``curmoe demo`` and benchmarks).

Synthetic test matrices have the decaying spectra of trained weights: singular values sigma_i = (1 + i)^(-alpha)
with random singular vectors, plus Gaussian noise. Synthetic activations are anisotropic, as in real LLMs: each
input feature gets a log-normal scale, so a few features dominate the output (what activation awareness exploits).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from curmoe.decompose._calib import CalibStats
from curmoe.decompose._cur import cur
from curmoe.decompose._svd import svd

__all__ = ["synthetic_weight", "synthetic_activations", "METHODS", "MethodRow", "compare"]


def synthetic_weight(m: int, n: int, *, alpha: float = 0.8, noise: float = 0.05, seed: int = 0,
                     dtype: type = np.float32) -> np.ndarray:
    """(m, n) matrix with power-law singular values (1 + i)^-alpha plus noise * sigma_1 / sqrt(max(m, n))."""
    rng = np.random.default_rng(seed)
    k = min(m, n)
    Q1, _ = np.linalg.qr(rng.standard_normal((m, k)))  # (m, k) orthonormal
    Q2, _ = np.linalg.qr(rng.standard_normal((n, k)))  # (n, k)
    s = (1.0 + np.arange(k)) ** -alpha
    W = (Q1 * s) @ Q2.T + noise * rng.standard_normal((m, n)) / np.sqrt(max(m, n))
    return W.astype(dtype)


def synthetic_activations(n_tokens: int, n: int, *, sigma: float = 1.0, seed: int = 1,
                          dtype: type = np.float32) -> np.ndarray:
    """(n_tokens, n) activations: Gaussian with per-feature scale exp(N(0, sigma^2)) (anisotropic)."""
    rng = np.random.default_rng(seed)
    scale = np.exp(sigma * rng.standard_normal(n))
    return (rng.standard_normal((n_tokens, n)) * scale).astype(dtype)


# name -> (label, function(W, ratio, stats) -> result)
METHODS: dict[str, tuple[str, Callable[[np.ndarray, float, CalibStats], object]]] = {
    "seed": ("CUR seed (poster: full SVD, sampled, pinv)",
             lambda W, r, s: cur(W, ratio=r, selection="seed", u="intersection")),
    "leverage": ("CUR leverage, exact basis", lambda W, r, s: cur(W, ratio=r, selection="leverage", randomized=False)),
    "deim": ("CUR DEIM, exact basis", lambda W, r, s: cur(W, ratio=r, selection="deim", randomized=False)),
    "deim-rand": ("CUR DEIM, randomized basis", lambda W, r, s: cur(W, ratio=r, selection="deim", randomized=True)),
    "qdeim": ("CUR Q-DEIM, randomized basis", lambda W, r, s: cur(W, ratio=r, selection="qdeim")),
    "deim-aware": ("CUR DEIM activation-aware, exact basis",
                   lambda W, r, s: cur(W, ratio=r, selection="deim", randomized=False, calib=s)),
    "deim-aware-rand": ("CUR DEIM activation-aware, randomized",
                        lambda W, r, s: cur(W, ratio=r, selection="deim", randomized=True, calib=s)),
    "svd": ("SVD (truncated, exact)", lambda W, r, s: svd(W, ratio=r)),
    "svd-llm": ("SVD-LLM (whitened, activation-aware)", lambda W, r, s: svd(W, ratio=r, calib=s)),
}


@dataclass(frozen=True)
class MethodRow:
    method: str
    ratio_target: float
    ratio: float
    rank: int
    time_s: float
    weight_error: float
    output_error: float


def compare(W: np.ndarray, X: np.ndarray, ratios: Sequence[float], methods: Sequence[str] | None = None,
            progress: Callable[[str], None] | None = None) -> list[MethodRow]:
    """Run each method at each ratio on W with calibration activations X; output errors measured on X."""
    stats = CalibStats(W.shape[1])
    stats.update(X)
    rows = []
    for ratio in ratios:
        for name in methods or list(METHODS):
            if progress:
                progress(f"{name} @ {ratio}")
            t0 = time.perf_counter()
            res = METHODS[name][1](W, ratio, stats)
            dt = time.perf_counter() - t0
            W_hat = res.reconstruct()
            rows.append(MethodRow(name, ratio, float(res.ratio), int(res.rank), dt, float(res.weight_error),
                                  stats.output_error(W, W_hat)))
    return rows


def format_table(rows: Sequence[MethodRow], baseline: str = "seed") -> str:
    """Markdown table; each time is also given as a speed-up over ``baseline`` at the same ratio."""
    base = {r.ratio_target: r.time_s for r in rows if r.method == baseline}
    out = ["| ratio | method | rank | achieved ratio | time s | speed-up vs seed | weight err | output err |",
           "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        b = base.get(r.ratio_target)
        sp = f"{b / r.time_s:.1f}x" if b else "-"
        out.append(f"| {r.ratio_target:.2f} | {r.method} | {r.rank} | {r.ratio:.3f} | {r.time_s:.3f} | {sp} | "
                   f"{r.weight_error:.4f} | {r.output_error:.4f} |")
    return "\n".join(out)
