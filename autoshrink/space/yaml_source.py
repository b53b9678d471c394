"""Safe YAML loading that remembers the line of every value, for error messages."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError


class Source:
    """Where a config came from: a file name and the line of each YAML path."""

    def __init__(self, name: str, lines: dict[str, int] | None = None) -> None:
        self.name = name
        self.lines = lines or {}

    def at(self, path: str) -> str:
        """'file.yaml:12: path' (line when known)."""
        line = self.lines.get(path)
        if line is None and "." in path:
            line = self.lines.get(path.rsplit(".", 1)[0])
        return f"{self.name}:{line}: {path}" if line else f"{self.name}: {path}"

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.at(path)}: {message}")


def _walk(node: yaml.Node, path: str, lines: dict[str, int]) -> None:
    lines[path or "<root>"] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            _walk(value, f"{path}.{name}" if path else name, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, f"{path}[{i}]", lines)


def load_yaml(path: str | Path) -> tuple[Any, Source]:
    """Parse a YAML file with the safe loader (no Python object tags) and map paths to lines."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file; check the path.") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read it ({exc.strerror}).") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if isinstance(exc, yaml.constructor.ConstructorError):  # e.g. !!python/object/apply: never constructed
            raise ConfigError(f"{where}: not valid YAML here, tag refused ({problem}); only plain YAML is accepted "
                              "(tags that build Python objects could run code). Remove the tag.") from None
        raise ConfigError(f"{where}: not valid YAML ({problem}); fix the syntax there.") from None
    lines: dict[str, int] = {}
    if node is not None:
        _walk(node, "", lines)
    return data, Source(str(p), lines)
