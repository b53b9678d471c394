"""Distillation-only loss, the frozen teacher, train_transform, BatchNorm re-estimation."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.evaluate import compress
from autoshrink.task import iterate_batches
from autoshrink.train import distillation_loss, kd_term, recalibrate_batchnorm
from autoshrink.zoo import RandomShift, random_shift
from tests.conftest import state_equal

L = ash.LayerPolicy


def test_alpha_one_is_distillation_only(digits_mlp, digits) -> None:
    s, t = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[0.2, 3.0, -1.0]])
    assert distillation_loss(s, t, torch.tensor(5.0), alpha=1.0, temperature=2.0).item() == pytest.approx(
        kd_term(s, t, 2.0).item(), rel=1e-7
    )

    def labels_forbidden(out, y):
        raise AssertionError("the label loss must not be computed with alpha = 1")

    task = ash.Task(
        train_data=digits.train_data,
        eval_data=digits.eval_data,
        example_input=digits.example_input,
        loss=labels_forbidden,
        device="cpu",
    )
    small = ash.apply_policy(digits_mlp, ash.Policy(layers={"fc1": L(sparsity=0.9)}))
    ash.finetune(small, task, steps=5, teacher=digits_mlp, alpha=1.0)  # no AssertionError
    with pytest.raises(AssertionError, match="must not be computed"):
        ash.finetune(small, task, steps=1, teacher=digits_mlp, alpha=0.9)


class _ModeSpy(nn.Module):
    """Wraps a model and records the training flag of every forward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.inner(x)


def test_teacher_is_in_eval_mode_and_never_updated(digits_cnn, digits) -> None:
    teacher = _ModeSpy(copy.deepcopy(digits_cnn)).train()
    before = copy.deepcopy(teacher.state_dict())
    small = ash.apply_policy(digits_cnn, ash.Policy(layers={"fc1": L(sparsity=0.9)}))
    ash.finetune(small, digits, steps=6, teacher=teacher, alpha=1.0)
    assert teacher.modes == [False] * 6  # BatchNorm statistics of the teacher never move
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert teacher.training  # the caller's own mode is restored afterwards
    assert all(p.grad is None for p in teacher.parameters())


