"""Neuron CUR for gated (SwiGLU) and GELU MoE experts: keep whole intermediate neurons, refit the down projection.

An expert (torch orientation, W of shape (out, in))::

    y = W_down (silu(W_gate x) * (W_up x))      W_gate, W_up: (I, d)   W_down: (d, I)   (SwiGLU)
    y = W_down gelu(W_up x)                                                                (GELU)

Neuron j is row j of W_gate and W_up and column j of W_down. Keeping a set J of k neurons keeps ``W_gate[J]`` and
``W_up[J]`` bit-identical (real rows of the original: the "C" and "R" of a CUR) and refits only the down
projection, ``W_down' = W_down M`` with ``M`` (I, k). The compressed expert is simply a smaller dense expert with
3 k d parameters instead of 3 I d (GELU: 2 k d instead of 2 I d), so removing a share rho of the expert parameters
keeps ``k = round((1 - rho) I)``.

Statistics. With h_t (I,) the expert's intermediate activation on routed calibration token t and g_t its router
gate value, the (gate-weighted) second moment is::

    H = sum_t g_t^2 h_t h_t^T          (I, I), float64, positive semi-definite

(g_t = 1 for the unweighted variant). The gated output error of keeping J and using W' is
``sum_t g_t^2 ||W_down h_t - W' h_t[J]||^2``; minimised over W' (ordinary least squares) it gives::

    W_down' = W_down H[:, J] H[J, J]^-1                     (Nystrom / CUR with U = pinv of the intersection)
    err(J)  = tr(W_down S W_down^T),   S = H - H[:, J] H[J, J]^-1 H[J, :]   (Schur complement of H_JJ in H)

With a factor X (tokens x I) of H = X^T X, err(J) = min_M ||X W_down^T - X[:, J] M||_F^2: neuron selection is a
column subset selection problem (CSSP) for X with the *target* X W_down^T instead of X itself (a "generalised" or
"target-aware" CSSP). The rules offered here:

* ``energy``   top ``diag(H)_j * ||W_down[:, j]||^2``: the output energy each neuron carries alone (magnitude
  pruning of the product, as in Wanda/activation-aware pruning).
* ``leverage`` top ridge leverage scores ``diag(H (H + lambda I)^-1)`` (MoDeGPT's Nystrom compression of the MLP,
  Lin et al. 2024, arXiv 2408.09632; Alaoui & Mahoney 2015 for ridge leverage scores). Ignores W_down.
* ``qdeim``    Q-DEIM (Drmac & Gugercin 2016, SIAM J. Sci. Comput. 38(2)): pivoted QR of V_k^T, V_k the top-k
  eigenvectors of ``B^T B = D H D`` with ``D = diag(||W_down[:, j]||)``, i.e. of the output-weighted activations
  ``B = X D`` (neuron j scaled by the size of its output column). When W_down's columns are orthogonal,
  ``W_down^T W_down = D^2`` and err(J) = tr(D S D) = the plain CSSP error of B, so B is the right factor; for a
  general W_down it is the best factor that keeps neurons separable (the exact objective is the ``greedy`` rule).
* ``greedy``   forward selection: at each step add the neuron with the largest decrease of err(J). With
  S the current Schur complement the decrease for neuron j is ``||W_down S[:, j]||^2 / S_jj`` and S updates by a
  rank-1 Schur step; this is pivoted (partial) Cholesky of H with a target-aware pivot rule (cf. greedy CSSP,
  Altschuler et al. 2016; Farahat et al. 2011, "An efficient greedy method for unsupervised feature selection").
  Cost O(k I (k + min(d, I))) time and O(I (k + min(d, I))) memory per expert; no I x I update.

Every selection returns indices in *selection order* (most important first); ``np.sort`` them for index order.
Layout, refit and the per-neuron parameter cost are the caller's; this module depends only on NumPy and SciPy.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import scipy.linalg

__all__ = [
    "RULES",
    "DEFAULT_RIDGE",
    "DEFAULT_LEVERAGE_RIDGE",
    "select_neurons",
    "refit_down",
    "output_error",
    "error_curve",
    "greedy_order",
    "allocate",
    "keep_for_ratio",
]

RULES = ("energy", "leverage", "qdeim", "greedy")
DEFAULT_RIDGE = 1e-3  # refit: lambda = DEFAULT_RIDGE * mean(diag(H_JJ))
DEFAULT_LEVERAGE_RIDGE = 1.0  # leverage rule: lambda = DEFAULT_LEVERAGE_RIDGE * mean(diag(H))
_PIVOT_TOL = 1e-12  # a neuron whose residual variance S_jj <= tol * max(diag(H)) adds nothing new


# ---------------------------------------------------------------------------------------------------------------
# validation
def _check_H_W(H: object, W_down: object) -> tuple[np.ndarray, np.ndarray]:
    H = np.asarray(H, dtype=np.float64)
    W = np.asarray(W_down, dtype=np.float64)
    if H.ndim != 2 or H.shape[0] != H.shape[1] or H.shape[0] == 0:
        raise ValueError(f"H must be a square (I, I) second-moment matrix with I >= 1, got shape {H.shape}")
    if W.ndim != 2 or W.shape[1] != H.shape[0]:
        raise ValueError(f"W_down must have shape (d, I) = (d, {H.shape[0]}) to match H, got {W.shape}")
    if not np.all(np.isfinite(H)):
        raise ValueError("H contains NaN or Inf; check the calibration activations (overflow in float32?)")
    if not np.all(np.isfinite(W)):
        raise ValueError("W_down contains NaN or Inf")
    return H, W


def _check_k(k: object, I: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k={k!r} must be an integer number of neurons to keep, 1 <= k <= I={I}")
    if not 1 <= int(k) <= I:
        raise ValueError(f"k={int(k)} neurons cannot be kept from an expert with I={I}: need 1 <= k <= {I}"
                         + (" (k = 0 would empty the expert)" if int(k) == 0 else ""))
    return int(k)


def _check_ridge(ridge: object, name: str = "ridge") -> float:
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}={ridge!r} must be a finite number >= 0")
    r = float(ridge)
    if not (np.isfinite(r) and r >= 0):
        raise ValueError(f"{name}={ridge!r} must be a finite number >= 0")
    return r


def _check_J(J: object, I: int) -> np.ndarray:
    idx = np.asarray(J)
    if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
        raise ValueError(f"J must be a non-empty 1-D integer index array, got shape {idx.shape} dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.min() < 0 or idx.max() >= I:
        raise ValueError(f"J holds indices outside [0, {I})")
    if np.unique(idx).size != idx.size:
        raise ValueError("J holds repeated neuron indices")
    return idx


def _thin_target(W: np.ndarray) -> np.ndarray:
    """A factor F (r, I), r = min(d, I), with F^T F = W^T W: the error only depends on W^T W (saves work if d > I)."""
    d, I = W.shape
    if d <= I:
        return W
    return scipy.linalg.qr(W, mode="r", check_finite=False)[0][:I]  # (I, I), R^T R = W^T W


# ---------------------------------------------------------------------------------------------------------------
# greedy forward selection (target-aware pivoted Cholesky)
def _pivoted(H: np.ndarray, W: np.ndarray, k: int, order: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Run the rank-1 Schur recursion for k steps; pick the best pivot (order None) or follow ``order``.

    State after t steps: L (I, t) with S_t = H - L L^T, P = W S_t (r, I), s = diag(S_t).
    Returns (order (k,), err (k,)) with err[t-1] = tr(W S_t W^T).
    """
    F = _thin_target(W)  # (r, I)
    I = H.shape[0]
    P = F @ H  # (r, I) = F S_0
    s = np.diag(H).copy()  # (I,)
    err0 = float(np.sum(P * F))  # tr(F H F^T)
    tol = _PIVOT_TOL * max(float(s.max()), np.finfo(float).tiny)
    L = np.zeros((I, k))  # (I, k)
    chosen = np.zeros(I, dtype=bool)
    out = np.empty(k, dtype=np.int64)
    errs = np.empty(k)
    err = err0
    for t in range(k):
        num = np.einsum("ri,ri->i", P, P)  # ||W S[:, i]||^2, (I,)
        if order is None:
            with np.errstate(divide="ignore", invalid="ignore"):
                score = np.where((s > tol) & ~chosen, num / np.where(s > tol, s, 1.0), -np.inf)
            if np.all(~np.isfinite(score)):  # everything left is dependent: any unused neuron, zero gain
                j = int(np.flatnonzero(~chosen)[0])
            else:
                j = int(np.argmax(score))
        else:
            j = int(order[t])
        chosen[j] = True
        out[t] = j
        if s[j] > tol:
            col = H[:, j] - L[:, :t] @ L[j, :t]  # S_{t}[:, j], (I,)
            r = np.sqrt(s[j])
            l = col / r  # (I,)
            u = P[:, j] / r  # (r,) = F l
            err -= float(num[j] / s[j])
            L[:, t] = l
            P -= np.outer(u, l)
            s -= l * l
            s[j] = 0.0
            np.maximum(s, 0.0, out=s)
        errs[t] = max(err, 0.0)
    return out, errs


