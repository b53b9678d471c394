"""Search spaces: YAML -> SearchSpace (validated) -> bound to a model -> sampled Policies."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, describe
from .bind import BoundSpace, bind
from .schema import Choice, Rule, SearchSpace, parse_space
from .yaml_source import Source, load_yaml

# The built-in spaces ship inside the package (package data: autoshrink/spaces/*.yaml), so names such as
# "default" resolve from an installed wheel too; the repository root's search_spaces/ links here.
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "spaces"


def load_space(path: str | Path) -> SearchSpace:
    """Load and validate a search space YAML file.

    A bare name ("default", "prune_only.yaml") that is not a file is looked up among the built-in
    spaces in autoshrink/spaces/ (search_spaces/ at a checkout's root links there). Errors name the
    file, line, YAML path and value.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(
            f"load_space: got {describe(path)}; pass the path of a search space YAML or a built-in "
            "name such as 'default'."
        )
    p = Path(path)
    if not p.exists():
        name = p.name if p.suffix else f"{p.name}.yaml"
        if (BUILTIN_DIR / name).exists() and p.parent == Path("."):
            p = BUILTIN_DIR / name
    data, src = load_yaml(p)
    return parse_space(data, src)


__all__ = ["BoundSpace", "Choice", "Rule", "SearchSpace", "Source", "bind", "load_space", "parse_space"]
