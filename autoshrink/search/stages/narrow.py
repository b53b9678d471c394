"""Narrowed space: per layer, drop the choices that alone already cost too much accuracy.

The cutoff is on the sensitivity table's drop (no fine-tune, so it overstates the final drop and only
catastrophic choices go): max(NARROW_FACTOR * max_accuracy_drop, NARROW_FLOOR) (max_accuracy_drop 1 pp
without one), or `narrow_cutoff`. Removed where a row exceeds the cutoff or failed alone: a bit-width or
rank value; a sparsity level when its unstructured and (if offered) structured rows both exceed it;
`structured: true` when the structured rows at every remaining level do. Leaving a layer alone is never
removed. What was removed and why: user attribute "narrowed", shown in the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...policy import SEMI_STRUCTURED
from ...space import BoundSpace
from ...space.schema import IDENTITY, value_key

NARROW_FACTOR = 20.0
NARROW_FLOOR = 0.35


def narrow_cutoff(max_accuracy_drop: float | None, override: float | None = None) -> float:
    """The drop (fraction) above which a single choice is removed (see the module docstring)."""
    if override is not None:
        return float(override)
    return max(NARROW_FACTOR * (0.01 if max_accuracy_drop is None else max_accuracy_drop), NARROW_FLOOR)


def _bad(r: Mapping[str, Any], cutoff: float) -> str | None:
    """Why a table row disqualifies its choice, or None."""
    if r.get("error"):
        return f"failed when applied alone ({r['error']})"
    drop = r.get("accuracy_drop")
    if drop is not None and drop > cutoff:
        return f"alone it costs {drop * 100:.2f} pp (> cutoff {cutoff * 100:.2f} pp)"
    return None


def narrow(bound: BoundSpace, rows: Sequence[Mapping[str, Any]], cutoff: float) -> tuple[BoundSpace, list[dict]]:
    """The narrowed space and the removed choices: [{layer, field, value, accuracy_drop, reason}]."""
    by: dict[tuple[str, str, Any], Mapping[str, Any]] = {
        (r["layer"], r["field"], value_key(r["value"])): r for r in rows
    }
    keep: dict[str, dict[str, tuple]] = {}
    removed: list[dict[str, Any]] = []

    def note(layer: str, field: str, value: Any, reason: str, r: Mapping[str, Any] | None) -> None:
        removed.append(
            {
                "layer": layer,
                "field": field,
                "value": value,
                "reason": reason,
                "accuracy_drop": None if r is None else r.get("accuracy_drop"),
            }
        )

    for layer, fields in bound.layers.items():
        new: dict[str, tuple] = {}
        for f in ("bits", "rank"):
            values = []
            for v in fields[f].values:
                r = by.get((layer, f, value_key(v)))
                why = None if v == IDENTITY[f] or r is None else _bad(r, cutoff)
                if why:
                    note(layer, f, v, why, r)
                else:
                    values.append(v)
            new[f] = tuple(values)
        structured_offered = True in fields["structured"].values
        unstructured_offered = False in fields["structured"].values
        sparsity = []
        for s in fields["sparsity"].values:
            if s == 0.0:
                sparsity.append(s)
                continue
            ru, rs = by.get((layer, "sparsity", s)), by.get((layer, "structured", s))
            why_u = _bad(ru, cutoff) if ru is not None else None
            why_s = _bad(rs, cutoff) if rs is not None else None
            if s == SEMI_STRUCTURED:  # never structured: its own row decides
                unstructured, structured = True, False
            else:
                unstructured, structured = unstructured_offered, structured_offered
            if (not unstructured or why_u) and (not structured or why_s):
                note(layer, "sparsity", s, why_u or why_s or "", ru or rs)
            else:
                sparsity.append(s)
        new["sparsity"] = tuple(sparsity)
        if structured_offered and unstructured_offered:
            fine = [
                s
                for s in sparsity
                if s != 0
                and s != SEMI_STRUCTURED
                and by.get((layer, "structured", s)) is not None
                and not _bad(by[(layer, "structured", s)], cutoff)
            ]
            if not fine and len(sparsity) > 1:
                note(
                    layer,
                    "structured",
                    True,
                    f"structured pruning exceeds the cutoff {cutoff * 100:.2f} pp at every remaining sparsity level",
                    None,
                )
                new["structured"] = (False,)
        keep[layer] = new
    return bound.restricted(keep), removed
