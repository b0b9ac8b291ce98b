"""Markdown pieces every results page uses: tables and the line that says which command made the numbers."""

from __future__ import annotations

from typing import Any

__all__ = ["source", "table"]


def table(head: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align`` has one letter per column, "l" or "r" (default: first left, rest right)."""
    align = align or "l" + "r" * (len(head) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def source(data: dict[str, Any], file: str) -> str:
    """"Measured by `COMMAND` at commit ... on ... UTC (machine); numbers in data/FILE." from its provenance."""
    p = data["provenance"]
    dirty = p.get("uncommitted") or []
    state = f" with uncommitted changes to {', '.join(f'`{f}`' for f in dirty)}" if dirty else ""
    note = f" {p['note']}" if p.get("note") else ""
    return (f"Measured by `{p['command']}` at commit `{p.get('commit') or '?'}`{state} on {p.get('utc', '?')} UTC "
            f"({p.get('machine', '?')}); numbers in [data/{file}](data/{file}).{note}")
