"""``curmoe inspect COMPRESSED_MODEL [--expert L.E] [--json]``: what each expert kept, and what it cost.

For every expert matrix of a compressed model directory:

* what it kept: CUR keeps real rows (output units) and real columns (input features) of W; neuron CUR keeps real
  neurons of the expert (rows of W_gate and W_up, columns of W_down); SVD keeps no real row or column (its factors
  mix all of them), so it reports only its rank;
* the energy of what it kept. Without calibration it reads the checkpoint: the squared norm of each kept real row
  ``||R[i, :]||^2`` and column ``||C[:, j]||^2`` (they are rows and columns of the dense W) and, per kept neuron,
  its output weight ``||W_down'[:, j]||^2``. With ``--calib TEXT`` one pass of the compressed model over the text
  measures activation energy instead: a kept column's input second moment ``E[x_j^2]`` (and the share of the
  matrix's whole input energy the kept columns hold; a random choice holds ``c / n``), a kept row's output energy
  ``(W' G W'^T)_ii / N``, a kept neuron's output energy ``diag(H)_j ||W_down'[:, j]||^2`` (H: the gate-weighted
  second moment of the kept neurons, as in ``benchmarks/interpret.py``);
* its overlap with the other experts of the layer: the Jaccard index of the kept sets in each index space, per
  expert and averaged per layer, beside the chance level of random sets of the same sizes;
* the achieved ratio per matrix ``1 - params(factors) / (m n)`` (index vectors not counted, as everywhere) and on
  disk: the bytes of the checkpoint's safetensors files against the dense model's parameters in the same dtype.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from curmoe.app.cli import _emit, _load_calib, _load_model, command

__all__ = ["inspect_model"]


def _expert_label(prefix: str) -> str:
    """"layers.3.experts.5" -> "3.5"; "layers.3.shared.0" -> "3.s0"."""
    parts = prefix.split(".")
    return f"{parts[1]}.{parts[3]}" if parts[2] == "experts" else f"{parts[1]}.s{parts[3]}"


def _norms2(A: np.ndarray, axis: int) -> np.ndarray:
    A = np.asarray(A, np.float64)
    return np.einsum("ij,ij->j" if axis == 0 else "ij,ij->i", A, A)


def _matrix(lin: Any, rec: dict[str, Any], d_ff: int) -> dict[str, Any]:
    """What one (possibly factorised) matrix kept, from the checkpoint alone; ``d_ff``: the expert's original width
    (a neuron-CUR matrix is stored smaller: (k, n) for gate/up, (m, k) for down)."""
    m, n = lin.shape
    if lin.kind == "neuron":
        m, n = (d_ff, n) if lin.role == "rows" else (m, d_ff)
    out: dict[str, Any] = {"kind": lin.kind, "shape": [int(m), int(n)], "params": int(lin.n_params),
                           "dense_params": int(m * n), "ratio": 1.0 - lin.n_params / (m * n)}
    for f in ("output_error", "weight_error", "stats", "n_tokens"):
        if rec.get(f) is not None:
            out[f] = rec[f]
    if lin.kind == "cur":
        order_r = np.argsort(lin.rows, kind="stable")
        out |= {"rank": lin.rank, "rows": lin.rows[order_r].tolist(),
                "row_energy": _norms2(lin.R, 1)[order_r].tolist()}  # ||W[i, :]||^2: R holds real rows
        if lin.U is None:  # folded: C = C U, no longer real columns
            out |= {"cols": None, "note": "U folded into C: the kept columns are not stored"}
        else:
            order_c = np.argsort(lin.cols, kind="stable")
            out |= {"cols": lin.cols[order_c].tolist(), "col_energy": _norms2(lin.C, 0)[order_c].tolist()}
    elif lin.kind == "svd":
        out |= {"rank": lin.rank, "note": "SVD keeps no real row or column (its factors mix all of them)"}
    elif lin.kind == "neuron":
        out |= {"role": lin.role, "neurons": np.asarray(lin.neurons).tolist(), "stored_shape": list(lin.shape)}
    return out


def _d_ff(model: Any, prefix: str) -> int:
    return int(model.config.moe.shared_d_ff if ".shared." in prefix else model.config.moe.d_ff)


def _index_sets(mat: dict[str, Any]) -> dict[str, list[int]]:
    """The index spaces a matrix record kept sets in: {"rows": [...], "cols": [...]} or {"neurons": [...]}."""
    if mat["kind"] == "cur":
        return {"rows": mat["rows"]} | ({"cols": mat["cols"]} if mat["cols"] is not None else {})
    return {}


def _activation_energy(model: Any, calib_ids: np.ndarray, experts: dict[str, dict[str, Any]]) -> None:
    """Replace the weight energies by activation energies from one pass of the compressed model (in place)."""
    from curmoe.compress import calibrate
    from curmoe.decompose import energy_share

    calib = calibrate(model, calib_ids, progress=False)
    for prefix, ex in experts.items():
        lc = calib.layers[int(prefix.split(".")[1])]
        for name, mat in ex["matrices"].items():
            key = f"{prefix}.{name}"
            stats, source = lc.stats_for(model, key, min_tokens=1)
            mat["calib_tokens"], mat["calib_stats"] = int(stats.n_tokens), source
            if mat["kind"] != "cur":
                continue
            x2 = stats.second_moment  # (n,) E[x_j^2] of this matrix's input
            if mat["cols"] is not None:
                mat["col_energy"] = x2[mat["cols"]].tolist()
                mat["col_energy_share"] = energy_share(x2, mat["cols"])
                mat["col_uniform_share"] = len(mat["cols"]) / x2.size
            W = np.asarray(model.experts[key].dense(), np.float64)  # (m, n), the compressed matrix
            y2 = np.einsum("ij,jk,ik->i", W, stats.gram / stats.n_tokens, W)  # (m,) E[y_i^2]
            mat["row_energy"] = y2[mat["rows"]].tolist()
            mat["row_energy_share"] = energy_share(y2, mat["rows"])
            mat["row_uniform_share"] = len(mat["rows"]) / y2.size
        if "neurons" in ex:
            H, src = lc.hidden_for(model, prefix, min_tokens=1)
            Wd = np.asarray(model.experts[f"{prefix}.down"].dense(), np.float64)  # (d, k)
            ex["neurons"]["energy"] = (np.diag(H.gram) / H.n_tokens * _norms2(Wd, 0)).tolist()
            ex["neurons"]["calib_tokens"], ex["neurons"]["calib_stats"] = int(H.n_tokens), src


def inspect_model(model: Any, *, calib_ids: np.ndarray | None = None, model_dir: str | Path | None = None,
                  calib_source: str | None = None) -> dict[str, Any]:
    """Everything ``curmoe inspect`` prints (see the module docstring), as a JSON-ready dict."""
    from curmoe.common.errors import InvalidInputError
    from curmoe.decompose import jaccard_chance, jaccard_matrix

    comp = model.config.compression or {}
    if not model.config.factors:
        raise InvalidInputError("this model is not compressed (its config.json has no factors); inspect a model "
                                "written by curmoe compress")
    recs = comp.get("matrices", {})
    experts: dict[str, dict[str, Any]] = {}
    for key, lin in model.experts.items():
        prefix, name = key.rsplit(".", 1)
        ex = experts.setdefault(prefix, {"expert": _expert_label(prefix), "layer": int(prefix.split(".")[1]),
                                         "matrices": {}})
        ex["matrices"][name] = _matrix(lin, recs.get(key, {}), _d_ff(model, prefix))
    for prefix, ex in experts.items():
        down = model.experts[f"{prefix}.down"]
        if down.kind == "neuron":
            J = np.asarray(down.neurons, np.int64)
            ex["neurons"] = {"kept": J.tolist(), "of": _d_ff(model, prefix), "energy": _norms2(down.W, 0).tolist()}
        p = sum(m["params"] for m in ex["matrices"].values())
        dp = sum(m["dense_params"] for m in ex["matrices"].values())
        ex |= {"params": p, "dense_params": dp, "ratio": 1.0 - p / dp}
    energy = "weight"
    if calib_ids is not None:
        _activation_energy(model, calib_ids, experts)
        energy = f"activation ({int(np.asarray(calib_ids).size)} tokens of {calib_source or 'the given ids'})"

    # overlap across the routed experts of each layer, per index space ("gate.cols", "down.rows", "neurons", ...)
    layers: dict[int, dict[str, Any]] = {}
    for l in sorted({ex["layer"] for ex in experts.values()}):
        group = [(p, ex) for p, ex in experts.items() if ex["layer"] == l and ".experts." in p]
        spaces: dict[str, dict[str, Any]] = {}
        names = sorted({s for _, ex in group for s in _spaces(ex)})
        for space in names:
            members = [(p, ex) for p, ex in group if space in _spaces(ex)]
            if len(members) < 2:
                continue
            sets = [_spaces(ex)[space][0] for _, ex in members]
            n = _spaces(members[0][1])[space][1]
            J = jaccard_matrix(sets)
            off = ~np.eye(len(sets), dtype=bool)
            chance = np.array([[jaccard_chance(len(a), len(b), n) for b in sets] for a in sets])
            spaces[space] = {"mean_jaccard": float(J[off].mean()), "chance": float(chance[off].mean()),
                             "size": n}
            for i, (_, ex) in enumerate(members):
                others = {members[j][1]["expert"]: float(J[i, j]) for j in range(len(members)) if j != i}
                ex.setdefault("jaccard", {})[space] = {"mean": float(np.mean(list(others.values()))),
                                                       "with": others}
        layers[l] = {"layer": l, "jaccard": spaces}

    out: dict[str, Any] = {
        "method": comp.get("method"), "target_ratio": comp.get("target_ratio"),
        "ratio_expert_params": comp.get("ratio_expert_params"), "ratio_all_params": comp.get("ratio_all_params"),
        "params_before": comp.get("params_before"), "params_after": model.n_params(), "energy": energy,
        "layers": list(layers.values()), "experts": list(experts.values()),
    }
    if model_dir is not None:
        files = sorted(Path(model_dir).glob("*.safetensors"))
        on_disk = sum(f.stat().st_size for f in files)
        itemsize = np.dtype(model.storage_dtype or model.dtype).itemsize
        dense = int(comp["params_before"]) * itemsize if comp.get("params_before") else None
        out["disk"] = {"files": [f.name for f in files], "bytes": on_disk, "dense_bytes": dense,
                       "dtype": str(np.dtype(model.storage_dtype or model.dtype)),
                       "ratio": None if not dense else 1.0 - on_disk / dense}
    return out


def _spaces(ex: dict[str, Any]) -> dict[str, tuple[list[int], int]]:
    """Index space name -> (kept set, size of the space) for one expert record."""
    out: dict[str, tuple[list[int], int]] = {}
    if "neurons" in ex:
        out["neurons"] = (ex["neurons"]["kept"], ex["neurons"]["of"])
    for name, mat in ex["matrices"].items():
        m, n = mat["shape"]
        for axis, kept in _index_sets(mat).items():
            out[f"{name}.{axis}"] = (kept, m if axis == "rows" else n)
    return out


# CLI ----------------------------------------------------------------------------------------------------------
def _fmt_idx(idx: list[int], energy: list[float] | None, top: int = 12) -> str:
    if energy is None:
        return f"{len(idx)} kept: {idx[:top]}{' ...' if len(idx) > top else ''}"
    order = np.argsort(energy)[::-1][:top]
    return f"{len(idx)} kept; highest energy: " + ", ".join(f"{idx[i]} ({energy[i]:.3g})" for i in order) \
        + (" ..." if len(idx) > top else "")


def _render(r: dict[str, Any]) -> str:
    lines = [(f"{r['model_dir']}: {r['method']}, {100 * (r['ratio_expert_params'] or 0):.1f}% of expert parameters "
              f"removed ({100 * (r['ratio_all_params'] or 0):.1f}% of all)")]
    d = r.get("disk")
    if d and d["dense_bytes"]:
        lines.append(f"on disk: {d['bytes']:,} bytes against {d['dense_bytes']:,} for the dense model's parameters in "
                     f"{d['dtype']} ({100 * d['ratio']:.1f}% smaller; index vectors and headers included)")
    lines.append(f"energy: {r['energy']}" + ("" if r["energy"] != "weight" else
                 " (squared norms of the kept real rows/columns and neuron output weights in the checkpoint; "
                 "--calib TEXT measures activation energy)"))
    for lay in r["layers"]:
        if lay["jaccard"]:
            lines.append(f"layer {lay['layer']} overlap across experts (mean Jaccard, chance): " + "; ".join(
                f"{s} {v['mean_jaccard']:.3f} ({v['chance']:.3f})" for s, v in lay["jaccard"].items()))
    lines += ["", "| expert | matrix | kind | shape | kept | ratio | mean Jaccard vs the layer's experts |",
              "| --- | --- | --- | --- | --- | ---: | --- |"]
    for ex in r["experts"]:
        jac = ex.get("jaccard", {})
        for name, m in ex["matrices"].items():
            if m["kind"] == "cur":
                kept = f"{len(m['rows'])} rows, " + (f"{len(m['cols'])} cols" if m["cols"] is not None else "cols folded")
            elif m["kind"] == "neuron":
                kept = f"{len(m['neurons'])} neurons"
            elif m["kind"] == "svd":
                kept = f"rank {m['rank']} (no real rows/cols)"
            else:
                kept = "dense"
            js = ", ".join(f"{s} {v['mean']:.3f}" for s, v in jac.items() if s.startswith(f"{name}.") or
                           (s == "neurons" and name == "down"))
            lines.append(f"| {ex['expert']} | {name} | {m['kind']} | {m['shape'][0]}x{m['shape'][1]} | {kept} | "
                         f"{m['ratio']:.3f} | {js or '-'} |")
    if r.get("expert_detail"):
        for ex in r["experts"]:
            lines += ["", (f"expert {ex['expert']}: {ex['params']:,} of {ex['dense_params']:,} parameters "
                           f"(ratio {ex['ratio']:.3f})")]
            if "neurons" in ex:
                lines.append(f"  neurons: {_fmt_idx(ex['neurons']['kept'], ex['neurons']['energy'])} of "
                             f"{ex['neurons']['of']}")
            for name, m in ex["matrices"].items():
                if m["kind"] == "cur":
                    lines.append(f"  {name} rows: {_fmt_idx(m['rows'], m['row_energy'])}")
                    if m["cols"] is not None:
                        lines.append(f"  {name} cols: {_fmt_idx(m['cols'], m['col_energy'])}")
                for f in ("col_energy_share", "row_energy_share"):
                    if f in m:
                        u = m[f.replace("energy", "uniform")]
                        lines.append(f"  {name} {f.split('_')[0]}s hold {100 * m[f]:.1f}% of the energy "
                                     f"(a random choice: {100 * u:.1f}%)")
            for s, v in ex.get("jaccard", {}).items():
                lines.append(f"  Jaccard {s}: " + ", ".join(f"{k} {x:.3f}" for k, x in v["with"].items()))
    return "\n".join(lines)


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="a compressed model directory (written by curmoe compress)")
    p.add_argument("--expert", default=None, metavar="L.E",
                   help="show one expert in full (layer.expert, e.g. 0.3; shared experts: 0.s0)")
    p.add_argument("--calib", default=None,
                   help="measure activation energy on this text (wikitext2:train or a text FILE) instead of weight "
                        "energy (default: weight energy from the checkpoint, no text needed)")
    p.add_argument("--calib-tokens", type=int, default=4096, help="tokens of --calib text (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="WikiText-2 folder (default: $CURMOE_DATA_DIR)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


@command("inspect", "what each expert of a compressed model kept (rows, columns or neurons), their energy and "
                    "overlap across experts, the ratio per matrix and on disk")
def _inspect(args: argparse.Namespace) -> int:
    from curmoe.common.errors import InvalidInputError

    model = _load_model(args.model_dir)
    labels = {_expert_label(k.rsplit(".", 1)[0]) for k in model.experts}
    if args.expert is not None and args.expert not in labels:
        some = sorted(labels, key=lambda s: (int(s.split(".")[0]), s))[:6]
        raise InvalidInputError(f"--expert {args.expert!r} is not an expert of this model; use LAYER.EXPERT, "
                                f"e.g. {', '.join(some)}")
    calib = _load_calib(args.calib, model, args.data_dir, args.calib_tokens)
    r = inspect_model(model, calib_ids=calib, model_dir=args.model_dir, calib_source=args.calib)
    r["model_dir"] = args.model_dir
    if args.expert is not None:
        r["experts"] = [ex for ex in r["experts"] if ex["expert"] == args.expert]
        r["expert_detail"] = True
    _emit(r, args.json, _render)
    return 0


_inspect.configure = _configure  # type: ignore[attr-defined]
