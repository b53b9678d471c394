"""Activation-aware structured pruning (criterion "wanda" with structured=True): exact channels by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.errors import PolicyError
from autoshrink.techniques import apply_policy_with_report
from autoshrink.techniques.channel_importance import reader_scores


def two_layers() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 2, 0], [0, 0, 3], [4, 0, 0]]))
        model[0].bias.copy_(torch.tensor([0.0, 0, 0, -100]))  # channel 3: the largest weights, never active
        model[2].weight.fill_(1.0)
    return model


@pytest.mark.parametrize(("criterion", "kept"), [("magnitude", [[0, 2, 0], [0, 0, 3], [4, 0, 0]]), ("wanda", None)])
def test_wanda_removes_the_channel_the_readers_never_see(criterion: str, kept) -> None:
    x = torch.rand(64, 3)
    policy = ash.Policy(layers={"0": ash.LayerPolicy(sparsity=0.25, structured=True, criterion=criterion)})
    small, report = apply_policy_with_report(two_layers(), policy, example_input=x[:1], calibration=lambda: [x])
    assert report.channels == {"0": (4, 3)}
    # magnitude: |row|^2 + |reader column|^2 = 1+2, 4+2, 9+2, 16+2 -> channel 0 goes; wanda: channel 3 has no energy
    want = kept if kept is not None else [[1, 0, 0], [0, 2, 0], [0, 0, 3]]
    assert small[0].weight.tolist() == want
    assert (report.calibration_s > 0) == (criterion == "wanda")


def test_a_conv_readers_score_sums_its_kernel_positions() -> None:
    conv = nn.Conv2d(2, 1, (1, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 2.0]], [[3.0, 0.5]]]]))
    energy = torch.tensor(
        [1.0, 10.0, 100.0, 4.0], dtype=torch.float64
    )  # channel-major: (c0,k0) (c0,k1) (c1,k0) (c1,k1)
    assert reader_scores(conv, energy).tolist() == [1 * 1 + 4 * 10, 9 * 100 + 0.25 * 4]
    assert reader_scores(conv, energy[:2]) is None  # statistics of another shape (pruned since)


def test_structured_criteria_are_magnitude_or_wanda_and_wanda_needs_data() -> None:
    with pytest.raises(PolicyError, match=r"^layers\.fc\.criterion: 'sparsegpt' chooses single weights"):
        ash.LayerPolicy(sparsity=0.5, structured=True, criterion="sparsegpt", where="layers.fc")
    lp = ash.LayerPolicy(sparsity=0.5, structured=True, criterion="wanda")
    assert lp.calibrated and not lp.needs_layer_inputs
    with pytest.raises(PolicyError, match=r"layers\.0: criterion 'wanda' calibrates"):
        ash.apply_policy(two_layers(), ash.Policy(layers={"0": lp}), example_input=torch.rand(1, 3))
