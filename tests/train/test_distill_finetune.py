from __future__ import annotations

import math

import pytest
import torch

import autoshrink as ash
from autoshrink.errors import ConfigError, TrainingError
from autoshrink.train import distillation_loss, kd_term
from tests.conftest import state_equal


def _softmax(v: list[float], t: float) -> list[float]:
    e = [math.exp(x / t) for x in v]
    return [x / sum(e) for x in e]


def test_distillation_loss_equals_its_formula() -> None:
    s, t = [1.0, 2.0, 0.5], [0.2, 3.0, -1.0]
    T, alpha, task_loss = 2.0, 0.3, 0.9
    ps, pt = _softmax(s, T), _softmax(t, T)
    kl = sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps))
    expected = alpha * T * T * kl + (1 - alpha) * task_loss
    got = distillation_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor(task_loss), alpha=alpha, temperature=T)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # batchmean: two identical rows give the same value
    assert kd_term(torch.tensor([s, s]), torch.tensor([t, t]), T).item() == pytest.approx(T * T * kl, rel=1e-6)


def test_finetune_is_deterministic_for_a_seed(digits_mlp, digits) -> None:
    policy = ash.Policy(layers={"fc1": ash.LayerPolicy(sparsity=0.8, bits=4)})
    a = ash.finetune(ash.apply_policy(digits_mlp, policy), digits, steps=20, seed=3)
    b = ash.finetune(ash.apply_policy(digits_mlp, policy), digits, steps=20, seed=3)
    c = ash.finetune(ash.apply_policy(digits_mlp, policy), digits, steps=20, seed=4)
    assert state_equal(a, b) and not state_equal(a, c)


def test_finetune_with_teacher_recovers_accuracy(digits_cnn, digits) -> None:
    policy = ash.Policy(layers={"fc1": ash.LayerPolicy(sparsity=0.97), "conv2": ash.LayerPolicy(sparsity=0.9)})
    small = ash.apply_policy(digits_cnn, policy)
    before = ash.measure(small, digits, runtime="float").accuracy
    ash.finetune(small, digits, steps=150, teacher=digits_cnn)
    after = ash.measure(small, digits, runtime="float").accuracy
    assert before < 0.9 and after >= 0.95


def test_nan_loss_is_a_clear_error(digits_mlp, digits) -> None:
    bad = ash.Task(
        train_data=digits.train_data,
        eval_data=digits.eval_data,
        example_input=digits.example_input,
        loss=lambda out, y: out.sum() * float("nan"),
        device="cpu",
    )
    with pytest.raises(TrainingError, match=r"finetune step 0: the loss is nan.*lower lr"):
        ash.finetune(ash.apply_policy(digits_mlp, ash.Policy()), bad, steps=5)


def test_bad_settings_name_the_field(digits_mlp, digits) -> None:
    with pytest.raises(ConfigError, match="finetune.optimizer: got 'rmsprop'"):
        ash.finetune(digits_mlp, digits, steps=1, optimizer="rmsprop")
    with pytest.raises(ConfigError, match="finetune.steps: got -1"):
        ash.finetune(digits_mlp, digits, steps=-1)
    with pytest.raises(ConfigError, match="unknown key.*'lr_decay'"):
        ash.finetune(digits_mlp, digits, steps=1, lr_decay=0.1)
