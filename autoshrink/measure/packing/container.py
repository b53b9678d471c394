"""The packed artifact (.ashz): file layout, model skeleton, save and load.

Version 2: b"ASHZ" | version byte 2 | len | zlib(JSON header) | len | zlib(pickled skeleton) | payload,
lengths as LEB128 varints, zlib level 9 with a preset dictionary (framing.deflate). The header has one
entry per tensor in payload order, [shape, dtype, quant bits, flags, encoding, k, count(, coded)] (flags:
1 Parameter, 2 requires_grad, 4 pruned, 8 codebook); offsets follow from them (codec.payload_size).
Version 1 (no `coded`) still loads. The skeleton (skeleton.py) is the module tree with tensors replaced
by header indices (tied tensors share one); loading uses a restricted unpickler and re-attaches
PruneMask / FakeQuant, so saving again gives the same bytes.
"""

from __future__ import annotations

import collections
import copy
import io
import json
import math
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ...errors import PackError
from ...weights import (
    add_codebook,
    add_fake_quant,
    add_mask,
    strip_parametrizations,
    weight_bits,
    weight_codebook,
    weight_mask,
    weight_parametrizations,
)
from . import codec, decode, framing, limits
from .skeleton import RestrictedUnpickler, SkeletonPickler, TrustedUnpickler

MAGIC = b"ASHZ"
VERSION = 2
READS = (1, 2)  # format versions this autoshrink loads
_FLAG_PARAM, _FLAG_GRAD, _FLAG_MASKED, _FLAG_CODEBOOK = 1, 2, 4, 8
_HEADER_FIELDS = {1: (7,), 2: (7, 8)}


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
    coded: tuple[int, ...] = ()  # per stream: entropy-coded bytes (0 = fixed width); () = none coded

    @property
    def streams(self) -> str:
        """The layout and how each stream is stored: "relidx (gaps: entropy, values: fixed)"."""
        return codec.describe(self.encoding, self.coded)


# ----------------------------------------------------------------------------- pack


