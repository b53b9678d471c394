"""Latency: median wall time of one forward pass, after warm-up, device synchronized."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LatencyConfig:
    """How long to time: at least `min_repeats` forwards and `min_seconds`, at most `max_repeats`."""

    warmup: int = 5
    min_repeats: int = 20
    min_seconds: float = 0.25
    max_repeats: int = 2000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model: nn.Module, example_input: Tensor, device: torch.device,
                 config: LatencyConfig = LatencyConfig()) -> list[float]:
    """Wall times in ms of repeated forwards of `example_input` (model already on `device`)."""
    x = example_input.to(device)
    model.eval()
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(config.warmup):
            model(x)
        _sync(device)
        start_all = time.perf_counter()
        while len(times) < config.max_repeats:
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
            if len(times) >= config.min_repeats and time.perf_counter() - start_all >= config.min_seconds:
                break
    return times


def median_latency_ms(model: nn.Module, example_input: Tensor, device: torch.device,
                      config: LatencyConfig = LatencyConfig()) -> float:
    """Median of `time_forward`."""
    return statistics.median(time_forward(model, example_input, device, config))
