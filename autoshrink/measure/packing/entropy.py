"""Entropy coding of symbol streams (format version 2): ANS with a stored frequency table.

n symbols from an alphabet of A <= MAX_ALPHABET values are coded by `constriction`'s ANS stack coder
under a categorical model built from a frequency table stored in front of the code:
    varint lo | varint span | span varints: frequencies of symbols lo .. lo+span-1 | uint32 LE words
Frequencies: counts scaled to a precision P (largest = P, an occurring symbol >= 1), the P in PRECISIONS
minimizing table + estimated code. `bound` (empirical entropy) lets callers skip unshrinkable streams.
Decoding is exact; n is not stored (the header implies it), and a stream whose words are not consumed
exactly by n symbols is rejected.
"""

from __future__ import annotations

import numpy as np

from ...errors import PackError
from .framing import read_varint, varint

MAX_ALPHABET = 256
PRECISIONS = (15, 127, 1023, 16383)


def _model(freqs: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(freqs.astype(np.float64), perfect=False)


def _table(freqs: np.ndarray) -> bytes:
    used = np.flatnonzero(freqs)
    lo, hi = int(used[0]), int(used[-1])
    return varint(lo) + varint(hi - lo + 1) + b"".join(varint(int(f)) for f in freqs[lo : hi + 1])


def _code(symbols: np.ndarray, freqs: np.ndarray) -> bytes:
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), _model(freqs))
    return coder.get_compressed().astype("<u4").tobytes()


def encode(symbols: np.ndarray, alphabet: int) -> bytes | None:
    """The smallest entropy-coded stream of `symbols` (integers in [0, alphabet)), or None where
    the alphabet is too large or the stream empty."""
    if alphabet > MAX_ALPHABET or symbols.size == 0:
        return None
    counts = np.bincount(symbols.astype(np.int64), minlength=alphabet)
    if counts.size > alphabet:
        raise PackError(f"a symbol reaches {counts.size - 1}, outside its {alphabet}-symbol alphabet")
    best: tuple[float, np.ndarray] | None = None
    used = counts > 0
    for precision in PRECISIONS:
        freqs = np.where(used, np.maximum(1, np.round(counts * precision / counts.max())), 0).astype(np.int64)
        code_bits = -(counts[used] * np.log2(freqs[used] / freqs.sum())).sum()
        estimate = len(_table(freqs)) + code_bits / 8
        if best is None or estimate < best[0]:
            best = (estimate, freqs)
    return _table(best[1]) + _code(symbols, best[1])


def bound(symbols: np.ndarray, alphabet: int) -> float:
    """A lower bound on the bytes of any entropy code of `symbols` under one static model: n times the
    empirical entropy, in bytes (inf where `encode` would not code them)."""
    if alphabet > MAX_ALPHABET or symbols.size == 0:
        return float("inf")
    return bound_counts(np.bincount(symbols.astype(np.int64), minlength=alphabet))


def bound_counts(counts: np.ndarray) -> float:
    """`bound` of a stream given its symbol histogram (inf for an empty one)."""
    n = int(counts.sum())
    if n == 0:
        return float("inf")
    p = counts[counts > 0] / n
    return float(-(p * np.log2(p)).sum() * n / 8)


def decode(data: bytes | memoryview, n: int, alphabet: int) -> np.ndarray:
    """The n symbols (int64) of a stream `encode` wrote."""
    import constriction

    data = memoryview(data)
    lo, pos = read_varint(data, 0)
    span, pos = read_varint(data, pos)
    if span < 1 or lo + span > alphabet:
        raise PackError(f"an entropy table covers symbols {lo}..{lo + span - 1} of a {alphabet}-symbol alphabet")
    freqs = np.zeros(alphabet, np.int64)
    for i in range(span):
        freqs[lo + i], pos = read_varint(data, pos)
    if not freqs.any():
        raise PackError("an entropy table has no symbol with a nonzero frequency")
    words = data[pos:]
    if len(words) % 4:
        raise PackError(f"an entropy-coded stream holds {len(words)} code bytes, not whole 32-bit words")
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))
        symbols = np.asarray(coder.decode(_model(freqs), n), dtype=np.int64)
    except Exception as exc:  # noqa: BLE001 - the coder reports a corrupt stream in its own terms
        raise PackError(f"an entropy-coded stream does not decode: {exc}") from None
    if not coder.is_empty():
        raise PackError("an entropy-coded stream holds more code than its symbols use")
    return symbols
