"""evaluate(model, task, policy) -> Measurement: apply, fine-tune, measure. Pure and picklable.

This is what an executor runs for one candidate: no Optuna, no Ray, plain inputs and outputs.
"""
from __future__ import annotations

from torch import Tensor, nn

from .measure import LatencyConfig, Measurement, measure
from .policy import Policy
from .task import Task
from .techniques import ApplyReport, apply_policy_with_report
from .train import FinetuneConfig, finetune


def compress(
    model: nn.Module,
    policy: Policy,
    *,
    task: Task | None = None,
    finetune_config: FinetuneConfig | None = None,
    example_input: Tensor | None = None,
) -> tuple[nn.Module, ApplyReport]:
    """Apply `policy` to a copy of `model` and, given a task, fine-tune it (distilling from `model`
    when the policy says so): the compressed model that `evaluate` measures and `apply_recipe`
    returns. `example_input` (default: the task's) traces the model for structured pruning. A
    policy that changes no layer is not fine-tuned: that would not be "no compression"."""
    x = example_input if example_input is not None or task is None else task.example_input
    cfg = finetune_config or FinetuneConfig(steps=0)
    small, report = apply_policy_with_report(model, policy, example_input=x)
    if task is not None and cfg.steps and policy.active():
        finetune(small, task, config=cfg, teacher=model if policy.distill else None)
    return small, report


def evaluate(
    model: nn.Module,
    task: Task,
    policy: Policy,
    *,
    finetune_config: FinetuneConfig | None = None,
    latency: LatencyConfig | None = None,
    runtime: str = "auto",
) -> Measurement:
    """Compress a copy of `model` by `policy`, fine-tune it (distilling from `model` when the
    policy says so) and measure it. `model` is not modified. A policy that changes no layer is
    measured as is: fine-tuning the untouched model would not be "no compression"."""
    small, report = compress(model, policy, task=task, finetune_config=finetune_config)
    return measure(small, task, runtime=runtime, latency=latency, skipped=report.lines())
