"""The packed artifact (.ashz): file layout, model skeleton and save (loading: unpack.py).

Version 2: b"ASHZ" | version byte 2 | len | zlib(JSON header) | len | zlib(pickled skeleton) | payload,
lengths as LEB128 varints, zlib level 9 with a preset dictionary (framing.deflate). The header has one
entry per tensor in payload order, [shape, dtype, quant bits, flags, encoding, k, count(, coded)] (flags:
1 Parameter, 2 requires_grad, 4 pruned, 8 codebook); offsets follow from them (codec.payload_size).
Version 3, written only when some weight has group-wise or fixed scales (GPTQ), adds a ninth field, the
group size (entries [..., count, coded or [], group]), and flag 16: the scales are fixed (re-attached
as stored, not derived from the weight). Versions 1 (no `coded`) and 2 still load. The skeleton
(skeleton.py) is the module tree with tensors replaced by header indices (tied tensors share one);
loading uses a restricted unpickler and re-attaches PruneMask / FakeQuant, so saving again gives the
same bytes.
"""

from __future__ import annotations

import collections
import copy
import io
import json
import os
import sys
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.utils import parametrize

from ...errors import PackError
from ...files import write_atomically
from ...weights import (
    strip_parametrizations,
    weight_bits,
    weight_codebook,
    weight_mask,
    weight_parametrizations,
    weight_quantizer,
)
from . import codec, framing
from .skeleton import SkeletonPickler

MAGIC = b"ASHZ"
VERSION = 2  # written when no weight has group-wise or fixed scales
GROUPED_VERSION = 3
READS = (1, 2, 3)  # format versions this autoshrink loads
_FLAG_PARAM, _FLAG_GRAD, _FLAG_MASKED, _FLAG_CODEBOOK, _FLAG_FIXED = 1, 2, 4, 8, 16
_HEADER_FIELDS = {1: (7,), 2: (7, 8), 3: (7, 8, 9)}


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


@dataclass(frozen=True)
class Compression:
    """How a parametrized weight is stored: pruned, quant bits (0 = as is), codebook, group size and
    the quantizer's fixed scales (None: derived from the weight)."""

    pruned: bool = False
    qbits: int = 0
    codebook: bool = False
    group_size: int = 0
    scales: Tensor | None = None


def _compression(model: nn.Module) -> dict[str, Compression]:
    """{"<module>.weight": Compression} for every parametrized weight."""
    found: dict[str, Compression] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if weight_parametrizations(module):
            book = weight_codebook(module)
            fq = weight_quantizer(module)
            bits = book.bits if book is not None else weight_bits(module)
            found[f"{name}.weight" if name else "weight"] = Compression(
                weight_mask(module) is not None,
                0 if bits == 32 else bits,
                book is not None,
                0 if fq is None else fq.group_size,
                None if fq is None or fq.scales is None else fq.scales.detach().cpu(),
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
    group_size: int = 0
    scales: Tensor | None = None  # fixed scales (out, groups); None: derived from the tensor

    @property
    def grouped(self) -> bool:
        """Whether the entry needs format version 3 (a group size or fixed scales)."""
        return bool(self.group_size) or self.scales is not None


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
        c = compression.get(name, Compression())
        flags = (
            _FLAG_PARAM * isinstance(tensor, nn.Parameter)
            + _FLAG_GRAD * tensor.requires_grad
            + _FLAG_MASKED * c.pruned
            + _FLAG_CODEBOOK * c.codebook
            + _FLAG_FIXED * (c.scales is not None)
        )
        stored.append(Stored(name, tensor, c.qbits, c.codebook, flags, c.group_size, c.scales))
    return Layout(stream.getvalue(), tuple(stored))


def header_entry(s: Stored, enc: codec.Sized, version: int = VERSION) -> list:
    """The tensor's header entry: [shape, dtype, quant bits, flags, encoding, k, count(, coded)], and in
    version 3 the group size of a grouped entry ([..., coded or [], group])."""
    if version >= GROUPED_VERSION and s.group_size:
        return header_entry(s, enc, VERSION)[:7] + [list(enc.coded), s.group_size]
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


def version_of(tensors: tuple[Stored, ...]) -> int:
    """The format version a file of these tensors is written in: 3 only where one needs it."""
    return GROUPED_VERSION if any(s.grouped for s in tensors) else VERSION


def frame(header: list, skeleton: bytes, version: int = VERSION) -> bytes:
    """Everything in front of the payloads: magic, version, the deflated header and skeleton."""
    head = framing.deflate(json.dumps(header, separators=(",", ":")).encode())
    skel = framing.deflate(skeleton)
    return b"".join([MAGIC, bytes([version]), framing.varint(len(head)), head, framing.varint(len(skel)), skel])


def encode(s: Stored, where: str, use_entropy: bool = True) -> codec.Encoded:
    try:
        return codec.encode_tensor(
            s.tensor,
            s.qbits,
            s.name,
            use_entropy=use_entropy,
            codebook=s.codebook,
            group_size=s.group_size,
            scales=s.scales,
        )
    except PackError as exc:
        raise PackError(f"{where}: {exc}") from None


def _pack(model: nn.Module, where: str, use_entropy: bool = True) -> tuple[bytes, list[PackedTensor]]:
    found = layout(model, where)
    version = version_of(found.tensors)
    header, parts, report = [], [], []
    for s in found.tensors:
        enc = encode(s, where, use_entropy)
        header.append(header_entry(s, enc.sized, version))
        parts.append(enc.payload)
        report.append(packed_tensor(s, enc.sized))
    return b"".join([frame(header, found.skeleton, version), *parts]), report


def pack(model: nn.Module, *, entropy: bool = True) -> tuple[bytes, list[PackedTensor]]:
    """The packed artifact of `model` as bytes, and what each stored tensor costs; `entropy=False`
    stores every stream fixed-width (for comparison: the file a fixed-width packer writes)."""
    return _pack(model, "pack()", entropy)


def save_packed(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Write the packed artifact of `model` to `path`; returns its exact size in bytes."""
    if not isinstance(path, (str, os.PathLike)):
        raise PackError(f"save_packed: path={path!r}; give the file to write, e.g. 'model.ashz'.")
    data, _ = _pack(model, str(path))
    write_atomically(path, data, "packed model", PackError)
    return len(data)
