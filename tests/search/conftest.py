from __future__ import annotations

import pytest
from torch import nn

import autoshrink as ash
from autoshrink.zoo import digits_task

FAST = ash.LatencyConfig(warmup=1, min_repeats=3, min_seconds=0.0)


class Tiny(nn.Module):
    """A small digits MLP (8x8 -> 32 -> 10) for fast searches."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.fc1(x.flatten(1)).relu())


@pytest.fixture(scope="session")
def tiny_model() -> nn.Module:
    import torch

    torch.manual_seed(0)
    model = Tiny()
    ash.finetune(model, digits_task(device="cpu"), steps=300, lr=3e-3)
    return model


@pytest.fixture
def tiny_space(tmp_path) -> ash.SearchSpace:
    p = tmp_path / "tiny.yaml"
    p.write_text(
        "defaults:\n  sparsity: [0.0, 0.5, 0.8, 0.95]\n  bits: [32, 8, 4, 2]\n"
        "distill: [false, true]\nfinetune: {steps: 5}\n"
    )
    return ash.load_space(p)
