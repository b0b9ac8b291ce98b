"""The torch twin (curmoe.models.twin._model) against the NumPy reference: logits, routing, losses, checkpoints,
train_only_u, cached decoding.

Float32 closeness criterion (stated once, used everywhere): ``max |torch - ref| / max |ref| <= 1e-5`` over all
logits of the batch (padding positions included), i.e. the error relative to the largest logit.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import curmoe  # noqa: E402
from curmoe.models.twin._model import TorchMoE, load_torch, train_only_u  # noqa: E402
from curmoe.models.twin._routers import hash_experts_torch  # noqa: E402
from curmoe.reference._linear import CURLinear, SVDLinear  # noqa: E402
from curmoe.routing._fixed import hash_experts  # noqa: E402
from curmoe.routing._metrics import router_z_loss, switch_aux_loss  # noqa: E402
from tests.babies import VARIANTS, baby_model, random_ids  # noqa: E402

EXTRA = {
    "expert_choice": dict(router=dict(kind="expert_choice", capacity_factor=1.0)),
    "random": dict(router=dict(kind="random", top_k=2)),
    "sigmoid_bias_unnormalized": dict(router=dict(kind="sigmoid_bias", normalize=False, top_k=3)),
    "switch_tight": dict(router=dict(kind="switch", capacity_factor=0.5)),
}
ALL = {**VARIANTS, **EXTRA}
RTOL32 = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Baby models are far too small for intra-op threads; one thread is faster, more so on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def padded_batch(model: curmoe.Model) -> tuple[np.ndarray, np.ndarray]:
    """Batch of 2 x 9: sequence 0 right-padded by 2, sequence 1 left-padded by 3."""
    ids = random_ids(model, 2, 9)
    mask = np.ones((2, 9), dtype=bool)
    mask[0, 7:] = False
    mask[1, :3] = False
    return ids, mask


def ref_counts(routings: list) -> list[np.ndarray]:
    """Per MoE layer, token->expert assignments summed over the batch's sequences."""
    out = []
    for layer in routings:
        if layer:
            ex = np.concatenate([r.experts.ravel() for r in layer])
            out.append(np.bincount(ex[ex >= 0], minlength=layer[0].n_experts))
    return out


def factorised(model: curmoe.Model, seed: int = 0) -> curmoe.Model:
    """Replace the expert matrices by CUR (unfolded / folded) and SVD factors, cycling through the three kinds.

    CUR keeps real columns and rows (C = W[:, cols], R = W[rows, :], U = C^+ W R^+); SVD keeps the top half.
    """
    rng = np.random.default_rng(seed)
    experts, factors = dict(model.experts), {}
    for i, (key, lin) in enumerate(sorted(model.experts.items())):
        W = lin.dense()
        m, n = W.shape
        r = min(m, n) // 2
        kind = ("cur", "cur_folded", "svd")[i % 3]
        if kind == "svd":
            U, S, Vt = np.linalg.svd(W, full_matrices=False)
            experts[key] = SVDLinear((U[:, :r] * S[:r]).astype(W.dtype), Vt[:r].astype(W.dtype))
            factors[key] = {"kind": "svd", "rank": r}
            continue
        c = r + 1
        rows, cols = np.sort(rng.choice(m, r, replace=False)), np.sort(rng.choice(n, c, replace=False))
        C, R = W[:, cols], W[rows, :]
        Umat = (np.linalg.pinv(C) @ W @ np.linalg.pinv(R)).astype(W.dtype)  # (c, r)
        folded = kind == "cur_folded"
        experts[key] = CURLinear(C @ Umat if folded else C, None if folded else Umat, R, rows, cols)
        factors[key] = {"kind": "cur", "rank": r, "n_cols": c, "folded": folded}
    cfg = dataclasses.replace(model.config, factors=factors)
    return curmoe.Model(cfg, dict(model.tensors), experts)


