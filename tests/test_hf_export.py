"""Issue 13: ``curmoe export MODEL --format hf -o FOLDER`` and :func:`curmoe.exporters.hf.export_hf`.

The folder is loaded the way a user's tools load it (``AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)``, ``AutoTokenizer.from_pretrained(folder)``) and checked against the NumPy reference on the
same weights: float64 logits of every architecture / router variant and of every compression method (padded batches
included) to 1e-10 of the logit scale, greedy HF ``generate`` (with its KV cache) token for token against
``curmoe.runtimes.generate`` on the float64 reference, and the shipped model exported in float32 through the CLI
to the float32 tolerance of curmoe.runtimes.tolerances, loaded in a process where curmoe cannot be imported.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import curmoe
from tests.babies import VARIANTS, baby_model, compressed, random_ids

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from curmoe.exporters.hf import REMOTE_CODE_FILES, export_hf, hf_tensor_name

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "wt2-moe-tiny"
F64_TOL = 1e-10  # float64 against float64: measured 1e-15 to 4e-15 of the logit scale (summation order only)
# Variants beyond tests/babies.py VARIANTS: the two routers it does not list, and the multi-slot hash
EXTRA = {
    "hash2": dict(router=dict(kind="hash", top_k=2)),
    "expert_choice": dict(router=dict(kind="expert_choice", top_k=2, capacity_factor=1.0)),
    "expert_choice_fallback": dict(router=dict(kind="expert_choice", top_k=2, capacity_factor=1.0,
                                               decode_fallback="topk")),
    "random": dict(router=dict(kind="random", top_k=2, seed=5)),
}
ALL = VARIANTS | EXTRA


def _load(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()


def _padded(model: curmoe.Model, B: int = 3, T: int = 11, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(B, T) ids and a mask with left padding of 0, 3 and 6 tokens (padding id 0)."""
    ids = random_ids(model, B, T, seed=seed)
    mask = np.ones((B, T), np.int64)
    for b in range(B):
        mask[b, : 3 * b] = 0
    return np.where(mask == 1, ids, 0), mask


