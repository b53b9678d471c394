"""The README's Python example runs exactly as written."""
from __future__ import annotations

import os
import re
from pathlib import Path


def test_readme_python_example_runs(tmp_path) -> None:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(blocks[0], "README.md", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)
    assert (tmp_path / "digits_cnn.ashz").stat().st_size > 0
