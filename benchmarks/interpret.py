"""What CUR keeps, on the shipped model (issue 7): kept columns and rows against activation statistics.

For every expert matrix W (out x in, y = W x) a CUR keeps real columns (input features) and real rows (output
units). Activation statistics come from the routed calibration tokens of each expert (WikiText-2 train):

* a column's energy is ``E[x_j^2]`` of the matrix input (the Gram diagonal over tokens);
* a row's energy is ``E[y_i^2] = (W G W^T)_ii / N``, the mean square of that output unit.

Measured, for plain DEIM and activation-aware DEIM at ``--ratios``:

* ``energy``: the share of total column (row) energy held by the kept columns (rows), against the share a random
  choice of the same size would hold on average (``kept / total``);
* ``jaccard``: the 8 x 8 Jaccard index of the kept sets across the experts of each layer, for the index spaces
  that experts share: input features of ``up`` (the residual stream they all read) and output rows of ``down``
  (the residual stream they all write);
* ``nesting``: how much of the set kept at a higher compression ratio is inside the set kept at the next lower one;
* ``featured``: full per-index energies and kept sets for a few experts, for the figures.

Neuron CUR (``cur-neuron``: keep k real neurons per expert, refit W_down; uniform k, and ``cur-neuron global``: one
budget spent across experts and layers) at the same ratios. Neuron j of an expert is row j of W_gate and W_up and
column j of W_down; its output energy is ``diag(H)_j * ||W_down[:, j]||^2`` with H the expert's gate-weighted
intermediate second moment on its routed calibration tokens (the statistics the method itself uses):

* ``neuron_kept``: the kept neuron indices of every expert at every ratio, its k, the share of the expert's output
  energy the kept neurons hold (a random choice holds k / I on average; the top-k by energy is the most any set of
  k can hold), the expert's relative output error, routed tokens and dense output energy;
* ``neuron_rows``: those shares averaged over the experts, per method and ratio;
* ``neuron_jaccard``: the Jaccard of kept index sets across the experts of a layer. Neuron j of one expert and
  neuron j of another are different units (the index is only a position), so this is a sanity baseline that should
  sit at chance; the meaningful overlap is across ratios:
* ``neuron_nesting``: the share of an expert's set at a higher ratio that is inside its set at the next lower one;
* ``neuron_agreement``: Jaccard between the uniform and the global set of the same expert at the same ratio;
* ``neuron_featured``: per-neuron output energies of the featured experts, for the figures.

    python benchmarks/interpret.py --out docs/results/data/interpret.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import curmoe
from curmoe.app.calibdata import calibration_ids
from curmoe.app.demo import shipped_model_dir
from curmoe.app.results import provenance, write_results
from curmoe.compress import calibrate

# The default (randomized range finder) and, for the nesting question, the same rule on the exact SVD: DEIM picks
# index j from the first j singular vectors only, so with one exact basis the kept sets are nested across ranks.
METHODS = {"cur-deim": dict(selection="deim"), "cur-deim aware": dict(selection="deim", activation_aware=True),
           "cur-deim aware, exact SVD": dict(selection="deim", activation_aware=True, randomized=False)}
NEURON_METHODS = {"cur-neuron": dict(), "cur-neuron global": dict(allocation="global")}


def energies(model: curmoe.Model, calib: Any, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(column energy (in,), row energy (out,)) of dense expert matrix ``key`` on its calibration statistics."""
    stats, _ = calib.layers[int(key.split(".")[1])].stats_for(model, key, min_tokens=1)
    W = model.experts[key].W.astype(np.float64)  # (out, in)
    G = stats.gram / max(stats.n_tokens, 1)  # (in, in)
    return stats.second_moment, np.einsum("ij,jk,ik->i", W, G, W)


