"""Package boundaries DESIGN.md fixes: measurement and export never import a technique."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autoshrink"


def _imports(path: Path) -> set[str]:
    """Absolute dotted names of every module `path` imports (relative imports resolved)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out.add(module)
            out |= {f"{module}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("stage", ["measure", "export"])
def test_measurement_and_export_never_import_a_technique(stage: str) -> None:
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(m for m in _imports(p) if m.startswith("autoshrink.techniques"))
        for p in (PACKAGE / stage).rglob("*.py")
    }
    assert {p: m for p, m in offenders.items() if m} == {}


def test_the_weight_representation_imports_no_stage() -> None:
    stages = (
        "autoshrink.techniques",
        "autoshrink.measure",
        "autoshrink.export",
        "autoshrink.search",
        "autoshrink.train",
    )
    files = sorted((PACKAGE / "weights").glob("*.py"))
    assert [f.name for f in files] == ["__init__.py", "codebook.py", "codes.py", "parametrize.py"]
    assert not [m for f in files for m in _imports(f) if m.startswith(stages)]


def test_import_resolution_sees_relative_imports() -> None:
    found = _imports(PACKAGE / "measure" / "packing" / "codec.py")
    assert "autoshrink.weights.grouped_codes" in found and "autoshrink.errors.PackError" in found


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the autoshrink modules it imports anywhere in its body (function-level and
    TYPE_CHECKING imports included). `from m import name` points at m.name where that is a module
    (`from . import codec` imports codec, not the package it sits in), else at m."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def known(dotted: str) -> str:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted

    graph = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {known(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:
                    edges.add(f"{module}.{a.name}" if f"{module}.{a.name}" in modules else known(module))
        graph[name] = {e for e in edges if e and e != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_import_inside_the_package_names_a_module_that_exists() -> None:
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    missing = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                if module not in modules:
                    missing.setdefault(name, []).append(module)
    assert missing == {}


def test_no_import_cycle_in_the_package() -> None:
    assert _cycles(_import_graph()) == []


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert "autoshrink.search" in _import_graph()["autoshrink.cli.report"]  # imported inside a function only
