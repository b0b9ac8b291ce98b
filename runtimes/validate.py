"""Validate an exported model on a runtime against the float64 NumPy reference on the same inputs.

Cases: single prompts of several lengths, a left-padded batch of 3, a cached decode run (prompt, then one token
at a time through the runtime's own present -> past cache) when the graph has a cache, and a perplexity sample.

Measures (all over real tokens only):

- ``routing_agreement``: the share of (token, MoE layer) pairs whose set of selected experts is identical to the
  reference's. The runtime's selection is read from the tensors ``routing.{l}.selected`` (B*T, E) that every
  non-fused curmoe export computes (exact, whatever the router); for ``fused_moe`` exports, whose routing happens
  inside com.microsoft.MoE, it is recomputed with ``curmoe.route`` from ``routing.{l}.logits``. When the file does
  not output them already (export with ``routing_outputs=True`` to avoid this), a copy with the outputs added is
  written next to the file and deleted afterwards (with external data the weights are shared; otherwise the copy
  holds them too).
- ``max_abs_err`` = max |z_rt - z_ref| over every logit of the sequences whose routing matched the reference in
  every layer (a near-tie that flips an expert makes the two models compute different functions from that token
  on, for that sequence and its later decode steps; such sequences are counted in ``diverged_sequences`` and
  their errors reported in ``max_abs_err_all`` / ``max_rel_err_all``); ``max_rel_err`` = max_abs_err / max |z_ref|
  (the largest reference logit over all cases, so the measure is scale-free).
- perplexity parity on a token sample: ``ppl_rel_diff = |ppl_rt / ppl_ref - 1|`` (all tokens, flips included).

- flips are classified by their **margin**: for a (token, layer) whose selected experts differ, the reference's
  margin is ``min(score[selected]) - max(score[not selected])`` on the score the router ranks by (logits; biased
  sigmoid scores for ``sigmoid_bias``), and delta is the runtime's error on that token's router scores (from
  ``routing.{l}.logits``; without them, the dtype's relative tolerance times the token's largest |logit|). A flip
  with ``margin <= 2 delta`` is a **near-tie flip** (float noise decides it; listed with margin and delta in
  ``near_tie_flips``); any other flip is a **hard flip**. Routers whose choice is not a per-token ranking
  (hash, random, expert_choice) count every flip as hard. The runtime's router logits are also compared as values
  (``router_max_rel_err``), so a wrong router cannot hide behind "near ties".

Test inputs are random token ids (seeded). ``passed`` applies :mod:`curmoe.runtimes.tolerances`: max_rel_err,
router_max_rel_err and ppl_rel_diff within the export dtype's tolerance, no hard flip, and at least half of the
real tokens in sequences whose routing matched (so that values are compared on most of the input). With many
experts (64, top-8) near-tied router logits flip under float32 noise; such flips no longer decide the outcome, so
a correct export passes and a wrong one fails every time.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curmoe.common.errors import InvalidInputError, require
from curmoe.eval import token_nll
from curmoe.exporters.onnx import with_routing_outputs
from curmoe.reference import Model, ModelConfig, expected_tensors, is_large, read_config
from curmoe.reference import load as load_model
from curmoe.reference.names import routing_logits, routing_selected
from curmoe.routing import RouterConfig, route
from curmoe.runtimes._registry import load
from curmoe.runtimes.base import Session
from curmoe.runtimes.generate import cache_layout, empty_cache
from curmoe.runtimes.tolerances import Tolerance, tolerance_for

__all__ = ["ValidationReport", "validate", "validate_seeds"]

log = logging.getLogger(__name__)

#: A float32 runtime may differ from the float64 reference by this many times what NumPy's own float32 forward of
#: the same weights does (other summation orders, fused kernels). On the 3-layer shipped models the floor is ~1e-6,
#: so the fixed float32 tolerance (3e-5) decides; on a 30-layer upcycled SmolLM2 compressed by neuron CUR the floor
#: was 1.2e-5 and ORT / OpenVINO reached 6e-6 to 2e-5 (1.7x), so the fixed tolerance alone left 1.5x of room there.
NOISE_FLOOR_FACTOR = 4.0


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of :func:`validate` (``to_dict`` gives JSON-safe values)."""

    runtime: str
    onnx_path: str
    dtype: str
    max_abs_err: float
    max_rel_err: float
    max_abs_err_all: float
    max_rel_err_all: float
    diverged_sequences: int
    max_abs_ref: float
    decode_max_abs_err: float | None
    routing_agreement: float | None
    routing_pairs: int
    hard_flips: int
    near_tie_flips: tuple[dict[str, Any], ...]
    router_max_rel_err: float | None
    ppl_ref: float
    ppl_runtime: float
    ppl_rel_diff: float
    passed: bool
    failures: tuple[str, ...]
    tolerance: dict[str, float]
    cases: tuple[dict[str, Any], ...]
    info: dict[str, Any] = field(default_factory=dict)
    #: float32 exports: max |z_f32 - z_f64| / max |z_f64| of the NumPy reference run in float32 on the prompts
    #: (same weights; prompts whose float32 routing flipped are left out): the model's own float32 noise floor.
    noise_floor: float | None = None
    #: the logit and router-logit bound applied: max(tolerance max_rel_err, NOISE_FLOOR_FACTOR * noise_floor).
    max_rel_err_bound: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"], d["cases"] = list(self.failures), list(self.cases)
        d["near_tie_flips"] = list(self.near_tie_flips)
        return d


