"""Materialized runtimes of a compressed model: what actually runs when it is deployed.

"float": parametrizations baked into plain float weights (low-rank factors and structurally pruned
layers are real smaller layers). "int8-dynamic": additionally, every nn.Linear quantized to <= 8 bits
with one scale per output channel runs torch's dynamic int8 kernel (int8 weights with our exact codes
and per-channel scales, activations quantized per batch: to torch's 7 bits, or to 8 with `full` -- the
"int8-full" runtime, where this CPU's kernel computes them exactly; measure/int8_linear.py) -- only on CPU,
where the x86/fbgemm backend has the kernel. Layers with group-wise scales run float (the kernel has one
scale per channel).
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..weights import per_channel, strip_parametrizations, weight_bits, weight_quantizer

INT8_ENGINES = ("x86", "fbgemm", "qnnpack")
DEPLOY_RUNTIMES = ("float", "int8", "int8-full", "onnxruntime", "onnxruntime-static", "cuda-graph", "cuda-int8")

_deployed: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def set_deploy_runtime(model: nn.Module, runtime: str) -> None:
    """Remember the runtime `model` is deployed on (one of DEPLOY_RUNTIMES): `measure(model, task)` then uses
    it by default. Kept beside the model (weakly), not in it: packing and state_dicts do not change."""
    if runtime not in DEPLOY_RUNTIMES:
        raise ValueError(f"deploy runtime must be one of {DEPLOY_RUNTIMES}, got {runtime!r}")
    _deployed[model] = runtime


def deploy_runtime(model: nn.Module) -> str | None:
    """The runtime recorded by `set_deploy_runtime` for this model object, or None."""
    return _deployed.get(model)


def materialize(model: nn.Module) -> nn.Module:
    """A copy of `model` with masks and fake quantization baked into plain weights (eval mode)."""
    return strip_parametrizations(copy.deepcopy(model)).eval()


def _plain_type(module: nn.Module) -> type:
    """The module's own class (parametrization injects a subclass)."""
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


def integer_linears(model: nn.Module) -> list[str]:
    """The Linear layers integer kernels run: weights at <= 8 bits with one scale per output channel
    (group-wise scales run float). The int8 runtime converts these; the ONNX export and "cuda-int8" pick
    the same; a fine-tune simulating their activation rounding hooks them (train/activations.py)."""
    return [
        n for n, m in model.named_modules() if _plain_type(m) is nn.Linear and weight_bits(m) <= 8 and per_channel(m)
    ]


def int8_available(device: torch.device) -> bool:
    return device.type == "cpu" and torch.backends.quantized.engine in INT8_ENGINES


def int8_full_available(device: torch.device) -> bool:
    """Whether "int8-full" runs here: int8 kernels that compute 8-bit inputs exactly (probed once)."""
    if not int8_available(device):
        return False
    from .int8_linear import input_levels  # lazily: it imports torch's quantized modules

    return input_levels() == 256


def require_int8_full(device: torch.device, where: str) -> None:
    """ConfigError naming the fix unless "int8-full" runs on `device` (`where`: "measure", "search")."""
    if not int8_full_available(device):
        raise ConfigError(
            f"{where}: runtime='int8-full' needs int8 kernels that compute 8-bit inputs exactly (x86 with VNNI), and "
            f"the device ({device}, engine {torch.backends.quantized.engine!r}) has none; use runtime='int8' "
            "(torch's 7-bit inputs)."
        )


def int8_runtime(model: nn.Module, device: torch.device, *, full: bool = False) -> nn.Module | None:
    """A copy of `model` whose <=8-bit Linear layers use dynamic int8 kernels (`full`: with 8-bit inputs,
    which the caller has checked with `int8_full_available`); None if none apply."""
    if not int8_available(device):
        return None
    targets = integer_linears(model)
    if not targets:
        return None
    import torch.ao.nn.quantized.dynamic as nnqd  # imported lazily: only used here

    from .int8_linear import FullRangeLinear, per_channel_weight

    kind = FullRangeLinear if full else nnqd.Linear

    plain = materialize(model).to(device)
    original = dict(model.named_modules())
    for name in targets:
        src = original[name]
        codes, scales = weight_quantizer(src).codes(src.weight.detach())
        qweight = per_channel_weight(codes, scales.reshape(-1))
        layer = plain.get_submodule(name)
        q = kind(layer.in_features, layer.out_features, bias_=layer.bias is not None, dtype=torch.qint8)
        q.set_weight_bias(qweight, None if layer.bias is None else layer.bias.detach().float().cpu())
        parent_name, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent_name) if parent_name else plain, child, q)
    return plain.eval()
