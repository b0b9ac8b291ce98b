"""Files written whole or not at all, and JSON read with one clear error: the only file I/O helpers of curmoe.

- :func:`atomic_write` fills a temporary file beside ``path`` and renames it over ``path``;
- :func:`atomic_dir` does the same for a directory (a model folder, a training state);
- :func:`read_json` reads a JSON file and names the file and the fix when it is missing or corrupt.

An interrupted write (an exception, Ctrl-C) leaves the destination as it was and no temporary file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from curmoe.common.errors import CurmoeError

__all__ = ["atomic_write", "atomic_dir", "read_json"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Create ``path`` whole or not at all: ``write(tmp)`` fills a temporary file in the same folder, which is then
    renamed over ``path``; on any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """``with atomic_dir(out) as tmp:`` fill ``tmp``; on success it replaces ``out`` (an existing ``out`` is swapped
    out and removed), on any error ``tmp`` is removed and ``out`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _apply_umask(tmp)  # mkdtemp makes a 0700 folder (and safetensors 0600 files): give them normal modes
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:  # what was there before, folder or file, goes: nothing hidden is left behind
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _apply_umask(p: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    if p.is_dir():
        os.chmod(p, 0o777 & ~mask)
        for f in p.iterdir():
            os.chmod(f, 0o666 & ~mask)
    else:
        os.chmod(p, 0o666 & ~mask)


def read_json(path: str | os.PathLike[str], *, what: str, fix: str,
              error: type[CurmoeError] = CurmoeError) -> Any:
    """Parse the JSON file ``path``; a missing, unreadable or corrupt file raises ``error`` naming ``what`` the
    file should be and ``fix``, the step that makes it."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{str(path)!r} is missing: {what} is expected there; {fix}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{str(path)!r} is not valid JSON ({e}): {what} is corrupt or truncated; {fix}") from None
