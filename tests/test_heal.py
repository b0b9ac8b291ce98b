"""Healing (curmoe.models.heal, issue 12 item 5): what is trained, what stays bit-identical, early stopping on the
held-out calibration KL, the record, and the bad inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import curmoe
from curmoe.common.errors import InvalidInputError
from curmoe.models.healing import HealConfig, HealReport, heal, trainable_parts
from curmoe.reference import NeuronLinear
from tests.babies import baby_model, random_ids

B, T = 8, 16
FAST = HealConfig(max_steps=30, lr=1e-2, batch_size=2, holdout=0.25, eval_every=5, patience=3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def neuron_compress(model: curmoe.Model, k: int) -> curmoe.Model:
    """Neuron CUR by hand: keep the first k neurons of every expert (real gate/up rows, down columns as the
    "refit" down), as curmoe.NeuronConfig stores it."""
    J = np.arange(k)
    experts, factors = dict(model.experts), {}
    for base in [k for k in model.experts if ".experts." in k]:
        W = model.experts[base].W
        role = "refit" if base.endswith(".down") else "rows"
        experts[base] = NeuronLinear(W[:, J].copy() if role == "refit" else W[J].copy(), J, role)
        factors[base] = {"kind": "neuron", "n_neurons": k, "role": role}
    config = dataclasses.replace(model.config, factors=factors)
    return curmoe.Model(config, model.tensors, experts, model.tokenizer_path)


@pytest.fixture(scope="module")
def dense() -> curmoe.Model:
    return baby_model(seed=0)


@pytest.fixture(scope="module")
def ids(dense) -> np.ndarray:
    return random_ids(dense, B, T, seed=5)


@pytest.fixture(scope="module")
def compressed(dense) -> dict[str, curmoe.Model]:
    return {
        "cur": curmoe.compress(dense, curmoe.CURConfig(ratio=0.5), progress=False),
        "svd": curmoe.compress(dense, curmoe.SVDConfig(ratio=0.5), progress=False),
        "neuron": neuron_compress(dense, dense.config.moe.d_ff // 2),
    }


@pytest.fixture(scope="module")
def healed(compressed, dense, ids) -> dict[str, tuple[curmoe.Model, HealReport]]:
    return {kind: heal(m, dense, ids, FAST) for kind, m in compressed.items()}


def held_out_kl(model: curmoe.Model, dense: curmoe.Model, ids: np.ndarray, n_hold: int) -> float:
    """Mean per-token KL(dense || model) on the last n_hold rows, with the NumPy reference (the oracle)."""

    def logp(m):
        z = m(ids[-n_hold:]).astype(np.float64)
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    p, q = logp(dense), logp(model)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


# What is trained -----------------------------------------------------------------------------------------------
TRAINED = {"cur": {"U"}, "svd": {"A", "B"}, "neuron": {"weight"}}


@pytest.mark.parametrize("kind", ["cur", "svd", "neuron"])
def test_only_the_small_parts_change(kind, compressed, healed):
    """Exactly the described set changes: CUR U, SVD A/B of down matrices, neuron-CUR refit down; every other
    array (real rows/columns, indices, gate/up, embeddings, attention, routers, norms) is bit-identical."""
    before, (after, report) = compressed[kind], healed[kind]
    assert report.best_step > 0, "the baby heal should improve, else this test checks nothing"
    for name, a in before.tensors.items():
        assert np.array_equal(after.tensors[name], a), name
    changed = set()
    for key, lin in before.experts.items():
        new = after.experts[key]
        assert type(new) is type(lin)
        for part, a in lin.tensors().items():
            b = new.tensors()[part]
            assert b.dtype == a.dtype and b.shape == a.shape
            if not np.array_equal(a, b):
                changed.add((key.rsplit(".", 1)[1], part))
    mats = {"cur": {"gate", "up", "down"}, "svd": {"down"}, "neuron": {"down"}}[kind]
    assert changed == {(m, p) for m in mats for p in TRAINED[kind]}


@pytest.mark.parametrize("kind", ["cur", "svd", "neuron"])
def test_trainable_parameters_counted(kind, compressed, healed):
    model, (_, report) = compressed[kind], healed[kind]
    ex = model.experts
    expect = {"cur": lambda: sum(ex[k].U.size for k in ex),
              "svd": lambda: sum(ex[k].A.size + ex[k].B.size for k in ex if k.endswith(".down")),
              "neuron": lambda: sum(ex[k].W.size for k in ex if k.endswith(".down"))}[kind]()
    assert report.trainable_params == expect == sum(report.trainable.values())
    assert set(report.trainable) == {{"cur": "cur_u", "svd": "svd_down", "neuron": "neuron_refit"}[kind]}
    assert report.trained_matrices == len({k for k, _ in trainable_parts(model.config.factors).values()})


def test_svd_heals_the_budget_neuron_cur_heals():
    """SVD at removed ratio rho heals r (d + I) ~ (1 - rho) d I per expert: the refit down of neuron CUR, d k with
    k = (1 - rho) I. Equal exactly when the ranks come out whole (d = 16, I = 48, rho = 0.5: r = 6, k = 24)."""
    d, ff = 16, 48
    factors = {"layers.0.experts.0.down": {"kind": "svd", "rank": 6}}
    assert set(trainable_parts(factors)) == {"layers.0.experts.0.down.A", "layers.0.experts.0.down.B"}
    assert 6 * (d + ff) == d * 24 == (1 - 0.5) * d * ff  # neuron: 3 d k = (1 - rho) 3 d I -> k = 24
    gate_up = {f"layers.0.experts.0.{m}": {"kind": "svd", "rank": 6} for m in ("gate", "up")}
    assert trainable_parts(gate_up) == {}


# Real parts stay real ------------------------------------------------------------------------------------------
def test_real_rows_and_columns_bit_identical(compressed, healed, dense):
    cur, (cur_h, _) = compressed["cur"], healed["cur"]
    for key, lin in cur.experts.items():
        h = cur_h.experts[key]
        for part in ("C", "R", "rows", "cols"):
            assert np.array_equal(getattr(h, part), getattr(lin, part)), (key, part)
        assert np.array_equal(h.C, dense.experts[key].W[:, h.cols])  # still real columns of the dense model
        assert np.array_equal(h.R, dense.experts[key].W[h.rows])
    neu, (neu_h, _) = compressed["neuron"], healed["neuron"]
    for key, lin in neu.experts.items():
        h = neu_h.experts[key]
        assert np.array_equal(h.neurons, lin.neurons) and h.role == lin.role
        if lin.role == "rows":
            assert np.array_equal(h.W, lin.W)
            assert np.array_equal(h.W, dense.experts[key].W[h.neurons])


# Early stopping on the held-out calibration KL -----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cur", "svd", "neuron"])
def test_held_out_kl_falls_and_report_matches_the_oracle(kind, compressed, healed, dense, ids):
    model, (h, report) = compressed[kind], healed[kind]
    n_hold = report.holdout_sequences
    assert (report.train_sequences, n_hold, report.holdout_tokens) == (6, 2, 2 * T)
    assert report.kl_after < report.kl_before
    assert report.kl_after == min(kl for _, kl in report.history)
    assert report.history[0] == (0, report.kl_before) and (report.best_step, report.kl_after) in report.history
    # the returned model is the best one: the NumPy reference reproduces both numbers
    assert held_out_kl(model, dense, ids, n_hold) == pytest.approx(report.kl_before, rel=1e-9)
    assert held_out_kl(h, dense, ids, n_hold) == pytest.approx(report.kl_after, rel=1e-9)


def test_no_improvement_returns_the_input_weights(compressed, dense, ids):
    """A wild learning rate only makes things worse: the best weights are the input's, returned untouched."""
    model = compressed["svd"]
    h, report = heal(model, dense, ids, dataclasses.replace(FAST, lr=10.0, max_steps=10, eval_every=2, patience=2))
    assert report.best_step == 0 and report.kl_after == report.kl_before
    assert all(kl > report.kl_before for _, kl in report.history[1:])
    assert report.stopped == "early_stop" and report.steps == 4
    for key, lin in model.experts.items():
        assert all(np.array_equal(a, h.experts[key].tensors()[p]) for p, a in lin.tensors().items())


