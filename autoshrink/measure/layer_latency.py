"""Per-layer latency: each named layer of a compressed model timed alone, on the model's runtime.

The entries of a search's latency lookup table (measure/latency_table.py). Each layer gets the input it
receives in the whole model (a forward pre-hook on the materialized float model, deploy batch) and is
timed like `time_forward`: "float" the materialized layer; "int8-dynamic" the layer of torch's
dynamic-int8 copy; "onnxruntime" / "onnxruntime-static" the layer exported alone (export/onnx.py) in its
own ORT session (static: calibrated on the captured input); "cuda-graph" / "cuda-int8" the layer of the
runtime's float16 module, launched eagerly (a graph of one layer would time the replay, not the layer).
A layer whose input is not one tensor, or that the model never calls, is left out; the caller sees which
ones are missing.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..inputs import call, to_device
from .latency import LatencyConfig, time_forward

# one layer's timing: short, it runs for every layer of every trial
LAYER_TIMING = LatencyConfig(warmup=3, min_repeats=15, min_seconds=0.02, max_repeats=500)


def layer_inputs(plain: nn.Module, example_input: Any, names: Sequence[str], device: torch.device) -> dict[str, Tensor]:
    """The single-tensor input each named submodule of `plain` receives when `plain` runs example_input."""
    seen: dict[str, Tensor] = {}
    hooks = []
    for name in names:
        try:
            module = plain.get_submodule(name)
        except AttributeError:
            continue

        def grab(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if name not in seen and len(args) == 1 and isinstance(args[0], Tensor):
                seen[name] = args[0].detach().clone()

        hooks.append(module.register_forward_pre_hook(grab))
    try:
        with torch.inference_mode():
            call(plain, to_device(example_input, device))
    finally:
        for h in hooks:
            h.remove()
    return seen


def layer_latencies(
    model: nn.Module,
    plain: nn.Module,
    runtime_model: nn.Module | None,
    runtime: str,
    example_input: Any,
    names: Sequence[str],
    device: torch.device,
    config: LatencyConfig = LAYER_TIMING,
) -> dict[str, float]:
    """Median ms of each named layer alone on `runtime` ("float", "int8-dynamic" or "onnxruntime"; see
    the module docstring). `model`: the compressed model (parametrizations in place), `plain`: its
    materialized copy on `device`, `runtime_model`: the int8 copy for "int8-dynamic"."""
    inputs = layer_inputs(plain, example_input, names, device)
    out: dict[str, float] = {}
    for name in names:
        if name not in inputs:
            continue
        x = inputs[name]
        if runtime.startswith("onnxruntime"):
            from .onnxruntime import ort_runtime

            static = runtime == "onnxruntime-static"
            layer = ort_runtime(
                model.get_submodule(name),
                x.cpu(),
                device,
                activations="static" if static else "dynamic",
                calibration=[x.cpu()] if static else None,
            )
        elif runtime in ("int8-dynamic", "int8-full") and runtime_model is not None:
            layer = runtime_model.get_submodule(name)
        elif runtime in ("cuda-graph", "cuda-int8") and runtime_model is not None:
            layer = runtime_model.get_submodule(name)  # its float16 (2:4, int8) module, launched alone
            x = x.half() if x.is_floating_point() else x
        else:
            layer = plain.get_submodule(name)
        out[name] = statistics.median(time_forward(layer, x, device, config))
    return out
