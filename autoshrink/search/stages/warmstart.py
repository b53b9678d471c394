"""Warm start: policies allocated from the sensitivity table for a sweep of budgets, enqueued after the
uniform baselines (marked `warm_start`) so that the search starts spread along the trade-off.

Per budget, one combination per layer minimizing the summed single-choice drops: a multiple-choice
knapsack by Lagrangian relaxation (lambda bisected to the smallest value that fits). Size: exact packed
bytes per layer; MACs / latency: savings compound, B * (1 - prod(1 - s_i / B)), and layers multiply their
shares (`log_shares`); a bit-width's latency counts on integer runtimes only, from BITS_LATENCY_FLOOR.
Pruned low-rank factors are left out (structured is kept where MACs / latency count). Budgets: up to
`count`, geometric per minimized objective. With `distill: [true, false]` each allocation runs twice.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ...measure import Measurement
from ...measure.packing.sizing import payload_bytes
from ...policy import SEMI_STRUCTURED
from ...space import BoundSpace
from ...space.schema import value_key
from ...techniques.lowrank import factor_params, svd_factors, target_rank
from ...techniques.prune import magnitude_mask, semi_structured_mask
from ...weights import quantize_value

BUDGETS_PER_OBJECTIVE = 6
MIN_SHARE = 0.01  # no layer's choice is predicted to leave less than 1 % of the model's MACs / latency
BITS_LATENCY_FLOOR = 0.02  # a bit-width's latency saving counts from 2 % of the baseline's latency (noise below)
_BITS_WIDTH = {16: 16, 32: 32}


@dataclass(frozen=True)
class Combo:
    """One layer's combination of choices and its predictions."""

    sparsity: float | str  # or "2:4"
    structured: bool
    bits: int
    rank: float
    drop: float
    bytes: float
    macs: float
    latency: float

    def params(self, layer: str, searched: set[str]) -> dict[str, Any]:
        values = {"sparsity": self.sparsity, "structured": self.structured, "bits": self.bits, "rank": self.rank}
        return {f"{layer}.{f}": v for f, v in values.items() if f"{layer}.{f}" in searched}


def _payload(weight: torch.Tensor, sparsity: float | str, bits: int) -> int:
    """Exact payload bytes of `weight` pruned by magnitude to `sparsity` ("2:4": that pattern, where rows
    hold it) and stored at `bits`: the packer's own encoding of it (layout and entropy coding included)."""
    if sparsity == SEMI_STRUCTURED:
        fits = weight[0].numel() % 4 == 0  # else the prune technique skips the layer
        mask = semi_structured_mask(weight.abs()) if fits else torch.ones_like(weight, dtype=torch.bool)
    else:
        mask = magnitude_mask(weight, sparsity)
    w = weight * mask.to(weight.dtype)
    if bits != 32:
        w = quantize_value(w, bits)
    return payload_bytes(w, 0 if bits == 32 else bits)


def _weights(module: nn.Module, rank: float) -> list[torch.Tensor] | None:
    """The weight tensor(s) a layer stores at this rank (two factors), or None where no saving."""
    w = module.weight.detach().float().cpu()
    if rank >= 1.0:
        return [w]
    shape = tuple(w.shape)
    k = target_rank(shape, rank)
    if factor_params(shape, k) >= w.numel() or not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        return None
    a, b = svd_factors(w, k)
    return [a, b]


def _rows(table: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, float], Mapping[str, Any]]:
    return {(r["layer"], r["field"], value_key(r["value"])): r for r in table}


_AGGRESSIVE_BELOW = {"bits": True, "rank": True, "sparsity": False, "structured": False}


def _bound(
    rows: Mapping[tuple[str, str, float], Mapping[str, Any]], layer: str, field: str, value: float
) -> float | None:
    """The drop of the mildest measured value of `field` on `layer` more aggressive than `value` (fewer
    bits, lower rank, higher sparsity): an upper bound where drops grow with aggressiveness; None if none."""
    below = _AGGRESSIVE_BELOW[field]
    found = [
        (v, r.get("accuracy_drop"))
        for (lay, f, v), r in rows.items()
        if lay == layer and f == field and not isinstance(v, str) and (v < value if below else v > value)
    ]
    found = [(v, d) for v, d in found if d is not None and math.isfinite(d)]
    if not found:
        return None
    return max(0.0, float((max(found) if below else min(found))[1]))


def compounded(savings: Sequence[float], base: float) -> float:
    """What choices applied together save of `base` when each removes its share of what the others left:
    base * (1 - prod(1 - s / base)), each share clipped to [-1, 1] (a negative saving, a choice that
    costs time, scales what is left up); the plain sum where base <= 0."""
    if not base > 0:
        return float(sum(savings))
    left = 1.0
    for s in savings:
        left *= 1.0 - min(1.0, max(-1.0, s / base))
    return base * (1.0 - left)