def test_step_and_time_bounds(compressed, dense, ids):
    cfg = HealConfig(max_steps=3, lr=1e-3, batch_size=2, eval_every=100, patience=1)
    _, r = heal(compressed["cur"], dense, ids, cfg)
    assert r.steps == 3 and r.stopped == "max_steps" and [s for s, _ in r.history] == [0, 3]
    _, r = heal(compressed["cur"], dense, ids, dataclasses.replace(cfg, max_steps=50, max_time_s=1e-9))
    assert r.steps == 1 and r.stopped == "time_limit"
    _, r = heal(compressed["cur"], dense, ids, dataclasses.replace(cfg, teacher_cache_mb=0))  # teacher each step
    assert r.steps == 3 and r.kl_after <= r.kl_before


# The result ----------------------------------------------------------------------------------------------------
def test_record_config_dtype_and_round_trip(tmp_path, dense, ids):
    dense32 = dense.astype(np.float32)
    model = curmoe.compress(dense32, curmoe.CURConfig(ratio=0.5), progress=False)
    h, report = heal(model, dense32, ids, FAST)
    assert h.dtype == np.float32 and all(a.dtype == b.dtype for k in model.experts
                                         for a, b in zip(model.experts[k].tensors().values(),
                                                         h.experts[k].tensors().values()))
    assert h.config.factors == model.config.factors
    rec = h.config.compression
    assert rec["method"] == model.config.compression["method"]  # the compression record is kept
    heal_rec = rec["healing"]
    assert heal_rec["kl_after"] == report.kl_after and heal_rec["trainable_params"] == report.trainable_params
    assert heal_rec["steps"] == report.steps and heal_rec["time_s"] == report.time_s
    assert heal_rec["config"]["lr"] == FAST.lr
    assert model.config.compression.get("healing") is None  # the input is not modified
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.steps = 0  # type: ignore[misc]
    back = curmoe.load(h.save(tmp_path / "healed"))
    assert back.config.compression["healing"] == heal_rec
    np.testing.assert_array_equal(back(ids[:2]), h(ids[:2]))


# Bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value"), [
    ("max_steps", 0), ("max_steps", 2.5), ("max_steps", True), ("lr", 0.0), ("lr", -1e-3), ("lr", float("nan")),
    ("batch_size", 0), ("holdout", 0.0), ("holdout", 0.6), ("eval_every", 0), ("patience", 0),
    ("weight_decay", -0.1), ("grad_clip", -1.0), ("max_time_s", 0.0), ("seed", -1), ("teacher_cache_mb", -1),
])
def test_config_fields_validated(field, value):
    with pytest.raises(InvalidInputError, match=field):
        HealConfig(**{field: value})


def test_bad_models_and_ids(compressed, dense, ids):
    cur = compressed["cur"]
    with pytest.raises(InvalidInputError, match="dense model"):
        heal(dense, dense, ids)
    with pytest.raises(InvalidInputError, match="dense is a compressed model"):
        heal(cur, cur, ids)
    other = baby_model(seed=0, vocab_size=60)
    with pytest.raises(InvalidInputError, match="different configs.*vocab_size"):
        heal(cur, other, ids)
    with pytest.raises(InvalidInputError, match="too few"):
        heal(cur, dense, ids[:1])
    with pytest.raises(InvalidInputError, match="integer"):
        heal(cur, dense, ids.astype(np.float64))
    with pytest.raises(InvalidInputError, match="outside the vocabulary"):
        heal(cur, dense, ids + dense.config.vocab_size)
    with pytest.raises(InvalidInputError, match="HealConfig"):
        heal(cur, dense, ids, {"lr": 1e-3})  # type: ignore[arg-type]
    folded = curmoe.compress(dense, curmoe.CURConfig(ratio=0.5, fold_u=True), progress=False)
    with pytest.raises(InvalidInputError, match="fold_u=False"):
        heal(folded, dense, ids)
    gate_up = curmoe.compress(dense, curmoe.SVDConfig(ratio=0.5, matrices=("gate", "up")), progress=False)
    with pytest.raises(InvalidInputError, match="nothing healing may train"):
        heal(gate_up, dense, ids)
