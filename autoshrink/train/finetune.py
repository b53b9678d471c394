"""Budgeted fine-tuning that keeps masks and quantization in force (they are parametrizations)."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import TaskError, TrainingError
from ..inputs import forward, to_device
from ..measure.runtime import deploy_runtime
from ..task import Task, apply_transform, iterate_batches, require_model_and_task
from ..techniques.transformer_blocks import find_blocks
from .activations import ActivationRounding, resolve
from .config import FinetuneConfig
from .distill import distillation_loss, kd_term
from .gradual import GradualPruning, StructuredPlan
from .hidden import block_outputs, hidden_term

EMPTY_TRAIN = "Task.train_data is empty; fine-tuning needs at least one example (or use steps=0)."


def _endless(task: Task, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        empty = True
        for batch in iterate_batches(task.train_data, task.batch_size, shuffle=True, generator=generator):
            empty = False
            yield batch
        if empty:
            raise TaskError(EMPTY_TRAIN)


def _batches(task: Task, generator: torch.Generator, distilling: bool) -> Iterator[tuple[Any, Tensor, bool]]:
    """Endless (inputs, targets, labelled) training batches: train_data's, and where a teacher distils and
    the task has unlabeled_data, its batches between them in proportion to the sizes (each pass over both
    in an order `generator` draws)."""
    if not distilling or task.unlabeled_data is None:
        for x, y in _endless(task, generator):
            yield x, y, True
        return
    size = task.batch_size
    while True:
        n_labelled = -(-len(task.train_data) // size)  # type: ignore[arg-type]
        if n_labelled == 0:
            raise TaskError(EMPTY_TRAIN)
        n_unlabeled = -(-len(task.unlabeled_data) // size)  # type: ignore[arg-type]
        order = (torch.randperm(n_labelled + n_unlabeled, generator=generator) < n_labelled).tolist()
        labelled = iterate_batches(task.train_data, size, shuffle=True, generator=generator)
        unlabeled = iterate_batches(task.unlabeled_data, size, shuffle=True, generator=generator)
        for is_labelled in order:
            x, y = next(labelled if is_labelled else unlabeled)
            yield x, y, is_labelled


def _optimizer(cfg: FinetuneConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _rebuild(cfg: FinetuneConfig, model: nn.Module, old: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """A new optimizer over the model's current parameters (a structured round replaced some); the
    state of the parameters that survived is carried over, the replaced ones start fresh."""
    params = _trainable(model)
    opt = _optimizer(cfg, params)
    for p in params:
        if p in old.state:
            opt.state[p] = old.state[p]
    return opt


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("finetune: the model has no trainable parameters; nothing to fine-tune (use steps=0).")
    return params


def _hidden_blocks(model: nn.Module, teacher: nn.Module | None, cfg: FinetuneConfig) -> list[str]:
    """The transformer blocks whose outputs the hidden-state term matches (none when it is off)."""
    if teacher is None or cfg.hidden == 0:
        return []
    names = [b.name for b in find_blocks(teacher)]
    if not names:
        raise TrainingError(
            f"finetune.hidden: {cfg.hidden} weighs a hidden-state term over transformer blocks, and the teacher "
            f"({type(teacher).__name__}) has none autoshrink recognizes. Fix: set hidden to 0."
        )
    known = {n for n, _ in model.named_modules()}
    missing = [n for n in names if n not in known]
    if missing:
        raise TrainingError(
            f"finetune.hidden: the student has no module {missing[0]!r}, a block of the teacher. Fix: distil "
            "from the model this one was compressed from, or set hidden to 0."
        )
    return names


@contextlib.contextmanager
def _frozen_teacher(teacher: nn.Module | None, device: torch.device) -> Iterator[nn.Module | None]:
    """The teacher in eval mode on `device`, never updated: a copy when it lives elsewhere (the
    caller's model is not moved), its own training flags restored afterwards."""
    if teacher is None:
        yield None
        return
    param = next(teacher.parameters(), None)
    if param is not None and param.device != device:
        teacher = copy.deepcopy(teacher).to(device)
    modes = [(m, m.training) for m in teacher.modules()]
    teacher.eval()
    try:
        yield teacher
    finally:
        for m, mode in modes:
            m.training = mode


def finetune(
    model: nn.Module,
    task: Task,
    *,
    steps: int | None = None,
    teacher: nn.Module | None = None,
    seed: int | None = None,
    schedule: str | None = None,
    config: FinetuneConfig | None = None,
    **settings: Any,
) -> nn.Module:
    """Fine-tune `model` in place for a fixed budget of steps and return it (in eval mode).

    Masks and quantization applied by `apply_policy` stay in force: the optimizer updates the
    underlying float weights, the forward always uses the pruned/quantized values. With a
    `teacher` (usually the uncompressed model, kept in eval mode and never updated) the loss adds
    distillation (alpha = 1: distillation only). `schedule="gradual"` starts from the dense weights
    and ramps every mask to the zero count it has now (see FinetuneConfig); channels that
    `apply_policy` already removed stay removed (search, `evaluate` and `apply_recipe` ramp those
    too). The task's `train_transform` augments every batch. With a teacher, the task's unlabeled_data
    adds batches whose loss is the distillation term alone (Task says how). Other settings (lr, optimizer,
    weight_decay, alpha, temperature, ramp, ramp_updates, activations: "auto" simulates the runtime recorded
    for `model`) as in FinetuneConfig.
    """
    require_model_and_task(model, task, "finetune")
    base = config or FinetuneConfig()
    overrides = dict(settings)
    for key, value in (("steps", steps), ("seed", seed), ("schedule", schedule)):
        if value is not None:
            overrides[key] = value
    cfg = FinetuneConfig.from_dict({**base.to_dict(), **overrides})
    return run_finetune(model, task, cfg, teacher=teacher)


def run_finetune(
    model: nn.Module,
    task: Task,
    cfg: FinetuneConfig,
    *,
    teacher: nn.Module | None = None,
    plan: StructuredPlan | None = None,
    runtime: str | None = None,
) -> nn.Module:
    """The fine-tune loop of `finetune`; `plan` adds gradual structured pruning (see train/gradual.py);
    `runtime` is what activations="auto" simulates (default: the model's recorded deploy runtime)."""
    if cfg.steps == 0:
        return model.eval()
    device = task.torch_device
    model.to(device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    pruning = GradualPruning(model, cfg, plan) if cfg.schedule == "gradual" else None
    if pruning is not None:
        pruning.update(model, 0)  # the dense start (or one-shot at step 0 when ramp = 0)
    rounding = ActivationRounding(resolve(cfg.activations, runtime or deploy_runtime(model)))
    opt = _optimizer(cfg, _trainable(model))
    loss_fn = task.loss_fn()
    model.train()
    blocks = _hidden_blocks(model, teacher, cfg)
    batches = _batches(task, generator, distilling=teacher is not None and (cfg.alpha > 0 or bool(blocks)))
    with (
        _frozen_teacher(teacher, device) as t_model,
        block_outputs(model, blocks) as s_hidden,
        contextlib.ExitStack() as stack,
    ):
        t_hidden = stack.enter_context(block_outputs(t_model, blocks)) if blocks and t_model is not None else {}
        try:
            rounding.attach(model)
            for step in range(cfg.steps):
                if pruning is not None and step and pruning.update(model, step):
                    opt = _rebuild(cfg, model, opt)
                    rounding.attach(model)  # the round replaced layers: hook the current ones
                    model.train()
                for group in opt.param_groups:  # cosine decay (what LambdaLR computes: base lr * factor)
                    group["lr"] = cfg.lr * (0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
                x, y, labelled = next(batches)
                x, y = apply_transform(task, to_device(x, device), y.to(device))
                out = forward(model, x, "finetune")
                if t_model is not None and (cfg.alpha > 0 or blocks):
                    with torch.no_grad():
                        t_out = forward(t_model, x, "finetune (teacher)")
                if not labelled:  # unlabeled_data: the teacher's outputs are the only targets
                    loss = kd_term(out, t_out, cfg.temperature) if cfg.alpha > 0 else out.new_zeros(())
                elif t_model is not None and cfg.alpha > 0:
                    if cfg.alpha == 1.0:  # distillation only: no label term at all
                        loss = kd_term(out, t_out, cfg.temperature)
                    else:
                        loss = distillation_loss(
                            out, t_out, loss_fn(out, y), alpha=cfg.alpha, temperature=cfg.temperature
                        )
                else:
                    loss = loss_fn(out, y)
                if blocks and t_model is not None:
                    loss = loss + cfg.hidden * hidden_term(s_hidden, t_hidden, x)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"finetune step {step}: the loss is {loss.item()}; training diverged. "
                        f"Fix: lower lr (now {cfg.lr}) or check the data and the loss for NaN/inf."
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            rounding.detach()
            model.eval()
    return model