def greedy_order(H: object, W_down: object, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy neurons in selection order and the error after each: (order (k,), err (k,)), err non-increasing."""
    H, W = _check_H_W(H, W_down)
    k = _check_k(k, H.shape[0])
    return _pivoted(H, W, k, None)


def error_curve(H: object, W_down: object, order: Sequence[int] | np.ndarray) -> np.ndarray:
    """Output errors ``err[t-1] = tr(W_down S_t W_down^T)`` after keeping the first t = 1..len(order) neurons.

    Exact least-squares (ridge-free) errors of the nested sets ``order[:t]``, by the same rank-1 Schur recursion
    as the greedy rule: O(len(order) I (len(order) + min(d, I))). Non-increasing for any order. Use it (with a
    greedy order) for global budget allocation, see :func:`allocate`.
    """
    H, W = _check_H_W(H, W_down)
    idx = _check_J(order, H.shape[0])
    return _pivoted(H, W, idx.size, idx)[1]


def output_error(H: object, W_down: object, J: Sequence[int] | np.ndarray, W_new: np.ndarray | None = None) -> float:
    """``sum_t g_t^2 ||W_down h_t - W_new h_t[J]||^2`` from H alone; W_new None gives the least-squares optimum
    ``tr(W_down S W_down^T)`` (Schur complement S)."""
    H, W = _check_H_W(H, W_down)
    idx = _check_J(J, H.shape[0])
    if W_new is None:
        return float(error_curve(H, W, idx)[-1])
    Wn = np.asarray(W_new, dtype=np.float64)
    if Wn.shape != (W.shape[0], idx.size):
        raise ValueError(f"W_new must have shape (d, k) = {(W.shape[0], idx.size)}, got {Wn.shape}")
    # E = [W, -W_new] on coordinates (all, J): err = w H w - 2 w H_{:,J} Wn^T + Wn H_JJ Wn^T
    WH = W @ H  # (d, I)
    e = np.sum(WH * W) - 2 * np.sum(WH[:, idx] * Wn) + np.sum((Wn @ H[np.ix_(idx, idx)]) * Wn)
    return float(max(e, 0.0))


# ---------------------------------------------------------------------------------------------------------------
# selection rules
def select_neurons(H: object, W_down: object, k: int, rule: str = "greedy", *,
                   ridge: float = DEFAULT_LEVERAGE_RIDGE) -> np.ndarray:
    """Choose k of the I neurons of one expert; returns int64 indices (k,) in selection order (best first).

    Args:
        H: (I, I) gate-weighted second moment of the expert's intermediate activations (float64, PSD).
        W_down: (d, I) the expert's down projection (torch orientation).
        k: neurons to keep, 1 <= k <= I.
        rule: one of :data:`RULES` ("energy", "leverage", "qdeim", "greedy"); see the module docstring.
        ridge: only for "leverage": lambda = ridge * mean(diag(H)) in diag(H (H + lambda I)^-1).

    Deterministic: ties are broken by the lowest index (stable sorts, argmax, LAPACK's pivoted QR).
    """
    H, W = _check_H_W(H, W_down)
    I = H.shape[0]
    k = _check_k(k, I)
    if rule not in RULES:
        raise ValueError(f"unknown neuron selection rule {rule!r}; known rules: {', '.join(RULES)}")
    if rule == "greedy":
        return _pivoted(H, W, k, None)[0]
    if rule == "energy":
        score = np.diag(H) * np.einsum("di,di->i", W, W)  # (I,)
        return np.argsort(-score, kind="stable")[:k].astype(np.int64)
    if rule == "leverage":
        lam = _check_ridge(ridge) * float(np.mean(np.diag(H)))
        ev, V = np.linalg.eigh(H)  # H = V diag(ev) V^T
        ev = np.clip(ev, 0.0, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(ev > 0, ev / (ev + lam), 0.0) if lam > 0 else (ev > _PIVOT_TOL * ev.max()).astype(float)
        score = (V * V) @ f  # diag(V f V^T), (I,)
        return np.argsort(-score, kind="stable")[:k].astype(np.int64)
    # qdeim: B^T B = D H D, D = diag(||W_down[:, j]||); V_k top-k eigenvectors; pivoted QR of V_k^T (k, I)
    D = np.sqrt(np.einsum("di,di->i", W, W))  # (I,)
    ev, V = np.linalg.eigh(D[:, None] * H * D[None, :])  # ascending
    Vk = V[:, ::-1][:, :k]  # (I, k)
    _, _, piv = scipy.linalg.qr(Vk.T, pivoting=True, mode="economic", check_finite=False)
    return np.asarray(piv[:k], dtype=np.int64)


def refit_down(H: object, W_down: object, J: Sequence[int] | np.ndarray, *, ridge: float = DEFAULT_RIDGE,
               cross: np.ndarray | None = None) -> np.ndarray:
    """The refitted down projection (d, k) for kept neurons J (columns in the order of J).

    ``W_down' = W_down H[:, J] (H[J, J] + lambda I)^-1`` with ``lambda = ridge * mean(diag(H[J, J]))``
    (default ``ridge`` = :data:`DEFAULT_RIDGE` = 1e-3; ridge = 0 is the plain least-squares optimum and needs
    H_JJ non-singular). This is the Nystrom / CUR core of MoDeGPT's type-II (MLP) compression.

    ``cross`` (I, k), optional: ``sum_t g_t^2 h_t htilde_t[J]^T`` between a *target* activation h (e.g. the dense
    model's) and the activation htilde the compressed model feeds the expert; H is then htilde's second moment and
    the fit is ``W_down cross (H[J, J] + lambda I)^-1`` (least squares of W_down h on htilde[J]).
    """
    H, W = _check_H_W(H, W_down)
    idx = _check_J(J, H.shape[0])
    lam = _check_ridge(ridge) * float(np.mean(np.diag(H)[idx]))
    A = H[np.ix_(idx, idx)] + lam * np.eye(idx.size)  # (k, k)
    if cross is None:
        R = W @ H[:, idx]  # (d, k)
    else:
        C = np.asarray(cross, dtype=np.float64)
        if C.shape != (H.shape[0], idx.size):
            raise ValueError(f"cross must have shape (I, k) = {(H.shape[0], idx.size)}, got {C.shape}")
        R = W @ C  # (d, k)
    try:
        c = scipy.linalg.cho_factor(A, check_finite=False)
        return scipy.linalg.cho_solve(c, R.T, check_finite=False).T  # (d, k)
    except np.linalg.LinAlgError:  # singular H_JJ with ridge 0: minimum-norm least squares
        return np.linalg.lstsq(A, R.T, rcond=None)[0].T


def keep_for_ratio(I: int, ratio: float) -> int:
    """Neurons to keep so that *at least* a share ``ratio`` of the expert's parameters is removed (the package's
    convention for every method): floor((1 - ratio) I), at least 1. (round() instead would give 77 rather than 76
    of 256 at ratio 0.7, i.e. 69.9% removed.)"""
    if not (0.0 <= float(ratio) < 1.0):
        raise ValueError(f"ratio={ratio!r} must be in [0, 1)")
    return max(1, min(I, int(np.floor((1.0 - float(ratio)) * I + 1e-9))))


# ---------------------------------------------------------------------------------------------------------------
# global allocation
def _lower_hull(x: np.ndarray, y: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of points (x ascending): Andrew's monotone chain."""
    hull: list[int] = []
    for i in range(x.size):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or above the chord a -> i
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def allocate(curves: Sequence[np.ndarray], costs: Sequence[float], budget: float,
             floors: int | Sequence[int] = 1) -> list[int]:
    """Spend a global parameter budget across experts: neurons to keep per expert, k_e (same order as curves).

    Args:
        curves: per expert e, ``curves[e][t-1]`` = error after keeping its first t neurons, t = 1..n_e (e.g.
            :func:`error_curve` of a greedy order, normalised by the caller so errors of different layers compare).
        costs: parameters one neuron of expert e costs (3 d for SwiGLU, 2 d for GELU).
        budget: total parameters that may be kept, sum_e costs[e] k_e <= budget.
        floors: minimum neurons per expert (int for all, or per expert), each >= 1, so no expert is emptied.

    Method: marginal analysis on the lower convex hull of each curve from its floor (the classic convex-hull
    bit-allocation of Shoham & Gersho 1988): hull segments of all experts are taken in decreasing order of error
    decrease per parameter. On a convex hull the segments of one expert come in their own order, so the result is
    optimal for the convexified curves at every budget that ends on a hull vertex; non-convex stretches (a neuron
    that only pays off together with later ones) are bought whole, as one segment. The segment the budget runs out
    in is bought partially (as many neurons as fit), and cheaper segments of other experts may still be bought.
    """
    n_exp = len(curves)
    if n_exp == 0:
        raise ValueError("curves is empty: pass one error curve per expert")
    if len(costs) != n_exp:
        raise ValueError(f"got {len(costs)} costs for {n_exp} curves; pass one per-neuron cost per expert")
    fl = [int(floors)] * n_exp if isinstance(floors, (int, np.integer)) else [int(f) for f in floors]
    if len(fl) != n_exp:
        raise ValueError(f"got {len(fl)} floors for {n_exp} curves")
    cs = [float(c) for c in costs]
    if any(not (np.isfinite(c) and c > 0) for c in cs):
        raise ValueError("every per-neuron cost must be a finite number > 0")
    cv = []
    for e, c in enumerate(curves):
        a = np.asarray(c, dtype=np.float64)
        if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
            raise ValueError(f"curve {e} must be a non-empty 1-D finite array (errors for k = 1..n)")
        if not 1 <= fl[e] <= a.size:
            raise ValueError(f"floor {fl[e]} for expert {e} must be in [1, {a.size}] (no expert may be emptied)")
        cv.append(a)
    base = sum(cs[e] * fl[e] for e in range(n_exp))
    if base > budget * (1 + 1e-12):
        raise ValueError(f"budget {budget:g} is below the floors' cost {base:g}; lower the floors or raise the budget")
    left = float(budget) - base
    k = list(fl)
    # segments: (-gain per parameter, expert, start k, end k)
    heap: list[tuple[float, int, int, int]] = []
    for e, a in enumerate(cv):
        ks = np.arange(fl[e], a.size + 1)  # candidate k values
        ys = a[ks - 1]
        h = _lower_hull(ks.astype(float), ys)
        for p, q in zip(h[:-1], h[1:]):
            k0, k1 = int(ks[p]), int(ks[q])
            gain = (ys[p] - ys[q]) / ((k1 - k0) * cs[e])
            heap.append((-gain, e, k0, k1))
    heapq.heapify(heap)
    blocked = [False] * n_exp
    while heap and left > 0:
        _, e, k0, k1 = heapq.heappop(heap)
        if blocked[e] or k[e] != k0:
            continue
        n = min(k1 - k0, int(np.floor(left / cs[e] + 1e-9)))
        if n <= 0:
            blocked[e] = True
            continue
        k[e] = k0 + n
        left -= n * cs[e]
        if n < k1 - k0:
            blocked[e] = True
    return k
