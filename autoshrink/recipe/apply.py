"""apply_recipe: check a model against a recipe's fingerprint, then replay its policy and fine-tune."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import RecipeError
from ..evaluate import compress
from ..inputs import batch_len, call, is_mapping, to_device
from ..measure import LatencyConfig, Measurement, measure
from ..measure.runtime import set_deploy_runtime
from ..policy import Policy
from ..task import Task
from ..task_check import check_task
from ..techniques import ApplyReport, CompressionWarning
from .fingerprint import Mismatch, compare, fingerprint, normalize, unwrap
from .recipe import Recipe


@dataclass(frozen=True)
class RecipeReport:
    """What apply_recipe did beyond the recipe: the model's mismatches against the fingerprint,
    the policy layers left alone because of them (strict=False), and the policy's ApplyReport."""

    mismatch: Mismatch
    not_applied: tuple[str, ...]
    applied: ApplyReport
    finetuned: bool

    def lines(self) -> list[str]:
        out = self.mismatch.lines(limit=1000)
        if self.not_applied:
            out.append(
                f"not applied to {len(self.not_applied)} layer(s) that do not fit: " + ", ".join(self.not_applied)
            )
        return out + self.applied.lines()


def _where(recipe: Recipe) -> str:
    return f"recipe {recipe.path}" if recipe.path else f"recipe of study {recipe.source.study!r} trial {recipe.trial}"


def _fitting_policy(target: nn.Module, recipe: Recipe, mismatch: Mismatch) -> tuple[Policy, tuple[str, ...]]:
    """The recipe's policy keyed by the target's own module names, without layers that do not fit."""
    actual = {normalize(n): n for n, _ in target.named_modules() if n}
    bad = mismatch.names()
    layers, left = {}, []
    for name, lp in recipe.policy.layers.items():
        key = normalize(name)
        if key in bad or key not in actual:
            left.append(name)
        else:
            layers[actual[key]] = lp
    blocks = {}
    for name, bp in recipe.policy.blocks.items():  # recognized by structure when applied (PolicyError otherwise)
        key = normalize(name)
        if key not in actual:
            left.append(name)
        else:
            blocks[actual[key]] = bp
    return Policy(layers=layers, distill=recipe.policy.distill, blocks=blocks), tuple(left)


def check_fits(model: nn.Module, recipe: Recipe, task: Task | None) -> None:
    """Before anything is compressed or written: the task fits the model (task_check), or without one
    the model runs zeros of the recorded example-input shape; a recorded int8 runtime needs an
    nn.Linear layer (its kernels run only those)."""
    if task is not None:
        check_task(model, task)
    else:
        x = recipe.example_input.zeros()
        modes = [(m, m.training) for m in model.modules()]
        try:
            with torch.no_grad():
                call(model.eval(), to_device(x, next(model.parameters(), torch.empty(0)).device))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - the model cannot run the recorded input: say so
            text = " ".join(str(exc).split())[:300]
            raise RecipeError(
                f"{_where(recipe)}: example_input: the model cannot run zeros of the recorded "
                f"{recipe.example_input.shown()}: {type(exc).__name__}: {text}. Fix: apply it to "
                "the model it was made for, or pass a task (CLI: --task) whose example_input fits the model."
            ) from None
        finally:
            for m, mode in modes:
                m.training = mode
    if recipe.measure_runtime in ("int8", "int8-full") and not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise RecipeError(
            f"{_where(recipe)}: metrics.runtime is {recipe.metrics.runtime!r}, whose int8 kernels run nn.Linear "
            f"layers, and {type(model).__name__} has none: its figures could not be reproduced. Fix: export the "
            "recipe again from a study of this model (its runtime is float)."
        )


