"""What the sensitivity pre-pass can afford: a share of the search's budget, spent on the most telling choices.

The budget is PREPASS_SHARE of the search's: of `timeout` where the search has one, of what its
trials are expected to cost (n_trials x an estimated trial) where it has a trial count, the smaller
where it has both, unbounded where it has neither. A choice is estimated at the baseline evaluation's
seconds without its packing (a choice re-encodes one tensor), plus a forward pass over the
calibration examples for a calibrated variant; a trial at a choice plus its fine-tune, each step
TRAIN_STEP_FORWARDS forward passes of a batch. These estimates only size the pre-pass; what it spent
is measured and stored (wall_s, eval_s).

Where the selection split has at least SUBSAMPLE_FROM examples (and the metric is accuracy), each row
is scored on a fixed draw of PREPASS_EXAMPLES of them and its drop is against the untouched model on
the same draw (prepass_examples): a row then costs its evaluation's share less, and its drop carries
the sampling noise of 1,000 paired examples (benchmarks/prepass_budget.py measures it against the
whole split). The trials are always scored on the whole split.

When the choices cost more than the budget:
1. repeated layers share: layers whose names differ only in their block index (group_key), of one
   type and weight shape (the blocks of a transformer, a layer's repeats across ResNet stages), are
   measured on the first of them and its rows copied to the others (each copy says `shared_from`);
2. if that is still too much, each measured layer's most aggressive value of each field goes first
   (the fewest bits, the lowest rank, the highest sparsity: where it is harmless the milder ones are
   too), then the next, while the budget lasts; the rest are skipped (never narrowed away; the warm
   start bounds a skipped choice by the nearest more aggressive one measured);
3. if the budget cannot pay for one choice per layer group, the pre-pass is skipped.
The plan is sized on estimates; the pre-pass itself stops when its budget's seconds are spent (the
choice running then finishes; aggressive values ran first, so the milder ones are what is left out).
The plan is stored with the table (user attribute "sensitivity", key "plan") and the report says
what was shared and skipped, and why. A short search so never waits longer for its pre-pass than a
third of what its trials take (plus one choice).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ...measure import Measurement
from ...measure.paired import unpack_correct
from ...policy import sparsity_fraction
from ...task import Task, subsample_indices
from ...techniques.calibration import CALIBRATION_EXAMPLES
from ...train import FinetuneConfig
from .sensitivity import Choice1

PREPASS_SHARE = 0.25
PREPASS_EXAMPLES = 1000  # selection-split examples a pre-pass row scores where the split has SUBSAMPLE_FROM
SUBSAMPLE_FROM = 2000
TRAIN_STEP_FORWARDS = 3.0
_MILD_LAST = {"bits": False, "rank": False, "sparsity": True, "structured": True}  # descending = aggressive first


@dataclass(frozen=True)
class PrepassPlan:
    """Which choices the pre-pass measures, which it copies from another layer's, which it skips."""

    measured: list[Choice1]
    copies: list[tuple[Choice1, Choice1]] = field(default_factory=list)  # (the layer's choice, the measured one)
    skipped: list[Choice1] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def estimates(
    baseline: Measurement, ft: FinetuneConfig, examples: int, batch_size: int, scored: int | None = None
) -> tuple[float, float, float]:
    """(seconds of a choice scored on `scored` of the `examples` (default all), of such a calibrated
    choice, of a trial) estimated from the baseline's cost split."""
    cost = baseline.cost or {}
    evaluate = float(cost.get("evaluate", 0.0))
    per_example = evaluate / max(examples, 1)
    whole = max(1e-3, sum(float(v) for k, v in cost.items() if k != "pack"))
    choice = max(1e-3, whole - per_example * (examples - (examples if scored is None else scored)))
    calibrated = choice + per_example * CALIBRATION_EXAMPLES
    trial = whole + ft.steps * TRAIN_STEP_FORWARDS * per_example * batch_size
    return choice, calibrated, trial


