"""Bounds a packed file must stay within to be loaded: checked before anything is allocated or built.

A file that declares more (a header inflating to gigabytes, a huge tensor coded in a few bytes, a
skeleton whose shared references make 2^40 paths) is refused with a PackError naming the bound:
MAX_FILE_BYTES (the file, read whole); MAX_HEADER_BYTES / MAX_SKELETON_BYTES (inflated header, pickled
skeleton); MAX_LOADED_BYTES (all tensors as rebuilt in memory, the default of
`load_packed(max_bytes=...)`: 4 GiB); MAX_GRAPH_PATHS / MAX_GRAPH_DEPTH (the skeleton's object graph
counted along every path, a shared object once per reference, and its nesting; no cycles).
"""

from __future__ import annotations

import collections
from typing import Any

from torch import Tensor, nn

from ...errors import PackError

MAX_FILE_BYTES = 1 << 34
MAX_HEADER_BYTES = 1 << 24
MAX_SKELETON_BYTES = 1 << 26
MAX_LOADED_BYTES = 1 << 32
MAX_GRAPH_PATHS = 1_000_000
MAX_GRAPH_DEPTH = 100

_CONTAINERS = (list, tuple, dict, set, frozenset, collections.OrderedDict)


def _children(obj: Any) -> list[Any]:
    """What `obj` refers to that the loader walks: a module's attributes, a container's items."""
    if isinstance(obj, nn.Module):
        return list(vars(obj).values())
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)) and not isinstance(obj, str):
        return list(obj)
    return []


def check_graph(root: Any, where: str, max_paths: int = MAX_GRAPH_PATHS, max_depth: int = MAX_GRAPH_DEPTH) -> None:
    """Refuse a skeleton whose object graph has a cycle, nests deeper than `max_depth`, or counts more
    than `max_paths` objects along all paths (what a walk without memo -- `named_parameters(
    remove_duplicate=False)`, a deep copy, a repr -- would visit). Linear in the distinct objects."""
    paths: dict[int, int] = {}  # id -> objects reachable along all paths from it, itself included
    on_stack: set[int] = set()
    stack: list[tuple[Any, list[Any] | None]] = [(root, None)]
    keep: list[Any] = []  # objects whose ids are recorded stay alive while we look
    while stack:
        obj, pending = stack[-1]
        if pending is None:
            if id(obj) in paths:
                stack.pop()
                continue
            if len(stack) > max_depth:
                raise PackError(
                    f"{where}: the model skeleton nests deeper than {max_depth} levels; the file is "
                    f"corrupt or hostile, save the model again"
                )
            pending = [c for c in _children(obj) if isinstance(c, (nn.Module, *_CONTAINERS)) or isinstance(c, Tensor)]
            stack[-1] = (obj, pending)
            on_stack.add(id(obj))
            keep.append(obj)
        while pending:
            child = pending[-1]
            if id(child) in on_stack:
                raise PackError(
                    f"{where}: the model skeleton refers back to itself (a cycle through a "
                    f"{type(child).__name__}); the file is corrupt or hostile, save the model again"
                )
            if id(child) in paths or isinstance(child, Tensor):
                pending.pop()
                continue
            stack.append((child, None))
            break
        else:
            total = 1 + sum(
                1 if isinstance(c, Tensor) else paths[id(c)]
                for c in _children(obj)
                if isinstance(c, (nn.Module, Tensor, *_CONTAINERS))
            )
            if total > max_paths:
                raise PackError(
                    f"{where}: the model skeleton reaches more than {max_paths:,} objects along its "
                    f"shared references; the file is corrupt or hostile, save the model again"
                )
            paths[id(obj)] = total
            on_stack.discard(id(obj))
            stack.pop()
