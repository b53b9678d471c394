"""Safe YAML loading that remembers the line of every value, for error messages."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, describe


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


MAX_YAML_BYTES = 1 << 20  # a config or recipe is a few KB; 1 MiB is far beyond any real one
MAX_YAML_NODES = 100_000  # values counted along every alias (an alias bomb expands exponentially)
MAX_YAML_ALIASES = 1_000
MAX_YAML_DEPTH = 64


def _walk(node: yaml.Node, path: str, lines: dict[str, int]) -> None:
    lines[path or "<root>"] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            _walk(value, f"{path}.{name}" if path else name, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, f"{path}[{i}]", lines)


class _NamesLoader(yaml.SafeLoader):
    """The safe loader with every mapping key read as the text it is written as: keys are names
    (layer names such as `0`, field names), so `0:` and `"0":` mean the same key."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
        mapping = {}
        for key_node, value_node in node.value:
            mapping[key_node.value] = self.construct_object(value_node, deep=deep)
        return mapping


_NamesLoader.add_constructor("tag:yaml.org,2002:map", _NamesLoader.construct_yaml_map)


def _check_nodes(root: yaml.Node, p: Path) -> None:
    """Refuse what would exhaust memory or mislead once constructed: alias bombs and cycles, deep
    nesting, keys that are not plain names, and duplicate keys (YAML keeps the last silently)."""
    expanded: dict[int, int] = {}
    aliases = 0
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    on_path: set[int] = set()
    while stack:
        node, depth, done = stack.pop()
        if done:
            children = (
                [c for kv in node.value for c in kv]
                if isinstance(node, yaml.MappingNode)
                else node.value
                if isinstance(node, yaml.SequenceNode)
                else []
            )
            expanded[id(node)] = 1 + sum(expanded[id(c)] for c in children)
            on_path.discard(id(node))
            if expanded[id(node)] > MAX_YAML_NODES:
                raise ConfigError(
                    f"{p}:{node.start_mark.line + 1}: the YAML expands to more than {MAX_YAML_NODES:,} "
                    "values through its aliases (*name); write the values out, or use fewer aliases."
                )
            continue
        if id(node) in seen:
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise ConfigError(f"{p}: more than {MAX_YAML_ALIASES:,} aliases (*name); write the values out.")
            if id(node) in on_path:
                raise ConfigError(
                    f"{p}:{node.start_mark.line + 1}: an alias refers to a value that contains it (a "
                    "recursive anchor); write the values out."
                )
            if id(node) in expanded:
                continue
        seen.add(id(node))
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(
                f"{p}:{node.start_mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels; a config "
                "is a few levels deep, check the indentation."
            )
        on_path.add(id(node))
        stack.append((node, depth, True))
        if isinstance(node, yaml.MappingNode):
            keys: dict[str, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if not isinstance(key, yaml.ScalarNode):
                    raise ConfigError(
                        f"{p}:{line}: a key that is a list or mapping; keys are plain names (quote "
                        "it if it holds [ ] { } characters)."
                    )
                if key.value in keys and key.tag != "tag:yaml.org,2002:merge":
                    raise ConfigError(
                        f"{p}:{line}: key {key.value!r} appears twice (first on line {keys[key.value]}); "
                        "YAML would keep only the last one. Remove or merge one of them."
                    )
                keys[key.value] = line
                stack.extend([(value, depth + 1, False), (key, depth + 1, False)])
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, depth + 1, False) for item in node.value)


def read_text(path: str | Path, what: str = "file", limit: int = MAX_YAML_BYTES) -> str:
    """A regular file's UTF-8 text, at most `limit` bytes: one ConfigError naming the file otherwise
    (a FIFO or device is refused before it is opened, so nothing blocks)."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"got {describe(path)} where the path of a YAML {what} belongs; pass a file path.")
    p = Path(path)
    try:
        info = p.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{p}: not a regular file (a folder, FIFO or device); pass the path of a YAML {what}.")
        if info.st_size > limit:
            raise ConfigError(
                f"{p}: {info.st_size:,} bytes, over the {limit:,}-byte limit for a YAML {what}; pass the right file."
            )
        with p.open("rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file; check the path.") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read it ({exc.strerror}).") from None
    if len(raw) > limit:
        raise ConfigError(f"{p}: over the {limit:,}-byte limit for a YAML {what}; pass the right file.")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(raw) > 1 and (raw[0] == 0 or raw[1] == 0)):
        raise ConfigError(f"{p}: UTF-16 text; save it as UTF-8.")
    if b"\x00" in raw:
        raise ConfigError(f"{p}: binary data (NUL bytes), not YAML text; pass the YAML {what}.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8."
        ) from None


def load_yaml(path: str | Path) -> tuple[Any, Source]:
    """Parse a YAML file with the safe loader (no Python object tags), bounded (size, aliases,
    depth; regular UTF-8 files only), duplicate keys refused, and map paths to lines."""
    text = read_text(path)
    p = Path(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _check_nodes(node, p)
        data = yaml.load(text, Loader=_NamesLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if isinstance(exc, yaml.constructor.ConstructorError):  # e.g. !!python/object/apply: never constructed
            raise ConfigError(
                f"{where}: not valid YAML here, tag refused ({problem}); only plain YAML is accepted "
                "(tags that build Python objects could run code). Remove the tag."
            ) from None
        raise ConfigError(f"{where}: not valid YAML ({problem}); fix the syntax there.") from None
    except RecursionError:
        raise ConfigError(f"{p}: nested too deeply to read; a config is a few levels deep.") from None
    lines: dict[str, int] = {}
    if node is not None:
        _walk(node, "", lines)
    return data, Source(str(p), lines)
