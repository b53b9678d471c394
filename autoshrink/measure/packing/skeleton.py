"""The model skeleton of a packed artifact: the module tree pickled without its tensors.

Every tensor is replaced by its index in the container's header (tied tensors share one index);
module state equal to a fresh nn.Module's (empty hook dicts, ...) is left out to keep it small.
Loading uses a restricted unpickler that accepts only nn.Module subclasses of modules already
imported (or allowed), Hugging Face model configs (plain data a transformers module holds), torch.nn.functional
functions and a few plain types, and calls nothing but the skeleton's own constructors, unless the
caller says the file is trusted. A config is stored without what only says where it came from
(PROVENANCE: the folder it was loaded from, the architectures, dtype and transformers version that
save_pretrained / from_pretrained write into it): the same weights give the same artifact, byte for
byte, however the model was built or loaded, and the file names no local path. Likewise a
transformers model is stored without what from_pretrained attaches to it (LOAD_STATE: its kernel
settings and weight renamings, read with defaults when absent; `name_or_path` emptied).
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

SAFE_BUILTINS = frozenset({"set", "frozenset", "slice", "complex", "range"})
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


def _config_base() -> type | None:
    """transformers' PreTrainedConfig where transformers is imported (None otherwise: no config to meet)."""
    utils = sys.modules.get("transformers.configuration_utils")
    base = getattr(utils, "PreTrainedConfig", None) or getattr(utils, "PretrainedConfig", None)
    return base if isinstance(base, type) else None


def _is_config_class(cls: Any) -> bool:
    base = _config_base()
    return base is not None and isinstance(cls, type) and issubclass(cls, base)


PROVENANCE = {"_name_or_path": "", "architectures": None, "dtype": None, "transformers_version": None}
LOAD_STATE = ("_use_kernels", "_kernels_mode", "_weight_conversions")


def _is_hf_model(module: nn.Module) -> bool:
    utils = sys.modules.get("transformers.modeling_utils")
    base = getattr(utils, "PreTrainedModel", None)
    return isinstance(base, type) and isinstance(module, base)


def _config_state(config: Any) -> dict[str, Any]:
    """A config's attributes without provenance (PROVENANCE's values; an instance `model_type` equal to
    the class's dropped)."""
    state = {sys.intern(k): _interned(v) for k, v in config.__dict__.items()}
    for key, value in PROVENANCE.items():
        if key in state:
            state[key] = value
    if "model_type" in state and state["model_type"] == getattr(type(config), "model_type", None):
        del state["model_type"]
    return state


def _new_config(cls: type) -> Any:
    """Unpickling helper: an empty instance of a Hugging Face config class."""
    if not _is_config_class(cls):
        raise PackError(f"the skeleton asks to build {cls!r}, which is not a transformers config")
    return cls.__new__(cls)


def _set_config_state(config: Any, state: dict[str, Any]) -> None:
    """Unpickling helper: a config's attributes, as pickle itself would set them (no code of the config)."""
    if not isinstance(state, dict) or not all(type(k) is str for k in state):
        raise PackError("config state is not a dict of attribute names")
    config.__dict__.update(state)


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
    if kind in (list, tuple, set, frozenset):  # sets too: a module's _non_persistent_buffers_set
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
        if type(obj) in (set, frozenset):  # in sorted order: a set's own order depends on how it was built
            try:
                return type(obj), (sorted(obj),)
            except TypeError:  # elements without an order: as pickle writes them
                return NotImplemented
        if not isinstance(obj, type) and _is_config_class(type(obj)):
            return _new_config, (type(obj),), _config_state(obj), None, None, _set_config_state
        if not isinstance(obj, nn.Module) or isinstance(obj, type):
            return NotImplemented
        reduced = obj.__reduce_ex__(5)
        if not (
            isinstance(reduced, tuple)
            and len(reduced) >= 3
            and getattr(reduced[0], "__name__", "") == "__newobj__"
            and reduced[1] == (type(obj),)
            and isinstance(reduced[2], dict)
            and all(x is None for x in reduced[3:])
        ):
            return NotImplemented
        raw, defaults = reduced[2], self._defaults
        # nn.Module's own attributes first, in their usual order: the order a loaded module has
        keys = [key for key in defaults if key in raw] + [key for key in raw if key not in defaults]
        state = {
            sys.intern(key): _interned(raw[key])
            for key in keys
            if not (key in defaults and type(raw[key]) is type(defaults[key]) and raw[key] == defaults[key])
        }
        if _is_hf_model(obj):
            for key in LOAD_STATE:
                state.pop(key, None)
            if "name_or_path" in state:
                state["name_or_path"] = ""
        return _new_module, (type(obj),), state, None, None, _set_module_state


def _lookup(module: str, qualname: str) -> Any:
    """`module.qualname` found in the already-imported module's namespace: no import, no module
    `__getattr__`, no descriptor runs (None where it is not there)."""
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        if obj is None:
            return None
        obj = inspect.getattr_static(obj, part, None)
    return obj


def _allowed(module: str, allow: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allow)


def _size_args(args: tuple) -> bool:
    return (
        len(args) == 1
        and type(args[0]) in (tuple, list)
        and len(args[0]) <= 64
        and all(type(d) is int for d in args[0])
    )


