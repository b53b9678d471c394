"""The task metric on a split of the task (eval_data unless told), with per-example correctness for the
accuracy metric (the paired intervals of measure/paired.py need it)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import TaskError
from ..inputs import forward, to_device
from ..task import Task, iterate_batches, subset


def evaluate_metric(model: nn.Module, task: Task, device: torch.device | None = None) -> float:
    """Task metric of `model` on task.eval_data (model put in eval mode, no gradients)."""
    return score(model, task, device)[0]


def score(
    model: nn.Module,
    task: Task,
    device: torch.device | None = None,
    split: str = "eval",
    indices: Sequence[int] | None = None,
) -> tuple[float, np.ndarray | None]:
    """(task metric, per-example correctness or None for a metric callable) of `model` on the task's
    `split`: "eval" (the selection split) or "test" (the held-out one); `indices`: only those examples
    of it (the accuracy metric only)."""
    device = device or task.torch_device
    data = task.eval_data if split == "eval" else task.test_data
    if data is None:
        raise TaskError("Task.test_data: this task has no held-out split; give test_data= or holdout=.")
    if indices is not None:
        if callable(task.metric):
            raise TaskError("score: a subsample needs the accuracy metric (a metric callable reads its loader).")
        data = subset(data, indices)
    model.eval()
    hits: np.ndarray | None = None
    if callable(task.metric):
        loader = task.eval_loader() if split == "eval" else task.test_loader()
        with torch.no_grad():
            value = float(task.metric(model, loader, device))
    else:
        parts = []
        with torch.inference_mode():
            for x, y in iterate_batches(data, task.batch_size):
                out = forward(model, to_device(x, device), "metric 'accuracy'")
                parts.append((out.argmax(dim=-1).cpu() == y.view(-1)).numpy())
        hits = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
        value = float(hits.sum()) / len(hits)
    if not math.isfinite(value):
        raise TaskError(f"the task metric returned {value}; it must be a finite number (higher is better).")
    return value, hits
