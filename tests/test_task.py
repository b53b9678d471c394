from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import autoshrink as ash
from autoshrink.errors import TaskError


def _xy(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 4), torch.randint(0, 3, (n,))


def test_tuples_become_datasets_and_device_resolves() -> None:
    t = ash.Task(train_data=_xy(), eval_data=TensorDataset(*_xy(5)), example_input=torch.randn(3, 4), device="cpu")
    assert isinstance(t.train_data, TensorDataset) and len(t.train_data) == 10
    assert t.torch_device == torch.device("cpu") and t.deploy_batch == 3
    auto = ash.Task(train_data=_xy(), eval_data=_xy(), example_input=torch.randn(1, 4))
    assert auto.torch_device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_token_id_example_input_is_accepted() -> None:
    t = ash.Task(train_data=_xy(), eval_data=_xy(), example_input=torch.randint(0, 100, (2, 16)))
    assert t.example_input.dtype == torch.int64 and t.deploy_batch == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metric": "f1"}, "Task.metric: got 'f1'"),
        ({"loss": "hinge"}, "Task.loss: got 'hinge'"),
        ({"batch_size": 0}, "Task.batch_size: got 0"),
        ({"example_input": [1, 2]}, "Task.example_input"),
        ({"train_data": (torch.randn(3, 4), torch.zeros(2))}, "X has 3 rows but y has 2"),
        ({"train_data": [1, 2, 3]}, "Task.train_data"),
    ],
)
def test_bad_task_fields(kwargs: dict, message: str) -> None:
    base = dict(train_data=_xy(), eval_data=_xy(), example_input=torch.randn(1, 4))
    with pytest.raises(TaskError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ash.Task(**{**base, **kwargs})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda_is_clear() -> None:
    with pytest.raises(TaskError, match="CUDA is not available"):
        ash.Task(train_data=_xy(), eval_data=_xy(), example_input=torch.randn(1, 4), device="cuda")


def test_callable_metric_and_loss_are_used(digits_mlp, digits) -> None:
    calls = []

    def metric(model, loader, device):
        calls.append(len(loader.dataset))
        return 0.25

    task = ash.Task(
        train_data=digits.train_data,
        eval_data=digits.eval_data,
        example_input=digits.example_input,
        metric=metric,
        device="cpu",
    )
    m = ash.measure(digits_mlp, task, latency=ash.LatencyConfig(warmup=1, min_repeats=2, min_seconds=0))
    assert m.accuracy == 0.25 and calls == [360]