def _read_meta(path: Path) -> tuple[Any, dict[str, str], set[str], set[str]]:
    onnx = require("onnx", "onnx")
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    produced = {o for n in proto.graph.node for o in n.output}
    outputs = {o.name for o in proto.graph.output}
    return proto, meta, produced, outputs


def _selected_rt(res: dict[str, np.ndarray], l: int, router: RouterConfig, ids: np.ndarray, mask: np.ndarray,
                 bias: np.ndarray | None, E: int) -> np.ndarray | None:
    """(N_real, E) bool selection of the runtime for the real tokens (row-major order), or None."""
    real = mask.reshape(-1).astype(bool)
    if routing_selected(l) in res:
        return res[routing_selected(l)].astype(bool)[real]
    if routing_logits(l) not in res:
        return None
    z = res[routing_logits(l)].astype(np.float64).reshape(*mask.shape, E)
    rows = []
    for b in range(mask.shape[0]):
        m = mask[b].astype(bool)
        if m.any():
            r = route(z[b, m], router, token_ids=ids[b, m], bias=bias, decoding=False)
            rows.append(_selected_ref(r.experts, E))
    return np.concatenate(rows) if rows else np.zeros((0, E), bool)


def _selected_ref(experts: np.ndarray, E: int) -> np.ndarray:
    sel = np.zeros((experts.shape[0], E), dtype=bool)
    rows, slots = np.nonzero(experts >= 0)
    sel[rows, experts[rows, slots]] = True
    return sel


_PER_TOKEN_RANKING = ("topk", "switch", "sigmoid_bias", "select")


def _scores(z: np.ndarray, router: RouterConfig, bias: np.ndarray | None) -> np.ndarray:
    """The score each token ranks its experts by: logits, or sigmoid(logits) + bias for sigmoid_bias."""
    if router.kind == "sigmoid_bias":
        return 1.0 / (1.0 + np.exp(-z)) + (0.0 if bias is None else bias)
    return z


def flip_margins(sel_ref: np.ndarray, score_ref: np.ndarray) -> np.ndarray:
    """(N,) reference margin of each token's choice: min score of its selected experts minus max of the others
    (inf when a token selected all or none)."""
    hi = np.where(sel_ref, score_ref, np.inf).min(axis=1)
    lo = np.where(sel_ref, -np.inf, score_ref).max(axis=1)
    return np.where(np.isfinite(hi) & np.isfinite(lo), hi - lo, np.inf)


def classify_flips(flipped: np.ndarray, margin: np.ndarray, delta: np.ndarray, ranking: bool) -> np.ndarray:
    """(N,) True where a flip is a near tie: a per-token ranking router whose reference margin is within twice
    the runtime's score error (float noise can reorder two scores that close)."""
    if not ranking:
        return np.zeros_like(flipped)
    return flipped & (margin <= 2.0 * delta + 1e-12)


