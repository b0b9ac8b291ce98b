"""Healing: a short KL fine-tune of the non-interpretable small parts of a compressed model (issue 12, item 5).

``heal(compressed, dense, calib_ids, config=HealConfig())`` trains, with everything else frozen (embeddings,
attention, norms, routers, the LM head, every real row and column):

- **neuron CUR**: the refit down matrices ``W_down M`` (``NeuronLinear`` role ``"refit"``, d x k per expert); the kept
  gate/up rows ``W[J]`` and the indices J stay bit-identical;
- **per-matrix CUR**: the U matrices (c x r per matrix); C, R, rows and cols stay bit-identical. A folded U lives
  inside C and cannot be trained without losing the real columns: refused;
- **SVD (SVD-LLM)**: the factors A and B of the *down* matrices only. At a removed ratio rho SVD keeps rank
  r = (1 - rho) d I / (d + I) per matrix, so the down factors hold r (d + I) = (1 - rho) d I parameters per expert,
  exactly what neuron CUR heals (its refit down is d x k with k = (1 - rho) I). The two methods are healed with the
  same parameter budget; ``HealReport.trainable_params`` counts it so the benchmark can show the equality.

Loss: KL(dense || compressed) of the next-token distributions at every position, the dense model (the teacher) run
in torch with no gradient. Data: calibration text only. The last ``holdout`` fraction of the calibration sequences
is held out; training runs AdamW on the rest for at most ``max_steps`` steps, evaluates the held-out KL every
``eval_every`` steps, stops after ``patience`` evaluations without improvement and keeps the best weights (the
weights before healing included), so the held-out KL never increases. Valid and test text are never seen.

Torch is imported by this module (it is served by ``curmoe.models`` only when asked for).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import curmoe
from curmoe.common.checks import check_int, check_number
from curmoe.common.errors import InvalidInputError
from curmoe.models.twin import TorchMoE
from curmoe.reference import CURLinear, NeuronLinear, SVDLinear

__all__ = ["HealConfig", "HealReport", "heal", "trainable_parts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealConfig:
    """How to heal. Defaults were chosen on ``models/wt2-moe-8x`` (SVD-LLM at 70%, 16k calibration tokens,
    docs/training.md "Healing"): about two minutes on one CPU thread.

    Attributes:
        max_steps: AdamW steps at most (one step = ``batch_size`` calibration sequences).
        lr: relative AdamW learning rate (constant): each trained tensor gets ``lr`` times its RMS before healing,
            so one value fits SVD factors of very different scales, CUR's U and refit down matrices alike.
        batch_size: sequences per step (also the chunk size of teacher and held-out passes).
        holdout: fraction of the calibration sequences (the last ones) held out for early stopping, in (0, 0.5].
        eval_every: steps between held-out evaluations.
        patience: evaluations without a new best held-out KL before stopping.
        weight_decay: AdamW weight decay (0: decay would pull the fitted parts towards zero, not towards the fit).
        grad_clip: max global gradient norm; 0 turns clipping off.
        max_time_s: wall-clock bound on the training loop (None: only ``max_steps`` bounds it).
        seed: order of the training sequences.
        teacher_cache_mb: the teacher's log-probabilities on the training sequences are computed once and kept
            when they fit in this many MiB, else recomputed every step (held-out ones are always kept).
    """

    max_steps: int = 200
    lr: float = 1e-2
    batch_size: int = 4
    holdout: float = 0.125
    eval_every: int = 10
    patience: int = 3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_time_s: float | None = None
    seed: int = 0
    teacher_cache_mb: int = 1024

    def __post_init__(self) -> None:
        check_int(self.max_steps, "max_steps", lo=1, fix="heal for at least one step")
        check_number(self.lr, "lr", lo=0.0, lo_open=True, fix="use a small positive relative learning rate such as 1e-2")
        check_int(self.batch_size, "batch_size", lo=1, fix="pass a number of sequences per step such as 4")
        check_number(self.holdout, "holdout", lo=0.0, hi=0.5, lo_open=True,
                     fix="hold out a fraction of the calibration sequences in (0, 0.5], e.g. 0.125")
        check_int(self.eval_every, "eval_every", lo=1, fix="evaluate the held-out KL every few steps, e.g. 10")
        check_int(self.patience, "patience", lo=1, fix="allow at least one evaluation without improvement")
        check_number(self.weight_decay, "weight_decay", lo=0.0, fix="use 0 (the default) or a small decay")
        check_number(self.grad_clip, "grad_clip", lo=0.0, fix="use 0 for no clipping or a norm such as 1.0")
        if self.max_time_s is not None:
            check_number(self.max_time_s, "max_time_s", lo=0.0, lo_open=True,
                         fix="pass None for no time bound or a positive number of seconds")
        check_int(self.seed, "seed", lo=0)
        check_int(self.teacher_cache_mb, "teacher_cache_mb", lo=0,
                  fix="use 0 to recompute the teacher every step, or a memory budget in MiB")


@dataclass(frozen=True)
class HealReport:
    """What healing did. KL values are mean nats per token on the held-out calibration sequences."""

    kl_before: float  # held-out KL(dense || compressed) before healing
    kl_after: float  # held-out KL of the returned (best) weights; <= kl_before
    steps: int  # optimizer steps taken
    best_step: int  # step of the kept weights (0: healing did not improve, the input weights are returned)
    stopped: str  # "max_steps" | "early_stop" | "time_limit"
    trainable_params: int  # all trained scalars
    trainable: dict[str, int]  # {"cur_u" | "neuron_refit" | "svd_down": parameters} of the kinds present
    trained_matrices: int
    train_sequences: int
    holdout_sequences: int
    holdout_tokens: int
    time_s: float
    history: tuple[tuple[int, float], ...]  # (step, held-out KL) of every evaluation
    config: dict[str, Any]  # the HealConfig, as a dict


def trainable_parts(factors: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """{torch parameter name: (expert key, part kind)} that healing trains for ``config.factors``.

    Part kinds: ``"cur_u"`` (U of every unfolded CUR matrix), ``"neuron_refit"`` (the refit down of neuron CUR),
    ``"svd_down"`` (A and B of SVD down matrices). Raises on a folded CUR U.
    """
    out: dict[str, tuple[str, str]] = {}
    for key, spec in sorted(factors.items()):
        kind = spec.get("kind")
        if kind == "cur":
            if spec.get("folded"):
                raise InvalidInputError(
                    f"{key} is CUR with U folded into C (C no longer holds real columns), so healing cannot train U "
                    "and keep C real; compress with curmoe.CURConfig(fold_u=False) and heal that model")
            out[f"{key}.U"] = (key, "cur_u")
        elif kind == "neuron":
            if spec.get("role") == "refit":
                out[f"{key}.weight"] = (key, "neuron_refit")
        elif kind == "svd":
            if key.rsplit(".", 1)[1] == "down":
                out[f"{key}.A"] = (key, "svd_down")
                out[f"{key}.B"] = (key, "svd_down")
        else:
            raise InvalidInputError(f"config.factors[{key!r}] has kind {kind!r}; healing knows 'cur', 'svd', 'neuron'")
    return out


def _check_models(compressed: Any, dense: Any) -> None:
    for name, m in (("compressed", compressed), ("dense", dense)):
        if not isinstance(m, curmoe.Model):
            raise InvalidInputError(f"{name} must be a curmoe.Model, got {type(m).__name__}")
    if not compressed.config.factors:
        raise InvalidInputError("compressed has no factorised expert (config.factors is empty): it is a dense model; "
                                "pass the output of curmoe.compress(...) as compressed and the original as dense")
    if dense.config.factors:
        raise InvalidInputError(f"dense is a compressed model ({len(dense.config.factors)} factorised matrices); "
                                "pass the uncompressed original model as dense (the teacher)")
    a = replace(compressed.config, factors={}, compression=None)
    b = replace(dense.config, factors={}, compression=None)
    if a != b:
        diff = [f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]
        f0 = diff[0]
        raise InvalidInputError(
            f"compressed and dense have different configs ({f0}: {getattr(a, f0)!r} vs {getattr(b, f0)!r}); "
            "pass the dense model the compressed one was made from")


def _check_ids(calib_ids: Any, vocab: int, holdout: float) -> tuple[np.ndarray, int]:
    ids = np.asarray(calib_ids)
    if ids.ndim != 2 or ids.shape[1] < 1 or ids.dtype.kind not in "iu":
        raise InvalidInputError(f"calib_ids must be a (B, T) integer array of calibration token ids, got shape "
                                f"{ids.shape} dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise InvalidInputError(f"calib_ids holds token id {bad} outside the vocabulary [0, {vocab})")
    B = ids.shape[0]
    n_hold = max(1, round(holdout * B))
    if B - n_hold < 1:
        raise InvalidInputError(
            f"calib_ids has {B} sequence(s): too few to hold out {n_hold} for early stopping and train on the rest; "
            "pass at least 2 calibration sequences (e.g. 16k tokens as 64 x 256)")
    return ids.astype(np.int64), n_hold


def _logprobs(model: TorchMoE, ids: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(model(ids), dim=-1)


def _kl(teacher_logp: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Sum over positions of KL(teacher || student) (nats)."""
    logq = F.log_softmax(student_logits, dim=-1)
    return F.kl_div(logq, teacher_logp, log_target=True, reduction="sum")


