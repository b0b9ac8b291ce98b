"""OpenVINO fast paths (issue 15): the zero-copy ``run`` and the stateful session (KV cache held inside the compiled
model) give the float64 reference's logits within the float32 budget, step by step, and refuse a mask that does not
continue the sequence they hold. Speed itself is measured by benchmarks/openvino_speed.py, not asserted here."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
ov = pytest.importorskip("openvino")

import curmoe  # noqa: E402
from curmoe.exporters import OnnxExportConfig, export  # noqa: E402
from curmoe.runtimes import load  # noqa: E402
from curmoe.runtimes.generate import empty_cache  # noqa: E402
from curmoe.runtimes.tolerances import TOLERANCES  # noqa: E402
from tests.babies import EXPORT_VARIANTS as VARIANTS  # noqa: E402
from tests.babies import baby_model, random_ids  # noqa: E402

F32 = TOLERANCES["float32"]


@pytest.fixture(scope="module")
def model():
    return baby_model(**VARIANTS["qwen2_moe"])


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    return export(model, OnnxExportConfig(dispatch="sparse"), tmp_path_factory.mktemp("ovs") / "m.onnx")


def _close(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert got.shape == ref.shape and got.dtype == np.float32, what
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err <= F32.max_rel_err, f"{what}: relative error {err:.2e} > {F32.max_rel_err:.0e}"


def test_run_matches_openvino_own_call_and_copies_out(model, onnx_file):
    s = load(onnx_file, "openvino:cpu", threads=1)
    ids = random_ids(model, 2, 5)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)} | empty_cache(s, 2)
    compiled = ov.Core().compile_model(str(onnx_file), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                               "INFERENCE_NUM_THREADS": 1})
    direct = compiled([feeds[i.name] for i in s.inputs])
    first = s.run(feeds)
    assert list(first) == [o.name for o in s.outputs]
    for port, o in zip(compiled.outputs, s.outputs):
        np.testing.assert_array_equal(first[o.name], direct[port], err_msg=o.name)  # same engine, same bits
    kept = first["logits"].copy()
    s.run({"input_ids": ids[:, ::-1].copy(), "attention_mask": np.ones_like(ids)} | empty_cache(s, 2))
    np.testing.assert_array_equal(first["logits"], kept)  # the next call did not overwrite a returned array
    frozen = {k: v.copy() for k, v in feeds.items()}
    for v in frozen.values():
        v.setflags(write=False)  # read-only feeds are copied, not shared
    np.testing.assert_array_equal(s.run(frozen)["logits"], first["logits"])
    only = s.run(feeds, ["present.0.key"])
    assert list(only) == ["present.0.key"]
    _close(first["logits"], model.astype(np.float64).forward(ids).astype(np.float32), "prefill logits")


def test_stateful_decode_matches_reference(model, onnx_file):
    s = load(onnx_file, "openvino:cpu", threads=1, stateful=True)
    assert [i.name for i in s.inputs] == ["input_ids", "attention_mask"]
    assert not [o for o in s.outputs if o.name.startswith("present")] and s.info().extra["stateful"] is True
    ref = model.astype(np.float64)
    for seed in (0, 1):  # the second prompt starts a new sequence on the same session (its mask is as long as it)
        seq = random_ids(model, 2, 6, seed=seed)
        mask = np.ones_like(seq)
        out = s.run({"input_ids": seq, "attention_mask": mask})
        _close(out["logits"], ref.forward(seq).astype(np.float32), f"prompt {seed}")
        for step in range(4):  # one token per step: the cache stays inside the session
            nxt = np.argmax(out["logits"][:, -1], -1)[:, None].astype(np.int64)
            seq = np.concatenate([seq, nxt], 1)
            mask = np.ones_like(seq)
            out = s.run({"input_ids": nxt, "attention_mask": mask})
            assert out["logits"].shape == (2, 1, model.config.vocab_size)
            _close(out["logits"][:, -1], ref.forward(seq)[:, -1].astype(np.float32), f"prompt {seed} step {step}")


def test_stateful_left_padded_batch(model, onnx_file):
    """A left-padded row: the mask's zeros reach the cached positions as in the reference."""
    s = load(onnx_file, "openvino:cpu", threads=1, stateful=True)
    ids = random_ids(model, 2, 5, seed=3)
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    out = s.run({"input_ids": ids, "attention_mask": mask})
    nxt = np.argmax(out["logits"][:, -1], -1)[:, None].astype(np.int64)
    mask2 = np.concatenate([mask, np.ones((2, 1), np.int64)], 1)
    got = s.run({"input_ids": nxt, "attention_mask": mask2})["logits"][:, -1]
    want = model.astype(np.float64).forward(np.concatenate([ids, nxt], 1), attention_mask=mask2)[:, -1]
    _close(got, want.astype(np.float32), "padded decode step")