class _Tally:
    """Running maxima over the cases; errors split by whether the sequence's routing matched the reference."""

    def __init__(self) -> None:
        self.max_abs = self.max_abs_all = self.max_ref = 0.0
        self.agree = self.pairs = self.diverged = self.hard = 0
        self.real = self.real_kept = 0
        self.router_err: float | None = None
        self.router_ref = 0.0
        self.near: list[dict[str, Any]] = []
        self.cases: list[dict[str, Any]] = []

    def add(self, name: str, z_rt: np.ndarray, z_ref: np.ndarray, mask: np.ndarray, agree: int, pairs: int,
            diverged: np.ndarray) -> float:
        real = mask.astype(bool)
        err = np.abs(z_rt.astype(np.float64) - z_ref).max(axis=-1)  # (B, T)
        e_all = float(np.max(err[real], initial=0.0))
        e_ok = float(np.max(err[real & ~diverged[:, None]], initial=0.0))
        self.max_abs, self.max_abs_all = max(self.max_abs, e_ok), max(self.max_abs_all, e_all)
        self.max_ref = max(self.max_ref, float(np.max(np.abs(z_ref[real]), initial=0.0)))
        self.real += int(real.sum())
        self.real_kept += int((real & ~diverged[:, None]).sum())
        self.agree += agree
        self.pairs += pairs
        self.diverged += int(diverged.sum())
        self.cases.append({"case": name, "shape": list(mask.shape), "max_abs_err": e_ok, "max_abs_err_all": e_all,
                           "routing_agreement": agree / pairs if pairs else None,
                           "diverged_sequences": int(diverged.sum())})
        return e_ok


