"""Gradual pruning: the cubic schedule, exact zero and channel counts, structured rounds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.evaluate import compress
from autoshrink.train import GradualPruning, StructuredPlan, ramp_fraction, update_schedule
from autoshrink.weights import weight_bits, weight_mask

L = ash.LayerPolicy


def test_schedule_is_the_cubic_ramp_at_exact_steps() -> None:
    # 100 steps, ramp over the first half, 4 updates: steps ceil(k * 50 / 4) for k = 0..4
    assert update_schedule(100, 0.5, 4) == [(0, 0.0), (13, 0.578125), (25, 0.875), (38, 0.984375), (50, 1.0)]
    assert [ramp_fraction(s, 100, 0.5, 4) for s in (0, 12, 13, 24, 25, 49, 50, 99)] == [
        0.0,
        0.0,
        0.578125,
        0.578125,
        0.875,
        0.984375,
        1.0,
        1.0,
    ]
    assert update_schedule(100, 0.0, 4) == [(0, 1.0)]  # no ramp: one-shot at the first step
    assert update_schedule(3, 1.0, 10)[-1] == (3, 1.0) and len(update_schedule(3, 1.0, 10)) == 4


def _zeros(m: nn.Module) -> int:
    return int((~weight_mask(m)).sum())


def test_masks_follow_the_ramp_and_end_at_exactly_round_s_n(digits_mlp, digits) -> None:
    policy = ash.Policy(layers={"fc1": L(sparsity=0.9, bits=4), "fc2": L(sparsity=0.55)})
    small = ash.apply_policy(digits_mlp, policy)
    n1, n2 = small.fc1.weight.numel(), small.fc2.weight.numel()
    k1, k2 = round(0.9 * n1), round(0.55 * n2)
    cfg = ash.FinetuneConfig(steps=100, schedule="gradual", ramp=0.5, ramp_updates=4)
    g = GradualPruning(small, cfg)
    for step, share in update_schedule(100, 0.5, 4):
        assert g.update(small, step) is False  # masks change in place: no optimizer rebuild
        assert (_zeros(small.fc1), _zeros(small.fc2)) == (round(k1 * share), round(k2 * share))
    assert weight_bits(small.fc1) == 4
    done = ash.finetune(ash.apply_policy(digits_mlp, policy), digits, steps=40, schedule="gradual", seed=1)
    assert (_zeros(done.fc1), _zeros(done.fc2)) == (k1, k2)
    assert int((done.fc1.weight == 0).sum()) >= k1  # the forward weight holds those zeros


def test_pruned_entries_stay_pruned_while_the_ramp_rises(digits_mlp) -> None:
    small = ash.apply_policy(digits_mlp, ash.Policy(layers={"fc1": L(sparsity=0.8)}))
    g = GradualPruning(small, ash.FinetuneConfig(steps=10, schedule="gradual", ramp=1.0, ramp_updates=5))
    previous = torch.ones_like(small.fc1.weight, dtype=torch.bool)
    for step, _ in update_schedule(10, 1.0, 5):
        g.update(small, step)
        mask = weight_mask(small.fc1).clone()
        assert not (mask & ~previous).any()  # nothing revived
        previous = mask


def test_gradual_finetune_is_deterministic(digits_mlp, digits) -> None:
    policy = ash.Policy(layers={"fc1": L(sparsity=0.9, bits=4)})
    a = ash.finetune(ash.apply_policy(digits_mlp, policy), digits, steps=30, schedule="gradual", seed=2)
    b = ash.finetune(ash.apply_policy(digits_mlp, policy), digits, steps=30, schedule="gradual", seed=2)
    c = ash.finetune(ash.apply_policy(digits_mlp, policy), digits, steps=30, schedule="oneshot", seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def _channels(model: nn.Module, name: str) -> int:
    m = model.get_submodule(name)
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def test_structured_channels_are_removed_in_rounds_and_end_as_one_shot(digits_cnn, digits) -> None:
    policy = ash.Policy(
        layers={
            "conv1": L(sparsity=0.5, structured=True, bits=8),
            "conv2": L(sparsity=0.75),
            "fc1": L(sparsity=0.5, structured=True),
        }
    )
    one, report = compress(digits_cnn, policy, task=digits, finetune_config=ash.FinetuneConfig(steps=0))
    assert report.channels == {"conv1": (32, 16), "fc1": (128, 64)}
    # the rounds, driven by hand: channels removed = round(n * share) at each update
    rest = ash.Policy(layers={"conv1": L(bits=8), "conv2": L(sparsity=0.75)})
    small = ash.apply_policy(digits_cnn, rest)
    plan = StructuredPlan(removals={"conv1": 16, "fc1": 64}, layers=policy.layers, example_input=digits.example_input)
    cfg = ash.FinetuneConfig(steps=8, schedule="gradual", ramp=1.0, ramp_updates=2)
    g = GradualPruning(small, cfg, plan)
    assert update_schedule(8, 1.0, 2) == [(0, 0.0), (4, 0.875), (8, 1.0)]
    assert g.update(small, 0) is False and _channels(small, "conv1") == 32
    assert g.update(small, 4) is True  # parameters replaced: the optimizer must be rebuilt
    assert (_channels(small, "conv1"), _channels(small, "fc1")) == (32 - 14, 128 - 56)
    assert weight_bits(small.conv1) == 8 and _zeros(small.conv2) == round(
        0.875 * round(0.75 * small.conv2.weight.numel())
    )
    g.update(small, 8)
    assert (_channels(small, "conv1"), _channels(small, "fc1")) == (16, 64)
    assert _zeros(small.conv2) == round(0.75 * small.conv2.weight.numel()) == _zeros(one.conv2)
    # and through compress, fine-tuned: the same end state as one-shot
    cfg = ash.FinetuneConfig(steps=20, schedule="gradual", ramp_updates=3)
    tuned, treport = compress(digits_cnn, policy, task=digits, finetune_config=cfg)
    assert treport.channels == report.channels
    assert (_channels(tuned, "conv1"), _channels(tuned, "fc1")) == (16, 64)
    assert tuned.conv2.weight.shape == one.conv2.weight.shape and _zeros(tuned.conv2) == _zeros(one.conv2)
    assert ash.measure(tuned, digits).size_bytes > 0


def test_schedule_settings_are_validated() -> None:
    with pytest.raises(ash.ConfigError, match="finetune.schedule: got 'cubic'; use one of oneshot, gradual"):
        ash.FinetuneConfig(schedule="cubic")
    with pytest.raises(ash.ConfigError, match=r"finetune.ramp: got 1.5; it must be a share of the steps in \[0, 1\]"):
        ash.FinetuneConfig(ramp=1.5)
    with pytest.raises(ash.ConfigError, match="finetune.ramp_updates: got 0"):
        ash.FinetuneConfig(ramp_updates=0)
    with pytest.raises(ash.ConfigError, match="finetune.bn_batches: got -1"):
        ash.FinetuneConfig(bn_batches=-1)