def torch_logits(tm: TorchMoE, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        m = None if mask is None else torch.from_numpy(mask)
        return tm(torch.from_numpy(ids), attention_mask=m).numpy()


@pytest.mark.parametrize("variant", sorted(ALL))
def test_float32_logits_and_routing_match_reference(variant):
    ref = baby_model(**ALL[variant]).astype(np.float32)
    ids, mask = padded_batch(ref)
    out = ref.run(ids, attention_mask=mask)
    tm = TorchMoE.from_reference(ref)
    with torch.no_grad():
        to = tm.forward_train(torch.from_numpy(ids), torch.from_numpy(mask))
    # routing first: the same experts get the same number of tokens in every MoE layer
    for got, want in zip(to.counts, ref_counts(out.routings), strict=True):
        np.testing.assert_array_equal(got.numpy(), want)
    got = to.logits.numpy()
    assert got.dtype == np.float32 and got.shape == out.logits.shape
    err = rel_err(got, out.logits)
    assert err <= RTOL32, f"{variant}: float32 logits differ by {err:.2e} of max |logit| (budget {RTOL32})"


@pytest.mark.parametrize("variant", sorted(ALL))
def test_float64_twin_agrees_to_rounding(variant):
    ref = baby_model(**ALL[variant])
    ids, mask = padded_batch(ref)
    tm = TorchMoE.from_reference(ref)
    assert tm.embed.weight.dtype == torch.float64
    assert rel_err(torch_logits(tm, ids, mask), ref.forward(ids, attention_mask=mask)) < 1e-12


def test_ties_break_toward_lower_expert_index():
    ref = baby_model()
    ref.tensors["layers.0.router.weight"][:] = 0.0  # every expert scores the same: topk must pick 0 and 1
    ids, _ = padded_batch(ref)
    with torch.no_grad():
        to = TorchMoE.from_reference(ref).forward_train(torch.from_numpy(ids))
    assert to.stats[0].routing.experts.unique().tolist() == [0, 1]
    assert rel_err(to.logits.numpy(), ref.forward(ids)) < 1e-12


def test_factorised_experts_match_reference():
    ref = factorised(baby_model(**VARIANTS["qwen2_moe"])).astype(np.float32)
    tm = TorchMoE.from_reference(ref)
    kinds = {type(m).__name__ for m in tm.modules()}
    assert {"TorchCURLinear", "TorchSVDLinear"} <= kinds
    assert tm.n_params() == ref.n_params()
    ids, mask = padded_batch(ref)
    err = rel_err(torch_logits(tm, ids, mask), ref.forward(ids, attention_mask=mask))
    assert err <= RTOL32, f"factorised: {err:.2e}"


def test_compressed_model_matches_reference():
    from curmoe import CURConfig, compress

    ref = compress(baby_model().astype(np.float32), CURConfig(ratio=0.5))
    tm = TorchMoE.from_reference(ref)
    ids, mask = padded_batch(ref)
    err = rel_err(torch_logits(tm, ids, mask), ref.forward(ids, attention_mask=mask))
    assert err <= RTOL32, f"compressed: {err:.2e}"


@pytest.mark.parametrize("variant", ["qwen2_moe", "sigmoid_bias", "factorised"])
def test_checkpoint_round_trip(tmp_path, variant):
    ref = baby_model(**VARIANTS.get(variant, {})).astype(np.float32)
    if variant == "factorised":
        ref = factorised(ref)
    tm = TorchMoE.from_reference(ref)
    with torch.no_grad():
        for p in tm.parameters():  # move away from the reference so the round trip carries the torch weights
            p.mul_(1.1)
    tm.to_reference().save(tmp_path / "m")
    back = load_torch(tmp_path / "m")
    sd, sd2 = tm.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert sd[k].dtype == sd2[k].dtype and torch.equal(sd[k], sd2[k]), k
    ids, mask = padded_batch(ref)
    np.testing.assert_array_equal(torch_logits(back, ids, mask), torch_logits(tm, ids, mask))
    loaded = curmoe.load(tmp_path / "m")
    assert rel_err(loaded.forward(ids, attention_mask=mask), torch_logits(tm, ids, mask)) <= RTOL32


def test_from_reference_copies_weights():
    ref = baby_model()
    before = ref.tensors["embed.weight"].copy()
    tm = TorchMoE.from_reference(ref)
    with torch.no_grad():
        tm.embed.weight.add_(1.0)
    np.testing.assert_array_equal(ref.tensors["embed.weight"], before)


def test_train_only_u_keeps_c_and_r(tmp_path):
    ref = factorised(baby_model().astype(np.float32))
    tm = TorchMoE.from_reference(ref)
    before = {k: v.clone() for k, v in tm.state_dict().items()}
    us = train_only_u(tm)
    assert len(us) == sum(1 for s in ref.config.factors.values() if s["kind"] == "cur" and not s["folded"])
    trainable = {n for n, p in tm.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".U") for n in trainable)
    opt = torch.optim.Adam(us, lr=1e-2)
    ids = torch.from_numpy(random_ids(ref, 2, 12))
    losses = []
    for _ in range(5):
        logits = tm(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = tm.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"{n}" for n in trainable}, sorted(changed ^ trainable)[:3]
    assert losses[-1] < losses[0]
    # C and R are still real columns / rows of the original matrices
    for key, lin in ref.experts.items():
        if isinstance(lin, CURLinear) and lin.U is not None:
            np.testing.assert_array_equal(after[f"{key}.C"].numpy(), lin.C)
            np.testing.assert_array_equal(after[f"{key}.R"].numpy(), lin.R)


def test_train_only_u_needs_cur():
    with pytest.raises(curmoe.InvalidInputError, match="fold_u=False"):
        train_only_u(TorchMoE.from_reference(baby_model()))


@pytest.mark.parametrize("variant", sorted(set(VARIANTS) - {"switch"}))
def test_cached_decoding_matches_full_forward(variant):
    tm = TorchMoE.from_reference(baby_model(**VARIANTS[variant]).astype(np.float32))
    ids = torch.from_numpy(random_ids(tm.to_reference(), 2, 10))
    with torch.no_grad():
        full = tm(ids).numpy()
        cache = tm.new_cache()
        steps = [tm(ids[:, :4], cache=cache)]
        steps += [tm(ids[:, t : t + 1], cache=cache) for t in range(4, 10)]
    assert cache.length == 10
    assert rel_err(torch.cat(steps, 1).numpy(), full) <= RTOL32


