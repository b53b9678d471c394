from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.weights import channel_scales, qmax, quantize_codes, weight_bits, weight_mask

L = ash.LayerPolicy


def test_exact_zero_counts_before_and_after_finetune(digits_mlp, digits) -> None:
    policy = ash.Policy(layers={"fc1": L(sparsity=0.7), "fc2": L(sparsity=0.35), "fc3": L(sparsity=0.1)})
    small = ash.apply_policy(digits_mlp, policy)
    expected = {"fc1": round(0.7 * 64 * 256), "fc2": round(0.35 * 256 * 128), "fc3": round(0.1 * 128 * 10)}
    zeros = {n: int((getattr(small, n).weight == 0).sum()) for n in expected}
    assert zeros == expected == {"fc1": 11469, "fc2": 11469, "fc3": 128}
    positions = {n: getattr(small, n).weight == 0 for n in expected}
    gradual = copy.deepcopy(small)
    ash.finetune(small, digits, steps=30, lr=1e-2, schedule="oneshot")  # one-shot: the mask is fixed
    for n in expected:
        w = getattr(small, n).weight
        assert int((w == 0).sum()) == expected[n]
        assert torch.equal(w == 0, positions[n]), f"{n}: pruned positions moved during fine-tune"
    ash.finetune(gradual, digits, steps=30, lr=1e-2)  # gradual (the default) re-selects by magnitude
    assert {n: int((getattr(gradual, n).weight == 0).sum()) for n in expected} == expected


def test_magnitude_pruning_removes_the_smallest_weights() -> None:
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -0.5, 0.3, 2.0], [-0.05, 0.7, -0.2, 0.01]]))
    model = nn.Sequential(layer)
    small = ash.apply_policy(model, ash.Policy(layers={"0": L(sparsity=0.5)}))
    assert torch.equal(small[0].weight, torch.tensor([[0.0, -0.5, 0.3, 2.0], [0.0, 0.7, 0.0, 0.0]]))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_at_most_2_pow_b_distinct_values_per_channel(digits_cnn, digits, bits: int) -> None:
    small = ash.apply_policy(digits_cnn, ash.Policy(layers={"conv2": L(bits=bits), "fc1": L(sparsity=0.5, bits=bits)}))
    ash.finetune(small, digits, steps=5)
    for name in ("conv2", "fc1"):
        w = getattr(small, name).weight.detach()
        per_channel = [len(torch.unique(row)) for row in w.reshape(w.shape[0], -1)]
        assert max(per_channel) <= 2**bits - 1  # symmetric codes: -qmax..qmax
        codes, scales = quantize_codes(w, bits)
        assert int(codes.abs().max()) <= qmax(bits)
        assert torch.equal(codes.float() * scales.view(-1, *[1] * (w.dim() - 1)), w)


def test_scales_are_bfloat16_and_requantization_is_idempotent() -> None:
    w = torch.randn(16, 33)
    for bits in (2, 4, 8):
        codes, scales = quantize_codes(w, bits)
        assert torch.equal(scales.bfloat16().float(), scales)
        again = codes.float() * scales[:, None]
        codes2, scales2 = quantize_codes(again, bits)
        assert torch.equal(codes2, codes) and torch.equal(scales2, scales)
    assert torch.equal(channel_scales(torch.zeros(3, 4), 8), torch.ones(3))


def test_float16_policy_gives_float16_values(digits_mlp) -> None:
    small = ash.apply_policy(digits_mlp, ash.Policy(layers={"fc2": L(bits=16)}))
    w = small.fc2.weight
    assert torch.equal(w.half().float(), w) and not torch.equal(w, digits_mlp.fc2.weight)


def test_quantization_keeps_pruned_zeros_and_straight_through_gradient(digits_mlp) -> None:
    small = ash.apply_policy(digits_mlp, ash.Policy(layers={"fc1": L(sparsity=0.5, bits=4)}))
    assert weight_bits(small.fc1) == 4 and int((~weight_mask(small.fc1)).sum()) == 8192
    assert int((small.fc1.weight == 0).sum()) >= 8192
    small.train()
    small(torch.randn(2, 1, 8, 8)).sum().backward()
    grad = small.fc1.parametrizations.weight.original.grad
    assert grad is not None and int((grad != 0).sum()) > 0
    assert int((grad[~weight_mask(small.fc1)] != 0).sum()) == 0  # masked entries get no gradient