def neuron_energy(model: curmoe.Model, calib: Any, prefix: str, min_tokens: int) -> tuple[np.ndarray, dict]:
    """Output energy per neuron ``diag(H)_j ||W_down[:, j]||^2`` (I,) of dense expert ``prefix`` and its facts."""
    stats, source = calib.layers[int(prefix.split(".")[1])].hidden_for(model, prefix, min_tokens)
    W = np.asarray(model.experts[f"{prefix}.down"].dense(), np.float64)  # (d, I)
    H = stats.gram
    e = np.diag(H) * np.einsum("di,di->i", W, W)
    return e, {"n_tokens": int(stats.n_tokens), "stats": source, "output_energy": float(np.sum((W @ H) * W))}


def _jaccard_chance(a: int, b: int, n: int) -> float:
    """Jaccard of two random subsets of sizes a and b of n items (ratio of the expectations)."""
    inter = a * b / n
    return inter / (a + b - inter)


def neuron_measurements(model: curmoe.Model, calib: Any, ids: np.ndarray, ratios: list[float],
                        featured: list[tuple[int, int]], timings: dict[str, float]) -> dict[str, Any]:
    """Everything the neuron-CUR section of the page reads (see the module docstring)."""
    cfg = model.config
    L, E = cfg.n_layers, cfg.moe.n_experts
    prefixes = [f"layers.{l}.experts.{e}" for l in range(L) for e in range(E)]
    min_tokens = curmoe.NeuronConfig(ratio=0.5).min_tokens
    en = {p: neuron_energy(model, calib, p, min_tokens) for p in prefixes}
    kept: dict[tuple[str, float], dict[str, np.ndarray]] = {}
    errors: dict[tuple[str, float], dict[str, float]] = {}
    for method, kw in NEURON_METHODS.items():
        for r in ratios:
            t0 = time.perf_counter()
            small = curmoe.compress(model, curmoe.NeuronConfig(ratio=r, **kw), calib_ids=ids, progress=False)
            timings[f"{method}@{r}"] = round(time.perf_counter() - t0, 2)
            rec = small.config.compression["matrices"]
            kept[method, r] = {}
            errors[method, r] = {}
            for p in prefixes:
                J = np.asarray(small.experts[f"{p}.down"].neurons, np.int64)
                assert J.tolist() == rec[f"{p}.down"]["neurons"], f"{p}: stored neurons differ from the record"
                assert np.all(np.diff(J) > 0), f"{p}: kept neurons are not sorted, unique indices"
                kept[method, r][p] = J
                errors[method, r][p] = float(rec[f"{p}.down"]["output_error"])

    def share(e: np.ndarray, J: np.ndarray) -> float:
        return float(e[J].sum() / e.sum())

    kept_rows, summary = [], []
    for (method, r), sets in kept.items():
        shares, uni, best, errs = [], [], [], []
        for p in prefixes:
            e, facts = en[p]
            J = sets[p]
            top = float(np.sort(e)[::-1][: len(J)].sum() / e.sum())
            l, x = (int(v) for v in p.split(".")[1::2])
            kept_rows.append({"method": method, "ratio": r, "layer": l, "expert": x, "k": len(J), "of": len(e),
                              "energy_share": share(e, J), "top_energy_share": top,
                              "output_error": errors[method, r][p], "neurons": J.tolist()} | facts)
            shares.append(share(e, J))
            uni.append(len(J) / len(e))
            best.append(top)
            errs.append(errors[method, r][p])
        summary.append({"method": method, "ratio": r, "energy_share": float(np.mean(shares)),
                        "uniform_share": float(np.mean(uni)), "top_energy_share": float(np.mean(best)),
                        "energy_share_min": float(np.min(shares)), "output_error": float(np.mean(errs)),
                        "k_min": int(min(len(J) for J in sets.values())),
                        "k_max": int(max(len(J) for J in sets.values()))})

    jaccard_rows = []
    for (method, r), sets in kept.items():
        for l in range(L):
            ps = [f"layers.{l}.experts.{x}" for x in range(E)]
            m = np.array([[curmoe.jaccard(sets[a], sets[b]) for b in ps] for a in ps])
            n = len(en[ps[0]][0])
            ch = np.array([[_jaccard_chance(len(sets[a]), len(sets[b]), n) for b in ps] for a in ps])
            off = ~np.eye(E, dtype=bool)
            jaccard_rows.append({"method": method, "ratio": r, "layer": l, "matrix": m.tolist(),
                                 "mean_offdiag": float(m[off].mean()), "chance": float(ch[off].mean())})

    nesting_rows = []
    for method in NEURON_METHODS:
        for lo, hi in zip(ratios, ratios[1:]):
            c = [len(np.intersect1d(kept[method, hi][p], kept[method, lo][p])) / len(kept[method, hi][p])
                 for p in prefixes]
            nested = [bool(np.isin(kept[method, hi][p], kept[method, lo][p]).all()) for p in prefixes]
            nesting_rows.append({"method": method, "from": lo, "to": hi, "contained": float(np.mean(c)),
                                 "contained_min": float(np.min(c)), "nested_experts": float(np.mean(nested))})

    agreement = []
    names = list(NEURON_METHODS)
    for r in ratios:
        js = [curmoe.jaccard(kept[names[0], r][p], kept[names[1], r][p]) for p in prefixes]
        agreement.append({"a": names[0], "b": names[1], "ratio": r, "jaccard": float(np.mean(js)),
                          "jaccard_min": float(np.min(js))})

    feats = [{"layer": l, "expert": x, "energy": en[f"layers.{l}.experts.{x}"][0].tolist()} for l, x in featured]
    return {"neuron_methods": names, "neuron_rows": summary, "neuron_kept": kept_rows,
            "neuron_jaccard": jaccard_rows, "neuron_nesting": nesting_rows, "neuron_agreement": agreement,
            "neuron_featured": feats}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--ratios", default="0.3,0.5,0.7,0.8")
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--featured", default="1:0,1:1,3:0", help="LAYER:EXPERT pairs whose full profiles are stored")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="docs/results/data/interpret.json")
    args = p.parse_args(argv)
    prov = provenance(argv)  # the tree the run starts from (a long run outlives commits made meanwhile)
    model_dir = args.model or shipped_model_dir()
    model = curmoe.load(model_dir)
    cfg = model.config
    L, E = cfg.n_layers, cfg.moe.n_experts
    ratios = [float(r) for r in args.ratios.split(",")]
    ids = calibration_ids("wikitext2:train", model, data_dir=args.data_dir, n_tokens=args.calib_tokens)
    calib = calibrate(model, ids, progress=False)  # the one pass every one-pass method below also makes
    keys = [f"layers.{l}.experts.{e}.{n}" for l in range(L) for e in range(E) for n in ("gate", "up", "down")]
    en = {k: energies(model, calib, k) for k in keys}

    kept: dict[tuple[str, float], dict[str, tuple[np.ndarray, np.ndarray]]] = {}  # (method, ratio) -> key -> sets
    timings = {}
    for method, kw in METHODS.items():
        for r in ratios:
            t0 = time.perf_counter()
            small = curmoe.compress(model, curmoe.CURConfig(ratio=r, **kw), calib_ids=ids, progress=False)
            timings[f"{method}@{r}"] = round(time.perf_counter() - t0, 2)
            kept[method, r] = {k: (np.sort(small.experts[k].cols), np.sort(small.experts[k].rows)) for k in keys}

    def share(e: np.ndarray, idx: np.ndarray) -> float:
        return float(e[idx].sum() / e.sum())

    energy_rows = []
    for (method, r), sets in kept.items():
        for side, pos in (("columns", 0), ("rows", 1)):
            s = [share(en[k][pos], sets[k][pos]) for k in keys]
            u = [len(sets[k][pos]) / len(en[k][pos]) for k in keys]
            energy_rows.append({"method": method, "ratio": r, "side": side, "energy_share": float(np.mean(s)),
                                "uniform_share": float(np.mean(u)), "energy_share_min": float(np.min(s))})

    def jac(sets: dict, name: str, pos: int, layer: int) -> list[list[float]]:
        ks = [f"layers.{layer}.experts.{e}.{name}" for e in range(E)]
        return [[curmoe.jaccard(sets[a][pos], sets[b][pos]) for b in ks] for a in ks]

    jaccard_rows = []
    for (method, r), sets in kept.items():
        for name, pos, what in (("up", 0, "up columns (input features)"), ("down", 1, "down rows (output features)")):
            for layer in range(L):
                m = np.asarray(jac(sets, name, pos, layer))
                off = m[~np.eye(E, dtype=bool)]
                n_in = len(en[f"layers.{layer}.experts.0.{name}"][pos])
                k = len(sets[f"layers.{layer}.experts.0.{name}"][pos])
                chance = k / (2 * n_in - k)  # E|A & B| / |A | B| for two random k-subsets of n: k^2/n / (2k - k^2/n)
                jaccard_rows.append({"method": method, "ratio": r, "what": what, "layer": layer, "matrix": m.tolist(),
                                     "mean_offdiag": float(off.mean()), "chance": chance, "kept": k, "of": n_in})

    nesting_rows = []
    for method in METHODS:
        for lo, hi in zip(ratios, ratios[1:]):
            for side, pos in (("columns", 0), ("rows", 1)):
                c = [len(np.intersect1d(kept[method, hi][k][pos], kept[method, lo][k][pos]))
                     / len(kept[method, hi][k][pos]) for k in keys]
                nesting_rows.append({"method": method, "from": lo, "to": hi, "side": side,
                                     "contained": float(np.mean(c)), "contained_min": float(np.min(c))})

    pairs = [tuple(int(x) for x in pair.split(":")) for pair in args.featured.split(",")]
    neurons = neuron_measurements(model, calib, ids, ratios, pairs, timings)

    featured = []
    for layer, e in pairs:
        for name in ("up", "down"):
            k = f"layers.{layer}.experts.{e}.{name}"
            featured.append({"layer": layer, "expert": e, "matrix": name, "shape": list(model.experts[k].shape),
                             "col_energy": en[k][0].tolist(), "row_energy": en[k][1].tolist(),
                             "kept": {f"{m}@{r}": {"cols": kept[m, r][k][0].tolist(), "rows": kept[m, r][k][1].tolist()}
                                      for (m, r) in kept}})
    results = {"provenance": prov, "model": Path(str(model_dir)).name, "ratios": ratios,
               "calib": f"wikitext2:train, first {args.calib_tokens} tokens", "compress_s": timings,
               "rows": energy_rows, "jaccard": jaccard_rows, "nesting": nesting_rows, "featured": featured} | neurons
    write_results(args.out, results)
    for r in energy_rows:
        print(f"{r['method']:15s} {r['ratio']:.1f} {r['side']:8s} kept energy {r['energy_share']:.3f} "
              f"(uniform {r['uniform_share']:.3f})")
    for r in jaccard_rows:
        if r["ratio"] == 0.7:
            print(f"{r['method']:15s} layer {r['layer']} {r['what']:30s} mean Jaccard {r['mean_offdiag']:.3f} "
                  f"(chance {r['chance']:.3f})")
    for r in nesting_rows:
        print(f"{r['method']:15s} {r['from']} -> {r['to']} {r['side']:8s} contained {r['contained']:.3f}")
    for r in neurons["neuron_rows"]:
        print(f"{r['method']:17s} {r['ratio']:.1f} kept energy {r['energy_share']:.3f} (random {r['uniform_share']:.3f}, "
              f"top-k {r['top_energy_share']:.3f}), output error {r['output_error']:.3f}, k {r['k_min']}-{r['k_max']}")
    for r in neurons["neuron_jaccard"]:
        print(f"{r['method']:17s} {r['ratio']:.1f} layer {r['layer']} cross-expert Jaccard {r['mean_offdiag']:.3f} "
              f"(chance {r['chance']:.3f})")
    for r in neurons["neuron_nesting"]:
        print(f"{r['method']:17s} {r['from']} -> {r['to']} contained {r['contained']:.3f} "
              f"(nested experts {r['nested_experts']:.2f})")
    for r in neurons["neuron_agreement"]:
        print(f"{r['a']} vs {r['b']} @ {r['ratio']}: Jaccard {r['jaccard']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
