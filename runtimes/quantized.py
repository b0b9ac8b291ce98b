"""Validate a weight-quantised export (``curmoe quantize``) against the float64 reference, with an error budget.

Quantisation is lossy: a quantised model is not expected to match the reference to float32 noise
(:mod:`curmoe.runtimes.tolerances`), but to stay within a **budget** stated per bit width. It runs the cases of
:func:`curmoe.runtimes.validate` (prompts, a left-padded batch, cached decode steps, a perplexity sample) on the
quantised file against the reference model it was exported from, and adds one measure of its own:

- ``top1_agreement``: the share of positions whose arg-max next token equals the reference's, over
  ``top1_sequences`` random sequences of ``top1_length`` tokens (seeded).

A file passes when every measure is within :data:`QUANT_BUDGETS` of its bit width:

- ``max_rel_err = max |z_q - z_ref| / max |z_ref|`` over the real tokens of the sequences whose routing agreed
  with the reference in every layer (a quantised model may route a near tie differently, and that sequence then
  computes another function from that token on: its error, ``max_rel_err_all``, is reported, not budgeted; the
  routing agreement is; with 4 experts top-2 and int4, two thirds of the random test sequences see a flip, and
  the error is then measured on the rest);
- ``routing_agreement``: the share of (token, MoE layer) decisions with the reference's set of experts, and
  ``hard_flips == 0`` (a flip whose reference margin exceeds twice the runtime's measured router-score error is a
  wrong router, not quantisation noise; see :mod:`curmoe.runtimes.validate`);
- ``ppl_rel_diff = |ppl_q / ppl_ref - 1|`` on the perplexity sample;
- ``top1_agreement``.

How the budgets were set (measured with ``benchmarks/quantize.py``, docs/results/data/quantize.json: wt2-moe-8x
dense, neuron CUR 50/70%, per-matrix CUR 70% and SVD-LLM 70%, and wt2-moe-tiny, on ONNX Runtime CPU and OpenVINO
CPU; the worst case of each measure over the healthy models, then about 1.5-2.5x room):

- int8: max_rel_err <= 0.012 (budget 0.02), routing agreement >= 0.990 (0.97), ppl_rel <= 0.0066 (0.015), top-1
  >= 0.977 (0.95);
- int4: max_rel_err <= 0.097 (tiny; 0.083 on wt2-moe-8x) (budget 0.2), routing >= 0.938 (0.90), ppl_rel <= 0.045
  (0.08), top-1 >= 0.867 (0.80). Per-matrix CUR at 70% (test perplexity 13.7x dense before quantisation) is over
  the int4 budget (routing 0.852, ppl_rel 0.11, top-1 0.78; its WikiText-2 test perplexity rises 5.1%): the budget
  flags it, as it should;
- a corrupted weight (one expert matrix with its scales negated) costs 0.85-0.88 max_rel_err and 13-14% ppl_rel on
  the tiny model, far over both budgets (tests/test_quantize.py).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curmoe.common.errors import InvalidInputError, require
from curmoe.reference import Model
from curmoe.reference import load as load_model
from curmoe.runtimes._registry import load
from curmoe.runtimes.validate import ValidationReport, validate

__all__ = ["QUANT_BUDGETS", "QuantBudget", "QuantValidation", "quantization_of", "validate_quantized"]

_KEY = "curmoe.quantization"  # curmoe.exporters.quantize.METADATA_KEY (the runtimes read files, not exporters)


@dataclass(frozen=True)
class QuantBudget:
    """The error budget of one bit width (see the module docstring for each measure)."""

    max_rel_err: float
    routing_agreement: float
    ppl_rel: float
    top1_agreement: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


QUANT_BUDGETS: dict[int, QuantBudget] = {
    8: QuantBudget(max_rel_err=0.02, routing_agreement=0.97, ppl_rel=0.015, top1_agreement=0.95),
    4: QuantBudget(max_rel_err=0.2, routing_agreement=0.90, ppl_rel=0.08, top1_agreement=0.80),
}


@dataclass(frozen=True)
class QuantValidation:
    """:func:`validate_quantized`'s outcome: the measures, the budget, and the validation report they came from."""

    path: str
    runtime: str
    bits: int
    quantization: dict[str, Any]
    max_rel_err: float
    max_rel_err_all: float
    routing_agreement: float | None
    hard_flips: int
    ppl_rel_diff: float
    top1_agreement: float
    budget: dict[str, float]
    passed: bool
    failures: tuple[str, ...]
    report: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = list(self.failures)
        return d


