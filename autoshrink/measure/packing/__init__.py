"""Packed model artifacts (.ashz): the exact bytes behind every reported `size_bytes`."""

from __future__ import annotations

from .container import PackedTensor, pack, save_packed
from .sizing import packed_size
from .unpack import load_packed

__all__ = ["PackedTensor", "load_packed", "pack", "packed_size", "save_packed"]
