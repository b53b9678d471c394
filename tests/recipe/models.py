"""Models for the recipe tests: the search's Tiny (loadable by CLI entry point) and mismatching variants."""

from __future__ import annotations

import torch
from torch import nn

from ..search.conftest import Tiny


def tiny(weights: str) -> nn.Module:
    """CLI entry point: a Tiny with the weights saved at `weights`."""
    model = Tiny()
    model.load_state_dict(torch.load(weights))
    return model.eval()


class Mixed(nn.Module):
    """Against Tiny: fc1 reshaped (16 outputs), fc2 missing, head extra."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.fc1(x.flatten(1)).relu())


class MyLinear(nn.Linear):
    pass


class Retyped(Tiny):
    """Against Tiny: fc2 has the same shapes but another type."""

    def __init__(self) -> None:
        super().__init__()
        self.fc2 = MyLinear(32, 10)


class Partial(nn.Module):
    """Against Tiny: fc1 fits, fc2 has 12 outputs, fc3 is extra."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 12)
        self.fc3 = nn.Linear(12, 10)

    def forward(self, x):
        return self.fc3(self.fc2(self.fc1(x.flatten(1)).relu()))
