"""Budgeted fine-tuning that keeps masks and quantization in force (they are parametrizations)."""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..errors import TaskError, TrainingError
from ..task import Task, iterate_batches
from .config import FinetuneConfig
from .distill import distillation_loss


def _endless(task: Task, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        empty = True
        for batch in iterate_batches(task.train_data, task.batch_size, shuffle=True, generator=generator):
            empty = False
            yield batch
        if empty:
            raise TaskError("Task.train_data is empty; fine-tuning needs at least one example (or use steps=0).")


def _optimizer(cfg: FinetuneConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _logits(output: Any, where: str) -> Tensor:
    if isinstance(output, Tensor):
        return output
    raise TrainingError(f"{where}: the model returned {type(output).__name__}; fine-tuning needs a tensor output (logits).")


def finetune(
    model: nn.Module,
    task: Task,
    *,
    steps: int | None = None,
    teacher: nn.Module | None = None,
    seed: int | None = None,
    config: FinetuneConfig | None = None,
    **settings: Any,
) -> nn.Module:
    """Fine-tune `model` in place for a fixed budget of steps and return it (in eval mode).

    Masks and quantization applied by `apply_policy` stay in force: the optimizer updates the
    underlying float weights, the forward always uses the pruned/quantized values. With a
    `teacher` (usually the uncompressed model) the loss adds distillation. Other settings (lr,
    optimizer, weight_decay, alpha, temperature) as in FinetuneConfig.
    """
    base = config or FinetuneConfig()
    overrides = dict(settings)
    if steps is not None:
        overrides["steps"] = steps
    if seed is not None:
        overrides["seed"] = seed
    cfg = FinetuneConfig.from_dict({**base.to_dict(), **overrides})
    if cfg.steps == 0:
        return model.eval()
    device = task.torch_device
    model.to(device)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("finetune: the model has no trainable parameters; nothing to fine-tune (use steps=0).")
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    opt = _optimizer(cfg, params)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / cfg.steps)))
    loss_fn = task.loss_fn()
    batches = _endless(task, generator)
    model.train()
    try:
        for step in range(cfg.steps):
            x, y = next(batches)
            x, y = x.to(device), y.to(device)
            out = _logits(model(x), "finetune")
            loss = loss_fn(out, y)
            if teacher is not None and cfg.alpha > 0:
                with torch.no_grad():
                    t_out = _logits(teacher(x), "finetune (teacher)")
                loss = distillation_loss(out, t_out, loss, alpha=cfg.alpha, temperature=cfg.temperature)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"finetune step {step}: the loss is {loss.item()}; training diverged. "
                    f"Fix: lower lr (now {cfg.lr}) or check the data and the loss for NaN/inf."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        model.eval()
    return model
