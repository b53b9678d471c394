"""The README's Python example runs exactly as written."""
from __future__ import annotations

import os
import re
from pathlib import Path


def test_readme_python_examples_run(tmp_path) -> None:
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 3
    cwd = os.getcwd()
    os.chdir(tmp_path)
    (tmp_path / "search_spaces").symlink_to(root / "search_spaces")
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"README.md python block {i + 1}", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)
    assert (tmp_path / "digits_cnn.ashz").stat().st_size > 0
    assert (tmp_path / "studies" / "readme.db").stat().st_size > 0
    assert (tmp_path / "digits_cnn.recipe.yaml").read_text().count("format: autoshrink-recipe/2") == 1
