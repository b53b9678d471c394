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
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out.add(module)
            out |= {f"{module}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("stage", ["measure", "export"])
def test_measurement_and_export_never_import_a_technique(stage: str) -> None:
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in _imports(p) if m.startswith("autoshrink.techniques"))
                 for p in (PACKAGE / stage).rglob("*.py")}
    assert {p: m for p, m in offenders.items() if m} == {}


def test_the_weight_representation_imports_no_stage() -> None:
    stages = ("autoshrink.techniques", "autoshrink.measure", "autoshrink.export", "autoshrink.search",
              "autoshrink.train")
    assert not [m for m in _imports(PACKAGE / "weights.py") if m.startswith(stages)]


def test_import_resolution_sees_relative_imports() -> None:
    found = _imports(PACKAGE / "measure" / "packing" / "codec.py")
    assert "autoshrink.weights.quantize_codes" in found and "autoshrink.errors.PackError" in found
