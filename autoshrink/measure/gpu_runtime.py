"""GPU runtimes of a compressed model: "cuda-graph" and "cuda-int8".

Both run the materialized model in float16 on a CUDA device, captured as CUDA graphs (one per input
shape, up to GRAPH_SHAPES; other shapes run the same float16 modules eagerly), so a small model is no
longer bound by kernel launches. Linear layers whose weight is 2:4 sparse (sparsity "2:4") run
`to_sparse_semi_structured` (cuSPARSELt, else CUTLASS) where their shape meets the kernel's
multiples. "cuda-int8" also runs every Linear at <= 8 bits with one scale per output channel as an
integer matmul (`torch._int_mm`: our exact int8 codes, activations quantized per row to int8, int32
accumulation, both scales applied after; `Int8Linear`). Accuracy is measured through the same runtime.

`kernel_plan` says, per compressed layer, which kernel it runs and where none runs its compression fast
("simulated: ..."): codes below 8 bits on "cuda-graph", unstructured zeros, codebooks, group-wise scales,
2:4 layers of unsupported shapes. `Measurement.simulated` carries those lines. No GPU: `require_gpu`
refuses with the fix. FP8 (`torch._scaled_mm`) is not wired: docs/deployment.md says so.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..inputs import call, is_mapping, logits, to_device
from ..weights import per_channel, weight_bits, weight_codebook, weight_parametrizations, weight_quantizer
from ..weights.parametrize import PruneMask
from .runtime import _plain_type, materialize

GPU_RUNTIMES = ("cuda-graph", "cuda-int8")
GRAPH_SHAPES = 8  # input shapes captured as graphs per runtime copy; further shapes run eagerly
HALF = torch.float16
INT8_MIN_ROWS = 17  # torch._int_mm on CUDA needs more than 16 rows: fewer are padded with zero rows
INT8_MULTIPLE = 8  # ... and inner / output sizes that are multiples of 8: codes are padded with zeros to them


def gpu_available(device: torch.device) -> bool:
    """Whether `device` is a CUDA device torch can use here."""
    return device.type == "cuda" and torch.cuda.is_available()


def require_gpu(runtime: str, device: torch.device, where: str) -> None:
    """Refuse a GPU runtime where there is no usable CUDA device (a ConfigError with the fix)."""
    if gpu_available(device):
        return
    why = (
        "torch sees no CUDA GPU on this machine (torch.cuda.is_available() is False)"
        if not torch.cuda.is_available()
        else f"the task's device is {device}"
    )
    raise ConfigError(
        f"{where}: runtime={runtime!r} runs on an NVIDIA GPU, but {why}. Fix: on a machine with a CUDA GPU "
        "give the task device='cuda'; here use runtime 'float', 'int8' or 'onnxruntime'."
    )


def gpu_versions() -> dict[str, str]:
    """The versions a GPU runtime's numbers depend on, as this process sees them (a study records them)."""
    backend = getattr(torch.backends, "cusparselt", None)
    sparse = backend.version() if backend is not None and backend.is_available() else None
    return {
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "cusparselt": str(sparse) if sparse is not None else "not available",
    }


