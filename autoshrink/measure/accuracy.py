"""The task metric on eval_data."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import TaskError
from ..task import Task, iterate_batches


def evaluate_metric(model: nn.Module, task: Task, device: torch.device | None = None) -> float:
    """Task metric of `model` on task.eval_data (model put in eval mode, no gradients)."""
    device = device or task.torch_device
    model.eval()
    if callable(task.metric):
        with torch.no_grad():
            value = float(task.metric(model, task.eval_loader(), device))
    else:
        correct = total = 0
        with torch.inference_mode():
            for x, y in iterate_batches(task.eval_data, task.batch_size):
                out = model(x.to(device))
                if not isinstance(out, torch.Tensor):
                    raise TaskError(
                        f"metric 'accuracy': the model returned {type(out).__name__}, not a logits tensor; "
                        "pass a metric callable."
                    )
                correct += int((out.argmax(dim=-1).cpu() == y.view(-1)).sum())
                total += int(y.numel())
        value = correct / total
    if not math.isfinite(value):
        raise TaskError(f"the task metric returned {value}; it must be a finite number (higher is better).")
    return value
