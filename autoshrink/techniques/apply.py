"""Apply a Policy to a copy of a model, technique by technique in the fixed order.

Order: low-rank -> structured pruning -> calibration statistics (for calibrated choices) ->
unstructured pruning -> quantization. The caller's model is never modified. Layers a technique
cannot handle are reported (ApplyReport.skipped) and warned about, never a crash; a policy naming a
module the model does not have is an error.
"""

from __future__ import annotations

import copy
import difflib
import warnings
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..errors import PolicyError, describe
from ..inputs import is_mapping
from ..policy import Policy
from ..task import Task
from .block_removal import check_blocks, remove_block_units
from .calibration import Batches, StatsCache, calibration_inputs
from .registry import Skipped, techniques


def task_calibration(task: Any, seed: int = 0) -> Batches:
    """The calibration inputs of a Task: CALIBRATION_EXAMPLES training examples, the first in the order
    `seed` shuffles them (a search's seed; recipes replay it)."""
    if not isinstance(task, Task):
        raise PolicyError(f"apply_policy: task must be an autoshrink.Task, got {type(task).__name__}.")
    return calibration_inputs(task.train_data, task.batch_size, seed=seed)


class CompressionWarning(UserWarning):
    """Some layers of a policy could not be compressed as asked (see the message)."""


@dataclass(frozen=True)
class ApplyReport:
    """What apply did beyond the policy: skipped layers and structural notes."""

    skipped: tuple[Skipped, ...] = ()
    notes: tuple[str, ...] = ()
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)
    factorized: tuple[str, ...] = ()
    calibration_s: float = 0.0  # seconds spent collecting calibration statistics
    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)  # block -> {heads/neurons: (before, after)}

    def lines(self) -> list[str]:
        return [str(s) for s in self.skipped] + list(self.notes)

    @property
    def restructured(self) -> bool:
        """Whether channels were removed or layers factorized (BatchNorm statistics are then stale)."""
        return bool(self.channels) or bool(self.factorized) or bool(self.blocks)


def check_layer_names(model: nn.Module, policy: Policy) -> None:
    """Raise PolicyError listing every policy key that names no module of `model`."""
    names = [n for n, _ in model.named_modules() if n]
    known = set(names)
    missing = [n for n in policy.layers if n not in known]
    if not missing:
        return
    parts = []
    for n in missing:
        close = difflib.get_close_matches(n, names, n=3)
        parts.append(f"{n!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
    shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
    raise PolicyError(
        f"policy names {len(missing)} layer(s) the model does not have: {'; '.join(parts)}. "
        f"Model layers: {shown}. Fix: use names from model.named_modules()."
    )


def apply_policy_with_report(
    model: nn.Module,
    policy: Policy,
    *,
    example_input: Tensor | None = None,
    calibration: Batches | None = None,
    calibration_cache: StatsCache | None = None,
) -> tuple[nn.Module, ApplyReport]:
    """Like `apply_policy`, also returning the ApplyReport; `calibration`: a fresh pass over the
    calibration inputs each call (calibration.calibration_inputs); `calibration_cache`: statistics kept
    across calls on this same, unchanged `model` (a search's executors pass one)."""
    if not isinstance(model, nn.Module):
        raise PolicyError(f"apply_policy: model must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(policy, Policy):
        raise PolicyError(f"apply_policy: policy must be an autoshrink.Policy, got {type(policy).__name__}.")
    if example_input is not None and not (isinstance(example_input, Tensor) or is_mapping(example_input)):
        raise PolicyError(
            f"apply_policy: example_input={describe(example_input, 80)}; give one input batch as a tensor or "
            "a mapping of named tensors (or a task, whose example_input is used)."
        )
    check_layer_names(model, policy)
    structured = [n for n, lp in policy.layers.items() if lp.structured and lp.sparsity > 0]
    if structured and example_input is None:
        raise PolicyError(
            f"policy asks for structured pruning of {', '.join(structured)}, which needs the model traced: "
            "pass example_input=<one input batch> (or use a Task)."
        )
    calibrated = [n for n, lp in policy.layers.items() if lp.calibrated]
    if calibrated and calibration is None:
        lp = policy.layers[calibrated[0]]
        what = f"rounding {lp.rounding!r}" if lp.rounding == "gptq" else f"criterion {lp.criterion!r}"
        more = f" (and {len(calibrated) - 1} more layer(s))" if len(calibrated) > 1 else ""
        raise PolicyError(
            f"layers.{calibrated[0]}: {what} calibrates on the layer's inputs{more}, and no data was given. "
            "Fix: pass task=<your Task> (its training batches calibrate), or use "
            "rounding 'nearest' and criterion 'magnitude'."
        )
    if policy.active_blocks():
        check_blocks(model, policy.active_blocks())
    small = copy.deepcopy(model)
    blocks = remove_block_units(small, policy.blocks, calibration=calibration, cache=calibration_cache)
    context: dict[str, Any] = {
        "example_input": example_input,
        "calibration": calibration,
        "calibration_cache": calibration_cache,
        "structure_key": structure_key(policy),
    }
    skipped: list[Skipped] = []
    for technique in techniques():
        targets = {n: lp for n, lp in policy.layers.items() if technique.selects(lp)}
        if targets:
            skipped.extend(technique.apply(small, targets, context))
    report = ApplyReport(
        skipped=tuple(skipped),
        notes=tuple(context.get("structured_notes", ())),
        channels=dict(context.get("structured", {})),
        factorized=tuple(context.get("factorized", ())),
        calibration_s=float(context.get("calibration_s", 0.0)),
        blocks=blocks,
    )
    return small, report


def structure_key(policy: Policy) -> tuple[tuple[str, float, str, float], ...]:
    """The choices applied before calibration (low-rank, structured pruning and how it ranks channels):
    what, besides the untouched model and the calibration inputs, a layer's calibration statistics
    depend on. Blocks losing heads or neurons change every later layer's inputs: they are in it too."""
    layers = [
        (name, lp.sparsity, lp.criterion, lp.rank) if lp.structured else (name, 0.0, "", lp.rank)
        for name, lp in policy.layers.items()
        if (lp.structured and lp.sparsity > 0) or lp.rank < 1.0
    ]
    blocks = [
        (name, bp.heads, f"block:{bp.criterion}{':refit' if bp.refit else ''}", bp.neurons)
        for name, bp in policy.active_blocks().items()
    ]
    return tuple(sorted(layers + blocks))


def apply_policy(
    model: nn.Module, policy: Policy, *, example_input: Tensor | None = None, task: Any = None
) -> nn.Module:
    """Return a compressed copy of `model` following `policy`; `model` is left untouched.

    Low-rank layers are replaced by two factors, structured pruning makes layers physically
    smaller (needs `example_input`, default the task's), unstructured pruning masks entries and
    quantization simulates integer codes; masks and quantization stay in force through `finetune`.
    Calibrated choices (rounding "gptq", criterion "wanda" / "sparsegpt") read the layers' inputs on
    the `task`'s first CALIBRATION_EXAMPLES training examples; without a task they are refused.
    Layers a technique cannot handle are skipped with a CompressionWarning that lists them.
    Transformer blocks (`policy.blocks`) lose their heads and FFN neurons first (block_removal.py).
    """
    if task is not None and example_input is None:
        example_input = task.example_input
    small, report = apply_policy_with_report(
        model, policy, example_input=example_input, calibration=None if task is None else task_calibration(task)
    )
    if report.skipped:
        warnings.warn(
            "some layers were not compressed as asked: " + "; ".join(map(str, report.skipped)),
            CompressionWarning,
            stacklevel=2,
        )
    return small