def layer_combos(
    model: nn.Module,
    bound: BoundSpace,
    table: Sequence[Mapping[str, Any]],
    baseline: Measurement,
    objectives: Sequence[str] = (),
) -> dict[str, list[Combo]]:
    """Every combination of each layer's choices with its predicted drop, bytes, MACs and latency;
    structured pruning of low-rank layers only where "macs" or "latency" is among `objectives`."""
    rows = _rows(table)
    compute = "macs" in objectives or "latency" in objectives
    integer_kernels = (baseline.runtime or "float") != "float"  # on "float" codes change no kernel: timing noise
    out: dict[str, list[Combo]] = {}
    for layer, fields in bound.layers.items():
        module = model.get_submodule(layer)
        if not hasattr(module, "weight") or module.weight is None:
            continue

        def row(field: str, value: Any, layer: str = layer) -> Mapping[str, Any]:
            return rows.get((layer, field, value_key(value)), {})

        def drop(field: str, value: Any, layer: str = layer) -> float | None:
            r = rows.get((layer, field, value_key(value)))
            if r is None:  # not measured (the pre-pass budget): bounded by a more aggressive value's drop
                return None if value == SEMI_STRUCTURED else _bound(rows, layer, field, float(value))
            d = r.get("accuracy_drop")
            return max(0.0, float(d)) if d is not None and math.isfinite(d) else 0.0

        def saved(field: str, value: Any, key: str) -> float:
            v = row(field, value).get(key)
            return max(0.0, float(v)) if v is not None and math.isfinite(v) else 0.0

        combos = []
        factors = {r: _weights(module, r) for r in fields["rank"].values}
        for s, structured, b, r in itertools.product(
            fields["sparsity"].values, fields["structured"].values, fields["bits"].values, fields["rank"].values
        ):
            if structured and s in (0.0, SEMI_STRUCTURED):
                continue  # the same as unstructured at 0; 2:4 is never structured
            if r < 1.0 and s != 0.0 and not (structured and compute):
                continue  # pruning low-rank factors compounds two losses the additive drop does not see
            if factors[r] is None:
                continue  # low-rank gives no saving here: the technique would skip it
            parts = [
                drop("structured" if structured else "sparsity", s) if s != 0.0 else 0.0,
                drop("bits", b) if b != 32 else 0.0,
                drop("rank", r) if r < 1 else 0.0,
            ]
            if any(p is None for p in parts):
                continue  # a choice neither measured nor bounded by a measured one: no prediction
            d = float(sum(parts))
            if structured:  # dense rows of the kept output channels (of the second factor where low-rank);
                width = _BITS_WIDTH.get(b, b)  # what the next layers lose is not counted
                *first, last = factors[r]
                kept = sum(t.numel() for t in first) + last.numel() * (1 - s)
                nbytes = kept * width / 8 + (2 * module.weight.shape[0] * (1 - s) if b <= 8 else 0)
            else:
                nbytes = float(sum(_payload(t, s, b) for t in factors[r]))
            chosen = ([("structured", s)] if structured else []) + ([("rank", r)] if r < 1 else [])
            macs = -compounded([saved(f, v, "macs_saved") for f, v in chosen], float(baseline.macs or 0))
            base_ms = float(baseline.latency_ms or 0)
            bits_ms = float(row("bits", b).get("latency_saved") or 0.0) if b != 32 and integer_kernels else 0.0
            bits_ms = bits_ms if math.isfinite(bits_ms) and abs(bits_ms) >= BITS_LATENCY_FLOOR * base_ms else 0.0
            lat = -compounded([saved(f, v, "latency_saved") for f, v in chosen] + [bits_ms], base_ms)
            combos.append(Combo(s, structured, b, r, d, nbytes, macs, lat))
        out[layer] = combos
    return out


def allocate(combos: Mapping[str, Sequence[Combo]], cost: str, budget: float) -> dict[str, Combo] | None:
    """Per layer, the combination minimizing the summed drop with summed `cost` <= `budget` (Lagrangian
    relaxation, bisected); None when even the cheapest combinations exceed the budget."""
    layers = list(combos)
    drops = [np.array([c.drop for c in combos[l]]) for l in layers]
    costs = [np.array([getattr(c, cost) for c in combos[l]], dtype=float) for l in layers]

    def pick(lam: float) -> tuple[list[int], float]:
        idx = [int(np.lexsort((c, d + lam * c))[0]) for d, c in zip(drops, costs)]
        return idx, float(sum(c[i] for c, i in zip(costs, idx)))

    cheapest = sum(float(c.min()) for c in costs)
    if cheapest > budget + 1e-9:
        return None
    idx, total = pick(0.0)
    if total > budget + 1e-9:
        lo, hi = 0.0, 1.0
        while pick(hi)[1] > budget + 1e-9:
            hi *= 4.0
            if hi > 1e30:  # the cheapest choices fit, lambda large enough selects them
                idx = [int(np.argmin(c)) for c in costs]
                return {l: combos[l][i] for l, i in zip(layers, idx)}
        for _ in range(60):
            mid = (lo + hi) / 2
            if pick(mid)[1] > budget + 1e-9:
                lo = mid
            else:
                hi = mid
        idx, total = pick(hi)
    return {l: combos[l][i] for l, i in zip(layers, idx)}


