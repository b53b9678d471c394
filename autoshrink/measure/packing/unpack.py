"""Loading a packed artifact (.ashz): bounds checked before anything is allocated, a restricted
unpickler for the skeleton, PruneMask / FakeQuant / Codebook re-attached (format: container.py)."""

from __future__ import annotations

import io
import json
import math
import os
import stat
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...errors import PackError
from ...weights import QUANT_BITS, add_codebook, add_fake_quant, add_mask
from . import codec, decode, framing, limits
from .container import _FLAG_CODEBOOK, _FLAG_FIXED, _FLAG_GRAD, _FLAG_MASKED, _FLAG_PARAM, _HEADER_FIELDS, MAGIC, READS
from .skeleton import RestrictedUnpickler, TrustedUnpickler


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
            and (len(e) == 7 or (isinstance(e[7], list) and (e[7] or len(e) == 9)))
            and (len(e) == 7 or all(type(c) is int for c in e[7]))
            and (len(e) < 9 or (type(e[8]) is int and e[8] > 0))
        ):
            raise _corrupt(where, f"header entry {i} is malformed")
        dtype = getattr(torch, e[1], None)
        if not isinstance(dtype, torch.dtype) or not 0 <= e[4] < len(codec.ENCODINGS):
            raise _corrupt(where, f"header entry {i} has dtype {e[1]!r}, encoding {e[4]}")
        parsed.append(
            (
                tuple(e[0]),
                dtype,
                e[2],
                e[3],
                codec.ENCODINGS[e[4]],
                e[5],
                e[6],
                tuple(e[7]) if len(e) >= 8 else (),
                e[8] if len(e) == 9 else 0,
            )
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
    fixed: dict[int, Tensor] = {}  # tensor index -> its stored scales, where they are fixed
    for i, (shape, dtype, qbits, flags, encoding, k, count, coded, group) in enumerate(header):
        try:
            book = bool(flags & _FLAG_CODEBOOK)
            size = codec.payload_size(shape, dtype, qbits, encoding, k, count, coded, book, group)
            if pos + size > len(data):
                raise PackError(f"tensor {i} needs {size} bytes, {len(data) - pos} are left")
            payload = memoryview(data)[pos : pos + size]
            tensor = decode.decode_tensor(payload, shape, dtype, qbits, encoding, k, count, coded, book, group)
            if flags & _FLAG_FIXED:
                if qbits not in QUANT_BITS or book:
                    raise PackError(f"fixed scales on a {qbits}-bit {'codebook ' if book else ''}tensor")
                fixed[i] = decode.read_scales(payload, shape, group)
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
    _reattach(model, header, tensors, fixed, where)
    return model


def _itemsize(dtype: torch.dtype) -> int:
    return max(1, torch.empty((), dtype=dtype).element_size())


def _reattach(model: nn.Module, header: list, tensors: list[Tensor], fixed: dict[int, Tensor], where: str) -> None:
    """Register PruneMask / FakeQuant (its group size and fixed scales) again on the weights that carried
    them when saved."""
    names: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), name)
    for i, (entry, tensor) in enumerate(zip(header, tensors)):
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
            add_fake_quant(module, qbits, entry[8], fixed.get(i))


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
