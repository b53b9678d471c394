"""Apply a policy's BlockPolicies: remove attention heads and FFN neurons of transformer blocks.

Every block's heads and neurons are ranked on the model as given (before any removal), by the block's
criterion ("activation" on the calibration batches, or "magnitude"; transformer_blocks.py says how),
and the lowest round(fraction * count) go -- at least one head and one neuron stay. Ranking on the
untouched model makes the ranks of one block independent of what other blocks lose, so a search can
keep them (`StatsCache.importance`) across candidates. The removal comes before every per-layer
technique: those act on the smaller layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..errors import PolicyError
from ..policy import BlockPolicy
from .calibration import Batches, StatsCache
from .transformer_blocks import (
    Block,
    find_blocks,
    head_importance,
    lowest,
    neuron_importance,
    remove_heads,
    remove_neurons,
)


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


def _importance(
    model: nn.Module,
    block: Block,
    kind: str,
    bp: BlockPolicy,
    calibration: Batches | None,
    cache: StatsCache | None,
) -> Tensor:
    batches = calibration if bp.criterion == "activation" else None
    key = (kind, block.name, bp.criterion, getattr(batches, "key", None) if batches else None)
    if cache is not None and key in cache.importance:
        return cache.importance[key]
    fn = head_importance if kind == "heads" else neuron_importance
    score = fn(model, block, None if batches is None else batches())
    if cache is not None:
        cache.importance[key] = score
    return score


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
        raise PolicyError(
            f"blocks.{needs[0]}: criterion 'activation' ranks heads and neurons on calibration batches, and no "
            "data was given. Fix: pass task=<your Task>, or use criterion 'magnitude'."
        )
    plans = {}
    for name, bp in active.items():
        block = found[name]
        heads = lowest(_importance(model, block, "heads", bp, calibration, cache), bp.heads) if bp.heads else []
        neurons = lowest(_importance(model, block, "neurons", bp, calibration, cache), bp.neurons) if bp.neurons else []
        plans[name] = (heads, neurons)
    report = {}
    for name, (heads, neurons) in plans.items():
        block = found[name]
        before = (block.heads, block.neurons)
        if heads:
            block = remove_heads(model, block, heads)
        if neurons:
            block = remove_neurons(model, block, neurons)
        report[name] = {"heads": (before[0], block.heads), "neurons": (before[1], block.neurons)}
    return report