def prepass_examples(task: Task) -> tuple[int, ...] | None:
    """The selection-split examples the pre-pass scores: PREPASS_EXAMPLES of them (a fixed draw) where
    the split has at least SUBSAMPLE_FROM and the metric is accuracy; else None, all of them."""
    total = len(task.eval_data)
    if callable(task.metric) or total < SUBSAMPLE_FROM:
        return None
    return subsample_indices(total, PREPASS_EXAMPLES)


def subsample_accuracy(baseline: Measurement, indices: Sequence[int]) -> float:
    """The baseline's accuracy on `indices` of the selection split (from its per-example record)."""
    hits = unpack_correct(baseline.correct, baseline.examples)
    return float(hits[list(indices)].mean())


def budget_seconds(timeout: float | None, n_trials: int | None, trial_s: float) -> float | None:
    """PREPASS_SHARE of the timeout, or of the whole when the trials take n_trials x trial_s; None: unbounded."""
    found = []
    if timeout is not None:
        found.append(PREPASS_SHARE * timeout)
    if n_trials is not None:
        found.append(PREPASS_SHARE / (1 - PREPASS_SHARE) * n_trials * trial_s)
    return min(found) if found else None


def group_key(name: str, module: nn.Module) -> tuple[Any, ...]:
    """Layers with the same key are repeats of one another: the name with its block index masked (the
    first all-digit part, a ModuleList index, else the first number: "encoder.layer.#.attention.self.query",
    "layer#.conv1"), the type and the weight's shape."""
    parts = name.split(".")
    index = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    if index is not None:
        masked = ".".join("#" if i == index else p for i, p in enumerate(parts))
    else:
        masked = re.sub(r"\d+", "#", name, count=1)
    weight = getattr(module, "weight", None)
    return masked, type(module).__name__, tuple(weight.shape) if weight is not None else ()


def plan_prepass(
    items: Sequence[Choice1],
    model: nn.Module,
    budget_s: float | None,
    choice_s: float,
    calibrated_s: float,
) -> PrepassPlan:
    """Measure everything the budget pays for (see the module docstring)."""
    cost = {id(c): calibrated_s if _calibrated(c) else choice_s for c in items}
    total_s = sum(cost.values())
    info: dict[str, Any] = {
        "choices": len(items),
        "budget_s": None if budget_s is None else round(budget_s, 3),
        "estimated_choice_s": round(choice_s, 4),
        "estimated_all_s": round(total_s, 3),
    }
    if budget_s is None or total_s <= budget_s:
        return PrepassPlan(list(items), info={**info, "measured": len(items), "shared": 0, "skipped": 0})
    groups: dict[tuple[Any, ...], str] = {}
    first: dict[str, str] = {}  # layer -> the layer measured for it
    for name in dict.fromkeys(c.layer for c in items):
        first[name] = groups.setdefault(group_key(name, model.get_submodule(name)), name)
    own = [c for c in items if first[c.layer] == c.layer]
    by_value = {(c.layer, c.field, c.value): c for c in own}
    copies = [(c, by_value[(first[c.layer], c.field, c.value)]) for c in items if first[c.layer] != c.layer]
    order = _aggressive_first(own)
    chosen: list[Choice1] = []
    spent = 0.0
    for c in order:
        if spent + cost[id(c)] > budget_s:
            break
        chosen.append(c)
        spent += cost[id(c)]
    leads = {(c.layer, c.field) for c in own}
    if len({(c.layer, c.field) for c in chosen}) < len(leads):
        why = (
            f"the budget ({budget_s:.1f} s, {PREPASS_SHARE:.0%} of the search's) pays for "
            f"{len(chosen)} of {len(items)} choices, fewer than one per layer group and field ({len(leads)}): "
            "pre-pass skipped"
        )
        return PrepassPlan([], [], list(items), {**info, "measured": 0, "shared": 0, "skipped": len(items), "why": why})
    kept = {id(c) for c in chosen}
    measured_keys = {(c.layer, c.field, c.value) for c in chosen}
    copies = [(c, rep) for c, rep in copies if (rep.layer, rep.field, rep.value) in measured_keys]
    skipped = [c for c in own if id(c) not in kept]
    skipped += [
        c for c in items if first[c.layer] != c.layer and (first[c.layer], c.field, c.value) not in measured_keys
    ]
    why = (
        f"the budget ({budget_s:.1f} s, {PREPASS_SHARE:.0%} of the search's) is below the estimated "
        f"{total_s:.1f} s for all {len(items)} choices: {len(copies)} shared from a repeated layer, "
        f"{len(skipped)} skipped (milder values of a field measured at a more aggressive one)"
    )
    return PrepassPlan(
        chosen,
        copies,
        skipped,
        {**info, "measured": len(chosen), "shared": len(copies), "skipped": len(skipped), "why": why},
    )