def _check_reduce(func: Any, args: Any) -> bool:
    """Whether calling `func(*args)` is one a skeleton makes: what it builds is known and small."""
    if type(args) is not tuple:
        return False
    if func is _new_module:
        return len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], nn.Module)
    if func is _set_module_state:
        return len(args) == 2 and isinstance(args[0], nn.Module) and type(args[1]) is dict
    if func is _new_config:
        return len(args) == 1 and _is_config_class(args[0])
    if func is _set_config_state:
        return len(args) == 2 and _is_config_class(type(args[0])) and type(args[1]) is dict
    if func is collections.OrderedDict:
        return args == ()
    if func is torch.Size:
        return _size_args(args)
    if func is torch.device:
        return (
            1 <= len(args) <= 2
            and type(args[0]) is str
            and len(args[0]) <= 32
            and all(type(a) is int for a in args[1:])
        )
    if func in (slice, range):
        return len(args) <= 3 and all(a is None or type(a) is int for a in args)
    if func is complex:
        return len(args) <= 2 and all(type(a) in (int, float) for a in args)
    if func in (set, frozenset):
        return len(args) <= 1 and all(type(a) in (list, tuple) for a in args)
    return False


def _forbidden(opcode: str) -> Any:
    def refuse(self: RestrictedUnpickler) -> None:
        raise PackError(
            f"{self._where}: the model skeleton uses pickle's {opcode} (it builds objects a model "
            f"skeleton never holds); {TRUST_HINT}"
        )

    return refuse


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """Loads only nn.Module subclasses, torch.nn.functional functions and a few plain types, and runs no
    code of the file's choosing: no import (classes come from modules the caller imported, or named in
    `allow`), and the only calls are the skeleton's own constructors with checked arguments (the
    pure-Python unpickler, so that each call can be checked; a skeleton is small)."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: io.BytesIO, tensors: list[Tensor], where: str, allow: tuple[str, ...] = ()) -> None:
        super().__init__(file)
        self._tensors = tensors
        self._where = where
        self._allow = allow

    def persistent_load(self, pid: Any) -> Tensor:
        if type(pid) is not int or not 0 <= pid < len(self._tensors):
            raise PackError(
                f"{self._where}: the skeleton refers to tensor {pid!r}, but the header lists "
                f"{len(self._tensors)}; the file is corrupt, save the model again"
            )
        return self._tensors[pid]

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not _check_reduce(func, args):
            name = getattr(func, "__qualname__", type(func).__name__)
            raise PackError(
                f"{self._where}: the model skeleton calls {name} with arguments a skeleton never "
                f"passes; the file is corrupt or hostile, {TRUST_HINT}"
            )
        self.stack[-1] = func(*args)

    dispatch[pickle.REDUCE[0]] = load_reduce
    for _code in ("BUILD", "NEWOBJ", "NEWOBJ_EX", "INST", "OBJ"):
        dispatch[getattr(pickle, _code)[0]] = _forbidden(_code)
    del _code

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in SAFE_BUILTINS:
            return getattr(builtins, name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in ("Size", "device"):
            return getattr(torch, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == __name__ and name in ("_new_module", "_set_module_state", "_new_config", "_set_config_state"):
            return globals()[name]
        if module.startswith("torch") and not name.startswith("_") and module in sys.modules:
            obj = _lookup(module, name)
            if (
                obj is not None
                and getattr(torch.nn.functional, name, None) is obj
                and inspect.isroutine(obj)
                and (inspect.isbuiltin(obj) or obj.__module__ == "torch.nn.functional")
            ):
                return obj
        if "<" in name:
            raise PackError(
                f"{self._where}: the model skeleton refers to {module}.{name}, a class defined inside "
                f"a function, which cannot be loaded; define it at module level and save again"
            )
        if module not in sys.modules:
            if not _allowed(module, self._allow):
                raise PackError(
                    f"{self._where}: the model skeleton refers to {module}.{name}, but module "
                    f"{module} is not imported; loading never imports a module by itself: import it "
                    f"first, or pass allow=[{module!r}] if you trust it"
                )
            try:
                importlib.import_module(module)
            except BaseException as exc:  # noqa: BLE001 - the allowed module's own failure, reported as such
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise PackError(
                    f"{self._where}: importing {module} (allowed) failed: {type(exc).__name__}: {exc}"
                ) from None
        obj = _lookup(module, name)
        if isinstance(obj, type) and (issubclass(obj, nn.Module) or _is_config_class(obj)):
            return obj
        raise PackError(
            f"{self._where}: the model skeleton refers to {module}.{name}, which autoshrink does not "
            f"load (only nn.Module subclasses, transformers configs, torch.nn.functional and plain types); "
            f"{TRUST_HINT}"
        )


class TrustedUnpickler(pickle.Unpickler):
    """An ordinary unpickler (any global) that resolves tensor references."""

    def __init__(self, file: io.BytesIO, tensors: list[Tensor], where: str) -> None:
        super().__init__(file)
        self._tensors = tensors
        self._where = where

    persistent_load = RestrictedUnpickler.persistent_load
