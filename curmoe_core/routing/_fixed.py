"""Routers that ignore the logits: ``hash`` (Roller et al. 2021, "Hash Layers For Large Sparse Models") and
``random`` (a baseline).

The hash uses only int64 additions, multiplications, remainders and a shift whose intermediate values stay below
2**63, so torch and ONNX graphs reproduce it bit for bit without unsigned or overflowing arithmetic.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KNUTH_MULTIPLIER", "hash_experts", "route_hash", "route_random"]

#: Knuth's multiplicative-hashing constant, floor(2**32 / golden ratio) (TAOCP vol. 3, sec. 6.4).
KNUTH_MULTIPLIER = 2654435761
_SEED_STRIDE = 1_000_003  # a prime: seed s shifts every key by s * 1_000_003 before hashing
_SLOT_STRIDE = 7_919  # a prime: slot j hashes key + 7_919 * j


def hash_experts(token_ids: np.ndarray, n_experts: int, top_k: int = 1, seed: int = 0) -> np.ndarray:
    """Experts for each token id by Fibonacci (Knuth multiplicative) hashing; depends on the id only.

    For slot ``j = 0..k-1`` of token id ``t``::

        x_j = (t + 1_000_003 * seed + 7_919 * j) mod 2**31
        h_j = (x_j * 2654435761) mod 2**32          # Knuth multiplicative hash
        e_j = (h_j * E) >> 32                       # top bits of h_j scaled to [0, E) (multiply-shift)

    and while ``e_j`` repeats an earlier slot of the same token it moves to ``(e_j + 1) mod E`` (linear
    probing), so the k experts are distinct. Consecutive ids land about ``E / golden ratio`` apart, which spreads
    a vocabulary very evenly over the experts.

    Args:
        token_ids: (N,) integer token ids in [0, 2**31).
        n_experts: E, 1 <= E < 2**31.
        top_k: distinct experts per token, 1 <= top_k <= E.
        seed: 0 <= seed < 2**31; changes the mapping.

    Returns:
        (N, top_k) int64 expert indices in slot order (before :func:`curmoe.route` sorts them by index).
    """
    t = np.asarray(token_ids, dtype=np.int64)
    out = np.empty((t.shape[0], top_k), dtype=np.int64)
    for j in range(top_k):
        x = (t + _SEED_STRIDE * seed + _SLOT_STRIDE * j) % (1 << 31)  # < 2**31
        h = (x * KNUTH_MULTIPLIER) % (1 << 32)  # product < 2**62.3, no int64 overflow
        e = (h * n_experts) >> 32  # product < 2**63 for E < 2**31
        for _ in range(j):  # at most j collisions to resolve
            clash = (out[:, :j] == e[:, None]).any(axis=1)
            if not clash.any():
                break
            e = np.where(clash, (e + 1) % n_experts, e)
        out[:, j] = e
    return out


def route_hash(n_experts: int, token_ids: np.ndarray, top_k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash routing: experts from :func:`hash_experts`, sorted by index; every gate is ``1 / top_k``.

    With ``top_k = 1`` (the paper's setting) the single gate is 1.0, i.e. the expert output is used as is.

    Returns:
        ``(experts (N, k) int64, gates (N, k) float64)``.
    """
    experts = np.sort(hash_experts(token_ids, n_experts, top_k, seed), axis=1)  # equal gates: lower index first
    return experts, np.full(experts.shape, 1.0 / top_k)


def route_random(n_tokens: int, n_experts: int, top_k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random routing baseline: each token gets ``top_k`` distinct experts, each subset equally likely.

    The generator is ``numpy.random.default_rng([seed, N])`` (seed mixed with the group size N): reproducible for
    a given group, but a token routed alone (decoding, N = 1) draws differently than in its full sequence, so
    cached decoding does not reproduce the full forward under this router.

    Returns:
        ``(experts (N, k) int64 sorted by index, gates (N, k) float64 = 1 / top_k)``.
    """
    rng = np.random.default_rng([seed, n_tokens])
    keys = rng.random((n_tokens, n_experts))  # (N, E) i.i.d. uniform: the k smallest form a uniform k-subset
    experts = np.sort(np.argsort(keys, axis=1, kind="stable")[:, :top_k], axis=1).astype(np.int64)
    return experts, np.full(experts.shape, 1.0 / top_k)
