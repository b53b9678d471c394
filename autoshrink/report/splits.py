"""How the data splits read in text: the example counts of the selection and held-out splits, and a
drop's paired interval in pp (the CLI and the HTML report say them alike)."""

from __future__ import annotations

from ..search.result import SearchResult


def interval(low: float, high: float) -> str:
    """A drop's interval in pp, "[a, b]"; "-" where there is none."""
    if low != low or high != high:  # NaN: no per-example records
        return "-"
    return f"[{low * 100:.2f}, {high * 100:.2f}]"


def splits_line(result: SearchResult) -> str:
    """How many examples each split has and what one example is worth in pp (one line)."""
    b = result.baseline
    parts = []
    if b.examples:
        parts.append(f"selection split {b.examples} examples (1 = {100 / b.examples:.3g} pp)")
    held = result.held_out(None)
    if held is not None:
        parts.append(f"held-out split {held.examples} examples (1 = {100 / held.examples:.3g} pp)")
    elif b.examples:
        parts.append("no held-out split: every accuracy here is on the split the search chose on (optimistic)")
    return "; ".join(parts)
