"""The Python examples of README.md and of the guide (docs/*.md) run exactly as written; the pages
are short, start with a summary that links back to the index, and every relative link resolves."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 250
BLOCK = re.compile(r"```python\n(.*?)```", flags=re.S)


def _readme(d: Path) -> None:
    assert sorted(p.name for p in d.iterdir()) == [
        "digits_cnn.ashz",
        "digits_cnn.recipe.yaml",
        "search_spaces",
        "studies",
    ]
    assert (d / "studies" / "readme.db").stat().st_size > 0
    text = (d / "digits_cnn.recipe.yaml").read_text()
    assert text.count("format: autoshrink-recipe/2") == 1
    # the packed file is exactly the size the recipe recorded (the example asserts the re-applied size)
    assert (d / "digits_cnn.ashz").stat().st_size == yaml.safe_load(text)["metrics"]["size_bytes"]


def _concepts(d: Path) -> None:
    assert sorted(p.name for p in d.iterdir()) == ["digits_cnn.ashz", "search_spaces"]
    assert (d / "digits_cnn.ashz").stat().st_size > 0


def _deployment(d: Path) -> None:
    assert sorted(p.name for p in d.iterdir()) == ["digits_cnn.onnx", "search_spaces"]
    assert (d / "digits_cnn.onnx").read_bytes()[:1] == b"\x08"  # an ONNX ModelProto starts with ir_version


def _transformers(d: Path) -> None:
    assert sorted(p.name for p in d.iterdir()) == ["bert.recipe.yaml", "search_spaces", "studies"]
    assert "format: autoshrink-recipe/2" in (d / "bert.recipe.yaml").read_text()


# Every page, the number of ```python blocks it holds, and what they leave in their directory.
# Snippets that need a model or a cluster the block does not build are ```text or plain ``` blocks.
PAGES: dict[str, tuple[int, Callable[[Path], None] | None]] = {
    "README.md": (1, _readme),
    "docs/README.md": (0, None),
    "docs/concepts.md": (1, _concepts),
    "docs/deployment.md": (1, _deployment),
    "docs/development.md": (0, None),
    "docs/formats.md": (0, None),
    "docs/recipes.md": (0, None),
    "docs/report.md": (0, None),
    "docs/scale-out.md": (0, None),
    "docs/search-stages.md": (0, None),
    "docs/search.md": (0, None),
    "docs/transformers.md": (1, _transformers),
}


def test_every_page_is_listed() -> None:
    on_disk = {"README.md"} | {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert on_disk == set(PAGES)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_python_examples_run(page: str, tmp_path: Path) -> None:
    count, check = PAGES[page]
    text = (ROOT / page).read_text()
    assert not re.search(r"```(py|python3|pycon)\n", text), "a Python example must be a ```python block"
    blocks = BLOCK.findall(text)
    assert len(blocks) == count
    if not blocks:
        return
    (tmp_path / "search_spaces").symlink_to(ROOT / "search_spaces")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"{page} python block {i + 1}", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)
    assert check is not None, f"{page} has Python blocks: give it a check function in PAGES"
    check(tmp_path)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text()).splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_shape_and_links(page: str) -> None:
    path = ROOT / page
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"{page} has {len(lines)} lines; split it"
    if page.startswith("docs/"):
        # a title, then a one-line summary that links back to the index (the index: to the project README)
        assert lines[0].startswith("# ") and lines[1] == "" and lines[3] == ""
        assert ("](../README.md)" if page == "docs/README.md" else "](README.md)") in lines[2]
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(path.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{page}: broken link {target}"
        if anchor:
            assert dest.suffix == ".md" and anchor in _anchors(dest), f"{page}: no heading for {target}"
