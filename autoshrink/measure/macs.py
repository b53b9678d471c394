"""MACs of one forward pass, counted by torch's FlopCounterMode over every aten op."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..inputs import Inputs, call, to_device


def count_macs(model: nn.Module, example_input: Inputs, device: torch.device | None = None) -> int:
    """Multiply-accumulates of `model(example_input)` (matmuls, convolutions, attention; dense)."""
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        call(model, to_device(example_input, device))
    return int(counter.get_total_flops()) // 2
