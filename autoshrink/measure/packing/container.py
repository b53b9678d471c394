"""The packed artifact (.ashz): file layout, model skeleton, save and load.

Layout (version 1), every length an unsigned LEB128 varint, zlib at level 9 with the format's
preset dictionary (codec.deflate):

    b"ASHZ" | version byte 1 | len | zlib(JSON header) | len | zlib(pickled skeleton) | payload

The header lists one entry per stored tensor, in payload order:
``[shape, dtype, quant bits, flags, encoding, k, count]`` (flags: 1 Parameter, 2 requires_grad,
4 pruned); payload offsets follow from the entries (codec.payload_size), so the payload of every
tensor is found without storing offsets, and a file whose lengths disagree is rejected.
The skeleton is the module tree with parametrizations baked in, pickled with every tensor
replaced by its index in the header (tied tensors share one entry). Module state that equals a
fresh nn.Module's (empty hook dicts, ...) is left out to keep the skeleton small.
Loading rebuilds the tensors, unpickles with a restricted unpickler (only nn.Module subclasses
and a few plain types) and re-attaches PruneMask / FakeQuant, so saving again gives the same bytes.
"""
from __future__ import annotations

import builtins
import collections
import copy
import importlib
import inspect
import io
import json
import os
import pickle
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ...errors import PackError
from ...techniques.weights import (add_fake_quant, add_mask, strip_parametrizations, weight_bits,
                                   weight_mask, weight_parametrizations)
from . import codec

MAGIC = b"ASHZ"
VERSION = 1
_FLAG_PARAM, _FLAG_GRAD, _FLAG_MASKED = 1, 2, 4
_HEADER_FIELDS = 7
_SAFE_BUILTINS = frozenset({"set", "frozenset", "slice", "tuple", "list", "dict", "int", "float", "bool",
                            "str", "complex", "bytes", "range"})
_TRUST_HINT = "pass trusted=True only if you trust where the file came from"


@dataclass(frozen=True)
class PackedTensor:
    """One stored tensor: where it came from, how it is encoded and the bytes it takes."""

    name: str
    shape: tuple[int, ...]
    encoding: str  # "raw" | "dense" | "bitmap" | "relidx"
    bits: int  # bits per stored value: 2..8 codes, 16 float16, 32 float32, or the raw dtype width
    numel: int
    nonzero: int
    nbytes: int  # payload bytes, scales and positions included


# ----------------------------------------------------------------------------- skeleton pickling

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


class _SkeletonPickler(pickle.Pickler):
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


class _RestrictedUnpickler(pickle.Unpickler):
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
        if module == "builtins" and name in _SAFE_BUILTINS:
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
                        f"load (only nn.Module subclasses, torch.nn.functional and plain types); {_TRUST_HINT}")


class _TrustedUnpickler(pickle.Unpickler):
    """An ordinary unpickler (any global) that resolves tensor references."""

    def __init__(self, file: io.BytesIO, tensors: list[Tensor], where: str) -> None:
        super().__init__(file)
        self._tensors = tensors
        self._where = where

    persistent_load = _RestrictedUnpickler.persistent_load


# ----------------------------------------------------------------------------- pack