def _rebuild(key: str, compressed: curmoe.Model, trained: dict[str, torch.Tensor]) -> Any:
    """The healed Linear of ``key``: trained tensors cast to the stored dtype, every frozen array (C, R, rows,
    cols, neurons) taken from the compressed model itself, so it stays bit-identical by construction."""
    lin = compressed.experts[key]

    def arr(name: str, like: np.ndarray) -> np.ndarray:
        a = trained[f"{key}.{name}"].cpu().numpy()
        if compressed.storage_dtype is not None:  # what the checkpoint will hold (e.g. float16), so memory == file
            a = a.astype(compressed.storage_dtype)
        return a.astype(like.dtype)

    if isinstance(lin, CURLinear):
        return CURLinear(lin.C, arr("U", lin.U), lin.R, lin.rows, lin.cols)
    if isinstance(lin, SVDLinear):
        return SVDLinear(arr("A", lin.A), arr("B", lin.B))
    if isinstance(lin, NeuronLinear):
        return NeuronLinear(arr("weight", lin.W), lin.neurons, lin.role)
    raise InvalidInputError(f"{key} is a {type(lin).__name__} but config.factors says "
                            f"{compressed.config.factors[key]['kind']!r}; reload the compressed model")


def heal(compressed: curmoe.Model, dense: curmoe.Model, calib_ids: np.ndarray,
         config: HealConfig = HealConfig()) -> tuple[curmoe.Model, HealReport]:
    """Fine-tune the small non-interpretable parts of ``compressed`` towards ``dense`` on calibration text.

    Args:
        compressed: the output of ``curmoe.compress`` (CUR with unfolded U, SVD, or neuron CUR; mixed is fine).
        dense: the dense model it was compressed from (the teacher; same config apart from factors).
        calib_ids: (B, T) calibration token ids, B >= 2; the last ``round(config.holdout * B)`` rows are held out.
        config: :class:`HealConfig`.

    Returns:
        (healed model, report). The healed model has the compressed model's config (same factors) with
        ``config.compression["healing"]`` recording the report, the compressed model's dtypes, and every frozen
        array (C, R, rows, cols, kept neuron rows and indices, non-expert tensors) bit-identical to the input.

    Raises:
        InvalidInputError: a dense model passed as compressed (or a compressed one as dense), different configs,
            folded CUR U, nothing to train (e.g. SVD of gate/up only), too few calibration sequences.
    """
    if not isinstance(config, HealConfig):
        raise InvalidInputError(f"config must be a HealConfig, got {type(config).__name__}")
    t0 = time.perf_counter()
    _check_models(compressed, dense)
    ids_np, n_hold = _check_ids(calib_ids, compressed.config.vocab_size, config.holdout)
    parts = trainable_parts(compressed.config.factors)
    if not parts:
        raise InvalidInputError(
            "compressed has nothing healing may train: no CUR U, no neuron-CUR refit down and no SVD down matrix "
            f"(factor kinds {sorted({s['kind'] for s in compressed.config.factors.values()})}); compress the down "
            "matrices too, or with CUR / neuron CUR")

    student = TorchMoE.from_reference(compressed)
    dtype = student.embed.weight.dtype
    teacher = TorchMoE.from_reference(dense, dtype=dtype).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    named = dict(student.named_parameters())
    for p in student.parameters():
        p.requires_grad_(False)
    train = [named[n] for n in parts]
    for p in train:
        p.requires_grad_(True)
    counts: dict[str, int] = {}
    for n, (_, kind) in parts.items():
        counts[kind] = counts.get(kind, 0) + named[n].numel()
    n_trainable = sum(counts.values())

    ids = torch.from_numpy(ids_np)
    B, T = ids.shape
    train_ids, hold_ids = ids[: B - n_hold], ids[B - n_hold:]
    bs = config.batch_size
    with torch.no_grad():
        hold_t = [_logprobs(teacher, hold_ids[i:i + bs]) for i in range(0, n_hold, bs)]
        cache_bytes = train_ids.numel() * dense.config.vocab_size * torch.finfo(dtype).bits // 8
        train_t = (torch.cat([_logprobs(teacher, train_ids[i:i + bs]) for i in range(0, len(train_ids), bs)])
                   if cache_bytes <= config.teacher_cache_mb * 2**20 else None)
    if train_t is not None:
        del teacher

    @torch.no_grad()
    def held_out_kl() -> float:
        total = sum(float(_kl(t, student(hold_ids[j * bs:(j + 1) * bs]))) for j, t in enumerate(hold_t))
        return total / hold_ids.numel()

    # lr is relative: each tensor steps by about lr x its own RMS (SVD-LLM's A and B differ in scale by ~10^3 and
    # CUR's U is larger than W, so one absolute rate would blow up the small factor or stall the large one)
    groups = [{"params": [p], "lr": config.lr * (float(p.detach().pow(2).mean().sqrt()) or 1.0)} for p in train]
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    order: list[int] = []
    kl0 = held_out_kl()
    best, best_step, best_state = kl0, 0, None
    history = [(0, kl0)]
    bad_evals, step, stopped = 0, 0, "max_steps"
    t_train = time.perf_counter()
    log.info("healing %d parameters (%s); held-out KL before %.5f", n_trainable, counts, kl0)
    while step < config.max_steps:
        if len(order) < bs:
            order += rng.permutation(len(train_ids)).tolist()
        batch, order = order[:bs], order[bs:]
        x = train_ids[batch]
        with torch.no_grad():
            target = train_t[batch] if train_t is not None else _logprobs(teacher, x)
        loss = _kl(target, student(x)) / x.numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(train, config.grad_clip)
        opt.step()
        step += 1
        out_of_time = config.max_time_s is not None and time.perf_counter() - t_train > config.max_time_s
        if step % config.eval_every == 0 or step == config.max_steps or out_of_time:
            kl = held_out_kl()
            history.append((step, kl))
            log.info("heal step %d: train KL %.5f, held-out KL %.5f", step, float(loss.detach()), kl)
            if kl < best:
                best, best_step, bad_evals = kl, step, 0
                best_state = [p.detach().clone() for p in train]
            else:
                bad_evals += 1
                if bad_evals >= config.patience:
                    stopped = "early_stop"
                    break
        if out_of_time:
            stopped = "time_limit"
            break

    experts = dict(compressed.experts)
    if best_state is not None:
        new = dict(zip(parts, best_state))
        for key in sorted({k for k, _ in parts.values()}):
            experts[key] = _rebuild(key, compressed, new)
    report = HealReport(
        kl_before=kl0, kl_after=best, steps=step, best_step=best_step, stopped=stopped,
        trainable_params=n_trainable, trainable=counts, trained_matrices=len({k for k, _ in parts.values()}),
        train_sequences=int(B - n_hold), holdout_sequences=int(n_hold), holdout_tokens=int(n_hold * T),
        time_s=time.perf_counter() - t0, history=tuple(history), config=asdict(config),
    )
    record = json.loads(json.dumps(asdict(report)))
    compression = dict(compressed.config.compression or {}) | {"healing": record}
    healed = curmoe.Model(replace(compressed.config, compression=compression), dict(compressed.tensors), experts,
                          compressed.tokenizer_path, compressed.storage_dtype)
    log.info("healed in %d steps (best %d, %s): held-out KL %.5f -> %.5f, %.1f s", step, best_step, stopped, kl0,
             best, report.time_s)
    return healed, report
