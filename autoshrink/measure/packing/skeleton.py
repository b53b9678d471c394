"""The model skeleton of a packed artifact: the module tree pickled without its tensors.

Every tensor is replaced by its index in the container's header (tied tensors share one index);
module state equal to a fresh nn.Module's (empty hook dicts, ...) is left out to keep it small.
Loading uses a restricted unpickler that accepts only nn.Module subclasses, torch.nn.functional
functions and a few plain types, unless the caller says the file is trusted.
"""
from __future__ import annotations

import builtins
import collections
import importlib
import inspect
import io
import pickle
import sys
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import PackError

SAFE_BUILTINS = frozenset({"set", "frozenset", "slice", "tuple", "list", "dict", "int", "float", "bool",
                           "str", "complex", "bytes", "range"})
TRUST_HINT = "pass trusted=True only if you trust where the file came from"


def _module_defaults() -> dict[str, Any]:
    """The state of a fresh nn.Module (hook dicts, flags): what the skeleton leaves out."""
    return dict(nn.Module().__dict__)


def _new_module(cls: type) -> nn.Module:
    """Unpickling helper: an empty instance of an nn.Module subclass."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PackError(f"the skeleton asks to build {cls!r}, which is not an nn.Module")
    return cls.__new__(cls)


def _set_module_state(module: nn.Module, state: dict[str, Any]) -> None:
    """Unpickling helper: restore a module's state, fresh defaults for what was left out."""
    if not isinstance(state, dict):
        raise PackError(f"module state is {type(state).__name__}, expected dict")
    full = _module_defaults()
    full.update(state)
    module.__setstate__(full)


def _interned(value: Any) -> Any:
    """`value` with its strings interned (inside dicts, lists and tuples).

    Pickle shares equal strings only when they are the same object; interning makes the skeleton
    of a loaded model byte-identical to the one it was loaded from.
    """
    kind = type(value)
    if kind is str:
        return sys.intern(value)
    if kind in (dict, collections.OrderedDict):
        return kind((_interned(k), _interned(v)) for k, v in value.items())
    if kind in (list, tuple):
        return kind(_interned(v) for v in value)
    return value


class SkeletonPickler(pickle.Pickler):
    """Pickles a module tree with tensors replaced by header indices and default state dropped."""

    def __init__(self, file: io.BytesIO, index: dict[int, int], extra: list[Tensor]) -> None:
        super().__init__(file, protocol=5)
        self._index = index
        self._extra = extra
        self._defaults = _module_defaults()

    def persistent_id(self, obj: Any) -> int | None:
        if isinstance(obj, Tensor):
            if id(obj) not in self._index:
                self._index[id(obj)] = len(self._index)
                self._extra.append(obj)
            return self._index[id(obj)]
        return None

    def reducer_override(self, obj: Any) -> Any:
        if not isinstance(obj, nn.Module) or isinstance(obj, type):
            return NotImplemented
        reduced = obj.__reduce_ex__(5)
        if not (isinstance(reduced, tuple) and len(reduced) >= 3
                and getattr(reduced[0], "__name__", "") == "__newobj__" and reduced[1] == (type(obj),)
                and isinstance(reduced[2], dict) and all(x is None for x in reduced[3:])):
            return NotImplemented
        raw, defaults = reduced[2], self._defaults
        # nn.Module's own attributes first, in their usual order: the order a loaded module has
        keys = [key for key in defaults if key in raw] + [key for key in raw if key not in defaults]
        state = {sys.intern(key): _interned(raw[key]) for key in keys
                 if not (key in defaults and type(raw[key]) is type(defaults[key]) and raw[key] == defaults[key])}
        return _new_module, (type(obj),), state, None, None, _set_module_state


def _resolve(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class RestrictedUnpickler(pickle.Unpickler):
    """Loads only nn.Module subclasses, torch.nn.functional functions and a few plain types."""

    def __init__(self, file: io.BytesIO, tensors: list[Tensor], where: str) -> None:
        super().__init__(file)
        self._tensors = tensors
        self._where = where

    def persistent_load(self, pid: Any) -> Tensor:
        if type(pid) is not int or not 0 <= pid < len(self._tensors):
            raise PackError(f"{self._where}: the skeleton refers to tensor {pid!r}, but the header lists "
                            f"{len(self._tensors)}; the file is corrupt, save the model again")
        return self._tensors[pid]

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in SAFE_BUILTINS:
            return getattr(builtins, name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in ("Size", "device"):
            return getattr(torch, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == __name__ and name in ("_new_module", "_set_module_state"):
            return globals()[name]
        if module.startswith("torch") and not name.startswith("_") and module in sys.modules:
            obj = getattr(sys.modules[module], name, None)
            if obj is not None and getattr(torch.nn.functional, name, None) is obj and inspect.isroutine(obj) \
                    and (inspect.isbuiltin(obj) or obj.__module__ == "torch.nn.functional"):
                return obj
        if "<" not in name:
            try:
                obj = _resolve(module, name)
            except Exception:  # noqa: BLE001 - anything unresolvable is simply not allowed
                obj = None
            if isinstance(obj, type) and issubclass(obj, nn.Module):
                return obj
        raise PackError(f"{self._where}: the model skeleton refers to {module}.{name}, which autoshrink does not "
                        f"load (only nn.Module subclasses, torch.nn.functional and plain types); {TRUST_HINT}")


class TrustedUnpickler(pickle.Unpickler):
    """An ordinary unpickler (any global) that resolves tensor references."""

    def __init__(self, file: io.BytesIO, tensors: list[Tensor], where: str) -> None:
        super().__init__(file)
        self._tensors = tensors
        self._where = where

    persistent_load = RestrictedUnpickler.persistent_load
