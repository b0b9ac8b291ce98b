"""Checkpoint round trips and every corrupt-file case: each gives a CheckpointError that says what is wrong."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import curmoe
from tests.babies import baby_model, random_ids


@pytest.fixture()
def saved(tmp_path):
    model = baby_model(dtype=np.float32, attn_bias=True, qk_norm="head", moe=dict(n_shared=1, shared_d_ff=8, shared_gate=True))
    return model, model.save(tmp_path / "m")


def test_round_trip_dense(saved):
    model, path = saved
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
    back = curmoe.load(path)
    assert back.config == model.config
    ids = random_ids(model, 2, 6)
    np.testing.assert_array_equal(back.forward(ids), model.forward(ids))
    assert curmoe.load(path, dtype=np.float64).dtype == np.float64


def test_round_trip_compressed_keeps_factors_and_indices(tmp_path):
    model = baby_model(dtype=np.float32)
    for cfg in (curmoe.CURConfig(ratio=0.4), curmoe.CURConfig(ratio=0.4, fold_u=True), curmoe.SVDConfig(ratio=0.4)):
        small = curmoe.compress(model, cfg, progress=False)
        back = curmoe.load(small.save(tmp_path / "c"))
        assert back.config == small.config
        for k, lin in small.experts.items():
            for n, a in lin.tensors().items():
                np.testing.assert_array_equal(back.experts[k].tensors()[n], a)
        ids = random_ids(model, 1, 5)
        np.testing.assert_array_equal(back.forward(ids), small.forward(ids))


def test_save_over_existing_replaces_it_whole(saved, tmp_path):
    model, path = saved
    other = baby_model(seed=5, dtype=np.float32, attn_bias=True, qk_norm="head",
                       moe=dict(n_shared=1, shared_d_ff=8, shared_gate=True))
    other.save(path)
    ids = random_ids(model, 1, 4)
    np.testing.assert_array_equal(curmoe.load(path).forward(ids), other.forward(ids))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary or backup directory left behind


def test_interrupted_save_leaves_old_model_intact(saved, monkeypatch, tmp_path):
    model, path = saved
    import curmoe.reference._checkpoint as ck

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.ModelConfig, "to_json", boom)
    with pytest.raises(KeyboardInterrupt):
        model.save(path)
    curmoe.load(path)  # still loads
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_missing_directory_and_files(tmp_path, saved):
    _, path = saved
    with pytest.raises(curmoe.CheckpointError, match="does not exist"):
        curmoe.load(tmp_path / "nope")
    (path / "model.safetensors").rename(tmp_path / "w")
    with pytest.raises(curmoe.CheckpointError, match="model.safetensors' is missing"):
        curmoe.load(path)
    (path / "config.json").unlink()
    with pytest.raises(curmoe.CheckpointError, match="config.json' is missing"):
        curmoe.load(path)


def test_truncated_and_corrupt_weights(saved):
    _, path = saved
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(curmoe.CheckpointError, match="truncated or corrupt"):
        curmoe.load(path)
    f.write_bytes(b"\x00" * 64)
    with pytest.raises(curmoe.CheckpointError, match="truncated or corrupt"):
        curmoe.load(path)


def test_corrupt_config(saved):
    _, path = saved
    c = path / "config.json"
    text = c.read_text()
    c.write_text(text[: len(text) // 2])
    with pytest.raises(curmoe.CheckpointError, match="not valid JSON"):
        curmoe.load(path)
    d = json.loads(text)
    d["n_heads"] = 3
    c.write_text(json.dumps(d))
    with pytest.raises(curmoe.CheckpointError, match="does not describe a valid model.*n_heads"):
        curmoe.load(path)


def _rewrite(path, edit):
    f = path / "model.safetensors"
    t = load_file(str(f))
    edit(t)
    save_file(t, str(f))


def test_missing_wrong_shape_wrong_dtype_and_extra_tensors(saved):
    _, path = saved
    _rewrite(path, lambda t: t.pop("layers.1.attn.q.bias"))
    with pytest.raises(curmoe.CheckpointError, match=r"missing tensor 'layers.1.attn.q.bias' \(expected shape \(16,\)\)"):
        curmoe.load(path)
    _rewrite(path, lambda t: t.update({"layers.1.attn.q.bias": np.zeros(15, np.float32)}))
    with pytest.raises(curmoe.CheckpointError, match=r"'layers.1.attn.q.bias' has shape \(15,\), config expects \(16,\)"):
        curmoe.load(path)
    _rewrite(path, lambda t: t.update({"layers.1.attn.q.bias": np.zeros(16, np.int32)}))
    with pytest.raises(curmoe.CheckpointError, match="'layers.1.attn.q.bias' has dtype int32"):
        curmoe.load(path)
    _rewrite(path, lambda t: t.update({"layers.1.attn.q.bias": np.zeros(16, np.float32), "stray": np.zeros(1)}))
    with pytest.raises(curmoe.CheckpointError, match=r"unexpected tensor\(s\) \['stray'\]"):
        curmoe.load(path)


def test_factor_shapes_checked_against_config(tmp_path):
    small = curmoe.compress(baby_model(dtype=np.float32), curmoe.CURConfig(ratio=0.4), progress=False)
    path = small.save(tmp_path / "c")
    _rewrite(path, lambda t: t.update({"layers.0.experts.1.up.U": t["layers.0.experts.1.up.U"][:-1]}))
    with pytest.raises(curmoe.CheckpointError, match="'layers.0.experts.1.up.U' has shape"):
        curmoe.load(path)


def test_saved_files_get_normal_permissions(saved):
    import stat

    _, path = saved
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~mask
    for f in path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f.name


def _shard(path, n_shards: int = 2) -> None:
    """Split model.safetensors into shards + model.safetensors.index.json."""
    tensors = load_file(str(path / "model.safetensors"))
    names = sorted(tensors)
    wmap = {}
    for i in range(n_shards):
        f = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: tensors[k] for k in names[i::n_shards]}
        save_file(part, str(path / f))
        wmap |= {k: f for k in part}
    (path / "model.safetensors").unlink()
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))


def test_sharded_checkpoint_loads_the_same_model(saved):
    model, path = saved
    _shard(path, 3)
    back = curmoe.load(path)
    ids = random_ids(model, 2, 6)
    np.testing.assert_array_equal(back.forward(ids), model.forward(ids))


def test_sharded_checkpoint_errors(saved):
    _, path = saved
    _shard(path, 2)
    shard = next(path.glob("model-00002-*.safetensors"))
    shard.rename(path / "gone")
    with pytest.raises(curmoe.CheckpointError, match="missing"):
        curmoe.load(path)
    (path / "gone").rename(shard)
    index = path / "model.safetensors.index.json"
    d = json.loads(index.read_text())
    d["weight_map"]["extra.weight"] = shard.name
    index.write_text(json.dumps(d))
    with pytest.raises(curmoe.CheckpointError, match="disagree on tensor 'extra.weight'"):
        curmoe.load(path)
    index.write_text("{}")
    with pytest.raises(curmoe.CheckpointError, match="weight_map"):
        curmoe.load(path)


def test_bf16_tensors_widen_to_float32_exactly(tmp_path):
    """A BF16 tensor (stored as the top 16 bits of a float32) reads back as exactly that float32."""
    import struct

    from curmoe.common.safetensors import read_tensors

    x = np.array([1.0, -2.5, 3.140625, 0.0, 65280.0], np.float32)  # all exactly representable in bf16
    bits = (x.view(np.uint32) >> 16).astype("<u2")
    head = json.dumps({"w": {"dtype": "BF16", "shape": [5], "data_offsets": [0, 10]}}).encode()
    f = tmp_path / "b.safetensors"
    f.write_bytes(struct.pack("<Q", len(head)) + head + bits.tobytes())
    got = read_tensors(f)["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x)