def quantization_of(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``curmoe.quantization`` record of an ONNX file or IR ``.xml`` (None: not quantised by curmoe)."""
    p = Path(path)
    if p.suffix == ".xml":
        try:
            for _, el in ET.iterparse(str(p)):
                if el.tag == _KEY:
                    return json.loads(el.get("value", "null"))
        except ET.ParseError:
            raise InvalidInputError(f"{str(p)!r} is not OpenVINO IR XML; pass an .xml written by curmoe quantize") \
                from None
        return None
    onnx = require("onnx", "onnx")
    proto = onnx.load(str(p), load_external_data=False)
    meta = {m.key: m.value for m in proto.metadata_props}
    return json.loads(meta[_KEY]) if _KEY in meta else None


def _top1(path: Path, runtime: str, model: Model, n_seq: int, length: int, seed: int,
          options: dict[str, Any]) -> float:
    """Share of positions whose arg-max logit agrees with the reference's on random (n_seq, length) ids."""
    from curmoe.runtimes.generate import cache_layout, empty_cache

    sess = load(path, runtime, **options)
    rng = np.random.default_rng(seed + 7919)
    ids = rng.integers(0, model.config.vocab_size, size=(n_seq, min(length, model.config.max_seq_len)))
    mask = np.ones_like(ids)
    feeds = {"input_ids": ids, "attention_mask": mask}
    if cache_layout(sess):
        feeds |= empty_cache(sess, ids.shape[0])
    z_rt = sess.run(feeds)["logits"]  # (B, T, V)
    z_ref = model.oracle().run(ids, attention_mask=mask).logits
    return float(np.mean(z_rt.argmax(-1) == z_ref.argmax(-1)))


def validate_quantized(
    path: str | os.PathLike[str],
    model: Model | str | os.PathLike[str],
    runtime: str | None = None,
    *,
    budget: QuantBudget | None = None,
    seed: int = 0,
    top1_sequences: int = 4,
    top1_length: int = 64,
    **session_options: Any,
) -> QuantValidation:
    """Validate the quantised file ``path`` against the float64 reference ``model`` (the model it was exported
    from, or its directory) on ``runtime`` (default: onnxruntime:cpu for .onnx, openvino:cpu for .xml), judged by
    ``budget`` (default: :data:`QUANT_BUDGETS` of the file's bit width).

    Raises:
        curmoe.InvalidInputError: a file that curmoe did not quantise (validate it with curmoe.runtimes.validate).
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{str(p)!r} does not exist; write one with curmoe quantize")
    q = quantization_of(p)
    if q is None:
        raise InvalidInputError(f"{str(p)!r} has no curmoe.quantization metadata: it is not a quantised export; "
                                "validate a float export with curmoe validate")
    bits = int(q["config"]["bits"])
    budget = budget or QUANT_BUDGETS[bits]
    runtime = runtime or ("openvino:cpu" if p.suffix == ".xml" else "onnxruntime:cpu")
    ref = model if isinstance(model, Model) else load_model(model)
    rep: ValidationReport = validate(p, ref, runtime, seed=seed, **session_options)
    top1 = _top1(p, runtime, ref, top1_sequences, top1_length, seed, session_options)
    failures = []
    if not rep.max_rel_err <= budget.max_rel_err:
        failures.append(f"max_rel_err={rep.max_rel_err:.3g} > {budget.max_rel_err:g}")
    if rep.routing_agreement is not None and not rep.routing_agreement >= budget.routing_agreement:
        failures.append(f"routing_agreement={rep.routing_agreement:.4f} < {budget.routing_agreement:g}")
    if rep.hard_flips:
        failures.append(f"{rep.hard_flips} routing flip(s) with a margin over twice the router-score error: the "
                        "router itself is wrong")
    if not rep.ppl_rel_diff <= budget.ppl_rel:
        failures.append(f"|ppl_q/ppl_ref - 1|={rep.ppl_rel_diff:.3g} > {budget.ppl_rel:g}")
    if not top1 >= budget.top1_agreement:
        failures.append(f"top1_agreement={top1:.4f} < {budget.top1_agreement:g}")
    d = rep.to_dict()
    d.pop("cases", None)
    return QuantValidation(path=str(p), runtime=runtime, bits=bits, quantization=q,
                           max_rel_err=rep.max_rel_err, max_rel_err_all=rep.max_rel_err_all,
                           routing_agreement=rep.routing_agreement,
                           hard_flips=rep.hard_flips, ppl_rel_diff=rep.ppl_rel_diff, top1_agreement=top1,
                           budget=budget.to_dict(), passed=not failures, failures=tuple(failures), report=d)
