"""curmoe.common.io: whole or nothing, and nothing hidden left behind."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curmoe.common.errors import CurmoeError
from curmoe.common.io import atomic_dir, atomic_write, read_json


def test_atomic_dir_replaces_a_file_or_folder_and_leaves_nothing_hidden(tmp_path):
    for before in ("file", "dir"):
        out = tmp_path / before
        if before == "file":
            out.write_text("old")
        else:
            out.mkdir()
            (out / "x").write_text("old")
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("new")
        assert (out / "new.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]


def test_interrupted_writes_leave_the_destination_as_it_was(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "a").write_text("kept")
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "half").write_text("x")
        raise KeyboardInterrupt
    f = tmp_path / "f.json"
    f.write_text("{}")
    with pytest.raises(RuntimeError):
        atomic_write(f, lambda t: (t.write_text("half"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert f.read_text() == "{}" and (out / "a").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "m"]


def test_read_json_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(CurmoeError, match="is missing: a thing is expected there; make it"):
        read_json(tmp_path / "nope.json", what="a thing", fix="make it")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": ')
    with pytest.raises(CurmoeError, match="not valid JSON .* corrupt or truncated; make it"):
        read_json(bad, what="a thing", fix="make it")


# read_tensors: one tensor at a time, the same arrays as safetensors' own reader ---------------------------------
_DT = [np.float16, np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_DT), st.lists(st.integers(0, 5), min_size=0, max_size=3)),
                min_size=1, max_size=6), st.integers(0, 2**31 - 1))
def test_read_tensors_equals_safetensors_load_file(tmp_path_factory, specs, seed) -> None:
    from safetensors.numpy import load_file, save_file

    from curmoe.common.safetensors import read_tensors

    rng = np.random.default_rng(seed)
    arrays = {f"t{i}": np.asarray(rng.standard_normal(shape) * 100, dtype=dt) for i, (dt, shape) in enumerate(specs)}
    f = tmp_path_factory.mktemp("st") / "m.safetensors"
    save_file(arrays, str(f))
    got, want = read_tensors(f), load_file(str(f))
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
        np.testing.assert_array_equal(got[k], want[k])
        assert got[k].flags.writeable and got[k].flags.c_contiguous


def test_read_tensors_refuses_a_truncated_file(tmp_path) -> None:
    from safetensors.numpy import save_file

    from curmoe.common.safetensors import read_tensors

    f = tmp_path / "m.safetensors"
    save_file({"a": np.ones((64, 64), np.float32)}, str(f))
    data = f.read_bytes()
    for cut in (4, 20, len(data) - 1):
        f.write_bytes(data[:cut])
        with pytest.raises(ValueError):
            read_tensors(f)
