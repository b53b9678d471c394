"""Checks a search makes before it creates anything (a folder, a database, a study attribute): the
study name and seed (the task against the model: autoshrink/task_check.py). A request that fails here
leaves no trace on disk."""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: Any) -> str:
    """A study name is also a file name (studies/<name>.db): letters, digits, '.', '_', '-'."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(
            f"search: study_name={name!r}; use 1-128 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit (it names the study database file)."
        )
    return name


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"search: seed={seed!r}; use an integer in [0, 2^32).")
    return seed