class Counting:
    """A picklable transform that counts the batches it sees and flips the inputs' sign."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, x, y):
        self.calls += 1
        self.shapes.append(tuple(x.shape))
        return -x, y


def test_train_transform_runs_on_every_training_batch_only(digits_mlp, digits, fast_latency) -> None:
    spy = Counting()
    task = ash.Task(
        train_data=digits.train_data,
        eval_data=digits.eval_data,
        example_input=digits.example_input,
        batch_size=100,
        device="cpu",
        train_transform=spy,
    )
    assert task.transform_name == "counting"
    small = ash.apply_policy(digits_mlp, ash.Policy(layers={"fc1": L(sparsity=0.5)}))
    ash.finetune(small, task, steps=17)
    assert spy.calls == 17 and spy.shapes[0] == (100, 1, 8, 8)
    ash.measure(small, task, latency=fast_latency)  # evaluation does not call it
    assert spy.calls == 17
    # it changes what the model learns from (the inputs' sign was flipped)
    plain = ash.finetune(
        ash.apply_policy(digits_mlp, ash.Policy(layers={"fc1": L(sparsity=0.5)})),
        ash.Task(
            train_data=digits.train_data,
            eval_data=digits.eval_data,
            example_input=digits.example_input,
            batch_size=100,
            device="cpu",
        ),
        steps=17,
    )
    assert not state_equal(small, plain)


def test_random_shift_is_named_picklable_and_shifts_exactly() -> None:
    t = random_shift(2)
    assert t.name == "random_shift(pixels=2)" and pickle.loads(pickle.dumps(t)) == t
    task = ash.Task(
        train_data=(torch.zeros(4, 1, 5, 5), torch.zeros(4, dtype=torch.long)),
        eval_data=(torch.zeros(1, 1, 5, 5), torch.zeros(1, dtype=torch.long)),
        example_input=torch.zeros(1, 1, 5, 5),
        train_transform=pickle.loads(pickle.dumps(t)),
    )
    assert task.transform_name == "random_shift(pixels=2)"
    x = torch.arange(2 * 25, dtype=torch.float32).reshape(2, 1, 5, 5)
    y = torch.tensor([3, 4])
    torch.manual_seed(0)
    out, y2 = RandomShift(1)(x, y)
    torch.manual_seed(0)
    offsets = torch.randint(0, 3, (2, 2))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    for i in range(2):
        dy, dx = offsets[i].tolist()
        assert torch.equal(out[i], padded[i, :, dy : dy + 5, dx : dx + 5])
    assert torch.equal(y2, y)
    with pytest.raises(ValueError, match="pixels=-1"):
        random_shift(-1)
    with pytest.raises(ash.TaskError, match="Task.train_transform: got 3"):
        ash.Task(
            train_data=task.train_data, eval_data=task.eval_data, example_input=task.example_input, train_transform=3
        )


class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 6)
        self.bn = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 10)

    def forward(self, x):
        return self.out(self.bn(self.fc(x.flatten(1))).relu())


def test_batchnorm_reestimation_matches_a_hand_computation(digits) -> None:
    torch.manual_seed(0)
    net = _BNNet().eval()
    assert recalibrate_batchnorm(net, digits, batches=3, seed=5) == 3
    # by hand: the same three batches (generator seeded with 5), mean of batch means / unbiased variances
    gen = torch.Generator().manual_seed(5)
    feats = [
        net.fc(x.flatten(1)).detach()
        for x, _ in list(iterate_batches(digits.train_data, digits.batch_size, shuffle=True, generator=gen))[:3]
    ]
    mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    var = torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(net.bn.running_mean, mean, atol=1e-6) and torch.allclose(net.bn.running_var, var, atol=1e-5)
    assert int(net.bn.num_batches_tracked) == 3 and net.bn.momentum == 0.1 and not net.training
    assert recalibrate_batchnorm(net, digits, batches=0) == 0


def test_statistics_are_reestimated_after_structured_pruning_and_lowrank(digits_cnn, digits) -> None:
    structured = ash.Policy(layers={"conv1": L(sparsity=0.5, structured=True)})
    plain, report = compress(digits_cnn, structured, example_input=digits.example_input)  # no task: no data
    tuned, _ = compress(digits_cnn, structured, task=digits, finetune_config=ash.FinetuneConfig(steps=0))
    assert report.channels == {"conv1": (32, 16)}
    assert not torch.equal(plain.bn1.running_mean, tuned.bn1.running_mean)
    assert not torch.equal(plain.bn2.running_var, tuned.bn2.running_var)
    ref = copy.deepcopy(plain)
    recalibrate_batchnorm(ref, digits, batches=8, seed=0)
    assert state_equal(ref, tuned)  # exactly the documented re-estimation (8 batches, the fine-tune seed)
    off, _ = compress(digits_cnn, structured, task=digits, finetune_config=ash.FinetuneConfig(steps=0, bn_batches=0))
    assert state_equal(off, plain)
    lowrank, rep = compress(digits_cnn, ash.Policy(layers={"conv2": L(rank=0.5)}), task=digits)
    assert rep.factorized == ("conv2",) and not torch.equal(lowrank.bn2.running_mean, digits_cnn.bn2.running_mean)
    # a post-training candidate (no fine-tune follows) is re-estimated too: its weights moved the statistics
    quantized = ash.Policy(layers={"conv2": L(bits=4)})
    post, rep = compress(digits_cnn, quantized, task=digits)
    ref = ash.apply_policy(digits_cnn, quantized)
    recalibrate_batchnorm(ref, digits, batches=8, seed=0)
    assert not rep.restructured and state_equal(ref, post)
    assert not torch.equal(post.bn2.running_mean, digits_cnn.bn2.running_mean)
    kept, _ = compress(digits_cnn, quantized, task=digits, finetune_config=ash.FinetuneConfig(steps=0, bn_batches=0))
    assert torch.equal(kept.bn2.running_mean, digits_cnn.bn2.running_mean)
