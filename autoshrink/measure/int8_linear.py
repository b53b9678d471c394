"""torch's dynamic int8 Linear with 8-bit inputs where this CPU's kernel computes them exactly.

torch's `DynamicQuantizedLinear` always quantizes its input to 7 bits (reduce_range=True): x86 kernels
without VNNI multiply-add pairs of uint8 x int8 products into int16, which 8-bit inputs can overflow.
Kernels with VNNI accumulate in int32 and cannot. `input_levels()` probes the kernel once per engine with
the worst case (every input at the top code, weights at +127 and -128) and says which width is exact here;
`FullRangeLinear` is the module that runs 8-bit inputs. Imported lazily: only the int8 runtime uses it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.ao.nn.quantized.dynamic as nnqd
from torch import Tensor


class FullRangeLinear(nnqd.Linear):
    """The same packed weights and kernel, the input quantized to 8 bits (256 levels) per tensor."""

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
        return y.to(x.dtype)

    def _get_name(self) -> str:
        return "DynamicQuantizedLinear(8-bit inputs)"


def per_channel_weight(codes: Tensor, scales: Tensor) -> Tensor:
    """A qint8 weight from int8 codes (out, in) and one scale per output channel."""
    with warnings.catch_warnings():  # torch 2.13 flags quantized-tensor creation as deprecated
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return torch._make_per_channel_quantized_tensor(
            codes.cpu(), scales.double().cpu(), torch.zeros(codes.shape[0], dtype=torch.long), 0
        )


def exact_at_full_range(kernel: Callable[..., Tensor]) -> bool:
    """Whether `kernel` (torch.ops.quantized.linear_dynamic's signature) computes the worst case exactly
    with 8-bit inputs: 64 inputs at the top code against weights of +127 and -128 codes, whose pairwise
    uint8 x int8 sums overflow int16 (255 * 127 * 2 > 32767) in kernels without VNNI."""
    codes = torch.empty(2, 64, dtype=torch.int8)
    codes[0], codes[1] = 127, -128
    x = torch.full((2, 64), 10.0)  # range [0, 10]: every input at the top code
    try:
        packed = torch.ops.quantized.linear_prepack(per_channel_weight(codes, torch.tensor([1 / 127, 1 / 128])), None)
        y = kernel(x, packed, reduce_range=False)
    except RuntimeError:  # no quantized engine here, or no such kernel: torch's 7-bit inputs
        return False
    return torch.allclose(y.float(), torch.tensor([[640.0, -640.0]] * 2), rtol=1e-3)  # 64 inputs of 10 times +-1


@functools.cache
def _levels(engine: str) -> int:
    return 256 if exact_at_full_range(torch.ops.quantized.linear_dynamic) else 128


def input_levels() -> int:
    """256 where the engine's dynamic int8 Linear is exact with 8-bit inputs on this CPU, else 128."""
    return _levels(torch.backends.quantized.engine)
