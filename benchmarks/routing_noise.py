"""Why two ONNX Runtime runs of one model give slightly different WikiText-2 perplexities: near-tie routing flips.

Runs the dense shipped model through ONNX Runtime CPU over the test split twice, with different intra-op thread
counts (GEMM blocking, hence float32 rounding, depends on them), and compares token NLLs and the experts every
(token, layer) pair selected (``routing.{l}.selected`` outputs). A flipped top-k choice changes that token's output
and, through attention, later tokens'; float32 rounding alone moves an NLL by about 1e-6.

    python benchmarks/routing_noise.py --threads 1,2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import curmoe
from curmoe.app.demo import shipped_model_dir
from curmoe.eval._data import load_wikitext2
from curmoe.exporters import OnnxExportConfig, export
from curmoe.models.tokenizer import encode_split, load_tokenizer
from curmoe.runtimes import load


def run(path: Path, threads: int, X: np.ndarray, Y: np.ndarray, n_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """Token NLLs (n, T) and routing selections (layers, n*T, E) of one ORT session over windows X -> targets Y."""
    s = load(path, "onnxruntime:cpu", threads=threads)
    nll, sel = [], []
    for b in range(0, X.shape[0], 8):
        x = X[b:b + 8]
        out = s.run({"input_ids": x, "attention_mask": np.ones_like(x)})
        z = out["logits"].astype(np.float64)  # (B, T, V)
        m = z.max(-1, keepdims=True)
        lse = np.log(np.exp(z - m).sum(-1)) + m[..., 0]
        nll.append(lse - np.take_along_axis(z, Y[b:b + 8, :, None], -1)[..., 0])
        sel.append(np.stack([out[f"routing.{l}.selected"] for l in range(n_layers)], 0))
    return np.concatenate(nll, 0), np.concatenate(sel, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--threads", default="1,2", help="two intra-op thread counts to compare")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    model = curmoe.load(args.model or shipped_model_dir())
    ids = encode_split(load_tokenizer(model.tokenizer_path), load_wikitext2(args.split, data_dir=args.data_dir))
    T = model.config.max_seq_len
    n = (ids.size - 1) // T  # whole windows only
    X, Y = ids[: n * T].reshape(n, T), ids[1: n * T + 1].reshape(n, T)
    path = export(model, OnnxExportConfig(routing_outputs=True, with_cache=False),
                  Path(tempfile.mkdtemp(prefix="curmoe-noise-")) / "dense.onnx")
    t1, t2 = (int(t) for t in args.threads.split(","))
    runs = {}
    for t in (t1, t2):
        t0 = time.perf_counter()
        runs[t] = run(path, t, X, Y, model.config.n_layers)
        print(f"{t} thread(s): {args.split} ppl {np.exp(runs[t][0].mean()):.4f} on {X.size:,} tokens "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    (n1, s1), (n2, s2) = runs[t1], runs[t2]
    flip = (s1 != s2).any(-1)  # (layers, tokens): the selected expert set differs
    tok = flip.any(0).reshape(n1.shape)
    d = np.abs(n1 - n2)
    print(f"ppl ratio {np.exp(n1.mean() - n2.mean()):.6f}; routing differs on {int(flip.sum())} of {flip.size:,} "
          f"(token, layer) pairs, {int(tok.sum())} tokens")
    print(f"sum |dNLL| on tokens with a flip {d[tok].sum():.1f} (max {d[tok].max() if tok.any() else 0:.2f}); "
          f"on the other tokens {d[~tok].sum():.1f} (median {np.median(d[~tok]):.1e}, max {d[~tok].max():.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
