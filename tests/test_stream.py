"""Streamed compression (``curmoe.compress.compress_checkpoint``): bit-identical to ``curmoe.compress`` + save,
sharded and bfloat16 sources, and resumption after ``kill -9`` at three points, with a changed run refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import curmoe
from curmoe.compress import compress_checkpoint
from curmoe.compress._manifest import MANIFEST_FILE
from curmoe.compress._shards import (
    INDEX_FILE,
    SafetensorsSource,
    from_bf16_bits,
    round_bf16,
    to_bf16_bits,
    write_safetensors,
)
from curmoe.compress._stream import read_sharded
from tests.babies import VARIANTS, baby_model, random_ids

ROOT = Path(__file__).resolve().parents[1]


def _config_sans_time(folder: Path) -> dict:
    c = json.loads((folder / "config.json").read_text())
    c["compression"].pop("time_s")
    c["compression"].pop("calibration_cache", None)  # the in-memory path notes what its calibration cache did
    return c


def _assert_same_as_in_memory(src: Path, tmp: Path, cfg, ids) -> None:
    ref = curmoe.compress(curmoe.load(src), cfg, calib_ids=ids, progress=False)
    ref.save(tmp / "ref")
    out = compress_checkpoint(src, tmp / "out", cfg, calib_ids=ids, progress=False)
    a, b = load_file(str(tmp / "ref" / "model.safetensors")), read_sharded(tmp / "out")
    assert sorted(a) == sorted(b)
    for k in a:
        _dt, arr = b[k]
        assert arr.dtype == a[k].dtype and arr.shape == a[k].shape, k
        np.testing.assert_array_equal(arr.view(np.uint8), a[k].view(np.uint8), err_msg=k)  # bits, not values
    assert _config_sans_time(tmp / "ref") == _config_sans_time(tmp / "out")
    assert out.factors == json.loads((tmp / "out" / "config.json").read_text())["factors"]
    assert not (tmp / "out.partial").exists() and not (tmp / "out" / MANIFEST_FILE).exists()


CASES = {
    # (variant, dtype, config, calibration tokens?)
    "cur-data-free": ("mixtral", np.float32, curmoe.CURConfig(ratio=0.5), False),
    "cur-aware-sequential": ("mixtral", np.float64, curmoe.CURConfig(ratio=0.5, activation_aware=True,
                                                                     sequential=True), True),
    "neuron-f16": ("mixtral", np.float16, curmoe.NeuronConfig(ratio=0.5, allocation="uniform"), True),
    "svdllm-shared-qwen": ("qwen2_moe", np.float32, curmoe.SVDConfig(ratio=0.5, activation_aware=True,
                                                                     include_shared=True), True),
    "neuron-seq-dense-layer": ("gelu_dense_layer", np.float32,
                               curmoe.NeuronConfig(ratio=0.5, allocation="uniform", sequential=True), True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_streamed_equals_in_memory_bit_for_bit(name, tmp_path):
    variant, dtype, cfg, calib = CASES[name]
    kw = VARIANTS[variant]
    model = baby_model(dtype=dtype, **({"moe": {"d_ff": 32}} if variant == "mixtral" else kw))
    model.save(tmp_path / "src")
    _assert_same_as_in_memory(tmp_path / "src", tmp_path, cfg, random_ids(model, 4, 12) if calib else None)


def test_shipped_tiny_model_streamed_equals_in_memory(tmp_path):
    src = ROOT / "models" / "wt2-moe-tiny"
    model = curmoe.load(src)
    ids = random_ids(model, 2, 16)
    _assert_same_as_in_memory(src, tmp_path, curmoe.CURConfig(ratio=0.6, activation_aware=True), ids)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()


def _shard(src: Path, dst: Path, bf16: bool) -> None:
    """Rewrite a curmoe folder as Hugging Face-style shards (one per layer + one for the rest) with an index."""
    dst.mkdir()
    tensors = load_file(str(src / "model.safetensors"))
    groups: dict[str, dict[str, np.ndarray]] = {}
    for n, a in tensors.items():
        f = f"model-{n.split('.')[1] if n.startswith('layers.') else 'rest'}.safetensors"
        groups.setdefault(f, {})[n] = to_bf16_bits(a) if bf16 and a.dtype.kind == "f" else a
    for f, t in groups.items():
        write_safetensors(dst / f, t, bf16=set(t) if bf16 else set())
    (dst / INDEX_FILE).write_text(json.dumps({"weight_map": {n: f for f, t in groups.items() for n in t}}))
    (dst / "config.json").write_bytes((src / "config.json").read_bytes())


def test_bf16_round_trip_and_rounding():
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5e-3, np.inf, 3.0e38], np.float32)
    y = from_bf16_bits(to_bf16_bits(x))
    assert y.dtype == np.float32 and np.all(round_bf16(y) == y)  # bf16 values are fixed points
    assert y[1] == 1.0 and y[2] == 1.015625  # ties go to even: 1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6
    assert np.isnan(from_bf16_bits(to_bf16_bits(np.array([np.nan], np.float32))))[0]
    r = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert np.max(np.abs(round_bf16(r) - r) / np.abs(r)) <= 2.0**-8


def test_sharded_bf16_source_stays_bf16_and_matches_in_memory(tmp_path):
    """A bf16 sharded source computes in float32; on bf16-representable weights that is the in-memory float32
    computation, so every stored float equals the float32 result rounded to bf16 and index vectors are equal."""
    model = baby_model(dtype=np.float32, moe={"d_ff": 32})
    model = curmoe.Model(model.config, {k: round_bf16(v) for k, v in model.tensors.items()},
                         {k: curmoe.DenseLinear(round_bf16(v.dense())) for k, v in model.experts.items()})
    model.save(tmp_path / "f32")
    _shard(tmp_path / "f32", tmp_path / "bf16", bf16=True)
    ids = random_ids(model, 4, 12)
    cfg = curmoe.CURConfig(ratio=0.5, activation_aware=True)
    ref = curmoe.compress(curmoe.load(tmp_path / "f32"), cfg, calib_ids=ids, progress=False)
    ref.save(tmp_path / "ref")
    compress_checkpoint(tmp_path / "bf16", tmp_path / "out", cfg, calib_ids=ids, progress=False)
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), read_sharded(tmp_path / "out")
    for k, v in a.items():
        dt, arr = b[k]
        if v.dtype.kind == "f":
            assert dt == "BF16", k
            np.testing.assert_array_equal(arr, to_bf16_bits(v), err_msg=k)
        else:
            np.testing.assert_array_equal(arr, v, err_msg=k)
    assert _config_sans_time(tmp_path / "ref") == _config_sans_time(tmp_path / "out")
    idx = json.loads((tmp_path / "out" / INDEX_FILE).read_text())
    assert set(idx["weight_map"]) == set(a) and idx["metadata"]["total_size"] == sum(
        t.nbytes for t in SafetensorsSource(tmp_path / "out").info.values())


# Resumption -------------------------------------------------------------------------------------------------
# The child runs the job and SIGKILLs itself at a chosen point: mid-way through writing a shard, after a shard's
# rename but before its manifest line, or mid-way through appending a manifest line (a torn line).
_CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import curmoe
    from curmoe.compress import _manifest, _stream
    src, dst, point, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ids = np.load(sys.argv[5])
    count = {"n": 0}
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    real_write, real_append = _stream.write_safetensors, _manifest.Manifest._append

    def write(path, tensors, **kw):
        count["n"] += 1
        if point == "mid-shard" and count["n"] > after:
            with open(path, "wb") as f:  # half a shard on disk, then death
                f.write(b"\\0" * 100)
                f.flush()
                die()
        real_write(path, tensors, **kw)

    def append(self, obj, truncate=False):
        if "unit" in obj and count["n"] > after:
            if point == "before-line":
                die()
            if point == "torn-line":
                with open(self.path, "ab") as f:
                    f.write(b'{"unit": "layers.1.exp')
                    f.flush()
                die()
        real_append(self, obj, truncate)

    _stream.write_safetensors, _manifest.Manifest._append = write, append
    cfg = curmoe.CURConfig(ratio=0.5, activation_aware=True, sequential=True)
    _stream.compress_checkpoint(src, dst, cfg, calib_ids=ids, progress=False)
""")