def _nll(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean NLL of ``ids[1:]`` under ``logits (T, V)`` (row t predicts the token after ids[t])."""
    return float(np.mean(token_nll(logits[:-1], ids[1:])))


def validate(
    onnx_path: str | os.PathLike[str],
    model: Model | str | os.PathLike[str],
    runtime: str = "onnxruntime:cpu",
    *,
    prompt_lengths: tuple[int, ...] = (1, 7, 24),
    batch_lengths: tuple[int, ...] = (9, 4, 1),
    decode_steps: int = 6,
    sample_ids: np.ndarray | None = None,
    seed: int = 0,
    **session_options: Any,
) -> ValidationReport:
    """Compare ``onnx_path`` run on ``runtime`` with the float64 reference ``model`` (the model it was exported from).

    Args:
        onnx_path: an exported curmoe ONNX file or OpenVINO IR ``.xml`` (a Core ML ``.mlpackage``:
            :func:`curmoe.runtimes.adapters.coreml.validate_coreml`).
        model: the :class:`curmoe.Model` it was exported from (run as the float64 oracle), or its directory:
            then the runtime is opened before the model is read, so their load-time peaks do not add up.
        runtime: a registry name (``curmoe.runtimes.available()``).
        prompt_lengths: lengths of the single-sequence prompts.
        batch_lengths: real lengths of the left-padded batch (one sequence each).
        decode_steps: cached decode steps after a padded 2-sequence prompt (0 to skip; skipped without a cache).
        sample_ids: (L,) token ids for the perplexity parity (None: min(64, max_seq_len) random ids).
        seed: seed of the random prompts.
        session_options: passed to :func:`curmoe.runtimes.load` (threads, optimization, ...).
    """
    return validate_seeds(onnx_path, model, runtime, (seed,), prompt_lengths=prompt_lengths,
                          batch_lengths=batch_lengths, decode_steps=decode_steps, sample_ids=sample_ids,
                          **session_options)[0]


def validate_seeds(
    onnx_path: str | os.PathLike[str],
    model: Model | str | os.PathLike[str],
    runtime: str = "onnxruntime:cpu",
    seeds: Sequence[int] = (0,),
    *,
    prompt_lengths: tuple[int, ...] = (1, 7, 24),
    batch_lengths: tuple[int, ...] = (9, 4, 1),
    decode_steps: int = 6,
    sample_ids: np.ndarray | None = None,
    **session_options: Any,
) -> list[ValidationReport]:
    """:func:`validate` once per seed (different random inputs), with one runtime session and one reference: for
    a large model the loads cost more than the cases, and repeated runs are how a decisive validation is shown."""
    path = Path(onnx_path)
    if not isinstance(model, (Model, str, os.PathLike)):
        raise InvalidInputError(f"model must be a curmoe.Model or its directory, got {type(model).__name__}")
    if not path.is_file():
        raise InvalidInputError(f"model file {str(path)!r} does not exist; export one with curmoe.exporters.export")
    # Given a directory, the runtime opens first and the reference is read after: a runtime's load (ORT reading
    # external data, OpenVINO compiling) briefly holds the weights twice, and the NumPy model is not there yet.
    config = model.config if isinstance(model, Model) else read_config(model)
    cases = [_Cases(tuple(prompt_lengths), tuple(batch_lengths), decode_steps, sample_ids, int(s)) for s in seeds]
    if path.suffix == ".xml":  # OpenVINO IR: curmoe metadata in its rt_info, routing outputs added at export
        sess = _open(path, runtime, model, session_options)
        _check_exported_from(sess.metadata, config, path)
        dtype = json.loads(sess.metadata.get("curmoe.export", "{}")).get("dtype", "float32")
        ref = _reference(model)
        return [_run_cases(sess, ref, c, runtime=runtime, path=path, dtype=dtype, tol=tolerance_for(dtype))
                for c in cases]
    proto, meta, _, _ = _read_meta(path)
    _check_exported_from(meta, config, path)
    export = json.loads(meta.get("curmoe.export", "{}"))
    dtype = export.get("dtype", "float32")
    tol = tolerance_for(dtype)
    aug = with_routing_outputs(path, proto, config)
    del proto
    try:
        sess = _open(aug or path, runtime, model, session_options)
        ref = _reference(model)
        return [_run_cases(sess, ref, c, runtime=runtime, path=path, dtype=dtype, tol=tol) for c in cases]
    finally:
        if aug is not None:
            aug.unlink(missing_ok=True)


def _check_exported_from(meta: dict[str, str], config: ModelConfig, path: str | os.PathLike[str]) -> None:
    """Refuse a file whose ``curmoe.config`` metadata is not ``config`` (validation would compare two different
    models)."""
    if "curmoe.config" in meta and json.loads(meta["curmoe.config"]) != json.loads(config.to_json()):
        raise InvalidInputError(
            f"{str(path)!r} was exported from a different model config than the one passed; pass the model it "
            "was exported from (compare metadata 'curmoe.config')"
        )


def _is_large(model: Model | str | os.PathLike[str], config: ModelConfig) -> bool:
    """:meth:`Model.is_large` of the model, or of the one a directory holds (counted from its config)."""
    if isinstance(model, Model):
        return model.is_large()
    return is_large(sum(int(np.prod(shape)) for shape, kind in expected_tensors(config).values() if kind == "float"))


def _open(path: Path, runtime: str, model: Model | str | os.PathLike[str], options: dict[str, Any]) -> Session:
    """The runtime session; for a large model without pre-packed (second) copies of the weights."""
    config = model.config if isinstance(model, Model) else read_config(model)
    return load(path, runtime, **({"low_memory": _is_large(model, config)} | options))


def _reference(model: Model | str | os.PathLike[str]) -> Model:
    return model if isinstance(model, Model) else load_model(model)


@dataclass(frozen=True)
class _Cases:
    """What :func:`validate` runs (its keyword arguments of the same names)."""

    prompt_lengths: tuple[int, ...]
    batch_lengths: tuple[int, ...]
    decode_steps: int
    sample_ids: np.ndarray | None
    seed: int


def _run_cases(sess: Session, model: Model, cases: _Cases, *, runtime: str, path: Path, dtype: str,
               tol: Tolerance) -> ValidationReport:
    cfg = model.config
    ref = model.oracle()  # float64; layer by layer for a large model (no whole-model float64 copy)
    rng = np.random.default_rng(cases.seed)
    prompt_lengths, batch_lengths, decode_steps = cases.prompt_lengths, cases.batch_lengths, cases.decode_steps
    sample_ids = cases.sample_ids
    V, E = cfg.vocab_size, cfg.moe.n_experts
    moe_layers = [l for l in range(cfg.n_layers) if cfg.layer_type(l) == "moe"]
    cached = bool(cache_layout(sess))
    tally = _Tally()

    def compare(name: str, ids: np.ndarray, mask: np.ndarray, res: dict[str, np.ndarray], out: Any,
                diverged: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """Tally one run; returns (max abs error over agreeing sequences, per-sequence diverged flags)."""
        agree = pairs = 0
        seq = np.nonzero(mask)[0]  # the sequence of each real token, in the reference's (row-major) order
        pos = np.nonzero(mask)[1]
        ok = np.ones(seq.shape[0], dtype=bool)
        router = cfg.moe.router
        ranking = router.kind in _PER_TOKEN_RANKING and not (router.kind == "switch" and router.capacity_factor)
        real = mask.reshape(-1).astype(bool)
        for l in moe_layers:
            bias = ref.tensors.get(f"layers.{l}.router.bias")
            rt = _selected_rt(res, l, router, ids, mask, bias, E)
            if rt is None:
                continue
            rsel = np.concatenate([_selected_ref(r.experts, E) for r in out.routings[l]] or [np.zeros((0, E), bool)])
            z_ref = np.concatenate([r.logits for r in out.routings[l]] or [np.zeros((0, E))])  # (N_real, E)
            s_ref = _scores(z_ref, router, bias)
            if routing_logits(l) in res:
                z_rt = res[routing_logits(l)].astype(np.float64).reshape(-1, E)[real]
                delta = np.abs(_scores(z_rt, router, bias) - s_ref).max(axis=1)  # (N_real,)
                e = float(np.max(np.abs(z_rt - z_ref), initial=0.0))
                tally.router_err = max(tally.router_err or 0.0, e)
                tally.router_ref = max(tally.router_ref, float(np.max(np.abs(z_ref), initial=0.0)))
            else:
                delta = tol.max_rel_err * np.abs(s_ref).max(axis=1, initial=0.0)
            same = np.all(rt == rsel, axis=1)
            margin = flip_margins(rsel, s_ref)
            near = classify_flips(~same, margin, delta, ranking)
            tally.hard += int((~same & ~near).sum())
            for i in np.flatnonzero(near)[: max(0, 20 - len(tally.near))]:
                tally.near.append({"case": name, "layer": l, "sequence": int(seq[i]), "position": int(pos[i]),
                                   "margin": float(margin[i]), "delta": float(delta[i])})
            ok &= same
            agree += int(same.sum())
            pairs += rsel.shape[0]
        div = np.zeros(mask.shape[0], dtype=bool) if diverged is None else diverged.copy()
        div[seq[~ok]] = True  # an expert flipped: from here on the sequence computes a different function
        return tally.add(name, res["logits"], out.logits, mask, agree, pairs, div), div

    def feeds(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        return {"input_ids": ids, "attention_mask": mask} | (empty_cache(sess, ids.shape[0]) if cached else {})

    for T in prompt_lengths:
        ids = rng.integers(0, V, size=(1, T))
        mask = np.ones_like(ids)
        compare(f"prompt T={T}", ids, mask, sess.run(feeds(ids, mask)), ref.run(ids, attention_mask=mask))
    if batch_lengths:
        T = max(batch_lengths)
        ids = rng.integers(0, V, size=(len(batch_lengths), T))
        mask = np.array([[0] * (T - n) + [1] * n for n in batch_lengths], dtype=np.int64)
        compare(f"left-padded batch lengths={list(batch_lengths)}", ids, mask, sess.run(feeds(ids, mask)),
                ref.run(ids, attention_mask=mask))
    decode_err = None
    if cached and decode_steps > 0:
        ids = rng.integers(0, V, size=(2, 5))
        mask = np.array([[1] * 5, [0, 0, 1, 1, 1]], dtype=np.int64)
        cache = ref.new_cache()
        res = sess.run(feeds(ids, mask))
        _, div = compare("decode prefill", ids, mask, res, ref.run(ids, attention_mask=mask, cache=cache))
        full_mask = mask
        decode_err = 0.0
        for step in range(decode_steps):
            tok = rng.integers(0, V, size=(2, 1))
            one = np.ones_like(tok)
            full_mask = np.concatenate([full_mask, one], axis=1)
            past = {n: res["present" + n[len("past"):]] for n, _, _ in cache_layout(sess)}
            res = sess.run({"input_ids": tok, "attention_mask": full_mask} | past)
            out = ref.run(tok, attention_mask=one, cache=cache)
            err, div = compare(f"decode step {step + 1}", tok, one, res, out, div)
            decode_err = max(decode_err, err)
    sample = (rng.integers(0, V, size=min(64, cfg.max_seq_len)) if sample_ids is None
              else np.asarray(sample_ids, dtype=np.int64).reshape(-1))
    if sample.size < 2:
        raise InvalidInputError(f"sample_ids has {sample.size} token(s); pass at least 2 for a perplexity")
    ids, mask = sample[None], np.ones((1, sample.size), np.int64)
    res, out = sess.run(feeds(ids, mask)), ref.run(ids, attention_mask=mask)
    compare(f"perplexity sample L={sample.size}", ids, mask, res, out)
    ppl_rt, ppl_ref = float(np.exp(_nll(res["logits"][0], sample))), float(np.exp(_nll(out.logits[0], sample)))

    floor = _noise_floor(model, prompt_lengths, cases.seed) if dtype == "float32" else None
    bound = max(tol.max_rel_err, NOISE_FLOOR_FACTOR * floor) if floor is not None else tol.max_rel_err
    max_rel = tally.max_abs / tally.max_ref if tally.max_ref > 0 else tally.max_abs
    max_rel_all = tally.max_abs_all / tally.max_ref if tally.max_ref > 0 else tally.max_abs_all
    agreement = tally.agree / tally.pairs if tally.pairs else None
    ppl_rel = abs(ppl_rt / ppl_ref - 1.0)
    failures = []
    if not max_rel <= bound:
        failures.append(f"max_rel_err={max_rel:.3g} > {bound:.3g}" + _floor_note(tol, floor, bound))
    if tally.hard:
        failures.append(f"{tally.hard} routing flip(s) that are not near ties (margin > 2x the runtime's score "
                        f"error): the runtime routes differently")
    router_rel = None
    if tally.router_err is not None:
        router_rel = tally.router_err / tally.router_ref if tally.router_ref > 0 else tally.router_err
        if not router_rel <= bound:
            failures.append(f"router_max_rel_err={router_rel:.3g} > {bound:.3g}" + _floor_note(tol, floor, bound))
    if tally.real and tally.real_kept < 0.5 * tally.real:
        failures.append(f"only {tally.real_kept} of {tally.real} real tokens kept the reference's routing; too few "
                        f"to compare values")
    if not ppl_rel <= tol.ppl_rel:
        failures.append(f"|ppl_rt/ppl_ref - 1|={ppl_rel:.3g} > {tol.ppl_rel:g}")
    return ValidationReport(
        runtime=runtime, onnx_path=str(path), dtype=dtype, max_abs_err=tally.max_abs, max_rel_err=max_rel,
        max_abs_err_all=tally.max_abs_all, max_rel_err_all=max_rel_all, diverged_sequences=tally.diverged,
        max_abs_ref=tally.max_ref, decode_max_abs_err=decode_err, routing_agreement=agreement,
        routing_pairs=tally.pairs, hard_flips=tally.hard, near_tie_flips=tuple(tally.near),
        router_max_rel_err=router_rel, ppl_ref=ppl_ref, ppl_runtime=ppl_rt, ppl_rel_diff=ppl_rel,
        passed=not failures, failures=tuple(failures), tolerance=tol.to_dict(), cases=tuple(tally.cases),
        info=sess.info().to_dict() | {"low_memory": sess.options.low_memory if hasattr(sess, "options") else None},
        noise_floor=floor, max_rel_err_bound=bound,
    )


def _floor_note(tol: Tolerance, floor: float | None, bound: float) -> str:
    if floor is None or bound == tol.max_rel_err:
        return ""
    return f" ({NOISE_FLOOR_FACTOR:g}x this model's float32 noise floor {floor:.3g})"


def _noise_floor(model: Model, prompt_lengths: Sequence[int], seed: int) -> float | None:
    """The model's own float32 error: NumPy float32 forward vs the float64 oracle on the validation prompts (the
    same random ids as the prompt cases), over prompts whose float32 routing matched; None if every prompt flipped
    or a float32 copy would be a second copy of a large model."""
    if model.dtype == np.float32:
        m32 = model
    elif model.is_large():
        return None
    else:
        m32 = model.astype(np.float32)
    ref, rng = model.oracle(), np.random.default_rng(seed)
    err = top = 0.0
    for T in prompt_lengths:
        ids = rng.integers(0, model.config.vocab_size, size=(1, T))
        o64, o32 = ref.run(ids), m32.run(ids)
        if any(not np.array_equal(a.experts, b.experts) for r64, r32 in zip(o64.routings, o32.routings)
               for a, b in zip(r64, r32)):
            continue  # a float32 routing flip: this prompt computes another function, not a rounding error
        err = max(err, float(np.abs(o32.logits.astype(np.float64) - o64.logits).max()))
        top = max(top, float(np.abs(o64.logits).max()))
    return err / top if top > 0 else None
