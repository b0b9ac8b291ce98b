"""Train a Mixtral-style MoE language model on WikiText-2 on CPU: ``python -m curmoe.models.train``.

Model (Jiang et al. 2024, "Mixtral of Experts"): pre-norm RMSNorm blocks, RoPE, grouped-query attention, SwiGLU
experts routed top-k by a softmax router, tied embeddings. Loss = next-token cross-entropy
+ ``aux_coef * sum_l E * sum_i f_i P_i`` (Switch balance loss, Fedus et al. 2021) + ``z_coef * sum_l z-loss``
(Zoph et al. 2022). With ``--router sigmoid_bias`` the selection bias is updated after each step instead
(DeepSeek-V3). AdamW (Loshchilov & Hutter 2019), linear warmup then cosine decay to ``min_lr_ratio * lr``.

Outputs in ``--out``: ``train_log.jsonl`` (one JSON record per log / eval step), ``best/`` (the checkpoint with the
best perplexity on the fixed valid slice, in curmoe format: config.json, fp16 model.safetensors, tokenizer.json),
``state/`` (resumable training state, safetensors + JSON), ``train_summary.json`` and ``loss_curve.png`` (if
matplotlib is importable). docs/training.md explains the options and the shipped models.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import curmoe
from curmoe.models.train._data import JOINED, Batcher, Corpus, prepare_corpus
from curmoe.models.train._state import load_state, read_meta, save_state
from curmoe.models.twin import TorchMoE, load_torch
from curmoe.reference import ModelConfig, MoEConfig
from curmoe.routing import ROUTER_KINDS, RouterConfig

__all__ = ["PRESETS", "main", "build_parser", "model_config", "lr_at", "evaluate"]

log = logging.getLogger(__name__)

# Architecture and training defaults per preset; every field can be overridden on the command line.
PRESETS: dict[str, dict[str, Any]] = {
    # ~0.75M parameters (0.52M of them the 8k embedding): trains in about 2-3 minutes on 2 cores.
    "tiny": dict(d_model=64, layers=2, heads=4, kv_heads=2, experts=4, top_k=2, d_ff=128,
                 seq_len=128, batch_size=16, lr=3e-3, warmup=30, steps=400, eval_every=100, eval_tokens=16384),
    # The router study (benchmarks/gating.py): 8 experts so that balance matters, small enough to train six
    # routers in turn on 2 cores (about 4 minutes each).
    "gating": dict(d_model=96, layers=2, heads=4, kv_heads=2, experts=8, top_k=2, d_ff=128,
                   seq_len=128, batch_size=16, lr=3e-3, warmup=40, steps=600, eval_every=200, eval_tokens=16384),
    # 9.05M parameters (18.1 MB in fp16), 8 experts top-2: models/wt2-moe-8x, about 50 minutes on 2 idle cores.
    "wt2-moe-8x": dict(d_model=256, layers=4, heads=8, kv_heads=2, experts=8, top_k=2, d_ff=256,
                       seq_len=256, batch_size=16, lr=2e-3, warmup=100, steps=2000, eval_every=250,
                       eval_tokens=32768),
}
_MODEL_KEYS = ("d_model", "layers", "heads", "kv_heads", "experts", "top_k", "d_ff", "router", "rope_theta")
_RUN_KEYS = ("seq_len", "batch_size", "lr", "min_lr_ratio", "warmup", "steps", "time_budget_min", "weight_decay",
             "grad_clip", "aux_coef", "z_coef", "bias_speed", "eval_every", "eval_tokens", "log_every", "seed",
             "bf16")
_FINAL_EVAL_BATCH = 8


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m curmoe.models.train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None, help="WikiText-2 folder (default: $CURMOE_DATA_DIR)")
    p.add_argument("--tokenizer", default=None, type=Path,
                   help="tokenizer.json; trained on the train split and saved there if missing "
                        "(default OUT/tokenizer.json)")
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE size when a tokenizer must be trained")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    g = p.add_argument_group("model (override the preset)")
    g.add_argument("--d-model", dest="d_model", type=int)
    g.add_argument("--layers", type=int)
    g.add_argument("--heads", type=int)
    g.add_argument("--kv-heads", dest="kv_heads", type=int)
    g.add_argument("--experts", type=int)
    g.add_argument("--top-k", dest="top_k", type=int)
    g.add_argument("--d-ff", dest="d_ff", type=int)
    g.add_argument("--router", choices=ROUTER_KINDS, help="router kind (default topk)")
    g.add_argument("--rope-theta", dest="rope_theta", type=float)
    t = p.add_argument_group("training (override the preset)")
    t.add_argument("--seq-len", dest="seq_len", type=int)
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--lr", type=float, help="peak AdamW learning rate")
    t.add_argument("--min-lr-ratio", dest="min_lr_ratio", type=float, help="cosine floor as a fraction of --lr")
    t.add_argument("--warmup", type=int, help="linear warmup steps")
    t.add_argument("--steps", type=int, help="total optimizer steps (sets the cosine schedule)")
    t.add_argument("--time-budget-min", dest="time_budget_min", type=float,
                   help="wall-clock budget; with --steps it is a hard stop, without it the step count is "
                        "estimated from the measured step and eval times")
    t.add_argument("--weight-decay", dest="weight_decay", type=float)
    t.add_argument("--grad-clip", dest="grad_clip", type=float)
    t.add_argument("--aux-coef", dest="aux_coef", type=float, help="Switch balance loss coefficient")
    t.add_argument("--z-coef", dest="z_coef", type=float, help="router z-loss coefficient")
    t.add_argument("--bias-speed", dest="bias_speed", type=float, help="sigmoid_bias router bias update speed")
    t.add_argument("--eval-every", dest="eval_every", type=int)
    t.add_argument("--eval-tokens", dest="eval_tokens", type=int, help="size of the fixed valid slice")
    t.add_argument("--log-every", dest="log_every", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--bf16", action="store_const", const=True, default=None,
                   help="bfloat16 autocast for matmuls (faster on CPUs with AMX/AVX512-BF16)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the run saved in OUT/state")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--stop-at", dest="stop_at", type=int, default=None,
                   help="stop after this step as if interrupted (state saved; for testing --resume)")
    p.add_argument("--no-final-eval", dest="final_eval", action="store_false",
                   help="skip the full-valid evaluation of the best checkpoint at the end")
    return p


_DEFAULTS = dict(router="topk", rope_theta=10000.0, min_lr_ratio=0.1, time_budget_min=None, weight_decay=0.1,
                 grad_clip=1.0, aux_coef=0.01, z_coef=0.0, bias_speed=0.001, log_every=10, seed=0, bf16=False)


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Preset, then command-line overrides: the model and run options that define a run."""
    opts = dict(_DEFAULTS) | PRESETS[args.preset]
    for k in _MODEL_KEYS + _RUN_KEYS:
        v = getattr(args, k, None)
        if v is not None:
            opts[k] = v
    if getattr(args, "time_budget_min", None) is not None and args.steps is None:
        opts["steps"] = None  # estimate the step count from the budget
    opts["preset"] = args.preset
    return opts