def _compression(model: nn.Module) -> dict[str, tuple[bool, int, bool]]:
    """{"<module>.weight": (pruned, quant bits or 0, codebook)} for every parametrized weight."""
    found: dict[str, tuple[bool, int, bool]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if weight_parametrizations(module):
            book = weight_codebook(module)
            bits = book.bits if book is not None else weight_bits(module)
            found[f"{name}.weight" if name else "weight"] = (
                weight_mask(module) is not None,
                0 if bits == 32 else bits,
                book is not None,
            )
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


@dataclass(frozen=True)
class Stored:
    """One tensor as the file stores it, before encoding: its name, value and what it carries."""

    name: str
    tensor: Tensor
    qbits: int  # 2..8 codes, 16 float16, 0 as is
    codebook: bool
    flags: int  # _FLAG_* bits


@dataclass(frozen=True)
class Layout:
    """What a packed file holds apart from the tensor payloads: the pickled skeleton and the tensors
    in payload order. `pack` encodes every tensor; `packed_size` reuses encodings it has seen."""

    skeleton: bytes
    tensors: tuple[Stored, ...]


def layout(model: nn.Module, where: str) -> Layout:
    """The skeleton and stored tensors of `model` (a stripped copy: `model` is not modified)."""
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
        named += [
            (f"{mod_name}.{attr}" if mod_name else attr, value)
            for attr, value in vars(module).items()
            if isinstance(value, Tensor)
        ]
    for name, tensor in named:
        if id(tensor) not in index:
            index[id(tensor)] = len(tensors)
            tensors.append((name, tensor))
    extra: list[Tensor] = []
    stream = io.BytesIO()
    try:
        SkeletonPickler(stream, index, extra).dump(skeleton)
    except PackError:
        raise
    except Exception as exc:  # noqa: BLE001 - pickling can fail in many ways; report which
        raise PackError(
            f"{where}: the model structure cannot be pickled ({type(exc).__name__}: {exc}); "
            f"remove unpicklable attributes (lambdas, open files, hooks) before packing"
        ) from exc
    tensors += [(f"<tensor {len(tensors) + i}>", t) for i, t in enumerate(extra)]
    stored = []
    for name, tensor in tensors:
        pruned, qbits, book = compression.get(name, (False, 0, False))
        flags = (
            _FLAG_PARAM * isinstance(tensor, nn.Parameter)
            + _FLAG_GRAD * tensor.requires_grad
            + _FLAG_MASKED * pruned
            + _FLAG_CODEBOOK * book
        )
        stored.append(Stored(name, tensor, qbits, book, flags))
    return Layout(stream.getvalue(), tuple(stored))


def header_entry(s: Stored, enc: codec.Sized) -> list:
    """The tensor's header entry: [shape, dtype, quant bits, flags, encoding, k, count(, coded)]."""
    return [
        list(s.tensor.shape),
        str(s.tensor.dtype).removeprefix("torch."),
        s.qbits,
        s.flags,
        codec.ENCODINGS.index(enc.encoding),
        enc.k,
        enc.count,
    ] + ([list(enc.coded)] if enc.coded else [])


def packed_tensor(s: Stored, enc: codec.Sized) -> PackedTensor:
    return PackedTensor(
        s.name, tuple(s.tensor.shape), enc.encoding, enc.width, s.tensor.numel(), enc.nnz, enc.nbytes, enc.coded
    )


def frame(header: list, skeleton: bytes) -> bytes:
    """Everything in front of the payloads: magic, version, the deflated header and skeleton."""
    head = framing.deflate(json.dumps(header, separators=(",", ":")).encode())
    skel = framing.deflate(skeleton)
    return b"".join([MAGIC, bytes([VERSION]), framing.varint(len(head)), head, framing.varint(len(skel)), skel])


def encode(s: Stored, where: str, use_entropy: bool = True) -> codec.Encoded:
    try:
        return codec.encode_tensor(s.tensor, s.qbits, s.name, use_entropy=use_entropy, codebook=s.codebook)
    except PackError as exc:
        raise PackError(f"{where}: {exc}") from None


def _pack(model: nn.Module, where: str, use_entropy: bool = True) -> tuple[bytes, list[PackedTensor]]:
    found = layout(model, where)
    header, parts, report = [], [], []
    for s in found.tensors:
        enc = encode(s, where, use_entropy)
        header.append(header_entry(s, enc.sized))
        parts.append(enc.payload)
        report.append(packed_tensor(s, enc.sized))
    return b"".join([frame(header, found.skeleton), *parts]), report


def pack(model: nn.Module, *, entropy: bool = True) -> tuple[bytes, list[PackedTensor]]:
    """The packed artifact of `model` as bytes, and what each stored tensor costs; `entropy=False`
    stores every stream fixed-width (for comparison: the file a fixed-width packer writes)."""
    return _pack(model, "pack()", entropy)


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
        raise PackError(
            f"{path}: cannot write the packed model ({exc.strerror}); check the folder exists and is writable"
        ) from exc
    return len(data)


# ----------------------------------------------------------------------------- unpack


def _corrupt(where: str, what: str) -> PackError:
    return PackError(f"{where}: the file is truncated or corrupt ({what}); save the model again")


def _parse_header(raw: bytes, where: str, version: int) -> list[tuple]:
    try:
        entries = json.loads(framing.inflate(raw, limits.MAX_HEADER_BYTES))
    except PackError as exc:
        raise _corrupt(where, f"header {exc}") from None
    except ValueError as exc:
        raise _corrupt(where, f"header does not decode: {exc}") from None
    if not isinstance(entries, list):
        raise _corrupt(where, "header is not a list")
    parsed = []
    for i, e in enumerate(entries):
        if not (
            isinstance(e, list)
            and len(e) in _HEADER_FIELDS[version]
            and isinstance(e[0], list)
            and all(type(d) is int and d >= 0 for d in e[0])
            and isinstance(e[1], str)
            and all(type(x) is int for x in e[2:7])
            and (len(e) == 7 or (isinstance(e[7], list) and e[7] and all(type(c) is int for c in e[7])))
        ):
            raise _corrupt(where, f"header entry {i} is malformed")
        dtype = getattr(torch, e[1], None)
        if not isinstance(dtype, torch.dtype) or not 0 <= e[4] < len(codec.ENCODINGS):
            raise _corrupt(where, f"header entry {i} has dtype {e[1]!r}, encoding {e[4]}")
        parsed.append(
            (tuple(e[0]), dtype, e[2], e[3], codec.ENCODINGS[e[4]], e[5], e[6], tuple(e[7]) if len(e) == 8 else ())
        )
    return parsed


def unpack(
    data: bytes,
    *,
    trusted: bool = False,
    where: str = "<bytes>",
    allow: Sequence[str] = (),
    max_bytes: int = limits.MAX_LOADED_BYTES,
) -> nn.Module:
    """Rebuild the model from packed bytes (see `load_packed`); `where` names the source in errors."""
    try:
        return _unpack(data, trusted, where, tuple(allow), max_bytes)
    except PackError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit, MemoryError, ...: a file never ends the caller
        raise _corrupt(where, f"loading raised {type(exc).__name__}: {exc}") from None


def _unpack(data: bytes, trusted: bool, where: str, allow: tuple[str, ...], max_bytes: int) -> nn.Module:
    if data[:4] != MAGIC:
        raise PackError(
            f"{where}: not an autoshrink packed model (.ashz): it does not start with {MAGIC!r}; "
            f"pass a file written by autoshrink.save_packed"
        )
    if len(data) < 5:
        raise _corrupt(where, "no format version")
    if data[4] not in READS:
        raise PackError(
            f"{where}: format version {data[4]} was written by a newer autoshrink (this one reads "
            f"versions {', '.join(map(str, READS))}); upgrade autoshrink"
        )
    try:
        n, pos = framing.read_varint(data, 5)
        head, pos = data[pos : pos + n], pos + n
        n, pos = framing.read_varint(data, pos)
        skel, pos = data[pos : pos + n], pos + n
    except PackError as exc:
        raise _corrupt(where, str(exc)) from None
    if pos > len(data):
        raise _corrupt(where, f"lengths add up to {pos} bytes, the file has {len(data)}")
    header = _parse_header(head, where, data[4])
    declared = sum(math.prod(shape) * _itemsize(dtype) for shape, dtype, *_ in header)
    if declared > max_bytes:
        raise PackError(
            f"{where}: the file declares {declared:,} bytes of tensors, over the {max_bytes:,}-byte "
            f"limit; if it is a model you trust this large, pass max_bytes={declared}"
        )
    tensors: list[Tensor] = []
    for i, (shape, dtype, qbits, flags, encoding, k, count, coded) in enumerate(header):
        try:
            book = bool(flags & _FLAG_CODEBOOK)
            size = codec.payload_size(shape, dtype, qbits, encoding, k, count, coded, book)
            if pos + size > len(data):
                raise PackError(f"tensor {i} needs {size} bytes, {len(data) - pos} are left")
            tensor = decode.decode_tensor(
                memoryview(data)[pos : pos + size], shape, dtype, qbits, encoding, k, count, coded, book
            )
        except PackError as exc:
            raise _corrupt(where, f"tensor {i}: {exc}") from None
        pos += size
        grad = bool(flags & _FLAG_GRAD) and (tensor.is_floating_point() or tensor.is_complex())
        tensors.append(nn.Parameter(tensor, requires_grad=grad) if flags & _FLAG_PARAM else tensor.requires_grad_(grad))
    if pos != len(data):
        raise _corrupt(where, f"{len(data) - pos} bytes follow the last tensor")
    try:
        raw = framing.inflate(skel, limits.MAX_SKELETON_BYTES)
    except PackError as exc:
        raise _corrupt(where, f"skeleton {exc}") from None
    unpickler = (
        TrustedUnpickler(io.BytesIO(raw), tensors, where)
        if trusted
        else RestrictedUnpickler(io.BytesIO(raw), tensors, where, allow)
    )
    try:
        model = unpickler.load()
    except PackError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken pickle fails in many ways; all mean the same
        raise _corrupt(where, f"skeleton does not unpickle: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise _corrupt(where, f"skeleton holds {type(model).__name__}, not an nn.Module")
    limits.check_graph(model, where)
    _reattach(model, header, tensors, where)
    return model


def _itemsize(dtype: torch.dtype) -> int:
    return max(1, torch.empty((), dtype=dtype).element_size())


def _reattach(model: nn.Module, header: list, tensors: list[Tensor], where: str) -> None:
    """Register PruneMask / FakeQuant again on the weights that carried them when saved."""
    names: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), name)
    for entry, tensor in zip(header, tensors):
        qbits, pruned, book = entry[2], bool(entry[3] & _FLAG_MASKED), bool(entry[3] & _FLAG_CODEBOOK)
        if not (qbits or pruned):
            continue
        name = names.get(id(tensor), "")
        owner, _, attr = name.rpartition(".")
        if attr != "weight":
            raise _corrupt(where, f"a compressed tensor is not a module weight (found at {name or 'no parameter'!r})")
        module = model.get_submodule(owner)
        if pruned:
            add_mask(module, tensor.detach() != 0)
        if book:
            add_codebook(module, qbits, _centroids(tensor.detach(), qbits))
        elif qbits:
            add_fake_quant(module, qbits)


