"""Per-matrix methods: CUR and SVD (SVD-LLM) of one expert matrix, and their error curves for global allocation."""

from __future__ import annotations

from typing import Any

import numpy as np

from curmoe.compress._configs import CURConfig, SVDConfig
from curmoe.decompose import CalibStats, cur, svd
from curmoe.reference import CURLinear, Linear, SVDLinear

__all__ = ["cur_matrix", "svd_matrix", "svd_error_curve"]


def cur_matrix(W: np.ndarray, stats: CalibStats | None, cfg: CURConfig, rank: int | None = None
               ) -> tuple[Linear, dict[str, Any]]:
    """CUR of one matrix W (m, n) at the config's ratio (or ``rank``)."""
    size = {"rank": rank} if rank is not None else {"ratio": cfg.ratio}
    res = cur(W, **size, selection=cfg.selection, u=cfg.u, randomized=cfg.randomized, seed=cfg.seed,
              calib=stats if cfg.activation_aware else None, whiten=cfg.whiten)
    if cfg.fold_u:
        res = res.folded_u()
    lin = CURLinear(res.C, res.U, res.R, np.asarray(res.rows, np.int64), np.asarray(res.cols, np.int64))
    spec = {"kind": "cur", "rank": int(res.rank), "n_cols": int(len(res.cols)), "folded": bool(cfg.fold_u)}
    return lin, spec | {"weight_error": float(res.weight_error), "output_error": res.output_error}


def svd_matrix(W: np.ndarray, stats: CalibStats | None, cfg: SVDConfig, rank: int | None = None
               ) -> tuple[Linear, dict[str, Any]]:
    """Truncated SVD (SVD-LLM with statistics and ``activation_aware``) of one matrix at the ratio (or ``rank``)."""
    size = {"rank": rank} if rank is not None else {"ratio": cfg.ratio}
    res = svd(W, **size, randomized=cfg.randomized, seed=cfg.seed, calib=stats if cfg.activation_aware else None)
    spec = {"kind": "svd", "rank": int(res.rank)}
    return SVDLinear(res.A, res.B), spec | {"weight_error": float(res.weight_error), "output_error": res.output_error}


def svd_error_curve(W: np.ndarray, stats: CalibStats) -> np.ndarray:
    """Relative whitened output error of SVD-LLM at ranks 1..min(m, n): ``sum_{i>r} s_i^2 / sum_i s_i^2`` with s the
    singular values of ``W S`` (S S^T the damped input Gram): Eckart-Young in the whitened space."""
    S = stats.whitening()  # (n, n) lower, float64
    s = np.linalg.svd(np.asarray(W, np.float64) @ S, compute_uv=False)  # (min(m, n),)
    e = s**2
    tail = np.cumsum(e[::-1])[::-1]  # tail[r] = sum_{i >= r} e_i
    total = float(tail[0]) if tail.size else 0.0
    return np.append(tail[1:], 0.0) / max(total, np.finfo(float).tiny)  # error after keeping r = 1..len
