"""Latency: median wall time of one forward pass, after warm-up, device synchronized.

What is timed is the call a deployment makes: `model(x)` for a torch model; for a model that has a
`deploy_call(x)` method (the ONNX Runtime runtime's OrtModule) the zero-argument callable it returns,
which runs the runtime on inputs prepared once (ORT: `session.run` on numpy arrays), so no torch <->
numpy conversion or nn.Module dispatch of autoshrink's own wrapper is counted as the model's latency."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, describe, finite_number
from ..inputs import call as call_model
from ..inputs import to_device


@dataclass(frozen=True)
class LatencyConfig:
    """How long to time: at least `min_repeats` forwards and `min_seconds`, at most `max_repeats`.
    `layers`: module names also timed alone (Measurement.layer_latency_ms; the entries of a search's
    latency lookup table, see measure/layer_latency.py); a search fills it where latency is an objective."""

    warmup: int = 5
    min_repeats: int = 20
    min_seconds: float = 0.1
    max_repeats: int = 2000
    layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("warmup", "min_repeats", "max_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"LatencyConfig.{name}: got {describe(value)}; use an integer >= 0.")
        if not finite_number(self.min_seconds) or self.min_seconds < 0:
            raise ConfigError(f"LatencyConfig.min_seconds: got {describe(self.min_seconds)}; use seconds >= 0.")
        if isinstance(self.layers, str) or not all(isinstance(n, str) for n in self.layers):
            raise ConfigError(f"LatencyConfig.layers: got {describe(self.layers)}; use a tuple of module names.")
        object.__setattr__(self, "layers", tuple(self.layers))

    @classmethod
    def of(cls, value: Any, who: str) -> LatencyConfig:
        """`value` as a LatencyConfig: None is the default, a mapping gives its fields (`who` names the
        function in the error)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        known = [f.name for f in fields(cls)]
        if isinstance(value, Mapping) and set(value) <= set(known):
            return cls(**dict(value))
        raise ConfigError(
            f"{who}: latency={describe(value)}; use an ash.LatencyConfig or a mapping with any of {', '.join(known)}."
        )


_guard: Callable[[], ContextManager[object]] | None = None


def set_timing_guard(factory: Callable[[], ContextManager[object]] | None) -> None:
    """Install a context-manager factory entered around every latency timing in this process.

    Executors running several workers on one machine use it to let one worker time at a time
    (a per-node lock), so concurrent evaluations do not distort each other's latencies.
    """
    global _guard
    _guard = factory


@contextlib.contextmanager
def timing_guard() -> Iterator[None]:
    """Enter the installed timing guard, if any."""
    if _guard is None:
        yield
    else:
        with _guard():
            yield


_warmed: set[str] = set()
PROCESS_WARMUP_S = 0.5


def _warm_process(model: nn.Module, x: Tensor, device: torch.device) -> None:
    """Once per process and device: run forwards for PROCESS_WARMUP_S so thread pools, allocator and
    CPU clocks are up before anything is timed. Without it the first model timed in a fresh process
    (usually the baseline) reads slow and every speedup against it is inflated."""
    if str(device) in _warmed:
        return
    end = time.perf_counter() + PROCESS_WARMUP_S
    with torch.inference_mode():
        while time.perf_counter() < end:
            call_model(model, x)
            _sync(device)
    _warmed.add(str(device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def deploy_call(model: nn.Module, x: Tensor) -> Callable[[], object]:
    """The zero-argument call timed for `model` on input `x` (see the module docstring)."""
    prepared = getattr(model, "deploy_call", None)
    if callable(prepared):
        return prepared(x)
    return lambda: call_model(model, x)


def time_forward(
    model: nn.Module, example_input: Tensor, device: torch.device, config: LatencyConfig = LatencyConfig()
) -> list[float]:
    """Wall times in ms of repeated forwards of `example_input` (model already on `device`)."""
    x = to_device(example_input, device)
    model.eval()
    _warm_process(model, x, device)
    call = deploy_call(model, x)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(config.warmup):
            call()
        _sync(device)
        start_all = time.perf_counter()
        while len(times) < config.max_repeats:
            t0 = time.perf_counter()
            call()
            _sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
            if len(times) >= config.min_repeats and time.perf_counter() - start_all >= config.min_seconds:
                break
    return times


def median_latency_ms(
    model: nn.Module, example_input: Tensor, device: torch.device, config: LatencyConfig = LatencyConfig()
) -> float:
    """Median of `time_forward`."""
    return statistics.median(time_forward(model, example_input, device, config))