def _centroids(weight: Tensor, bits: int) -> Tensor:
    """The codebook a stored codebook weight came from: its distinct nonzero values, ascending, the
    unused places repeating the largest (as the packer lays it out), so a re-save is byte-identical."""
    values = torch.unique(weight[weight != 0].float())
    k = codec.codebook_size(bits)
    return torch.cat([values, values[-1:].repeat(k - values.numel())]) if values.numel() else torch.zeros(k)


def load_packed(
    path: str | os.PathLike[str],
    *,
    trusted: bool = False,
    allow: Sequence[str] = (),
    max_bytes: int = limits.MAX_LOADED_BYTES,
) -> nn.Module:
    """Load a model saved by `save_packed`: same outputs, masks and quantization re-attached.

    Loading never runs code from the file and never imports a module by itself: the model's classes
    must come from modules the caller has imported, or from modules (or packages) named in `allow`,
    which may then be imported. `trusted=True` loads any pickled global (files you made). Files
    declaring more than `max_bytes` of tensors (default 4 GiB) or exceeding the bounds in
    `packing/limits.py` are refused before anything is allocated.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise PackError(f"load_packed: got {path!r}; pass the path of a packed model (.ashz).")
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise PackError(
                f"{path}: not a regular file (a FIFO, device or folder); pass the path of a packed model (.ashz)"
            )
        if info.st_size > limits.MAX_FILE_BYTES:
            raise PackError(
                f"{path}: {info.st_size:,} bytes, over the {limits.MAX_FILE_BYTES:,}-byte limit for a packed model"
            )
        with open(path, "rb") as f:
            data = f.read(info.st_size + 1)  # never more than was checked (a file growing meanwhile is cut)
    except FileNotFoundError:
        raise PackError(f"{path}: no such file; check the path of the packed model (.ashz)") from None
    except OSError as exc:
        raise PackError(f"{path}: cannot read the packed model ({exc.strerror})") from None
    return unpack(data, trusted=trusted, where=str(path), allow=allow, max_bytes=max_bytes)