def test_kill9_at_three_points_then_resume_gives_identical_bytes(tmp_path):
    model = baby_model(dtype=np.float32, moe={"d_ff": 24})
    model.save(tmp_path / "src")
    ids = random_ids(model, 4, 12)
    np.save(tmp_path / "ids.npy", ids)
    cfg = curmoe.CURConfig(ratio=0.5, activation_aware=True, sequential=True)
    compress_checkpoint(tmp_path / "src", tmp_path / "clean", cfg, calib_ids=ids, progress=False)
    clean = {p.name: p.read_bytes() for p in (tmp_path / "clean").iterdir() if p.name != "config.json"}
    (tmp_path / "child.py").write_text(_CHILD)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    for point, after in (("mid-shard", 3), ("before-line", 7), ("torn-line", 9)):
        out = tmp_path / f"out-{point}"
        r = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "src"), str(out), point,
                            str(after), str(tmp_path / "ids.npy")], check=False, env=env, capture_output=True,
                           timeout=120)
        assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-2000:]
        assert not out.exists() and (tmp_path / f"out-{point}.partial" / MANIFEST_FILE).is_file()
        compress_checkpoint(tmp_path / "src", out, cfg, calib_ids=ids, progress=False)  # resume
        got = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "config.json"}
        assert got.keys() == clean.keys() and all(got[k] == clean[k] for k in clean), point
        assert _config_sans_time(out) == _config_sans_time(tmp_path / "clean")
        assert not (tmp_path / f"out-{point}.partial").exists()


