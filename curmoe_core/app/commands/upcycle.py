"""``curmoe upcycle MODEL -o OUT [--experts E] [--top-k K] [--calib wikitext2:train] [--steps N]``.

Splits every dense FFN of MODEL into E experts by partitioning its neurons (balanced k-means of their gate/up rows),
adds a ``select`` router per layer (top-k, every gate exactly 1: at k = E the MoE is the dense model), trains only
the routers on calibration text (distillation to the dense FFN outputs, ``--steps`` per layer) and writes a normal
curmoe MoE checkpoint (its tokenizer files with it) plus ``upcycle.json`` (losses before/after, cost). Library:
:func:`curmoe.models.upcycle.upcycle`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from curmoe.app.cli import _check_model_output, _emit, _load_calib, _load_model, command

__all__: list[str] = []


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a dense curmoe model directory (e.g. the folder `curmoe pretrained` prints)")
    p.add_argument("-o", "--output", required=True, help="the MoE model directory to write")
    p.add_argument("--experts", type=int, default=8, help="experts per layer; must divide the FFN width "
                                                           "(default: %(default)s)")
    p.add_argument("--top-k", type=int, default=2, help="experts per token (default: %(default)s; = --experts "
                                                         "reproduces the dense model)")
    p.add_argument("--calib", default="wikitext2:train",
                   help="router-training text: wikitext2:train or a text file; 'none' keeps the centroid routers "
                        "(default: %(default)s)")
    p.add_argument("--calib-tokens", type=int, default=8192,
                   help="router-training tokens from --calib (default: %(default)s)")
    p.add_argument("--steps", type=int, default=200, help="router training steps per layer (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of the routers (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the neuron clustering and router training (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="WikiText-2 folder (default: $CURMOE_DATA_DIR)")
    p.add_argument("--force", action="store_true", help="replace an existing output model directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _render(r: dict[str, Any]) -> str:
    rep = r["report"]
    lines = [f"wrote {r['output']}: {r['experts']} experts per layer, top-{r['top_k']} ({r['seconds']} s)"]
    if rep.get("layers"):
        lines.append(f"router training: {rep['steps']} steps x {len(rep['layers'])} layers on "
                     f"{rep['train_tokens']} tokens ({rep['collect_s']} s collecting FFN inputs, {rep['train_s']} s "
                     f"training); distillation loss on {rep['holdout_tokens']} held-out tokens "
                     f"{rep['mean_loss_before']:.4f} -> {rep['mean_loss_after']:.4f} (mean over layers)")
    else:
        lines.append("routers untrained (centroid initialisation)")
    return "\n".join(lines)


@command("upcycle", "split a dense model's FFNs into experts (neuron partition) and train routers: an MoE")
def _upcycle(args: argparse.Namespace) -> int:
    from curmoe.common.io import atomic_write
    from curmoe.models.upcycle import UpcycleConfig, upcycle

    _check_model_output(args.output, args.force)
    cfg = UpcycleConfig(n_experts=args.experts, top_k=args.top_k, steps=args.steps, lr=args.lr, seed=args.seed)
    model = _load_model(args.model)
    calib = None if args.calib == "none" else _load_calib(args.calib, model, args.data_dir, args.calib_tokens)
    t0 = time.perf_counter()
    if not args.json:
        print(f"upcycling {args.model}: {cfg.n_experts} experts, top-{cfg.top_k}", file=sys.stderr, flush=True)
    moe, report = upcycle(model, cfg, calib, progress=not args.json)
    out = Path(args.output)
    moe.save(out)
    rec = {"output": str(out), "model": args.model, "experts": cfg.n_experts, "top_k": cfg.top_k,
           "calib": None if calib is None else {"source": args.calib, "tokens": int(calib.size)},
           "seconds": round(time.perf_counter() - t0, 1), "report": report.to_dict()}
    text = json.dumps(rec, indent=1) + "\n"
    atomic_write(out / "upcycle.json", lambda tmp: tmp.write_text(text))
    _emit(rec, args.json, _render)
    return 0


_upcycle.configure = _configure  # type: ignore[attr-defined]