def _sparse_class() -> type:
    """The semi-structured tensor class `to_sparse_semi_structured` will build (cuSPARSELt where torch
    has it, else CUTLASS)."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    return SparseSemiStructuredTensorCUSPARSELT if _cusparselt() else SparseSemiStructuredTensorCUTLASS


def _cusparselt() -> bool:
    backend = getattr(torch.backends, "cusparselt", None)
    return bool(backend is not None and backend.is_available())


def sparse_shape_fits(shape: tuple[int, ...], dtype: torch.dtype = HALF) -> str | None:
    """Why a weight of `shape` cannot run the 2:4 kernel in `dtype`, or None."""
    limits = _sparse_class()._DTYPE_SHAPE_CONSTRAINTS[dtype]
    rows, cols = shape
    if rows % limits.sparse_min_rows or cols % limits.sparse_min_cols:
        return (
            f"the 2:4 kernel needs {limits.sparse_min_rows}k x {limits.sparse_min_cols}k weights, this one is "
            f"{rows} x {cols}: it runs dense"
        )
    return None


def _pattern(module: nn.Module) -> str:
    pm = next((p for p in weight_parametrizations(module) if isinstance(p, PruneMask)), None)
    return "" if pm is None else pm.pattern


def _masked(module: nn.Module) -> bool:
    return any(isinstance(p, PruneMask) for p in weight_parametrizations(module))


def _int8_kernel(module: nn.Module) -> str | None:
    """Why a Linear at <= 8 bits cannot run Int8Linear, or None."""
    if weight_codebook(module) is not None:
        return "codebook values run as float16 weights"
    if not per_channel(module):
        return f"group-wise scales (group_size {weight_quantizer(module).group_size}) run as float16 weights"
    return None


def kernel_plan(model: nn.Module, runtime: str) -> dict[str, str]:
    """Per compressed weight layer (by module name): the kernel it runs on `runtime` ("int8",
    "2:4 sparse float16", "float16"), or "simulated: why" where its compression runs as plain float16
    weights. Layers made smaller (structured, low-rank) are real layers and run "float16"."""
    if runtime not in GPU_RUNTIMES:
        raise ValueError(f"kernel_plan: runtime must be one of {GPU_RUNTIMES}, got {runtime!r}")
    plan: dict[str, str] = {}
    for name, m in model.named_modules():
        if not weight_parametrizations(m):
            continue
        linear = _plain_type(m) is nn.Linear
        bits = weight_bits(m)
        codebook = weight_codebook(m) is not None
        pattern = _pattern(m)
        why = []
        kernel = "float16"
        if runtime == "cuda-int8" and linear and (2 <= bits <= 8 or codebook):
            reason = _int8_kernel(m)
            if reason is None:
                kernel = "int8"
                if pattern:
                    why.append("the 2:4 pattern is not used by the int8 matmul")
            else:
                why.append(reason)
        elif 2 <= bits <= 8 or codebook:
            why.append(
                f"{bits}-bit codes run as float16 weights"
                + (" (cuda-int8 runs <= 8-bit Linear layers as int8)" if runtime == "cuda-graph" and linear else "")
                if not codebook
                else "codebook values run as float16 weights"
            )
        if pattern and kernel != "int8":
            reason = sparse_shape_fits(tuple(m.weight.shape)) if linear else "2:4 kernels run Linear layers only"
            if reason is None:
                kernel = "2:4 sparse float16"
            else:
                why.append(reason)
        elif _masked(m) and not pattern:
            why.append("unstructured zeros run dense")
        plan[name] = kernel if not why else f"{kernel}; simulated: {'; '.join(why)}"
    return plan


def _up(n: int) -> int:
    return -(-n // INT8_MULTIPLE) * INT8_MULTIPLE


class Int8Linear(nn.Module):
    """y = (q(x) @ codes^T) * s_x * s_w + b: int8 codes with one scale per output channel, the input
    quantized per row (symmetric, 127 levels) at every call, int32 accumulation (`torch._int_mm`). Sizes
    that are not multiples of 8 are padded with zero codes and zero inputs (the sums do not change)."""

    def __init__(self, codes: Tensor, scales: Tensor, bias: Tensor | None, dtype: torch.dtype = HALF) -> None:
        super().__init__()
        self.in_features, self.out_features = codes.shape[1], codes.shape[0]
        padded = torch.zeros(_up(codes.shape[0]), _up(codes.shape[1]), dtype=torch.int8)
        padded[: codes.shape[0], : codes.shape[1]] = codes.to(torch.int8)
        self.register_buffer("codes", padded)  # (out, in) padded; passed transposed: the column-major
        # right operand cuBLASLt's int8 kernels take (a "TN" product)
        self.register_buffer("scales", scales.reshape(1, -1).float())
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        n = rows.shape[0]
        pad_rows = INT8_MIN_ROWS - n if n < INT8_MIN_ROWS and rows.is_cuda else 0
        pad_cols = self.codes.shape[1] - self.in_features
        if pad_rows or pad_cols:
            rows = torch.nn.functional.pad(rows, (0, pad_cols, 0, pad_rows))
        amax = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        sx = amax / 127.0
        q = torch.round(rows / sx).clamp_(-127, 127).to(torch.int8)
        acc = torch._int_mm(q, self.codes.t())[:n, : self.out_features]
        y = acc.float() * sx[:n] * self.scales
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype if x.is_floating_point() else self.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 codes, per-channel scales"


def int8_linear(module: nn.Module) -> Int8Linear:
    """The Int8Linear of a parametrized Linear at <= 8 bits with per-channel scales (its exact codes)."""
    fq = weight_quantizer(module)
    codes, scales = fq.codes(module.weight.detach())
    return Int8Linear(codes, scales.reshape(-1), module.bias)


def gpu_model(model: nn.Module, runtime: str, device: torch.device) -> tuple[nn.Module, dict[str, str]]:
    """The float16 module `runtime` runs (2:4 and int8 layers swapped in per `kernel_plan`), and the plan."""
    plan = kernel_plan(model, runtime)
    plain = materialize(model).to(dtype=HALF)
    for name, kernel in plan.items():  # after the cast: their scales stay float32
        if kernel.startswith("int8"):
            _replace(plain, name, int8_linear(model.get_submodule(name)))
    plain = plain.to(device=device)
    for name, kernel in plan.items():
        if kernel.startswith("2:4 sparse"):
            from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

            SparseSemiStructuredTensor._FORCE_CUTLASS = not _cusparselt()
            layer = plain.get_submodule(name)
            layer.weight = nn.Parameter(to_sparse_semi_structured(layer.weight.detach()), requires_grad=False)
    return plain.eval(), plan


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


class GraphedModule(nn.Module):
    """Runs `module` through CUDA graphs: one captured per input shape (up to GRAPH_SHAPES), inputs
    copied into the graph's static tensors, the output (logits) cloned as float32. `deploy_call(x)`:
    what a deployment runs, the replay alone (inputs already in place)."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.module = module
        self.device = device
        self._graphs: dict[Any, tuple[torch.cuda.CUDAGraph, Any, Tensor] | None] = {}
        self.plan: dict[str, str] = {}  # kernel_plan of the model it runs
        self.not_captured = ""  # why a shape could not be captured (it then runs eagerly), if one could not

    @property
    def notes(self) -> tuple[str, ...]:
        """Measurement.simulated: the plan's layers without a fast kernel, and a failed capture."""
        lines = [f"{name}: {kernel}" for name, kernel in self.plan.items() if "simulated" in kernel]
        return tuple(lines + ([f"(whole model): {self.not_captured}"] if self.not_captured else []))

    @staticmethod
    def _key(x: Any) -> Any:
        items = sorted(x.items()) if is_mapping(x) else [("", x)]
        return tuple((k, tuple(v.shape), v.dtype) for k, v in items)

    def _prepare(self, x: Any) -> Any:
        x = to_device(x, self.device)
        cast = lambda t: t.to(HALF) if t.is_floating_point() else t  # noqa: E731
        return {k: cast(v) for k, v in x.items()} if is_mapping(x) else cast(x)

    def _graph(self, x: Any) -> tuple[torch.cuda.CUDAGraph, Any, Tensor] | None:
        key = self._key(x)
        if key in self._graphs or self.not_captured:
            return self._graphs.get(key)
        if len(self._graphs) >= GRAPH_SHAPES:
            return None
        static = {k: v.clone() for k, v in x.items()} if is_mapping(x) else x.clone()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # warm-up outside the graph (cuBLAS / cuSPARSELt workspaces, lazy init)
                logits(call(self.module, static))
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.inference_mode(), torch.cuda.graph(graph):
                out = logits(call(self.module, static))
        except RuntimeError as exc:  # e.g. a forward that reads a tensor's value on the host (a sync)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.not_captured = f"float16 eager; simulated: not captured as a CUDA graph ({first})"
            self._graphs[key] = None
            return None
        self._graphs[key] = (graph, static, out)
        return self._graphs[key]

    def _copy_in(self, static: Any, x: Any) -> None:
        if is_mapping(x):
            for k, v in x.items():
                static[k].copy_(v)
        else:
            static.copy_(x)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        x = kwargs if kwargs else args[0]
        x = self._prepare(x)
        entry = self._graph(x)
        if entry is None:
            with torch.inference_mode():
                return logits(call(self.module, x)).float()
        graph, static, out = entry
        self._copy_in(static, x)
        graph.replay()
        return out.float().clone()

    def deploy_call(self, x: Any) -> Callable[[], Any]:
        x = self._prepare(x)
        entry = self._graph(x)
        if entry is None:
            return lambda: call(self.module, x)
        graph, static, _ = entry
        self._copy_in(static, x)
        return graph.replay


def gpu_runtime(model: nn.Module, runtime: str, device: torch.device) -> tuple[GraphedModule, dict[str, str]]:
    """`model` (parametrizations in place) as `runtime` runs it on `device`, and its kernel plan."""
    require_gpu(runtime, device, "measure")
    module, plan = gpu_model(copy.deepcopy(model), runtime, device)
    graphed = GraphedModule(module, device)
    graphed.plan = plan
    return graphed, plan
