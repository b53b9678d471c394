"""The deploy runtime's activation quantization, simulated during a fine-tune.

An integer runtime quantizes each integer Linear's *input* as it runs, and no weight fine-tune sees that
rounding unless the forward applies it too. FinetuneConfig.activations names the runtime whose arithmetic
the fine-tune reproduces at the input of every Linear that runtime runs on integer kernels (weights at
<= 8 bits with one scale per output channel: measure/runtime.py's `int8_runtime`, the ONNX export's
MatMulInteger rewrite and gpu_runtime.py's `Int8Linear` pick the same layers):

  "int8"         torch's dynamic int8 Linear (fbgemm/x86): per tensor and per batch, asymmetric over the
                 range [min(0, lo), max(0, hi)] in 128 steps (the kernel's reduce_range: 7-bit inputs);
  "int8-full"    the same kernel with 8-bit inputs (the "int8-full" runtime): the range in 256 steps;
  "onnxruntime"  ONNX Runtime's DynamicQuantizeLinear: the same range in 256 steps (uint8);
  "cuda-int8"    `Int8Linear`: per row, symmetric, amax / 127 (int8);
  "float"        nothing simulated (the default, and what files without the field read as);
  "auto"         the runtime the model is measured on, where it is one of the four (else "float"):
                 the search's study runtime, a recipe's `measure_runtime`.

The rounding is straight-through (its gradient is the identity), as for the weights' fake quantization.
"onnxruntime-static" fixes its scales from calibration batches; it is not simulated (runs "float").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..measure.runtime import integer_linears

# runtime (as `measure` takes it, or as a Measurement records it) -> the mode that simulates it
SIMULATED = {
    "int8": "int8",
    "int8-dynamic": "int8",
    "int8-full": "int8-full",
    "onnxruntime": "onnxruntime",
    "cuda-int8": "cuda-int8",
}


def resolve(activations: str, runtime: str | None) -> str:
    """The mode a fine-tune runs: `activations`, or for "auto" the one `runtime` computes ("float" if none)."""
    if activations != "auto":
        return activations
    return SIMULATED.get(runtime or "", "float")


def _straight_through(x: Tensor, q: Tensor) -> Tensor:
    return x + (q - x).detach()


def per_tensor(x: Tensor, levels: int) -> Tensor:
    """Asymmetric per-tensor rounding over [min(0, lo), max(0, hi)] in `levels` - 1 steps, the zero point
    rounded and clamped to [0, levels - 1] (fbgemm's and DynamicQuantizeLinear's choice of parameters)."""
    top = levels - 1
    d = x.detach()
    lo = d.amin().clamp(max=0.0)
    hi = d.amax().clamp(min=0.0)
    scale = ((hi - lo) / top).clamp(min=torch.finfo(d.dtype).tiny)
    zero = torch.round(-lo / scale).clamp(0, top)
    q = (torch.round(x / scale) + zero).clamp(0, top)
    return _straight_through(x, (q - zero) * scale)


def per_row(x: Tensor) -> Tensor:
    """Symmetric int8 rounding of each row (last dimension) by its amax / 127 (Int8Linear's)."""
    scale = x.detach().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127.0
    return _straight_through(x, torch.round(x / scale).clamp(-127, 127) * scale)


ROUNDING: dict[str, Callable[[Tensor], Tensor]] = {
    "int8": lambda x: per_tensor(x, 128),
    "int8-full": lambda x: per_tensor(x, 256),
    "onnxruntime": lambda x: per_tensor(x, 256),
    "cuda-int8": per_row,
}


class ActivationRounding:
    """Forward pre-hooks rounding the inputs of `integer_linears(model)` as `mode` computes them.
    `attach` (again after a structured round replaced layers) hooks the current ones; `detach` removes all."""

    def __init__(self, mode: str) -> None:
        self.rounding = ROUNDING.get(mode)
        self.handles: list[Any] = []

    def attach(self, model: nn.Module) -> int:
        self.detach()
        if self.rounding is None:
            return 0
        rounding = self.rounding

        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (rounding(args[0]), *args[1:])

        for name in integer_linears(model):
            self.handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
        return len(self.handles)

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