def _hf_logits(hf, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        out = hf(torch.as_tensor(ids), attention_mask=None if mask is None else torch.as_tensor(mask), use_cache=False)
    return out.logits.double().numpy()


def _assert_close(got: np.ndarray, ref: np.ndarray, mask: np.ndarray | None, tol: float, what: str) -> None:
    """Max error over real tokens, relative to the reference's logit scale, at most ``tol``."""
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    real = np.ones(ref.shape[:2], bool) if mask is None else mask.astype(bool)
    err = np.abs(got - ref)[real].max() / np.abs(ref[real]).max()
    assert err <= tol, f"{what}: max relative logit error {err:.3g} > {tol:g}"


def _neuron(model: curmoe.Model) -> curmoe.Model:
    calib = random_ids(model, 16, 16, seed=3)
    return curmoe.compress(model, curmoe.NeuronConfig(ratio=0.5, allocation="global"), calib_ids=calib, progress=False)


# -- numbers ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(ALL))
def test_logits_match_reference_padded_batch(tmp_path, variant):
    """Every architecture / router variant: float64 logits of a left-padded batch equal the reference's."""
    model = baby_model(**ALL[variant])
    export_hf(model, tmp_path / "hf")
    hf = _load(tmp_path / "hf")
    assert next(hf.parameters()).dtype == torch.float64  # dtype "auto" reads the folder's dtype
    ids, mask = _padded(model)
    _assert_close(_hf_logits(hf, ids, mask), model.forward(ids, attention_mask=mask), mask, F64_TOL, variant)
    full = random_ids(model, 2, 9, seed=4)  # and without a mask
    _assert_close(_hf_logits(hf, full), model.forward(full), None, F64_TOL, variant + " (no mask)")


METHODS = {"cur": lambda m: compressed(m, "cur"), "cur_folded": lambda m: compressed(m, "cur", fold_u=True),
           "svd": lambda m: compressed(m, "svd"), "cur-neuron": _neuron}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("variant", ["mixtral", "qwen2_moe", "gelu_dense_layer"])
def test_compressed_models_stay_factorised_and_match(tmp_path, method, variant):
    """A compressed model's folder holds the factors (no dense expert matrix), is no bigger than the model, keeps
    CUR's indices, and computes the reference's logits."""
    from safetensors.numpy import load_file

    small = METHODS[method](baby_model(**VARIANTS[variant]))
    assert small.config.factors
    export_hf(small, tmp_path / "hf")
    st = load_file(tmp_path / "hf" / "model.safetensors")
    want = {hf_tensor_name(n): a for n, a in small.tensors.items()}
    want |= {hf_tensor_name(f"{k}.{leaf}"): a for k, lin in small.experts.items() for leaf, a in lin.tensors().items()}
    assert set(st) == set(want)
    for name, a in want.items():  # every factor, index vector and weight stored as is
        np.testing.assert_array_equal(st[name], a, err_msg=name)
    for key, spec in small.config.factors.items():
        if spec["kind"] in ("cur", "svd"):
            assert f"model.{key}.weight" not in st, f"{key} was stored dense"
    n_float = sum(a.size for a in st.values() if a.dtype.kind == "f")
    assert n_float == small.n_params() < baby_model(**VARIANTS[variant]).n_params()
    hf = _load(tmp_path / "hf")
    assert sum(p.numel() for p in hf.parameters()) == small.n_params()
    ids, mask = _padded(small)
    _assert_close(_hf_logits(hf, ids, mask), small.forward(ids, attention_mask=mask), mask, F64_TOL,
                  f"{method}/{variant}")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_lower_precision_folders_within_the_runtime_tolerances(tmp_path, dtype):
    """--dtype float32 / float16: the folder holds (and HF computes in) that dtype, within curmoe's validation
    tolerance for it against the float64 reference (routing agrees on these inputs: well-separated babies)."""
    from curmoe.runtimes import tolerance_for

    model = compressed(baby_model(**VARIANTS["qwen2_moe"]), "cur")
    export_hf(model, tmp_path / "hf", dtype=dtype)
    hf = _load(tmp_path / "hf")
    assert next(hf.parameters()).dtype == getattr(torch, dtype)
    ids, mask = _padded(model)
    _assert_close(_hf_logits(hf, ids, mask), model.forward(ids, attention_mask=mask), mask,
                  tolerance_for(dtype).max_rel_err, dtype)


@pytest.mark.parametrize("arch", ["MixtralForCausalLM", "Qwen2MoeForCausalLM"])
def test_transformers_model_round_trip(tmp_path, arch):
    """transformers' own model -> curmoe.models.from_hf -> export_hf -> AutoModelForCausalLM: the same logits as the
    original on a left-padded batch (1e-4 relative, tests/test_hf.py's criterion: HF routes in float32)."""
    from curmoe.models import from_hf

    kw = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              num_experts_per_tok=2, max_position_embeddings=128, attn_implementation="eager", eos_token_id=2)
    if arch == "MixtralForCausalLM":
        cfg = transformers.MixtralConfig(**kw, intermediate_size=16, num_local_experts=4)
    else:  # layer 1 dense, gated shared expert, q/k/v biases
        cfg = transformers.Qwen2MoeConfig(**kw, intermediate_size=40, moe_intermediate_size=16, num_experts=4,
                                          shared_expert_intermediate_size=24, mlp_only_layers=[1])
    torch.manual_seed(0)
    orig = getattr(transformers, arch)(cfg).eval()
    with torch.no_grad():
        for name, p in orig.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p)) if "norm" in name else p.normal_(0.0, 0.2)
    export_hf(from_hf(orig), tmp_path / "hf")
    back = _load(tmp_path / "hf")
    ids = np.random.default_rng(0).integers(0, 64, size=(2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[1, :3], ids[1, :3] = 0, 0
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)  # the positions generate() gives transformers' models
    with torch.no_grad():
        want = orig(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                    position_ids=torch.as_tensor(pos)).logits.double().numpy()
    _assert_close(_hf_logits(back, ids, mask), want, mask, 1e-4, arch)


def _reference_session(model: curmoe.Model, folder: Path):
    import curmoe.runtimes

    return curmoe.runtimes.load(model.save(folder), "reference:float64")


@pytest.mark.parametrize("variant,method", [("mixtral", None), ("qwen2_moe", None), ("sigmoid_bias", None),
                                            ("switch", None), ("hash", None), ("olmoe", "cur"), ("qwen3_moe", "svd"),
                                            ("expert_choice_fallback", None)])
def test_generate_greedy_equals_reference_with_cache(tmp_path, variant, method):
    """HF generate (DynamicCache: one new token per step after the prompt) == curmoe.runtimes.generate on the
    float64 reference, token for token, for a left-padded batch."""
    from curmoe.runtimes import generate

    model = baby_model(**ALL[variant])
    if method:
        model = METHODS[method](model)
    export_hf(model, tmp_path / "hf")
    hf = _load(tmp_path / "hf")
    seen: list[int] = []
    hf.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["input_ids"].shape[1]), with_kwargs=True)
    ids, mask = _padded(model, B=3, T=7, seed=6)
    want = generate(_reference_session(model, tmp_path / "ref"), ids, 8, attention_mask=mask)
    with torch.no_grad():
        got = hf.generate(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), max_new_tokens=8,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
    np.testing.assert_array_equal(got.numpy(), want)
    assert seen == [7] + [1] * 7, f"generate did not decode with the KV cache: step lengths {seen}"


