"""Packed model artifacts (.ashz): the exact bytes behind every reported `size_bytes`."""

from __future__ import annotations

from .container import PackedTensor, load_packed, pack, save_packed
from .sizing import packed_size

__all__ = ["PackedTensor", "load_packed", "pack", "packed_size", "save_packed"]