def test_left_padded_batch_decodes_like_reference():
    ref = baby_model().astype(np.float32)
    tm = TorchMoE.from_reference(ref)
    ids = np.array([[3, 4, 5, 6, 7], [0, 0, 8, 9, 10]])
    mask = np.array([[1] * 5, [0, 0, 1, 1, 1]])
    nxt = np.array([[7], [9]])
    rc = ref.new_cache()
    ref.forward(ids, attention_mask=mask, cache=rc)
    want = ref.forward(nxt, attention_mask=np.ones((2, 1)), cache=rc)
    with torch.no_grad():
        tc = tm.new_cache()
        tm(torch.from_numpy(ids), torch.from_numpy(mask), cache=tc)
        got = tm(torch.from_numpy(nxt), torch.ones(2, 1), cache=tc).numpy()
    assert rel_err(got, want) <= RTOL32


def test_expert_choice_refuses_to_decode():
    tm = TorchMoE.from_reference(baby_model(**EXTRA["expert_choice"]))
    ids = torch.from_numpy(random_ids(tm.to_reference(), 1, 6))
    cache = tm.new_cache()
    with torch.no_grad():
        tm(ids[:, :5], cache=cache)
        with pytest.raises(curmoe.DecodingNotSupportedError, match="decode_fallback"):
            tm(ids[:, 5:], cache=cache)


@pytest.mark.parametrize("variant", ["mixtral", "switch_tight", "sigmoid_bias", "gelu_dense_layer"])
def test_training_losses_match_reference_metrics(variant):
    ref = baby_model(**ALL[variant])
    ids, mask = padded_batch(ref)
    out = ref.run(ids, attention_mask=mask)
    to = TorchMoE.from_reference(ref).forward_train(torch.from_numpy(ids), torch.from_numpy(mask))
    layers = [r for r in out.routings if r]
    aux = sum(switch_aux_loss(np.concatenate([r.experts for r in rs]), np.concatenate([r.probs for r in rs]))
              for rs in layers)
    z = sum(router_z_loss(np.concatenate([r.logits for r in rs])) for rs in layers)
    np.testing.assert_allclose(to.aux_loss.item(), aux, rtol=1e-10)
    np.testing.assert_allclose(to.z_loss.item(), z, rtol=1e-10)


def test_router_gradients_flow_from_lm_and_aux_losses():
    tm = TorchMoE.from_reference(baby_model().astype(np.float32))
    ids = torch.from_numpy(random_ids(tm.to_reference(), 2, 8))
    to = tm.forward_train(ids)
    to.aux_loss.backward(retain_graph=True)
    g_aux = tm.layers[0].router.weight.grad.clone()
    assert g_aux.abs().sum() > 0
    tm.zero_grad()
    to.logits.square().mean().backward()
    assert tm.layers[0].router.weight.grad.abs().sum() > 0  # through the gates


def test_update_router_biases_follows_reference_rule():
    from curmoe.routing._gating import update_bias

    ref = baby_model(**VARIANTS["sigmoid_bias"])
    tm = TorchMoE.from_reference(ref)
    counts = [torch.tensor([9, 1, 3, 3]), torch.tensor([2, 2, 2, 2])]
    tm.update_router_biases(counts, 0.05)
    for l, (layer, c) in enumerate(zip(tm.layers, counts)):
        b0 = ref.tensors[f"layers.{l}.router.bias"]
        np.testing.assert_allclose(layer.router.bias.numpy(), update_bias(b0, c.numpy(), 0.05), rtol=1e-15)
    with pytest.raises(curmoe.InvalidInputError, match="2 MoE layers"):
        tm.update_router_biases(counts[:1], 0.05)


def test_hash_experts_bit_exact():
    ids = np.random.default_rng(0).integers(0, 2**31 - 1, size=500)
    for e, k, seed in [(4, 1, 0), (8, 3, 5), (3, 3, 2**31 - 1), (64, 8, 7)]:
        got = hash_experts_torch(torch.from_numpy(ids), e, k, seed).numpy()
        np.testing.assert_array_equal(got, hash_experts(ids, e, k, seed))


def test_bad_inputs_are_clear():
    tm = TorchMoE.from_reference(baby_model())
    with pytest.raises(curmoe.InvalidInputError, match=r"shape \(B, T\)"):
        tm(torch.tensor([1, 2, 3]))
    with pytest.raises(curmoe.InvalidInputError, match="token id 50 outside the vocabulary"):
        tm(torch.tensor([[1, 50]]))
    with pytest.raises(curmoe.InvalidInputError, match="integers"):
        tm(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(curmoe.InvalidInputError, match="attention_mask has shape"):
        tm(torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 3))
    with pytest.raises(curmoe.InvalidInputError, match="curmoe.Model"):
        TorchMoE.from_reference("not a model")


def test_importing_curmoe_models_does_not_import_torch():
    code = "import sys, curmoe, curmoe.models; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
