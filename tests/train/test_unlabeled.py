"""Task.unlabeled_data: inputs without labels that a distilling fine-tune reads between train_data's batches."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.errors import TaskError
from autoshrink.train.distill import kd_term
from tests.conftest import state_equal

TRAIN = torch.arange(4, dtype=torch.float32).reshape(4, 1)  # feature values 0..3: labelled
EXTRA = 100 + torch.arange(8, dtype=torch.float32).reshape(8, 1)  # 100..107: unlabeled


class Seen(nn.Module):
    """A one-layer model that records the first feature of every training input it sees."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(1, 2)
        self.seen: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.extend(x[:, 0].tolist())
        return self.fc(x / 100)


def task(loss=None, **kw) -> ash.Task:
    return ash.Task(
        train_data=(TRAIN, torch.tensor([0, 1, 0, 1])),
        eval_data=(TRAIN, torch.tensor([0, 1, 0, 1])),
        example_input=TRAIN[:1],
        batch_size=2,
        device="cpu",
        loss=loss or "cross_entropy",
        **kw,
    )


def test_unlabeled_inputs_become_a_dataset_with_no_class_and_are_counted() -> None:
    t = task(unlabeled_data=EXTRA)
    assert t.unlabeled_count == 8 and len(t.unlabeled_data) == 8
    x, y = t.unlabeled_data[3]
    assert x.tolist() == [103.0] and y.item() == -1
    assert task().unlabeled_count is None and task().unlabeled_data is None
    mapping = task(unlabeled_data={"a": EXTRA, "b": EXTRA * 2}).unlabeled_data
    assert mapping.inputs["b"][1].tolist() == [202.0] and mapping.labels.tolist() == [-1] * 8
    rows = task(unlabeled_data=[{"input_ids": [1, 2], "label": 5}, {"input_ids": [3, 4], "label": 6}]).unlabeled_data
    assert rows.inputs["input_ids"].tolist() == [[1, 2], [3, 4]] and rows.labels.tolist() == [-1, -1]  # label ignored


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            5,
            "Task.unlabeled_data: got 5; expected model inputs without labels: a tensor, a mapping of named "
            "tensors (a tokenizer's output), a Hugging Face datasets.Dataset or a list of dicts.",
        ),
        (torch.zeros(0, 1), "Task.unlabeled_data: got a tensor of shape (0, 1); give at least one example."),
    ],
)
def test_bad_unlabeled_data_is_one_clear_error(data, message) -> None:
    with pytest.raises(TaskError) as info:
        task(unlabeled_data=data)
    assert str(info.value) == message


def test_a_distilling_fine_tune_reads_both_in_proportion_and_each_input_once_a_pass() -> None:
    teacher, student = Seen().eval(), Seen()
    ash.finetune(student, task(unlabeled_data=EXTRA), steps=6, teacher=teacher, lr=1e-3)
    assert len(student.seen) == 12  # 2 labelled + 4 unlabeled batches of 2: one pass over both
    assert sorted(student.seen) == [0.0, 1.0, 2.0, 3.0, *range(100, 108)]
    assert teacher.seen == []  # the teacher runs in eval mode


def test_without_a_teacher_unlabeled_inputs_are_never_read() -> None:
    student = Seen()
    ash.finetune(student, task(unlabeled_data=EXTRA), steps=4, lr=1e-3)
    assert sorted(student.seen) == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]


def test_the_label_loss_never_sees_an_unlabeled_batch_and_their_loss_is_the_kd_term(monkeypatch) -> None:
    targets: list[list[int]] = []

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        targets.append(y.tolist())
        return nn.functional.cross_entropy(out, y)

    kd_calls: list[int] = []
    real_kd = kd_term

    def counting_kd(out, t_out, temperature):
        kd_calls.append(out.shape[0])
        return real_kd(out, t_out, temperature)

    monkeypatch.setattr(importlib.import_module("autoshrink.train.finetune"), "kd_term", counting_kd)
    ash.finetune(Seen(), task(loss=loss, unlabeled_data=EXTRA), steps=6, teacher=Seen().eval(), alpha=0.7, lr=1e-3)
    assert len(targets) == 2 and all(-1 not in batch for batch in targets)
    assert len(kd_calls) == 4  # the unlabeled batches' loss; labelled batches use distillation_loss
    student = Seen()
    ash.finetune(student, task(unlabeled_data=EXTRA), steps=6, teacher=Seen().eval(), alpha=0.0, lr=1e-3)
    assert sorted(student.seen) == [v for v in (0.0, 1.0, 2.0, 3.0) for _ in range(3)]  # alpha 0, no hidden term:
    # nothing to distil, so train_data only (3 passes)


def test_a_distilling_fine_tune_with_unlabeled_data_replays_for_a_seed() -> None:
    t = task(unlabeled_data=EXTRA)
    a = ash.finetune(Seen(), t, steps=9, teacher=Seen().eval(), seed=2, lr=1e-2)
    b = ash.finetune(Seen(), t, steps=9, teacher=Seen().eval(), seed=2, lr=1e-2)
    c = ash.finetune(Seen(), task(), steps=9, teacher=Seen().eval(), seed=2, lr=1e-2)
    assert a.seen == b.seen and state_equal(a, b) and not state_equal(a, c)