def log_shares(combos: Mapping[str, Sequence[Combo]], cost: str, base: float) -> dict[str, list[Combo]]:
    """Each combination's MACs or latency delta as the log of the share of `base` it leaves,
    log(1 + delta / base), the share clipped to [MIN_SHARE, 2]: summed over layers, exp of the sum is
    the predicted share of the whole model (`base` > 0) -- layers compound as choices within a layer do, and no
    allocation is predicted at or below zero (the plain sum of single-choice savings double-counts
    what two layers' choices both save, e.g. fc1's structured pruning and fc2's rank both shrinking
    fc2's GEMM, and can predict a negative latency)."""
    return {
        l: [
            dataclasses.replace(c, **{cost: math.log(min(2.0, max(MIN_SHARE, 1.0 + getattr(c, cost) / base)))})
            for c in cs
        ]
        for l, cs in combos.items()
    }


def budgets(lowest: float, top: float, n: int) -> list[float]:
    """n budgets, geometric from `lowest` to `top` (both inclusive)."""
    if n <= 0 or lowest >= top:
        return [top] if n > 0 else []
    ratio = (top / lowest) ** (1 / max(n - 1, 1))
    return [lowest * ratio**i for i in range(n)]


def warm_start_params(
    model: nn.Module,
    bound: BoundSpace,
    table: Sequence[Mapping[str, Any]],
    baseline: Measurement,
    objectives: Sequence[str],
    count: int,
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Up to `count` allocations as (params, description) pairs, deduplicated, spread over the objectives'
    budgets; each twice (distillation on, then off) where the space searches both."""
    combos = layer_combos(model, bound, table, baseline, objectives)
    combos = {l: c for l, c in combos.items() if c}
    if not combos or count <= 0:
        return []
    searched = {name for name, _ in bound.params()}
    weight_bytes = {l.name.rsplit(".weight", 1)[0]: l.bytes for l in baseline.layers}
    fixed = baseline.size_bytes - sum(weight_bytes.get(l, 0) for l in combos)
    plans: list[tuple[str, float]] = []  # (cost field, budget in the allocation's units)
    costs = {"bytes": float(baseline.size_bytes)}
    if "macs" in objectives and baseline.macs > 0:
        costs["macs"] = float(baseline.macs)
    if "latency" in objectives and baseline.latency_ms > 0:
        costs["latency"] = float(baseline.latency_ms)
    units = {cost: combos if cost == "bytes" else log_shares(combos, cost, base) for cost, base in costs.items()}

    def real(cost: str, total: float) -> float:  # an allocation's summed units -> bytes, MACs or ms
        return fixed + total if cost == "bytes" else costs[cost] * math.exp(total)

    per = max(1, math.ceil(count / len(costs)))
    for cost, base in costs.items():
        lowest = sum(min(getattr(c, cost) for c in cs) for cs in units[cost].values())
        free = sum(getattr(c, cost) for c in allocate(units[cost], cost, math.inf).values())
        if cost == "bytes":
            top = min(0.5 * base, fixed + free)
            plans += [(cost, b - fixed) for b in budgets(max(fixed + lowest, 1e-9), top, per)]
        elif real(cost, lowest) < 0.99 * base:  # else nothing in the space reduces it
            top = min(math.log(0.5), free)  # geometric in MACs / ms = even steps of the summed log shares
            plans += (
                [(cost, lowest + (top - lowest) * i / max(per - 1, 1)) for i in range(per)]
                if lowest < top
                else [(cost, top)]
            )
    out: list[tuple[dict[str, Any], dict[str, Any]]] = []
    seen: list[dict[str, Any]] = []
    for cost, b in plans:
        alloc = allocate(units[cost], cost, b)
        if alloc is None:
            continue
        params: dict[str, Any] = {}
        for layer, c in alloc.items():
            params.update(c.params(layer, searched))
        for name, choice in bound.params():  # distillation on where the space offers it
            params.setdefault(name, choice.nearest(True if name == "distill" else bound.untouched(name)))
        if params in seen:
            continue
        seen.append(params)
        label = {"bytes": "size", "macs": "MACs", "latency": "latency"}[cost]
        budget, total = real(cost, b), real(cost, sum(getattr(c, cost) for c in alloc.values()))
        what = {
            "budget": f"{label} <= {budget / costs[cost] * 100:.3g}% of the baseline",
            f"budget_{label.lower()}": round(budget, 6),
            "predicted_drop": round(sum(c.drop for c in alloc.values()), 6),
            f"predicted_{label.lower()}": round(total, 6),
        }
        out.append((params, what))
        if len(out) >= count:
            break
    return _both_distill(out, bound)


def _both_distill(
    out: list[tuple[dict[str, Any], dict[str, Any]]], bound: BoundSpace
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each allocation with distillation on, then off, where the space searches both (see the module docstring)."""
    choice = dict(bound.params()).get("distill")
    if choice is None or set(choice.values) != {True, False}:
        return out
    paired = []
    for i, (params, what) in enumerate(out):
        what = {**what, "allocation": i}  # the twins share it (loop.twin_verdict pairs them by it)
        paired.append((params, what))
        paired.append(({**params, "distill": not params["distill"]}, what))
    return paired
