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


def uint8_images_task() -> ash.Task:
    x, y = _data()
    x = (x * 255).to(torch.uint8)
    return ash.Task(train_data=(x, y), eval_data=(x, y), example_input=x[:1], device="cpu")


def mixed_dtype_task() -> ash.Task:
    x, y = _data()
    return ash.Task(train_data=(x.double(), y), eval_data=(x, y), example_input=x[:1], device="cpu")


def wrong_shape_data_task() -> ash.Task:
    x, y = _data()
    bad, _ = _data(shape=(1, 5, 5))
    return ash.Task(train_data=(x, y), eval_data=(bad, y), example_input=x[:1], device="cpu")


def float_labels_task() -> ash.Task:
    x, y = _data()
    return ash.Task(train_data=(x, y.float()), eval_data=(x, y), example_input=x[:1], device="cpu")


def _float_targets(loss: str) -> ash.Task:
    """Class ids given as float targets, with a metric callable (the accuracy check aside)."""
    x, y = _data()
    return ash.Task(
        train_data=(x, y.float()),
        eval_data=(x, y.float()),
        example_input=x[:1],
        metric=lambda model, loader, device: 0.5,
        loss=loss,
        device="cpu",
    )


def mse_on_class_ids_task() -> ash.Task:
    return _float_targets("mse")


def cross_entropy_on_floats_task() -> ash.Task:
    return _float_targets("cross_entropy")


def nan_inputs_task() -> ash.Task:
    x, y = _data()
    x[3, 0, 0, 0] = float("nan")
    return ash.Task(train_data=(x, y), eval_data=(x[8:], y[8:]), example_input=x[8:9], device="cpu")


def test_labels_out_of_range_task() -> ash.Task:
    x, y = _data()
    bad = y.clone()
    bad[5] = 10
    return ash.Task(train_data=(x, y), eval_data=(x, y), test_data=(x, bad), example_input=x[:1], device="cpu")


class _Singles(torch.utils.data.Dataset):
    """Examples without targets: a common mistake with a custom Dataset."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.rand(1, 8, 8)


class _Broken(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        raise FileNotFoundError(f"images/{i}.png")


def no_targets_task() -> ash.Task:
    x, y = _data()
    return ash.Task(train_data=_Singles(), eval_data=(x, y), example_input=x[:1], device="cpu")


def unreadable_data_task() -> ash.Task:
    x, y = _data()
    return ash.Task(train_data=(x, y), eval_data=_Broken(), example_input=x[:1], device="cpu")


def conv_only() -> nn.Module:
    """8x8 -> 10 classes without an nn.Linear (the int8 runtime has nothing to run)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten()).eval()


def raises(kind: str = "cnn") -> nn.Module:
    raise ValueError(f"no model of kind {kind!r}")


def exits() -> nn.Module:
    raise SystemExit(4)


def returns_int() -> int:
    return 42


NOT_CALLABLE = 3