def test_changed_run_refuses_to_resume_and_finished_run_is_kept(tmp_path):
    model = baby_model(dtype=np.float32, moe={"d_ff": 16})
    model.save(tmp_path / "src")
    partial = tmp_path / "out.partial"
    partial.mkdir()
    from curmoe.compress._manifest import Manifest
    from curmoe.compress._stream import _fingerprint

    cfg = curmoe.CURConfig(ratio=0.5)
    src = SafetensorsSource(tmp_path / "src")
    Manifest(partial, _fingerprint(tmp_path / "src", model.config, cfg, src, None, np.dtype(np.float32), 8))
    with pytest.raises(curmoe.InvalidInputError, match=r"different config or input \(config\.ratio: 0\.5 -> 0\.6"):
        compress_checkpoint(tmp_path / "src", tmp_path / "out", curmoe.CURConfig(ratio=0.6), progress=False)
    ids = random_ids(model, 2, 8)
    with pytest.raises(curmoe.InvalidInputError, match=r"calib_ids: null ->"):
        compress_checkpoint(tmp_path / "src", tmp_path / "out", cfg, calib_ids=ids, progress=False)
    compress_checkpoint(tmp_path / "src", tmp_path / "out", cfg, progress=False)  # the same run resumes
    first = (tmp_path / "out" / "config.json").read_bytes()
    compress_checkpoint(tmp_path / "src", tmp_path / "out", cfg, progress=False)  # already finished: kept as is
    assert (tmp_path / "out" / "config.json").read_bytes() == first
    with pytest.raises(curmoe.InvalidInputError, match="exists; choose another path or pass force=True"):
        compress_checkpoint(tmp_path / "src", tmp_path / "out", curmoe.CURConfig(ratio=0.6), progress=False)
    compress_checkpoint(tmp_path / "src", tmp_path / "out", curmoe.CURConfig(ratio=0.6), force=True, progress=False)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["compression"]["target_ratio"] == 0.6


