"""Stored measurements: the JSON files that ``benchmarks/`` scripts write and ``curmoe report`` reads.

Every file is one JSON object ``{"provenance": {...}, "rows": [...]}`` (plus free-form keys). ``provenance``
records the command that produced the numbers, when, on what machine and at which commit, so that every figure in
docs/results/ can be traced to a command. Files are rewritten atomically (temporary file + rename) after each row,
so an interrupted benchmark keeps the rows it finished and never leaves a half-written file.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from curmoe.common.errors import InvalidInputError
from curmoe.common.io import atomic_write, read_json

__all__ = ["provenance", "write_results", "read_results"]


def _git(root: Path, *args: str) -> str:
    """stdout of ``git ARGS`` in ``root``, or "" when git or the repository is unavailable."""
    try:
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout


def provenance(argv: list[str] | None = None, *, script: str | None = None) -> dict[str, Any]:
    """Who made a measurement: the command line, UTC time, commit, Python/NumPy versions and CPU count."""
    import numpy as np

    from curmoe import __version__

    args = list(sys.argv[1:] if argv is None else argv)
    script = script or (sys.argv[0] if sys.argv and sys.argv[0] else "python")
    # The checkout the measurement ran in: the git work tree holding the script, else around the current folder,
    # else the one holding this package; outside any checkout no commit is recorded (rather than failing).
    places = [Path(script).resolve().parent] if Path(script).is_file() else []
    places += [Path.cwd(), Path(__file__).resolve().parent]
    root = next((Path(top) for d in places if (top := _git(d, "rev-parse", "--show-toplevel").strip())), Path.cwd())
    try:
        script = str(Path(script).resolve().relative_to(root))
    except ValueError:
        pass
    head = ["curmoe"] if Path(script).name == "curmoe" else ["python", script]
    return {
        "command": shlex.join([*head, *args]),
        "utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "commit": _git(root, "rev-parse", "--short", "HEAD").strip() or None,
        # tracked files that differed from the commit when this ran
        "uncommitted": [ln[3:] for ln in _git(root, "status", "--porcelain", "--untracked-files=no").splitlines()
                        if ln.strip()],
        "curmoe": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }


def write_results(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``data`` (with a ``provenance`` and a ``rows`` key) as JSON, atomically."""
    if "provenance" not in data or "rows" not in data:
        raise InvalidInputError("results need a 'provenance' and a 'rows' key (see curmoe.app.results)")
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a results file written by :func:`write_results`, with a clear error when it is missing or corrupt."""
    data = read_json(path, what="a benchmark's results file",
                     fix="run the benchmark that writes it (see docs/results/README)", error=InvalidInputError)
    if not isinstance(data, dict) or "provenance" not in data or not isinstance(data.get("rows"), list):
        raise InvalidInputError(f"{path} lacks 'provenance' or a 'rows' list; rerun the benchmark that writes it")
    return data
