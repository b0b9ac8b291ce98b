"""python -m curmoe.models.train end to end on a small synthetic corpus laid out like WikiText-2: the loss falls,
a resumed run continues exactly like an uninterrupted one, and the best checkpoint is a valid curmoe model whose
logits match the torch model it was saved from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

import curmoe  # noqa: E402
from curmoe.models import train  # noqa: E402
from curmoe.models.tokenizer import save_tokenizer, train_bpe_tokenizer  # noqa: E402
from curmoe.models.twin._model import TorchMoE  # noqa: E402

STEPS = 8


def _sentence(rng: np.random.Generator) -> str:
    nouns = "cat dog bird fish horse mouse lion tiger bear wolf".split()
    verbs = "sees chases likes eats follows watches".split()
    adjs = "big small red blue old young happy sad".split()
    return f"the {rng.choice(adjs)} {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)} ."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(data dir, tokenizer.json): a toy grammar in WikiText-2 layout, one to three sentences per line."""
    root = tmp_path_factory.mktemp("wt2")
    (root / "wikitext-2").mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 1500), ("valid", 150), ("test", 150)):
        lines = [" ".join(_sentence(rng) for _ in range(rng.integers(1, 4))) if rng.random() > 0.1 else ""
                 for _ in range(n)]
        (root / "wikitext-2" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    lines = (root / "wikitext-2" / "train.txt").read_text().splitlines()
    tok = save_tokenizer(train_bpe_tokenizer(lines, 120), root / "tokenizer.json")
    return root, tok


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _run(corpus: tuple[Path, Path], out: Path, *extra: str) -> None:
    data, tok = corpus
    argv = ["--data-dir", str(data), "--tokenizer", str(tok), "--out", str(out), "--preset", "tiny",
            "--d-model", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--experts", "4", "--d-ff", "32",
            "--seq-len", "32", "--batch-size", "8", "--lr", "1e-2", "--warmup", "2", "--steps", str(STEPS),
            "--eval-every", "4", "--eval-tokens", "1024", "--log-every", "1", "--threads", "1", *extra]
    assert train.main(argv) == 0


def _log(out: Path, event: str) -> list[dict]:
    recs = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    return [r for r in recs if r["event"] == event]


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    _run(corpus, out)
    return out


def test_loss_decreases_and_outputs_are_written(full_run):
    tr, ev = _log(full_run, "train"), _log(full_run, "eval")
    assert [r["step"] for r in tr] == list(range(1, STEPS + 1))
    assert tr[-1]["loss"] < tr[0]["loss"] - 0.5, [r["loss"] for r in tr]
    assert [r["step"] for r in ev] == [0, 4, 8]
    assert ev[-1]["valid_ppl_token"] < 0.5 * ev[0]["valid_ppl_token"]
    s = json.loads((full_run / "train_summary.json").read_text())
    assert s["steps"] == STEPS and s["tokens"] == STEPS * 8 * 32
    assert s["best_step"] == min(ev, key=lambda r: r["valid_ppl_token"])["step"]
    # the final full-valid number is for the fp16 checkpoint; it must be close to the best slice number
    assert s["best_valid"]["protocol"]["truncated"] is False
    assert {"ppl_token", "ppl_word"} <= s["best_valid"].keys()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (full_run / "best" / name).is_file()


def test_best_checkpoint_loads_and_matches_torch_logits(full_run):
    s = json.loads((full_run / "train_summary.json").read_text())
    assert s["best_step"] == STEPS  # the toy corpus keeps improving, so the last eval is the best
    ref = curmoe.load(full_run / "best")
    assert ref.tokenizer_path is not None and ref.config.max_seq_len == 32
    from safetensors.numpy import load_file

    assert {a.dtype for a in load_file(str(full_run / "best" / "model.safetensors")).values()} == {np.dtype(np.float16)}
    # the torch model at the last step, from the float32 training state, rounded to fp16 as the checkpoint is
    from safetensors.torch import load_file as load_torch_file

    state = load_torch_file(str(full_run / "state" / "train_state.safetensors"))
    tm = TorchMoE(ref.config)
    tm.load_state_dict({k[6:]: v.half().float() for k, v in state.items() if k.startswith("model.")})
    ids = np.random.default_rng(0).integers(0, ref.config.vocab_size, size=(2, 32))
    with torch.no_grad():
        got = tm(torch.from_numpy(ids)).numpy()
    want = ref.forward(ids)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= 1e-5, err


def test_resume_reproduces_the_uninterrupted_run(corpus, full_run, tmp_path):
    _run(corpus, tmp_path, "--stop-at", "5")
    assert not (tmp_path / "train_summary.json").exists()
    assert json.loads((tmp_path / "state" / "train_state.json").read_text())["step"] == 5
    _run(corpus, tmp_path, "--resume")
    a, b = _log(full_run, "train"), _log(tmp_path, "train")
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))  # no duplicated records after the resume
    la, lb = np.array([r["loss"] for r in a]), np.array([r["loss"] for r in b])
    np.testing.assert_array_equal(lb, la)  # step 6 is the first step after the resume
    ea, eb = _log(full_run, "eval"), _log(tmp_path, "eval")
    np.testing.assert_allclose([r["valid_ppl_token"] for r in eb], [r["valid_ppl_token"] for r in ea], rtol=1e-6)


def test_resume_without_state_is_a_clear_error(corpus, tmp_path):
    with pytest.raises(curmoe.CheckpointError, match="run without --resume first"):
        _run(corpus, tmp_path, "--resume")


def test_time_budget_plans_the_step_count(corpus, tmp_path):
    """Without --steps, the step count is estimated from timed steps and the run stops within its budget."""
    data, tok = corpus
    argv = ["--data-dir", str(data), "--tokenizer", str(tok), "--out", str(tmp_path), "--preset", "tiny",
            "--d-model", "16", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--experts", "2", "--d-ff", "16",
            "--seq-len", "16", "--batch-size", "2", "--warmup", "2", "--time-budget-min", "0.05",
            "--eval-every", "1000", "--eval-tokens", "256", "--log-every", "5", "--threads", "1", "--no-final-eval"]
    assert train.main(argv) == 0
    s = json.loads((tmp_path / "train_summary.json").read_text())
    assert s["options"]["steps"] is None and s["stopped_by"] in ("steps", "time budget")
    assert isinstance(s["total_steps_planned"], int) and s["steps"] >= 13  # timed steps 3..13, then planned
    assert s["train_wall_s"] < 60  # a 3 s budget plus evaluations, not an unbounded run
    assert "best_valid" not in s and (tmp_path / "best" / "model.safetensors").is_file()