def test_global_allocation_and_missing_tensors_are_refused(tmp_path):
    model = baby_model(dtype=np.float32, moe={"d_ff": 16})
    model.save(tmp_path / "src")
    ids = random_ids(model, 2, 8)
    with pytest.raises(curmoe.InvalidInputError, match="allocation='uniform'"):
        compress_checkpoint(tmp_path / "src", tmp_path / "o", curmoe.NeuronConfig(ratio=0.5, allocation="global"), calib_ids=ids)
    _shard(tmp_path / "src", tmp_path / "sh", bf16=False)
    idx = json.loads((tmp_path / "sh" / INDEX_FILE).read_text())
    os.remove(tmp_path / "sh" / idx["weight_map"]["layers.1.router.weight"])
    with pytest.raises(curmoe.CheckpointError, match="is missing; re-download"):
        compress_checkpoint(tmp_path / "sh", tmp_path / "o", curmoe.CURConfig(ratio=0.5))


def test_cli_compress_streams_a_sharded_folder(tmp_path, capsys):
    from curmoe.app.cli import main

    model = baby_model(dtype=np.float32, moe={"d_ff": 16})
    model.save(tmp_path / "src")
    _shard(tmp_path / "src", tmp_path / "sh", bf16=False)
    assert main(["compress", str(tmp_path / "sh"), "--method", "cur", "--ratio", "0.5", "-o", str(tmp_path / "o"),
                 "--json"]) == 0  # sharded input: streamed without --stream
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["method"] == "cur" and (tmp_path / "o" / INDEX_FILE).is_file()
    compress_checkpoint(tmp_path / "src", tmp_path / "api", curmoe.CURConfig(ratio=0.5), progress=False)
    a, b = read_sharded(tmp_path / "o"), read_sharded(tmp_path / "api")
    assert a.keys() == b.keys() and all(np.array_equal(a[k][1], b[k][1]) for k in a)


def test_source_reads_through_the_common_parser(tmp_path):
    """SafetensorsSource (streamed reads, one tensor at a time) and curmoe.common.safetensors.read_tensors
    (curmoe.load) give the same arrays, BF16 widened the same way; a cut or corrupt shard is a CheckpointError."""
    from curmoe.common.safetensors import read_tensors

    model = baby_model(dtype=np.float32, moe={"d_ff": 16})
    model.save(tmp_path / "src")
    _shard(tmp_path / "src", tmp_path / "bf16", bf16=True)
    src = SafetensorsSource(tmp_path / "bf16")
    whole = {n: a for f in src.files for n, a in read_tensors(f).items()}
    assert whole.keys() == src.info.keys() and any(t.dtype == "BF16" for t in src.info.values())
    for n, a in whole.items():
        got = src.read(n)
        assert got.dtype == (np.int64 if a.dtype.kind in "iu" else np.float32), n
        np.testing.assert_array_equal(got, a, err_msg=n)
    f = src.files[0]
    data = f.read_bytes()
    f.write_bytes(data[:-3])
    with pytest.raises(curmoe.CheckpointError, match=r"is not a readable safetensors file \(tensor .* data_offsets .*"
                                                     r"re-save or re-download it"):
        SafetensorsSource(tmp_path / "bf16")
    f.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(curmoe.CheckpointError, match=r"header length \d+ does not fit in a file"):
        SafetensorsSource(tmp_path / "bf16")


def test_streamed_output_keeps_the_tokenizer_side_files(tmp_path):
    """A pretrained model's tokenizer_config.json (chat template) and special_tokens_map.json go with tokenizer.json,
    as Model.save keeps them."""
    from curmoe.compress import compress_checkpoint

    src = tmp_path / "src"
    shutil.copytree(ROOT / "models" / "wt2-moe-tiny", src)
    side = {"tokenizer_config.json": '{"chat_template": "{{ messages }}"}', "special_tokens_map.json": "{}"}
    for name, text in side.items():
        (src / name).write_text(text)
    compress_checkpoint(src, tmp_path / "out", curmoe.CURConfig(ratio=0.5), progress=False)
    for name, text in side.items():
        assert (tmp_path / "out" / name).read_text() == text
    assert not (tmp_path / "out" / "chat_template.jinja").exists()  # copied only when the source has it
