"""check_task: a fitting task passes and leaves the model exactly as it was (weights, BatchNorm
statistics, every module's training flag); the refusals are in tests/hostile/test_api.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.task_check import CHECK_BATCH, check_task


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, 10)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.fc(self.drop(self.bn(self.conv(x)).relu()).flatten(1))


def _task(**extra) -> ash.Task:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)
    return ash.Task(train_data=(x, y), eval_data=(x[:20], y[:20]), example_input=x[:3], device="cpu", **extra)


def test_a_fitting_task_passes_and_the_model_is_left_as_it_was() -> None:
    torch.manual_seed(0)
    model = Net().train()
    model.drop.eval()  # mixed modes come back mixed
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_task(model, _task(test_data=(torch.rand(5, 1, 8, 8), torch.zeros(5, dtype=torch.long))))
    assert model.calls == [3, CHECK_BATCH, CHECK_BATCH]  # the example input, the first train and eval batches
    assert [m.training for m in model.modules()] == [True, True, True, False, True]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_check_batch_is_no_larger_than_the_task_batch() -> None:
    model = Net()
    check_task(model, _task(batch_size=2))
    assert model.calls == [3, 2, 2]


def test_an_empty_example_input_is_refused_when_the_task_is_built() -> None:
    task = _task()
    with pytest.raises(ash.TaskError) as caught:
        ash.Task(train_data=task.train_data, eval_data=task.eval_data, example_input=torch.rand(0, 1, 8, 8))
    assert str(caught.value) == (
        "Task.example_input: shape [0, 1, 8, 8] holds no example; give one batch of at least one input "
        "(its first dimension is the batch)."
    )


def test_unlabeled_inputs_run_through_the_model_and_a_wrong_shape_is_one_clear_error() -> None:
    model = Net()
    check_task(model, _task(unlabeled_data=torch.rand(30, 1, 8, 8)))
    assert model.calls == [3, CHECK_BATCH, CHECK_BATCH, CHECK_BATCH]  # example, train, eval, unlabeled
    with pytest.raises(ash.TaskError) as caught:
        check_task(Net(), _task(unlabeled_data=torch.rand(30, 1, 6, 6)))
    assert str(caught.value).startswith("Task.unlabeled_data: the model cannot run its first batch")
    with pytest.raises(ash.TaskError) as caught:
        check_task(Net(), _task(unlabeled_data=torch.rand(30, 1, 8, 8).double()))
    assert str(caught.value).startswith(
        "Task.unlabeled_data: inputs are torch.float64 but example_input is torch.float32"
    )


class Counting(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.reads = 0

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return torch.rand(1, 8, 8), 0


def test_the_held_out_split_is_never_read() -> None:
    held = Counting()
    check_task(Net(), _task(test_data=held))
    assert held.reads == 0


def test_held_out_tensors_are_checked_without_the_model() -> None:
    model = Net()
    bad = (torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 10]))
    with pytest.raises(ash.TaskError, match=r"^Task.test_data: labels span 0..10, but the model outputs 10 classes"):
        check_task(model, _task(test_data=bad))
    assert model.calls == [3, CHECK_BATCH, CHECK_BATCH]