def stopped_at_budget(info: dict[str, Any], unmeasured: int, uncopied: int, wall_s: float) -> dict[str, Any]:
    """The plan's counts and reason once the pre-pass stopped at its budget with `unmeasured` planned
    choices not measured (and `uncopied` copies of them not made): those count as skipped."""
    why = (
        f"it stopped at its budget ({info['budget_s']:.1f} s) after {wall_s:.1f} s with {unmeasured} planned "
        f"choices not measured (the estimates were low)"
    )
    return {
        "measured": info["measured"] - unmeasured,
        "shared": info["shared"] - uncopied,
        "skipped": info["skipped"] + unmeasured + uncopied,
        "stopped": unmeasured,
        "why": f"{info['why']}; {why}" if info.get("why") else why,
    }


def _calibrated(c: Choice1) -> bool:
    return c.policy().layers[c.layer].calibrated


def _aggressiveness(c: Choice1) -> tuple[float, bool]:
    """Sort key of a choice's value; "2:4" sits just past sparsity 0.5 (the same count, fewer ways)."""
    return (sparsity_fraction(c.value), True) if isinstance(c.value, str) else (c.value, False)


def _aggressive_first(own: Sequence[Choice1]) -> list[Choice1]:
    """Level 0: each (layer, field)'s most aggressive value; level 1: the next; ... (layers in order)."""
    lanes: dict[tuple[str, str], list[Choice1]] = {}
    for c in own:
        lanes.setdefault((c.layer, c.field), []).append(c)
    for key, lane in lanes.items():
        lane.sort(key=_aggressiveness, reverse=_MILD_LAST[key[1]])
    out: list[Choice1] = []
    for level in range(max((len(v) for v in lanes.values()), default=0)):
        out += [lane[level] for lane in lanes.values() if level < len(lane)]
    return out


def shared_row(row: dict[str, Any], layer: str) -> dict[str, Any]:
    """A measured row copied to a repeat of its layer (its per-layer timings are the other layer's: dropped)."""
    out = {k: v for k, v in row.items() if k != "layer_latency_ms"}
    return {**out, "layer": layer, "shared_from": row["layer"]}


def enqueue_room(n_trials: int | None, timeout: float | None, trial_s: float, prepass_s: float) -> int | None:
    """How many trials the baselines and warm start may take: n_trials without a timeout; with one, half
    the trials it is expected to leave (at most n_trials), so that the sampler proposes at least half."""
    if timeout is None:
        return n_trials
    expected = expected_trials(None, timeout, trial_s, prepass_s) or 0
    if n_trials is not None:
        expected = min(expected, n_trials)
    return expected // 2


def expected_trials(n_trials: int | None, timeout: float | None, trial_s: float, prepass_s: float) -> int | None:
    """How many trials the search will run: n_trials, or what the timeout leaves after the pre-pass."""
    if n_trials is not None:
        return n_trials
    if timeout is None:
        return None
    return max(0, math.floor((timeout - prepass_s) / max(trial_s, 1e-3)))
