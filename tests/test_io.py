"""curmoe.common.io: whole or nothing, and nothing hidden left behind."""

from __future__ import annotations

import pytest

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
