"""Apply a policy's BlockPolicies: remove attention heads and FFN neurons of transformer blocks.

Every block's heads and neurons are ranked on the model as given (before any removal), by the block's
criterion ("activation" on the calibration batches, or "magnitude"; transformer_blocks.py says how),
and the lowest round(fraction * count) go -- at least one head and one neuron stay. Ranking on the
untouched model makes the ranks of one block independent of what other blocks lose, so a search can
keep them (`StatsCache.importance`) across candidates. The removal comes before every per-layer
technique: those act on the smaller layers. With `refit`, the out / down projections of a block that
lost heads / neurons are then refitted by least squares to the untouched block's outputs on the
calibration batches (block_refit.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..errors import PolicyError
from ..policy import BlockPolicy
from .block_importance import block_importance, lowest
from .block_refit import head_columns, refit_stats, refit_weights, set_linear
from .calibration import Batches, StatsCache
from .transformer_blocks import Block, find_blocks, remove_heads, remove_neurons


def check_blocks(model: nn.Module, blocks: Mapping[str, BlockPolicy]) -> dict[str, Block]:
    """The recognized blocks the policy names (name -> Block); a PolicyError naming the others."""
    found = {b.name: b for b in find_blocks(model)}
    missing = [n for n in blocks if n not in found]
    if missing:
        known = ", ".join(list(found)[:8]) + (" ..." if len(found) > 8 else "") if found else "none"
        raise PolicyError(
            f"blocks.{missing[0]}: not a transformer block of {type(model).__name__} that autoshrink recognizes "
            f"(attention with query/key/value and a head count, plus an FFN pair); recognized: {known}. "
            "Fix: use those names, or drop the blocks entry."
        )
    return {n: found[n] for n in blocks}


def _importances(
    model: nn.Module,
    blocks: Mapping[str, Block],
    criterion: str,
    calibration: Batches | None,
    cache: StatsCache | None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """(head, neuron) importance of the named blocks by `criterion`: from `cache` where it has them, the
    rest in one pass over the calibration batches (every recognized block at once where there is a
    cache, so a search pays one pass in all), kept in `cache`."""
    source = getattr(calibration, "key", None) if criterion == "activation" else None
    key = lambda name: ("block-importance", name, criterion, source)  # noqa: E731
    out = {n: cache.importance[key(n)] for n in blocks if cache is not None and key(n) in cache.importance}
    missing = [n for n in blocks if n not in out]
    if missing:
        every = find_blocks(model) if cache is not None else [blocks[n] for n in missing]
        batches = calibration() if criterion == "activation" and calibration is not None else None
        computed = block_importance(model, every, batches)
        if cache is not None:
            for name, scores in computed.items():
                cache.importance[key(name)] = scores
        out.update({n: computed[n] for n in missing})
    return out


def remove_block_units(
    model: nn.Module,
    blocks: Mapping[str, BlockPolicy],
    *,
    calibration: Batches | None = None,
    cache: StatsCache | None = None,
) -> dict[str, dict[str, Any]]:
    """Remove, in place, the heads and neurons `blocks` asks for (see the module docstring); returns
    block name -> {"heads": (before, after), "neurons": (before, after)} for the blocks changed."""
    active = {n: bp for n, bp in blocks.items() if not bp.is_identity}
    if not active:
        return {}
    found = check_blocks(model, active)
    needs = [n for n, bp in active.items() if bp.calibrated]
    if needs and calibration is None:
        what = (
            "criterion 'activation' ranks heads and neurons"
            if active[needs[0]].criterion == "activation"
            else "refit fits the out and down projections"
        )
        raise PolicyError(
            f"blocks.{needs[0]}: {what} on calibration batches, and no data was given. "
            "Fix: pass task=<your Task>, or use criterion 'magnitude' without refit."
        )
    scores: dict[str, tuple[Tensor, Tensor]] = {}
    for criterion in sorted({bp.criterion for bp in active.values()}):
        chosen = {n: found[n] for n, bp in active.items() if bp.criterion == criterion}
        scores.update(_importances(model, chosen, criterion, calibration, cache))
    plans = {}
    for name, bp in active.items():
        heads = lowest(scores[name][0], bp.heads) if bp.heads else []
        neurons = lowest(scores[name][1], bp.neurons) if bp.neurons else []
        plans[name] = (heads, neurons)
    refits = _refits(model, found, active, plans, calibration, cache)
    report = {}
    for name, (heads, neurons) in plans.items():
        block = found[name]
        before = (block.heads, block.neurons)
        if heads:
            block = remove_heads(model, block, heads)
        if neurons:
            block = remove_neurons(model, block, neurons)
        report[name] = {"heads": (before[0], block.heads), "neurons": (before[1], block.neurons)}
    for layer, (weight, bias) in refits.items():
        set_linear(model, layer, weight, bias)
    return report


def _refits(
    model: nn.Module,
    found: Mapping[str, Block],
    active: Mapping[str, BlockPolicy],
    plans: Mapping[str, tuple[list[int], list[int]]],
    calibration: Batches | None,
    cache: StatsCache | None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Layer name -> its refitted (weight, bias) (block_refit.py) for the out / down projections of the
    blocks with `refit` that lose heads / neurons, computed on the model before any removal."""
    wanted: dict[str, list[int]] = {}
    for name, bp in active.items():
        heads, neurons = plans[name]
        block = found[name]
        if bp.refit and heads:
            wanted[block.out] = head_columns(block, heads)
        if bp.refit and neurons:
            gone = set(neurons)
            wanted[block.down] = [j for j in range(block.neurons) if j not in gone]
    if not wanted or calibration is None:
        return {}
    every = [layer for b in (find_blocks(model) if cache is not None else found.values()) for layer in (b.out, b.down)]
    stats = refit_stats(model, every if cache is not None else list(wanted), calibration, cache)
    out = {}
    for layer, keep in wanted.items():
        linear = model.get_submodule(layer)
        out[layer] = refit_weights(linear.weight, linear.bias, stats[layer], keep)
    return out