def apply_recipe_with_report(
    model: nn.Module, recipe: Recipe | str | os.PathLike[str], task: Task | None = None, *, strict: bool = True
) -> tuple[nn.Module, RecipeReport]:
    """Like `apply_recipe`, also returning the RecipeReport."""
    if isinstance(recipe, (str, os.PathLike)):
        recipe = Recipe.load(recipe)
    if not isinstance(recipe, Recipe):
        raise RecipeError(f"apply_recipe: recipe must be an autoshrink.Recipe or a path, got {type(recipe).__name__}.")
    if not isinstance(model, nn.Module):
        raise RecipeError(f"apply_recipe: model must be a torch.nn.Module, got {type(model).__name__}.")
    if task is not None and not isinstance(task, Task):
        raise RecipeError(f"apply_recipe: task must be an autoshrink.Task or None, got {type(task).__name__}.")
    target = unwrap(model)
    mismatch = compare(recipe.model, fingerprint(target))
    if mismatch and strict:
        raise RecipeError(
            f"{_where(recipe)}: the model does not match the recipe's fingerprint ({recipe.model.model_class}): "
            + "; ".join(mismatch.lines())
            + ". Fix: apply it to the architecture it was made for (retrained "
            "weights are fine), or pass strict=False (CLI: --no-strict) to apply the policy to the layers that match."
        )
    check_fits(target, recipe, task)
    policy, left = _fitting_policy(target, recipe, mismatch)
    if task is not None and task.transform_name != recipe.train_transform and recipe.finetune.steps:
        warnings.warn(
            f"{_where(recipe)} was fine-tuned with train_transform {recipe.train_transform!r} but the task "
            f"has {task.transform_name!r}: the replayed fine-tune will not reproduce the recorded weights. "
            "Fix: give the task the same train_transform.",
            CompressionWarning,
            stacklevel=3,
        )
    distils = policy.distill and (recipe.finetune.alpha > 0 or recipe.finetune.hidden > 0)
    if task is not None and recipe.finetune.steps and distils and task.unlabeled_count != recipe.unlabeled:
        warnings.warn(
            f"{_where(recipe)} was fine-tuned distilling on {recipe.unlabeled or 0} unlabeled inputs but the task "
            f"has {task.unlabeled_count or 0}: the replayed fine-tune will not reproduce the recorded weights. "
            "Fix: give the task the same unlabeled_data.",
            CompressionWarning,
            stacklevel=3,
        )
    x = task.example_input if task is not None else recipe.example_input.zeros()
    small, applied = compress(
        target, policy, task=task, finetune_config=recipe.finetune, example_input=x, runtime=recipe.measure_runtime
    )
    set_deploy_runtime(small, recipe.measure_runtime)
    report = RecipeReport(
        mismatch, left, applied, finetuned=task is not None and recipe.finetune.steps > 0 and policy.changes_model
    )
    if mismatch:
        warnings.warn(
            f"{_where(recipe)} applied with strict=False to a model that does not match: " + "; ".join(report.lines()),
            CompressionWarning,
            stacklevel=3,
        )
    elif applied.skipped:
        warnings.warn(
            "some layers were not compressed as asked: " + "; ".join(map(str, applied.skipped)),
            CompressionWarning,
            stacklevel=3,
        )
    return small, report


def apply_recipe(
    model: nn.Module, recipe: Recipe | str | os.PathLike[str], task: Task | None = None, *, strict: bool = True
) -> nn.Module:
    """Replay `recipe` on `model` and return the compressed copy (`model` is untouched).

    The model must match the recipe's fingerprint (module names, types and parameter shapes;
    weights may differ, e.g. a retrained copy); `module.` / `_orig_mod.` wrapper prefixes are
    normalized and DDP / torch.compile wrappers are unwrapped (the result is the plain model). A
    mismatch raises RecipeError listing missing, extra and reshaped layers; `strict=False` applies
    the policy to the layers that fit and warns about the rest (see apply_recipe_with_report).
    With `task`, the recorded fine-tune runs with the recorded seed (distilling from `model` when
    the policy says so): on CPU the result is bitwise the weights the search measured. Without a
    task only the policy is applied, traced with zeros of the recorded example-input shape. The
    returned model remembers the recipe's runtime: `ash.measure(small, task)` measures on it, so it
    reproduces the recorded accuracy.
    """
    return apply_recipe_with_report(model, recipe, task, strict=strict)[0]


def _unmeasured(model: nn.Module, loader: object, device: torch.device) -> float:
    return 0.0  # placeholder metric of the task-less measurement; reported as NaN below


def measure_recipe(
    model: nn.Module, recipe: Recipe, task: Task | None = None, *, latency: LatencyConfig | None = None
) -> Measurement:
    """Measure a re-applied model comparably to the recipe: on the runtime the recipe recorded, on every
    split the task has (its held-out test_data too: test_accuracy).

    Without a task: size, MACs and latency on zeros of the recorded example-input shape; the
    accuracy is NaN (not measured)."""
    if task is not None:
        return measure(model, task, runtime=recipe.measure_runtime, latency=latency, test=True)
    x = recipe.example_input.zeros()
    batch = x if is_mapping(x) or x.dim() else x.reshape(1)
    data = (batch, torch.zeros(batch_len(batch), dtype=torch.long))
    zeros = Task(
        train_data=data,
        eval_data=data,
        example_input=x,
        metric=_unmeasured,
        device="cpu" if recipe.device == "cpu" else "auto",
    )
    return replace(measure(model, zeros, runtime=recipe.measure_runtime, latency=latency), accuracy=float("nan"))
