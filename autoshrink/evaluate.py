"""evaluate(model, task, policy) -> Measurement: apply, fine-tune, measure. Pure and picklable.

This is what an executor runs for one candidate: no Optuna, no Ray, plain inputs and outputs.
"""
from __future__ import annotations

from torch import nn

from .measure import LatencyConfig, Measurement, measure
from .policy import Policy
from .task import Task
from .techniques import apply_policy_with_report
from .train import FinetuneConfig, finetune


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
    cfg = finetune_config or FinetuneConfig(steps=0)
    small, report = apply_policy_with_report(model, policy, example_input=task.example_input)
    if cfg.steps and policy.active():
        finetune(small, task, config=cfg, teacher=model if policy.distill else None)
    return measure(small, task, runtime=runtime, latency=latency, skipped=report.lines())