def test_stateful_refuses_a_mask_that_does_not_continue(model, onnx_file, tmp_path):
    s = load(onnx_file, "openvino:cpu", stateful=True)
    ids = random_ids(model, 1, 4)
    with pytest.raises(curmoe.InvalidInputError, match=r"holds no sequence of KV cache but attention_mask has 5 "
                                                       r"columns for 1 new tokens of batch 1 \(past 4\); one as long "
                                                       r"as input_ids starts a new sequence"):
        s.run({"input_ids": ids[:, :1], "attention_mask": np.ones((1, 5), np.int64)})
    s.run({"input_ids": ids, "attention_mask": np.ones((1, 4), np.int64)})
    with pytest.raises(curmoe.InvalidInputError, match="holds 4 tokens x batch 1 of KV cache but attention_mask has 7 "
                                                       "columns for 1 new tokens of batch 1 .past 6.; feed batch 1 "
                                                       "with a mask of 4 . new tokens"):
        s.run({"input_ids": ids[:, :1], "attention_mask": np.ones((1, 7), np.int64)})
    with pytest.raises(curmoe.InvalidInputError, match="holds 4 tokens x batch 1 .* new tokens of batch 2"):
        s.run({"input_ids": np.zeros((2, 1), np.int64), "attention_mask": np.ones((2, 5), np.int64)})
    s.run({"input_ids": ids[:, :1], "attention_mask": np.ones((1, 5), np.int64)})  # continues: 4 held + 1
    s.reset()
    with pytest.raises(curmoe.InvalidInputError, match="holds no sequence"):
        s.run({"input_ids": ids[:, :1], "attention_mask": np.ones((1, 6), np.int64)})
    no_cache = export(model, OnnxExportConfig(with_cache=False), tmp_path / "nc.onnx")
    with pytest.raises(curmoe.InvalidInputError, match="exported without KV cache"):
        load(no_cache, "openvino:cpu", stateful=True)
    with pytest.raises(curmoe.InvalidInputError, match="stateful=1 must be True or False"):
        load(onnx_file, "openvino:cpu", stateful=1)


def test_low_memory_releases_mapped_weights_and_changes_nothing(model, onnx_file, tmp_path):
    """low_memory drops the read-only mapped pages of the IR's .bin after compile and after the first run;
    the outputs stay bit-identical (a dropped page is read again from the file when used)."""
    import sys

    from curmoe.exporters import export_openvino_ir

    xml = export_openvino_ir(onnx_file, tmp_path / "m.xml")
    plain, lean = load(xml, "openvino:cpu", threads=1), load(xml, "openvino:cpu", threads=1, low_memory=True)
    assert plain.info().extra["released_weight_mb"] == 0
    for seed in (0, 1, 2):  # the first run releases again; later ones fault pages back in as needed
        ids = random_ids(model, 2, 5, seed=seed)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)} | empty_cache(plain, 2)
        want, got = plain.run(feeds), lean.run(feeds)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    if sys.platform.startswith("linux"):
        assert lean.info().extra["released_weight_mb"] > 0  # it found the .bin mapping


def test_generate_on_a_stateful_session_feeds_one_token_per_step(model, onnx_file):
    """runtimes.generate decodes a stateful session token by token (its cache is inside): same tokens as the
    KV-cache session that is fed the cache, and the session saw one new token per step after the prompt."""
    from curmoe.runtimes import generate

    prompt = random_ids(model, 2, 4, seed=5)
    want = generate(load(onnx_file, "openvino:cpu", threads=1), prompt, max_new_tokens=5)
    s = load(onnx_file, "openvino:cpu", threads=1, stateful=True)
    fed: list[int] = []
    run = s.run
    s.run = lambda feeds, *a, **k: (fed.append(feeds["input_ids"].shape[1]), run(feeds, *a, **k))[1]
    got = generate(s, prompt, max_new_tokens=5)
    np.testing.assert_array_equal(got, want)
    assert fed == [4, 1, 1, 1, 1]
