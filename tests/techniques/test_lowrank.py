from __future__ import annotations

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.techniques.apply import apply_policy_with_report
from autoshrink.techniques.lowrank import Factorized, factorize

L = ash.LayerPolicy


def test_linear_factor_shapes_and_parameter_count() -> None:
    layer = nn.Linear(64, 256)
    f = factorize(layer, 0.25)
    assert isinstance(f, Factorized)
    assert tuple(f.first.weight.shape) == (16, 64) and f.first.bias is None
    assert tuple(f.second.weight.shape) == (256, 16) and f.second.bias is not None
    assert sum(p.numel() for p in f.parameters()) == 16 * 64 + 256 * 16 + 256 == 5376


def test_conv_factor_shapes_and_parameter_count() -> None:
    conv = nn.Conv2d(32, 64, 3, padding=1, stride=2)
    f = factorize(conv, 0.25)
    assert isinstance(f, Factorized)
    assert tuple(f.first.weight.shape) == (16, 32, 3, 3) and f.first.stride == (2, 2) and f.first.padding == (1, 1)
    assert tuple(f.second.weight.shape) == (64, 16, 1, 1)
    assert sum(p.numel() for p in f.parameters()) == 16 * 288 + 64 * 16 + 64 == 5696
    x = torch.randn(2, 32, 9, 9)
    assert f(x).shape == conv(x).shape == (2, 64, 5, 5)


def test_truncated_svd_error_is_optimal() -> None:
    layer = nn.Linear(40, 30)
    f = factorize(layer, 0.2)  # k = 6
    approx = f.second.weight @ f.first.weight
    s = torch.linalg.svdvals(layer.weight.detach().double())
    err = torch.linalg.matrix_norm((approx - layer.weight).double())
    assert err.item() == pytest.approx(s[6:].pow(2).sum().sqrt().item(), rel=1e-4)


def test_no_saving_or_unsupported_is_skipped_and_reported() -> None:
    assert "no saving" in factorize(nn.Linear(64, 256), 0.9)
    assert "grouped" in factorize(nn.Conv2d(8, 8, 3, groups=8), 0.5)
    assert "not factorized" in factorize(nn.Embedding(10, 4), 0.5)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    small, report = apply_policy_with_report(model, ash.Policy(layers={"0": L(rank=0.9), "2": L(rank=0.2)}))
    assert isinstance(small[0], nn.Linear) and isinstance(small[2], Factorized)
    assert [(s.layer, s.technique) for s in report.skipped] == [("0", "lowrank")]


def test_lowrank_then_prune_and_quantize_apply_to_both_factors() -> None:
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    small = ash.apply_policy(model, ash.Policy(layers={"0": L(rank=0.25, sparsity=0.5, bits=4)}))
    for factor in (small[0].first, small[0].second):
        assert int((factor.weight == 0).sum()) >= factor.weight.numel() // 2
        assert max(len(torch.unique(r)) for r in factor.weight.detach()) <= 15
    assert small(torch.randn(3, 64)).shape == (3, 10)
