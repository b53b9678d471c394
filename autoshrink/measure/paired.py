"""Per-example correctness and the paired interval of an accuracy drop.

Baseline and candidate are scored on the same examples, so their difference is paired: only the
discordant examples (b: the baseline right and the candidate wrong; c: the reverse) carry it. The
drop is (b - c) / n and its 95 % interval the Wald interval with McNemar's variance,
(b + c - (b - c)^2 / n) / n^2 -- the textbook interval of a difference of paired proportions.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


def pack_correct(correct: np.ndarray) -> str:
    """Per-example correctness (booleans, in data order) as base64 of its packed bits."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


def unpack_correct(text: str, n: int) -> np.ndarray:
    """The booleans `pack_correct` stored for `n` examples."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))
    if len(bits) < n or len(bits) >= n + 8:
        raise ValueError(f"per-example record holds {len(bits)} bits, not {n} examples")
    return bits[:n].astype(bool)


@dataclass(frozen=True)
class PairedDrop:
    """An accuracy drop (baseline minus candidate, a fraction) with its interval over `n` examples."""

    drop: float
    low: float
    high: float
    n: int
    worse: int  # b: right before, wrong after
    better: int  # c: wrong before, right after

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def z_of(confidence: float) -> float:
    """The two-sided normal quantile of `confidence` (0.95 -> 1.95996...)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r}; use a probability in (0, 1), e.g. 0.95")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def paired_drop(baseline: np.ndarray, candidate: np.ndarray, confidence: float = 0.95) -> PairedDrop:
    """The drop of `candidate` against `baseline` (per-example correctness on the same examples)."""
    base, cand = np.asarray(baseline, dtype=bool), np.asarray(candidate, dtype=bool)
    if base.shape != cand.shape or base.ndim != 1 or not len(base):
        raise ValueError(f"paired_drop needs two records of the same examples, got {base.shape} and {cand.shape}")
    n = len(base)
    b = int(np.sum(base & ~cand))
    c = int(np.sum(~base & cand))
    drop = (b - c) / n
    var = max(0.0, (b + c - (b - c) ** 2 / n)) / n**2
    half = z_of(confidence) * math.sqrt(var)
    return PairedDrop(drop=drop, low=drop - half, high=drop + half, n=n, worse=b, better=c)


def paired(
    baseline: str | None, candidate: str | None, n_base: int | None, n_cand: int | None, confidence: float = 0.95
) -> PairedDrop | None:
    """`paired_drop` of two stored records (`pack_correct`), or None where either is missing or they
    count different examples (a custom metric, a study measured before per-example records)."""
    if not baseline or not candidate or not n_base or n_base != n_cand:
        return None
    return paired_drop(unpack_correct(baseline, n_base), unpack_correct(candidate, n_cand), confidence)
