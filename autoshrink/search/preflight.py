"""Checks a search makes before it creates anything (a folder, a database, a study attribute): the
study name and seed, the model on the example input, and the labels against the model's outputs.
A request that fails here leaves no trace on disk."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..errors import ConfigError, TaskError
from ..task import Task

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: Any) -> str:
    """A study name is also a file name (studies/<name>.db): letters, digits, '.', '_', '-'."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(
            f"search: study_name={name!r}; use 1-128 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit (it names the study database file)."
        )
    return name


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"search: seed={seed!r}; use an integer in [0, 2^32).")
    return seed


def check_model_on_task(model: nn.Module, task: Task) -> None:
    """One forward pass of `model` on `task.example_input` (on the model's device, eval mode, no
    gradient; every module's mode is restored); with the accuracy metric, every label of (X, y)
    data must index an output."""
    x = task.example_input
    if x.dim() == 0 or x.shape[0] == 0:
        raise TaskError(
            f"Task.example_input: shape {list(x.shape)} holds no example; give one batch of at least "
            "one input (its first dimension is the batch)."
        )
    modes = [(m, m.training) for m in model.modules()]  # restored exactly, mixed modes included
    device = next(model.parameters(), torch.empty(0)).device
    try:
        with torch.no_grad():
            out = model.eval()(x.to(device))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model cannot run the input: say so, with its words
        text = " ".join(str(exc).split())[:300]
        raise TaskError(
            f"Task.example_input: the model cannot run it (shape {list(x.shape)}, {x.dtype}): "
            f"{type(exc).__name__}: {text}. Fix: give a batch shaped as the model's input."
        ) from None
    finally:
        for m, mode in modes:
            m.training = mode
    if task.metric != "accuracy" or not isinstance(out, torch.Tensor) or out.dim() != 2:
        return
    classes = out.shape[1]
    for field in ("train_data", "eval_data"):
        data = getattr(task, field)
        if not isinstance(data, TensorDataset) or len(data.tensors) != 2:
            continue
        y = data.tensors[1]
        if y.dtype.is_floating_point or y.dim() != 1 or not y.numel():
            continue
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= classes:
            raise TaskError(
                f"Task.{field}: labels span {low}..{high}, but the model outputs {classes} classes "
                f"(labels 0..{classes - 1}); fix the labels or the model's last layer."
            )
