"""The import contract, read from the code with ``ast`` (imports inside functions included).

Rules (docs/architecture.md):
1. The core (``curmoe``, outside ``curmoe.app``) never imports ``curmoe.exporters``, ``curmoe.runtimes``,
   ``curmoe.models`` or ``curmoe.app``; only the application layer may.
2. ``curmoe.exporters`` never imports ``curmoe.runtimes`` or ``curmoe.app``; ``curmoe.runtimes`` and
   ``curmoe.models`` never import ``curmoe.app``.
3. No package imports another package's private module (``_name``) or private name: a private module may be
   imported only from inside the package that holds it.
4. No import cycles between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> import name (pyproject's package-dir)
TOPS = {"curmoe_core": "curmoe", "exporters": "curmoe.exporters", "runtimes": "curmoe.runtimes",
        "models": "curmoe.models"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """{dotted module name: (file, is_package)} for every module of the four packages."""
    mods: dict[str, tuple[Path, bool]] = {}
    for folder, name in TOPS.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = f.relative_to(ROOT / folder).with_suffix("").parts
            is_pkg = rel[-1] == "__init__"
            parts = rel[:-1] if is_pkg else rel
            mods[".".join((name, *parts))] = (f, is_pkg)
    return mods


MODULES = _modules()


def _imports(mod: str) -> list[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) for every curmoe import in ``mod``, resolved to modules."""
    f, _ = MODULES[mod]
    out: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "curmoe"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "curmoe":
            assert node.level == 0, f"{mod}:{node.lineno}: use absolute imports"
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((node.lineno, sub, None) if sub in MODULES else (node.lineno, node.module, a.name))
    return out


def _component(mod: str) -> str:
    for part in ("curmoe.exporters", "curmoe.runtimes", "curmoe.models", "curmoe.app"):
        if mod == part or mod.startswith(part + "."):
            return part.split(".")[1]
    return "core"


def _package(mod: str) -> str:
    return mod if MODULES.get(mod, (None, False))[1] else mod.rsplit(".", 1)[0]


FORBIDDEN = {"core": {"exporters", "runtimes", "models", "app"}, "exporters": {"runtimes", "app"},
             "runtimes": {"app"}, "models": {"app"}, "app": set()}


def test_modules_found() -> None:
    assert "curmoe.reference._model" in MODULES and "curmoe.app.cli" in MODULES  # the walk sees the layout
    assert len(MODULES) > 60


def test_layers() -> None:
    bad = [f"{m}:{line} imports {target}" for m in MODULES for line, target, _ in _imports(m)
           if _component(target) in FORBIDDEN[_component(m)]]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def _private_violation(importer: str, target: str, name: str | None) -> bool:
    parts = target.split(".")
    for i, p in enumerate(parts):
        if p.startswith("_") and not p.startswith("__"):
            owner = ".".join(parts[:i])  # the package that holds the private module
            return not (importer == owner or importer.startswith(owner + "."))
    if name is not None and name.startswith("_") and not name.startswith("__"):
        owner = _package(target)
        return not (importer == owner or importer.startswith(owner + "."))
    return False


def test_no_private_imports_across_packages() -> None:
    bad = [f"{m}:{line} imports {t}{'' if n is None else ' ' + n}" for m in MODULES
           for line, t, n in _imports(m) if _private_violation(m, t, n)]
    assert not bad, "private modules/names used outside their package:\n" + "\n".join(bad)


@pytest.mark.parametrize(("importer", "target", "name", "bad"), [
    ("curmoe.exporters.onnx._moe", "curmoe.reference._linear", None, True),
    ("curmoe.reference._model", "curmoe.reference._linear", None, False),
    ("curmoe.runtimes.adapters.coreml", "curmoe.runtimes._registry", None, False),
    ("curmoe.exporters.openvino", "curmoe.runtimes.validate", "_with_routing_outputs", True),
    ("curmoe.compress._compress", "curmoe.reference", "Model", False),
])
def test_private_rule(importer: str, target: str, name: str | None, bad: bool) -> None:
    assert _private_violation(importer, target, name) is bad


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycles() -> None:
    graph = {m: {t for _, t, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