def model_config(opts: dict[str, Any], corpus: Corpus) -> ModelConfig:
    """The ``curmoe.ModelConfig`` for a run: Mixtral-style, tied embeddings, context ``seq_len``."""
    kind = opts["router"]
    rk: dict[str, Any] = {"kind": kind, "top_k": opts["top_k"]}
    if kind == "switch":
        rk["top_k"] = 1
    if kind == "expert_choice":
        rk["decode_fallback"] = "topk"
    moe = MoEConfig(n_experts=opts["experts"], d_ff=opts["d_ff"], activation="swiglu", router=RouterConfig(**rk))
    return ModelConfig(
        vocab_size=corpus.vocab_size, d_model=opts["d_model"], n_layers=opts["layers"], n_heads=opts["heads"],
        n_kv_heads=opts["kv_heads"], rope_theta=float(opts["rope_theta"]), max_seq_len=opts["seq_len"],
        tie_embeddings=True, moe=moe, eos_token_id=corpus.eos_id, pad_token_id=corpus.pad_id,
    )


def lr_at(step: int, opts: dict[str, Any], total: int | None) -> float:
    """Learning rate for optimizer step ``step`` (1-based): linear warmup, then cosine to ``min_lr_ratio * lr``."""
    lr, warm = opts["lr"], max(0, int(opts["warmup"]))
    if step <= warm:
        return lr * step / max(1, warm)
    if total is None:
        return lr
    frac = min(1.0, (step - warm) / max(1, total - warm))
    floor = lr * opts["min_lr_ratio"]
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * frac))