def test_expert_choice_generates_without_cache_and_refuses_cached_decoding(tmp_path):
    """expert_choice is non-causal: the folder says use_cache=False, so generate re-runs the whole sequence each step
    (each step's logits then equal the reference's full forward); decoding with a cache is refused with the fix."""
    model = baby_model(**EXTRA["expert_choice"])
    export_hf(model, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["use_cache"] is False
    hf = _load(tmp_path / "hf")
    ids = random_ids(model, 1, 6, seed=2)
    with torch.no_grad():
        got = hf.generate(torch.as_tensor(ids), max_new_tokens=4, do_sample=False, eos_token_id=None,
                          pad_token_id=0).numpy()
    seq = ids
    for _ in range(4):  # greedy over the reference's full forward
        seq = np.concatenate([seq, model.forward(seq)[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(got, seq)
    with torch.no_grad(), pytest.raises(RuntimeError, match="use_cache=False"):
        hf.generate(torch.as_tensor(ids), max_new_tokens=2, do_sample=False, use_cache=True, pad_token_id=0)


# -- structure ----------------------------------------------------------------------------------------------------
def test_remote_code_is_self_contained():
    """The bundled files import only the standard library, torch, transformers and numpy (never curmoe), and the
    configuration file only transformers: the folder works where curmoe is not installed."""
    allowed = {"__future__", "math", "fractions", "typing", "dataclasses", "torch", "transformers", "numpy"}
    for f in REMOTE_CODE_FILES:
        tree = ast.parse((ROOT / "exporters" / "hf" / f).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                tops = set() if node.level else {node.module.split(".")[0]}
            else:
                continue
            assert tops <= allowed, f"{f}:{node.lineno} imports {tops - allowed}"


def test_import_stays_numpy_only():
    code = ("import sys, curmoe.exporters.hf; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_export_refuses_an_existing_folder_and_an_unknown_factor(tmp_path):
    model = baby_model()
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(curmoe.InvalidInputError, match="already exists"):
        export_hf(model, tmp_path / "hf")
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["keep.txt"]
    small = compressed(model, "cur")
    key = next(iter(small.config.factors))
    small.config.factors[key]["kind"] = "tucker"  # a factor kind the modeling code does not know
    with pytest.raises(curmoe.InvalidInputError, match="tucker"):
        export_hf(small, tmp_path / "other")
    assert not (tmp_path / "other").exists() and [p.name for p in tmp_path.iterdir()] == ["hf"]


# -- the CLI round trip on the shipped model ----------------------------------------------------------------------

# Run in a fresh process where `import curmoe` fails: the folder must not need curmoe.
_USER = r"""
import json, sys
sys.modules["curmoe"] = None  # any import of curmoe now raises ImportError
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, text = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(folder)  # no trust_remote_code: stdin is closed, so transformers' prompt
                                            # (config.json names remote code) declines at once; the tokenizer
                                            # itself needs no remote code
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
batch = tok([text, "the"], return_tensors="pt", padding=True)
with torch.no_grad():
    logits = model(**batch).logits
    gen = model.generate(**batch, max_new_tokens=6, do_sample=False)
T = batch["input_ids"].shape[1]
print("\nRESULT " + json.dumps({"ids": batch["input_ids"].tolist(), "mask": batch["attention_mask"].tolist(),
                  "logits": logits.double().tolist(), "dtype": str(logits.dtype), "generated": gen.tolist(),
                  "text": tok.decode(gen[0, T:], skip_special_tokens=True), "padding_side": tok.padding_side,
                  "special": [tok.eos_token_id, tok.pad_token_id, tok.unk_token_id]}))
"""


def test_cli_round_trip_on_the_shipped_model(tmp_path):
    from curmoe.models.tokenizer import load_tokenizer
    from curmoe.runtimes import generate, tolerance_for

    out = tmp_path / "tiny-hf"
    r = subprocess.run([sys.executable, "-m", "curmoe.app.cli", "export", str(TINY), "--format", "hf", "-o", str(out),
                        "--json"],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["format"] == "hf" and rec["dtype"] == "float32" and rec["tokenizer"] is True
    assert sorted(p.name for p in out.iterdir()) == rec["files"]
    # the float16 checkpoint stays float16 on disk (same size, header aside) and computes in float32
    assert rec["weights_dtype"] == "float16"
    size, ckpt = (out / "model.safetensors").stat().st_size, (TINY / "model.safetensors").stat().st_size
    assert abs(size - ckpt) <= 0.01 * ckpt, (size, ckpt)

    text = "The game was released in Japan"
    r = subprocess.run([sys.executable, "-c", _USER, str(out), text], check=False, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.split("\nRESULT ")[-1])
    assert got["dtype"] == "torch.float32" and got["padding_side"] == "left"
    assert got["special"] == [1, 0, 2]  # <eos>, <pad>, <unk>: the config's eos/pad ids
    ids, mask = np.array(got["ids"]), np.array(got["mask"])
    np.testing.assert_array_equal(ids[0], load_tokenizer(TINY / "tokenizer.json").encode(text).ids)  # same tokens
    assert mask[1].sum() == 1 and mask[1, -1] == 1  # "the" was left-padded

    ref = curmoe.load(TINY, dtype=np.float64)
    _assert_close(np.array(got["logits"]), ref.forward(ids, attention_mask=mask), mask,
                  tolerance_for("float32").max_rel_err, "wt2-moe-tiny float32")
    eos = ref.config.eos_token_id
    want = generate(_reference_session(ref, tmp_path / "ref"), ids, 6, attention_mask=mask, eos_token_id=eos)
    gen = np.array(got["generated"])
    T = ids.shape[1]
    for b in range(len(gen)):  # a finished sequence: HF pads with pad_token_id, curmoe repeats eos
        ends = np.flatnonzero(gen[b, T:] == eos)
        if ends.size:
            assert (gen[b, T + ends[0] + 1:] == ref.config.pad_token_id).all()
            gen[b, T + ends[0] + 1:] = eos
    np.testing.assert_array_equal(gen, want)
    assert got["text"] == load_tokenizer(TINY / "tokenizer.json").decode(want[0, ids.shape[1]:].tolist())


def test_cli_refuses_graph_options_and_existing_output(tmp_path):
    """An existing -o without --force, and graph-only options (--fold-u, ...), exit 2 with one line and no
    traceback; -o and its folder are left as they were."""
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for extra, needle in (([], "already exists"), (["--force", "--fold-u"], "--fold-u")):
        r = subprocess.run([sys.executable, "-m", "curmoe.app.cli", "export", str(TINY), "--format", "hf", "-o",
                            str(out), *extra], check=False, capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and [p.name for p in tmp_path.iterdir()] == ["hf"]
