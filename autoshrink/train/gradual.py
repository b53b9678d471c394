"""Gradual magnitude pruning during fine-tuning (Zhu & Gupta 2017, the schedule of SparseML GMP / NNI AGP).

Update k = 0 .. U (U = FinetuneConfig.ramp_updates) happens at step ceil(k * R / U), R = round(ramp *
steps), and sets each pruned layer to f_k = 1 - (1 - k / U)^3 of its final sparsity; masks are recomputed
by magnitude of the masked weights (a pruned entry stays pruned), frozen after step R, and end at exactly
the one-shot count. Structured targets (a `StructuredPlan` from a one-shot dry run) lose round(n * f_k) of
their n channels at the same updates, by group magnitude; a round changes parameter shapes, so the
caller rebuilds its optimizer (`update` says so).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import TrainingError
from ..policy import LayerPolicy
from ..techniques.layers import weight_layers
from ..techniques.prune import prune_smallest, semi_structured_mask
from ..techniques.quantize import quantize_layer
from ..techniques.structured import StructuredPrune
from ..weights import PruneMask, add_mask, unparametrize, weight_parametrizations
from .config import FinetuneConfig


def update_schedule(steps: int, ramp: float, updates: int) -> list[tuple[int, float]]:
    """The (step, share of the final sparsity) pairs at which masks are recomputed.

    Steps are ceil(k * R / U) for k = 0 .. U with R = round(ramp * steps); when two updates fall on
    one step only the later one is kept. R = 0 gives [(0, 1.0)]: one-shot at the first step.
    """
    r = int(round(ramp * steps))
    if r <= 0:
        return [(0, 1.0)]
    points: dict[int, float] = {}
    for k in range(updates + 1):
        points[math.ceil(k * r / updates)] = 1.0 - (1.0 - k / updates) ** 3
    return sorted(points.items())


def ramp_fraction(step: int, steps: int, ramp: float, updates: int) -> float:
    """Share of the final sparsity in force at `step` (the last update at or before it)."""
    share = 0.0
    for at, f in update_schedule(steps, ramp, updates):
        if at <= step:
            share = f
    return share


@dataclass(frozen=True)
class StructuredPlan:
    """What gradual structured pruning needs: channels to remove in all per target (from a one-shot
    dry run of the same policy), the policy's layers (to re-attach masks and quantization after a
    round) and the input that traces the model."""

    removals: Mapping[str, int]
    layers: Mapping[str, LayerPolicy]
    example_input: Tensor


def _original(module: nn.Module) -> Tensor:
    return module.parametrizations["weight"].original  # type: ignore[index]


def _prune_mask(module: nn.Module) -> PruneMask | None:
    for p in weight_parametrizations(module):
        if isinstance(p, PruneMask):
            return p
    return None


class GradualPruning:
    """Moves a model's pruning masks (and planned structured channels) along the cubic ramp.

    Without a plan the targets are read off the masks the model carries (from `apply_policy`): each
    layer ends with as many zeros as its mask has now. With a plan they come from the policy.
    """

    def __init__(self, model: nn.Module, config: FinetuneConfig, plan: StructuredPlan | None = None) -> None:
        self.schedule = dict(update_schedule(config.steps, config.ramp, config.ramp_updates))
        self.plan = plan
        self.initial = {name: _channels(model, name) for name in (plan.removals if plan else {})}
        self.sparsity: dict[int, float] = {}  # id(leaf layer) -> final unstructured sparsity
        if plan is None:
            for m in model.modules():
                pm = _prune_mask(m)
                if pm is not None and not pm.pattern:  # a 2:4 mask holds from the start: no ramp keeps it 2:4
                    self.sparsity[id(m)] = float((~pm.mask).sum()) / pm.mask.numel()
        else:
            for name, lp in plan.layers.items():
                leaves = weight_layers(model.get_submodule(name))
                if lp.sparsity > 0 and not lp.structured and not lp.pattern and isinstance(leaves, list):
                    self.sparsity.update({id(leaf): lp.sparsity for leaf in leaves})

    def update(self, model: nn.Module, step: int) -> bool:
        """Apply the update due at `step`, if any. True when parameters were replaced (a structured
        round): the optimizer must then be rebuilt for `model.parameters()`."""
        share = self.schedule.get(step)
        if share is None:
            return False
        due: dict[str, int] = {}
        if self.plan is not None:
            for name, n in self.plan.removals.items():
                k = int(round(n * share)) - (self.initial[name] - _channels(model, name))
                if k > 0:
                    due[name] = k
        if due:
            self._structured_round(model, due)
        self._set_masks(model, share)
        return bool(due)

    def _set_masks(self, model: nn.Module, share: float) -> None:
        with torch.no_grad():
            for m in model.modules():
                pm = _prune_mask(m)
                if pm is None or id(m) not in self.sparsity:
                    continue
                final = int(round(self.sparsity[id(m)] * pm.mask.numel()))
                pm.mask.copy_(prune_smallest(_original(m) * pm.mask, int(round(final * share))))

    def _structured_round(self, model: nn.Module, due: dict[str, int]) -> None:
        """Remove `due` more channels per target; masks come back dense (set by _set_masks next) and
        quantization is re-attached."""
        assert self.plan is not None
        unparametrize(model)
        context = {"example_input": self.plan.example_input, "structured_counts": due}
        skipped = StructuredPrune().apply(model, {name: self.plan.layers[name] for name in due}, context)
        if skipped:
            raise TrainingError(
                "gradual structured pruning: a round could not remove the channels the one-shot "
                "dry run removed: " + "; ".join(map(str, skipped)) + ". Fix: use schedule='oneshot' for this policy."
            )
        for name, lp in self.plan.layers.items():
            leaves = weight_layers(model.get_submodule(name))
            for leaf in leaves if isinstance(leaves, list) else []:
                if id(leaf) in self.sparsity:
                    add_mask(leaf, torch.ones_like(leaf.weight, dtype=torch.bool))
                elif lp.semi_structured and not lp.structured:
                    add_mask(leaf, _semi_structured_again(leaf, name), pattern=lp.pattern)
                quantize_layer(leaf, lp)


def _semi_structured_again(leaf: nn.Module, name: str) -> Tensor:
    """A 2:4 layer's mask after a structured round changed its inputs: 2:4 again, by magnitude."""
    inputs = leaf.weight[0].numel()
    if inputs % 4:
        raise TrainingError(
            f"gradual structured pruning: {name} is 2:4 sparse, and a round left its rows {inputs} weights long, "
            "which cannot hold the pattern. Fix: use schedule='oneshot' for this policy."
        )
    return semi_structured_mask(leaf.weight.abs())


def _channels(model: nn.Module, name: str) -> int:
    """Output channels of a structured target (the `.second` factor of a low-rank pair)."""
    module = model.get_submodule(name)
    layer = getattr(module, "second", module)
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
