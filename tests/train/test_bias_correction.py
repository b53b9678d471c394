"""Bias correction of post-training candidates (FinetuneConfig.bias_correction), exact by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.errors import ConfigError
from autoshrink.evaluate import compress
from autoshrink.techniques import apply_policy_with_report
from autoshrink.train import FinetuneConfig
from autoshrink.train.bias import correct_biases
from autoshrink.zoo import digits_task


def test_the_bias_takes_back_the_mean_output_change() -> None:
    model = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        model[0].bias.zero_()
    x = torch.tensor([[1.0, 3.0], [3.0, 5.0]])
    small, _ = apply_policy_with_report(model, ash.Policy(layers={"0": ash.LayerPolicy(sparsity=0.5)}))
    assert small[0].weight.tolist() == [[0.0, 2.0]]  # the 1.0 is pruned
    assert correct_biases(small, model, lambda: [x]) == ["0"]
    assert small[0].bias.tolist() == [2.0]  # (W - W') . mean(x) = [1, 0] . [2, 4]
    with torch.no_grad():
        assert small(x).mean().item() == model(x).mean().item() == 10.0


def test_only_compressed_layers_of_the_same_shape_with_a_bias_are_corrected() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4, bias=False), nn.Linear(4, 2))
    policy = ash.Policy(
        layers={"0": ash.LayerPolicy(bits=3), "2": ash.LayerPolicy(bits=3), "3": ash.LayerPolicy(rank=0.5)}
    )
    small, _ = apply_policy_with_report(model, policy)
    assert correct_biases(small, model, lambda: [torch.randn(8, 4)]) == ["0"]  # 2: no bias; 3: low-rank


def test_a_post_training_candidate_is_corrected_only_when_asked_and_the_setting_round_trips() -> None:
    task = digits_task(device="cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    policy = ash.Policy(layers={"1": ash.LayerPolicy(bits=3), "3": ash.LayerPolicy(bits=3)})
    plain, _ = compress(model, policy, task=task, finetune_config=FinetuneConfig(steps=0))
    on = FinetuneConfig(steps=0, bias_correction=True)
    fixed, _ = compress(model, policy, task=task, finetune_config=on)
    again, _ = compress(model, policy, task=task, finetune_config=on)
    assert torch.equal(plain[1].weight, fixed[1].weight) and not torch.equal(plain[1].bias, fixed[1].bias)
    assert torch.equal(fixed[1].bias, again[1].bias) and torch.equal(fixed[3].bias, again[3].bias)  # replays
    assert "bias_correction" not in FinetuneConfig().to_dict()  # files and studies from before read the same
    assert FinetuneConfig.from_dict(on.to_dict()) == on and on.to_dict()["bias_correction"] is True
    with pytest.raises(ConfigError, match=r"^finetune\.bias_correction: got .*; it must be true or false"):
        FinetuneConfig(bias_correction=1)