@torch.no_grad()
def evaluate(model: TorchMoE, ids: np.ndarray, n_words: int, context: int, max_tokens: int | None,
             batch_size: int = _FINAL_EVAL_BATCH) -> curmoe.PerplexityResult:
    """Valid perplexity with ``curmoe.perplexity`` (non-overlapping windows of ``context`` tokens)."""
    was = model.training
    model.eval()
    dev = model.embed.weight.device

    def logits_fn(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x).to(dev)).float().cpu().numpy()

    try:
        return curmoe.perplexity(logits_fn, ids, n_words=n_words, context=context, batch_size=batch_size,
                                 split="valid", joined=JOINED, max_tokens=max_tokens)
    finally:
        model.train(was)


def save_best(model: TorchMoE, path: Path, tokenizer: Path) -> Path:
    """The model in curmoe format with float16 weights (config.json, model.safetensors, tokenizer.json)."""
    ref = model.to_reference().astype(np.float16)
    ref.tokenizer_path = tokenizer
    return ref.save(path)


def _max_vio(counts: torch.Tensor) -> float:
    """Load imbalance over a log interval: mean over MoE layers of ``(max_i c_i - mean c) / mean c`` (MaxVio)."""
    mean = counts.mean(dim=1)
    return float(((counts.max(dim=1).values - mean) / mean.clamp_min(1e-12)).mean())


def _optimizer(model: TorchMoE, opts: dict[str, Any]) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]  # norms, biases
    groups = [{"params": decay, "weight_decay": opts["weight_decay"]}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=opts["lr"], betas=(0.9, 0.95), eps=1e-8)