def _compression(model: nn.Module) -> dict[str, tuple[bool, int]]:
    """{"<module>.weight": (pruned, quant bits or 0)} for every parametrized weight."""
    found: dict[str, tuple[bool, int]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if weight_parametrizations(module):
            bits = weight_bits(module)
            found[f"{name}.weight" if name else "weight"] = (weight_mask(module) is not None, 0 if bits == 32 else bits)
    return found


def _untie_parametrized(model: nn.Module) -> nn.Module:
    """Give a parametrized tensor its own `original` where that Parameter is also used elsewhere.

    Stripping writes the parametrized value into `original` in place; a module sharing it
    unparametrized (a tied embedding, say) would otherwise be saved with the compressed value.
    """
    uses = collections.Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for plist in module.parametrizations.values():  # type: ignore[union-attr]
                original = getattr(plist, "original", None)
                if isinstance(original, nn.Parameter) and uses[id(original)] > 1:
                    plist.original = nn.Parameter(original.detach().clone(), requires_grad=original.requires_grad)
    return model


def _pack(model: nn.Module, where: str) -> tuple[bytes, list[PackedTensor]]:
    if not isinstance(model, nn.Module):
        raise PackError(f"{where}: expected an nn.Module to pack, got {type(model).__name__}")
    if sys.byteorder != "little":
        raise PackError(f"{where}: packing needs a little-endian machine")
    compression = _compression(model)
    skeleton = strip_parametrizations(_untie_parametrized(copy.deepcopy(model)))
    index: dict[int, int] = {}
    tensors: list[tuple[str, Tensor]] = []
    named = [*skeleton.named_parameters(remove_duplicate=False), *skeleton.named_buffers(remove_duplicate=False)]
    for mod_name, module in skeleton.named_modules(remove_duplicate=False):
        named += [(f"{mod_name}.{attr}" if mod_name else attr, value)
                  for attr, value in vars(module).items() if isinstance(value, Tensor)]
    for name, tensor in named:
        if id(tensor) not in index:
            index[id(tensor)] = len(tensors)
            tensors.append((name, tensor))
    extra: list[Tensor] = []
    stream = io.BytesIO()
    try:
        _SkeletonPickler(stream, index, extra).dump(skeleton)
    except PackError:
        raise
    except Exception as exc:  # noqa: BLE001 - pickling can fail in many ways; report which
        raise PackError(f"{where}: the model structure cannot be pickled ({type(exc).__name__}: {exc}); "
                        f"remove unpicklable attributes (lambdas, open files, hooks) before packing") from exc
    tensors += [(f"<tensor {len(tensors) + i}>", t) for i, t in enumerate(extra)]
    header, parts, report = [], [], []
    for name, tensor in tensors:
        pruned, qbits = compression.get(name, (False, 0))
        try:
            enc = codec.encode_tensor(tensor, qbits, name)
        except PackError as exc:
            raise PackError(f"{where}: {exc}") from None
        flags = (_FLAG_PARAM * isinstance(tensor, nn.Parameter) + _FLAG_GRAD * tensor.requires_grad
                 + _FLAG_MASKED * pruned)
        header.append([list(tensor.shape), str(tensor.dtype).removeprefix("torch."), qbits, flags,
                       codec.ENCODINGS.index(enc.encoding), enc.k, enc.count])
        parts.append(enc.payload)
        report.append(PackedTensor(name, tuple(tensor.shape), enc.encoding, enc.width, tensor.numel(), enc.nnz,
                                   len(enc.payload)))
    head = codec.deflate(json.dumps(header, separators=(",", ":")).encode())
    skel = codec.deflate(stream.getvalue())
    data = b"".join([MAGIC, bytes([VERSION]), codec.varint(len(head)), head, codec.varint(len(skel)), skel, *parts])
    return data, report


def pack(model: nn.Module) -> tuple[bytes, list[PackedTensor]]:
    """The packed artifact of `model` as bytes, and what each stored tensor costs."""
    return _pack(model, "pack()")


def save_packed(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Write the packed artifact of `model` to `path`; returns its exact size in bytes."""
    data, _ = _pack(model, str(path))
    tmp = f"{os.fspath(path)}.{os.getpid()}.partial"
    try:  # write then rename: a failure never leaves a half-written artifact at `path`
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise PackError(f"{path}: cannot write the packed model ({exc.strerror}); check the folder exists "
                        f"and is writable") from exc
    return len(data)


# ----------------------------------------------------------------------------- unpack

def _corrupt(where: str, what: str) -> PackError:
    return PackError(f"{where}: the file is truncated or corrupt ({what}); save the model again")


def _parse_header(raw: bytes, where: str) -> list[tuple[tuple[int, ...], torch.dtype, int, int, str, int, int]]:
    try:
        entries = json.loads(codec.inflate(raw))
    except PackError as exc:
        raise _corrupt(where, f"header {exc}") from None
    except ValueError as exc:
        raise _corrupt(where, f"header does not decode: {exc}") from None
    if not isinstance(entries, list):
        raise _corrupt(where, "header is not a list")
    parsed = []
    for i, e in enumerate(entries):
        if not (isinstance(e, list) and len(e) == _HEADER_FIELDS and isinstance(e[0], list)
                and all(type(d) is int and d >= 0 for d in e[0]) and isinstance(e[1], str)
                and all(type(x) is int for x in e[2:])):
            raise _corrupt(where, f"header entry {i} is malformed")
        dtype = getattr(torch, e[1], None)
        if not isinstance(dtype, torch.dtype) or not 0 <= e[4] < len(codec.ENCODINGS):
            raise _corrupt(where, f"header entry {i} has dtype {e[1]!r}, encoding {e[4]}")
        parsed.append((tuple(e[0]), dtype, e[2], e[3], codec.ENCODINGS[e[4]], e[5], e[6]))
    return parsed


def unpack(data: bytes, *, trusted: bool = False, where: str = "<bytes>") -> nn.Module:
    """Rebuild the model from packed bytes (see `load_packed`); `where` names the source in errors."""
    if data[:4] != MAGIC:
        raise PackError(f"{where}: not an autoshrink packed model (.ashz): it does not start with {MAGIC!r}; "
                        f"pass a file written by autoshrink.save_packed")
    if len(data) < 5:
        raise _corrupt(where, "no format version")
    if data[4] != VERSION:
        raise PackError(f"{where}: format version {data[4]} was written by a newer autoshrink (this one reads "
                        f"version {VERSION}); upgrade autoshrink")
    try:
        n, pos = codec.read_varint(data, 5)
        head, pos = data[pos:pos + n], pos + n
        n, pos = codec.read_varint(data, pos)
        skel, pos = data[pos:pos + n], pos + n
    except PackError as exc:
        raise _corrupt(where, str(exc)) from None
    if pos > len(data):
        raise _corrupt(where, f"lengths add up to {pos} bytes, the file has {len(data)}")
    header = _parse_header(head, where)
    tensors: list[Tensor] = []
    for i, (shape, dtype, qbits, flags, encoding, k, count) in enumerate(header):
        try:
            size = codec.payload_size(shape, dtype, qbits, encoding, k, count)
            if pos + size > len(data):
                raise PackError(f"tensor {i} needs {size} bytes, {len(data) - pos} are left")
            tensor = codec.decode_tensor(memoryview(data)[pos:pos + size], shape, dtype, qbits, encoding, k, count)
        except PackError as exc:
            raise _corrupt(where, f"tensor {i}: {exc}") from None
        pos += size
        grad = bool(flags & _FLAG_GRAD) and (tensor.is_floating_point() or tensor.is_complex())
        tensors.append(nn.Parameter(tensor, requires_grad=grad) if flags & _FLAG_PARAM else tensor.requires_grad_(grad))
    if pos != len(data):
        raise _corrupt(where, f"{len(data) - pos} bytes follow the last tensor")
    try:
        raw = codec.inflate(skel)
    except PackError as exc:
        raise _corrupt(where, f"skeleton {exc}") from None
    unpickler = (_TrustedUnpickler if trusted else _RestrictedUnpickler)(io.BytesIO(raw), tensors, where)
    try:
        model = unpickler.load()
    except PackError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken pickle fails in many ways; all mean the same
        raise _corrupt(where, f"skeleton does not unpickle: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise _corrupt(where, f"skeleton holds {type(model).__name__}, not an nn.Module")
    _reattach(model, header, tensors, where)
    return model


def _reattach(model: nn.Module, header: list, tensors: list[Tensor], where: str) -> None:
    """Register PruneMask / FakeQuant again on the weights that carried them when saved."""
    names: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), name)
    for entry, tensor in zip(header, tensors):
        qbits, pruned = entry[2], bool(entry[3] & _FLAG_MASKED)
        if not (qbits or pruned):
            continue
        name = names.get(id(tensor), "")
        owner, _, attr = name.rpartition(".")
        if attr != "weight":
            raise _corrupt(where, f"a compressed tensor is not a module weight (found at {name or 'no parameter'!r})")
        module = model.get_submodule(owner)
        if pruned:
            add_mask(module, tensor.detach() != 0)
        if qbits:
            add_fake_quant(module, qbits)


def load_packed(path: str | os.PathLike[str], *, trusted: bool = False) -> nn.Module:
    """Load a model saved by `save_packed`: same outputs, masks and quantization re-attached.

    Loading never runs code from the file unless `trusted=True` (then any pickled global loads).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise PackError(f"{path}: no such file; check the path of the packed model (.ashz)") from None
    except OSError as exc:
        raise PackError(f"{path}: cannot read the packed model ({exc.strerror})") from None
    return unpack(data, trusted=trusted, where=str(path))
