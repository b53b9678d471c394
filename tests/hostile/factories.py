"""Model and task factories the hostile-input corpus names in its study configs and commands."""

from __future__ import annotations

import torch
from torch import nn

import autoshrink as ash

from ..search.conftest import Tiny  # 8x8 inputs -> 10 classes: the layers of the recipe fixture's model


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Tiny().eval()


def _data(n: int = 64, classes: int = 10, shape: tuple[int, ...] = (1, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def task() -> ash.Task:
    x, y = _data()
    return ash.Task(train_data=(x, y), eval_data=(x, y), example_input=x[:1], device="cpu")


def wrong_shape_task() -> ash.Task:
    x, y = _data()
    return ash.Task(train_data=(x, y), eval_data=(x, y), example_input=torch.rand(1, 3, 5, 5), device="cpu")


def empty_batch_task() -> ash.Task:
    x, y = _data()
    return ash.Task(train_data=(x, y), eval_data=(x, y), example_input=x[:0], device="cpu")


def labels_out_of_range_task() -> ash.Task:
    x, y = _data(classes=13)
    y[0] = 12
    return ash.Task(train_data=(x, y), eval_data=(x, y), example_input=x[:1], device="cpu")


def raises(kind: str = "cnn") -> nn.Module:
    raise ValueError(f"no model of kind {kind!r}")


def exits() -> nn.Module:
    raise SystemExit(4)


def returns_int() -> int:
    return 42


NOT_CALLABLE = 3