class _Log:
    """train_log.jsonl writer; on resume it drops the records after the resumed step (they are redone)."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is None:
            path.write_text("")
        elif path.is_file():
            keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, rec: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def _plot(log_path: Path, png: Path) -> None:
    """Loss-curve figure (train loss and valid loss vs tokens); silently skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    recs = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln]
    tr = [r for r in recs if r["event"] == "train"]
    ev = [r for r in recs if r["event"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([r["tokens"] / 1e6 for r in tr], [r["loss"] for r in tr], lw=1, label="train loss (interval mean)")
    ax.plot([r["tokens"] / 1e6 for r in ev], [math.log(r["valid_ppl_token"]) for r in ev], "o-", ms=3,
            label="valid loss (fixed slice)")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 10.0))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _options(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(saved state's meta or None, the run's options): from the saved state with --resume, else the preset and
    the command line."""
    if not args.resume:
        return None, resolve_options(args)
    meta = read_meta(out)
    print(f"resuming {out} at step {meta['step']} (options from the saved state)", flush=True)
    return meta, meta["options"]


class _Interval:
    """Train-loss sums over one log interval: mean losses, throughput and expert-load imbalance (MaxVio)."""

    def __init__(self) -> None:
        self.loss = self.aux = self.z = 0.0
        self.n = 0
        self.counts: torch.Tensor | int = 0
        self.t0 = time.perf_counter()

    def add(self, ce: torch.Tensor, o: Any) -> None:
        self.loss += ce.item()
        self.aux += o.aux_loss.item()
        self.z += o.z_loss.item()
        self.n += 1
        self.counts = self.counts + torch.stack(o.counts).to(torch.float64)  # (L_moe, E)


class _Trainer:
    """One training session (new or resumed): the model, optimizer, data position and progress, with one method
    per step of :func:`run`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        meta, opts = _options(args, self.out)
        if opts["steps"] is None and opts["time_budget_min"] is None:
            raise curmoe.InvalidInputError("pass --steps or --time-budget-min (or a preset that sets steps)")
        self.opts = opts
        self.tok_path = Path(opts.get("tokenizer") or args.tokenizer or self.out / "tokenizer.json")
        opts["tokenizer"] = str(self.tok_path)
        self.corpus = corpus = prepare_corpus(args.data_dir, self.tok_path, args.vocab_size)
        self.config = model_config(opts, corpus) if meta is None else ModelConfig.from_dict(meta["config"])
        torch.manual_seed(opts["seed"])
        self.model = TorchMoE(self.config)
        self.opt = _optimizer(self.model, opts)
        self.T, self.B = opts["seq_len"], opts["batch_size"]
        self.step, self.tokens, self.elapsed0, self.total = 0, 0, 0.0, opts["steps"]
        self.best: dict[str, Any] = {"step": None, "ppl_token": math.inf, "ppl_word": math.inf}
        pos = {"epoch": 0, "index": 0}
        if meta is not None:
            meta = load_state(self.out, self.model, self.opt)
            self.step, self.tokens, self.elapsed0 = meta["step"], meta["tokens"], meta["elapsed_s"]
            self.total, self.best, pos = meta["total_steps"], meta["best"], meta["data"]
        self.batcher = Batcher(corpus.train, self.T, self.B, opts["seed"], pos["epoch"], pos["index"])
        self.logf = _Log(self.out / "train_log.jsonl", self.step if meta is not None else None)
        self.n_params = self.model.n_params()
        print(f"{self.model!r}; {corpus.train.size:,} train tokens, {corpus.valid.size:,} valid tokens; "
              f"{self.B}x{self.T} tokens per step, {self.batcher.batches_per_epoch} steps per epoch", flush=True)
        self.eval_tokens = min(int(opts["eval_tokens"]), corpus.valid.size)
        self.budget_s = None if opts["time_budget_min"] is None else 60.0 * opts["time_budget_min"]
        self.has_bias = any(getattr(layer, "router", None) is not None and layer.router.bias is not None
                            for layer in self.model.layers)
        self.t0 = time.perf_counter()
        self.t_eval: float | None = None
        self.calib_from: tuple[int, float] | None = None
        self.stopped = "steps"

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t0

    def save(self) -> None:
        meta = {"step": self.step, "tokens": self.tokens, "elapsed_s": self.elapsed(), "total_steps": self.total,
                "best": self.best, "data": self.batcher.position(), "options": self.opts,
                "config": self.config.to_dict(), "torch": torch.__version__, "n_params": self.n_params}
        save_state(self.out, self.model, self.opt, meta)

    def eval_valid(self) -> float:
        """Perplexity on the fixed valid slice; a new best is saved to OUT/best. Returns the seconds it took."""
        te = time.perf_counter()
        r = evaluate(self.model, self.corpus.valid, self.corpus.valid_words, self.T, self.eval_tokens)
        dt = time.perf_counter() - te
        rec = {"event": "eval", "step": self.step, "tokens": self.tokens, "elapsed_s": round(self.elapsed(), 2),
               "valid_ppl_token": r.ppl_token, "valid_ppl_word": r.ppl_word, "valid_tokens": r.tokens,
               "eval_s": round(dt, 2)}
        if r.ppl_token < self.best["ppl_token"]:
            self.best = {"step": self.step, "ppl_token": r.ppl_token, "ppl_word": r.ppl_word}
            save_best(self.model, self.out / "best", self.tok_path)
            rec["best"] = True
        self.logf.write(rec)
        print(f"step {self.step:6d}  valid ppl {r.ppl_token:9.2f} (word {r.ppl_word:9.2f}) on {r.tokens} tokens"
              f"{'  *best*' if rec.get('best') else ''}  [{dt:.1f} s]", flush=True)
        self.t_eval = dt
        return dt

    def train_step(self, acc: _Interval) -> float:
        """One optimizer step on the next batch (losses added to ``acc``); returns its learning rate."""
        opts, model = self.opts, self.model
        self.step += 1
        lr = lr_at(self.step, opts, self.total)
        for g in self.opt.param_groups:
            g["lr"] = lr
        batch = torch.from_numpy(self.batcher.next())  # (B, T + 1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(opts["bf16"])):
            o = model.forward_train(batch[:, :-1])
        ce = F.cross_entropy(o.logits.float().reshape(-1, self.config.vocab_size), batch[:, 1:].reshape(-1))
        loss = ce + opts["aux_coef"] * o.aux_loss.float() + opts["z_coef"] * o.z_loss.float()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.step} (lr {lr:.3g}); lower --lr or --grad-clip")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if opts["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts["grad_clip"])
        self.opt.step()
        if self.has_bias:
            model.update_router_biases(o.counts, opts["bias_speed"])
        self.tokens += self.B * self.T
        acc.add(ce, o)
        return lr

    def plan_steps(self) -> None:
        """With a time budget and no --steps: time 10 steps after this session's first ones, then fix the total."""
        if self.total is not None:
            return
        if self.calib_from is None and self.step >= 3:
            self.calib_from = (self.step, time.perf_counter())
        elif self.calib_from is not None and self.step == self.calib_from[0] + 10:
            assert self.budget_s is not None
            t_step = (time.perf_counter() - self.calib_from[1]) / 10
            t_ev = self.t_eval or 0.0
            left = self.budget_s - self.elapsed()
            self.total = self.step + max(1, int(left / (t_step + t_ev / self.opts["eval_every"])))
            print(f"time budget: {t_step * 1000:.0f} ms/step, eval {t_ev:.1f} s -> {self.total} steps", flush=True)

    def log_interval(self, acc: _Interval, lr: float) -> None:
        now = time.perf_counter()
        rec = {"event": "train", "step": self.step, "tokens": self.tokens, "loss": acc.loss / acc.n,
               "aux_loss": acc.aux / acc.n, "z_loss": acc.z / acc.n, "lr": lr,
               "elapsed_s": round(self.elapsed(), 2),
               "tokens_per_s": round(acc.n * self.B * self.T / (now - acc.t0), 1),
               "max_vio": _max_vio(acc.counts)}
        self.logf.write(rec)
        print(f"step {self.step:6d}  loss {rec['loss']:.4f}  aux {rec['aux_loss']:.4f}  "
              f"max_vio {rec['max_vio']:.2f}  lr {lr:.2e}  {rec['tokens_per_s']:.0f} tok/s  "
              f"{rec['elapsed_s']:.0f} s", flush=True)

    def train(self) -> bool:
        """The training loop; True when stopped by --stop-at (state saved), False when done (steps or budget)."""
        stop_at, opts = self.args.stop_at, self.opts
        if self.step == 0:
            self.eval_valid()
        self.model.train()
        acc = _Interval()
        while self.total is None or self.step < self.total:
            if self.budget_s is not None and self.elapsed() >= self.budget_s:
                self.stopped = "time budget"
                break
            lr = self.train_step(acc)
            self.plan_steps()
            if self.step % opts["log_every"] == 0 or self.step == self.total or self.step == stop_at:
                self.log_interval(acc, lr)
                acc = _Interval()
            if self.step % opts["eval_every"] == 0 or self.step == self.total:
                self.eval_valid()
                self.save()
            if stop_at is not None and self.step >= stop_at:
                self.save()
                print(f"stopped at step {self.step} (--stop-at); continue with --resume", flush=True)
                return True
        if self.step % opts["eval_every"] and self.step != self.total:  # stopped by the budget between evals
            self.eval_valid()
        self.save()
        return False

    def summary(self) -> dict[str, Any]:
        train_s, out, best = self.elapsed(), self.out, self.best
        return {
            "params": self.n_params, "steps": self.step, "total_steps_planned": self.total,
            "stopped_by": self.stopped, "tokens": self.tokens,
            "epochs": round(self.tokens / self.corpus.train.size, 3), "train_wall_s": round(train_s, 1),
            "tokens_per_s": round(self.tokens / max(train_s, 1e-9), 1), "threads": self.args.threads,
            "best_step": best["step"], "best_slice": {"ppl_token": best["ppl_token"], "ppl_word": best["ppl_word"],
                                                      "tokens": self.eval_tokens},
            "config": self.config.to_dict(), "options": self.opts, "torch": torch.__version__,
            "checkpoint": str(out / "best"),
            "checkpoint_bytes": (out / "best" / "model.safetensors").stat().st_size,
        }

    def final_eval(self) -> dict[str, Any]:
        """Full-valid perplexity of the best checkpoint as shipped (fp16), logged and returned for the summary."""
        tf = time.perf_counter()
        shipped = load_torch(self.out / "best", dtype=torch.float32)
        r = evaluate(shipped, self.corpus.valid, self.corpus.valid_words, self.T, None)
        result = {"ppl_token": r.ppl_token, "ppl_word": r.ppl_word, "protocol": r.protocol,
                  "eval_s": round(time.perf_counter() - tf, 1)}
        self.logf.write({"event": "final", "step": self.best["step"], "tokens": self.tokens,
                         "valid_ppl_token": r.ppl_token, "valid_ppl_word": r.ppl_word, "valid_tokens": r.tokens})
        print(f"best checkpoint (step {self.best['step']}, fp16): full valid {r.summary()}", flush=True)
        return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume) as ``args`` says; returns the summary (also written to OUT/train_summary.json), or the
    progress so far when stopped by ``--stop-at``."""
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    trainer = _Trainer(args)
    if trainer.train():
        return {"stopped_at": trainer.step, "best": trainer.best}
    summary = trainer.summary()
    if args.final_eval:
        summary["best_valid"] = trainer.final_eval()
    summary["session_wall_s"] = round(time.perf_counter() - t_start, 1)  # this invocation, incl. data and evals
    out = trainer.out
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(out / "train_log.jsonl", out / "loss_curve.png")
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("CURMOE_LOG", "WARNING"))
    args = build_parser().parse_args(argv)
    run(args)
    return 0
