"""The manifest of a streamed compression: which units are finished, so a killed run resumes where it stopped.

One JSON object per line (``manifest.jsonl`` in the work folder ``<output>.partial``): the first line is the
run's fingerprint (config, source files, calibration tokens, compute dtype); each later line is one finished
unit (the global tensors, one layer's non-expert tensors, or one expert) with the shard it wrote, that shard's
SHA-256 and the unit's compression records. A line is appended (and fsynced) only after its shard has been
renamed into place, so after ``kill -9`` at any point:

- a shard without a line is simply recomputed (the computation is deterministic, so the bytes are the same);
- a torn last line (killed mid-append) is dropped;
- a line whose shard is missing or whose checksum differs is dropped and the unit recomputed.

A fingerprint that differs from the one on disk refuses to resume and names what changed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from curmoe.common.errors import InvalidInputError
from curmoe.compress._shards import sha256_file

__all__ = ["MANIFEST_FILE", "Manifest"]

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.jsonl"


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted paths where two JSON values differ (first few), with both values for leaves."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if old == new else [f"{path}: {json.dumps(old)[:60]} -> {json.dumps(new)[:60]}"]


class Manifest:
    """Finished units of one run in ``folder`` (created, or reopened and checked against ``fingerprint``)."""

    def __init__(self, folder: Path, fingerprint: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_FILE
        self.units: dict[str, dict[str, Any]] = {}
        fp = json.loads(json.dumps(fingerprint))  # normalised as it will be read back (tuples -> lists)
        if self.path.is_file():
            self._reopen(fp)
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._append({"fingerprint": fp}, truncate=True)

    def _reopen(self, fp: dict[str, Any]) -> None:
        lines = self.path.read_bytes().split(b"\n")
        entries, good = [], 0
        for raw in lines:
            try:
                entries.append(json.loads(raw))
            except ValueError:
                break  # a torn last line (killed mid-append): everything from here is dropped
            good += len(raw) + 1
        if not entries or "fingerprint" not in entries[0]:
            log.warning("%s has no readable header; starting over", self.path)
            self._append({"fingerprint": fp}, truncate=True)
            return
        changed = _diff(entries[0]["fingerprint"], fp)
        if changed:
            raise InvalidInputError(
                f"{str(self.folder)!r} holds an interrupted run with a different config or input ("
                + "; ".join(changed[:4]) + (" ..." if len(changed) > 4 else "")
                + f"); rerun with the same arguments to resume it, or delete {str(self.folder)!r} to start over")
        with open(self.path, "r+b") as f:  # cut a torn tail so later appends start on a line boundary
            f.truncate(min(good, self.path.stat().st_size))
        for e in entries[1:]:
            shard = self.folder / e["file"]
            if not shard.is_file() or sha256_file(shard) != e["sha256"]:
                log.warning("unit %s: shard %s is missing or differs from its checksum; recomputing it",
                            e["unit"], e["file"])
                continue
            self.units[e["unit"]] = e
        log.info("resuming %s: %d unit(s) already finished", self.folder, len(self.units))

    def _append(self, obj: dict[str, Any], truncate: bool = False) -> None:
        with open(self.path, "wb" if truncate else "ab") as f:
            f.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def done(self, unit: str) -> dict[str, Any] | None:
        return self.units.get(unit)

    def add(self, unit: str, file: str, **fields: Any) -> dict[str, Any]:
        """Record ``unit`` as finished: its shard ``file`` (already in place) and JSON ``fields``."""
        e = json.loads(json.dumps({"unit": unit, "file": file, "sha256": sha256_file(self.folder / file)} | fields))
        self._append(e)
        self.units[unit] = e
        return e
