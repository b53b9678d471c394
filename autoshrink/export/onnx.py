"""ONNX export of a compressed model: standard ONNX that ONNX Runtime runs with int8 kernels.

What the file holds:
- low-rank and structurally pruned layers as the smaller layers they are (the materialized model);
- every weight quantized to 2..8 bits as an **int8 initializer of its exact codes** with its
  per-output-channel scales, dequantized by a `DequantizeLinear` (axis 0, zero point 0) in QDQ form,
  so the decoded weights are bitwise the ones the PyTorch model computes with; pruned weights are
  code 0;
- float16 weights (bits 16) as float16 initializers and a `Cast` to float32;
- the batch axis of every input and output dynamic.

`activations` says how the quantized layers run:
- "dynamic" (default): each `nn.Linear` with <= 8-bit weights becomes
  `DynamicQuantizeLinear` (activations to uint8 per batch) -> `MatMulInteger` with the int8 codes
  -> scaled back to float (`x_scale * channel scales`) -> bias: ONNX Runtime's integer GEMM, as
  `onnxruntime.quantization.quantize_dynamic` would emit, but with autoshrink's codes and scales.
  Other quantized layers (convolutions, embeddings) keep their QDQ weights and float compute.
- "static": the same integer GEMM with the activations' uint8 scale and zero point fixed ahead of
  time from calibration batches (`calibration=`: a few batches of training inputs; the range each
  such Linear's input spans over them, widened to hold 0, as `DynamicQuantizeLinear` would compute it)
  -> `QuantizeLinear` with constant scale -> `MatMulInteger` -> one constant rescale: no per-batch
  min/max. Inputs outside the calibrated range saturate.
- "weights": QDQ weights only, float compute everywhere (exact up to float summation order).
Tolerance (tested): "weights" with ORT's basic graph optimizations -- outputs within
1e-5 x (1 + max |output|) of the PyTorch model (float summation order only); at ORT's full
optimizations ORT may fuse DequantizeLinear -> MatMul into its own quantized kernel (MatMulNBits),
which moved outputs by 0.3 % of their range on an MLP. "dynamic" -- activations are rounded to 8
bits per batch (a uint8 grid over the batch's range), so outputs move by up to a few percent of
their range: the tests bound the difference by 5 % of (1 + max |output|) and require the top-1
prediction to agree on >= 98 % of real eval samples. "static" is held to the same bounds, calibrated on
training batches.
"""
from __future__ import annotations

import copy
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, describe
from ..techniques.weights import quantize_codes, strip_parametrizations, weight_bits, weight_parametrizations

OPSET = 17
ACTIVATIONS = ("dynamic", "static", "weights")


class ExportError(ConfigError):
    """A model cannot be written as ONNX (an operator the exporter or ONNX Runtime lacks, a bad input)."""


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote: the file, its size, and how each compressed layer is represented."""

    path: str
    size_bytes: int
    opset: int
    activations: str
    int8_kernels: tuple[str, ...]  # layers running ONNX Runtime's integer GEMM (MatMulInteger)
    qdq_weights: tuple[str, ...]  # layers whose int8 weights are dequantized to float (QDQ)
    float16_weights: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _onnx():
    try:
        import onnx  # noqa: F401
        from onnx import helper, numpy_helper  # noqa: F401
    except ImportError as e:  # pragma: no cover - the extra is installed by make
        raise ExportError("ONNX export needs the onnx package: pip install 'autoshrink[onnx]'.") from e
    return onnx


def _quantized_weights(model: nn.Module) -> dict[str, int]:
    """'<module>.weight' -> bits for every weight stored below 32 bits."""
    out = {}
    for name, module in model.named_modules():
        if weight_parametrizations(module):
            bits = weight_bits(module)
            if bits < 32:
                out[f"{name}.weight" if name else "weight"] = bits
    return out


def _example_tuple(example_input: Any) -> tuple[torch.Tensor, ...]:
    items = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise ExportError(f"export_onnx: example_input={describe(example_input)}; pass a tensor (or a tuple of "
                          "tensors) shaped like one batch of the model's input, e.g. task.example_input.")
    if any(t.dim() == 0 for t in items):
        raise ExportError("export_onnx: example_input has a 0-d tensor; it needs a batch dimension (dim 0).")
    return items


def _torch_export(plain: nn.Module, example: tuple[torch.Tensor, ...], opset: int) -> "Any":
    """The float graph from torch's TorchScript-based exporter (initializers keep the state_dict names)."""
    onnx = _onnx()
    inputs = ["input" if len(example) == 1 else f"input_{i}" for i in range(len(example))]
    try:
        with torch.no_grad():
            y = plain(*example)
    except Exception as e:  # noqa: BLE001 - one clear error
        raise ExportError(f"export_onnx: the model fails on example_input ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); pass one batch shaped like its input.") from e
    n_out = len(y) if isinstance(y, (tuple, list)) else 1
    outputs = ["output" if n_out == 1 else f"output_{i}" for i in range(n_out)]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices; errors still raise
        try:
            with torch.no_grad():
                torch.onnx.export(plain, example, buf, dynamo=False, input_names=inputs, output_names=outputs,
                                  dynamic_axes={n: {0: "batch"} for n in inputs}, do_constant_folding=False,
                                  opset_version=opset)
        except Exception as e:  # noqa: BLE001 - re-raised as one clear error
            raise ExportError(f"export_onnx: torch's ONNX exporter cannot export {type(plain).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. Fix: replace the "
                              "unsupported operation in the model's forward, or deploy the .ashz file.") from e
    model = onnx.load_from_string(buf.getvalue())
    for out in model.graph.output:  # the batch axis of every output is dynamic too
        dims = out.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    return model


class _Graph:
    """Small helpers over an onnx GraphProto being rewritten."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.model = model
        self.g = model.graph
        self.np = numpy_helper
        self.inits = {i.name: i for i in self.g.initializer}
        self.counter = 0

    def array(self, name: str) -> np.ndarray:
        return self.np.to_array(self.inits[name])

    def add_init(self, name: str, value: np.ndarray) -> str:
        t = self.np.from_array(value, name)
        self.g.initializer.append(t)
        self.inits[name] = t
        return name

    def drop_init(self, name: str) -> None:
        self.g.initializer.remove(self.inits.pop(name))

    def consumers(self, name: str) -> list[Any]:
        return [n for n in self.g.node if name in n.input]

    def producer(self, name: str) -> Any:
        return next((n for n in self.g.node if name in n.output), None)

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}__ash{self.counter}"


def _dequantize_weights(graph: _Graph, quantized: dict[str, int], model: nn.Module
                        ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Replace each quantized weight initializer by its int8 codes + scales and a DequantizeLinear (or
    float16 + Cast). Returns weight name -> (codes, scales) for the int8 ones, and the float16 names."""
    from onnx import TensorProto, helper

    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    codes_of: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    halves: list[str] = []
    new_nodes = []
    for name, bits in quantized.items():
        if name not in graph.inits:
            raise ExportError(f"export_onnx: the quantized weight {name!r} is not an initializer of the exported "
                              "graph (the model's forward reshapes or reuses it in a way the exporter folded). "
                              "Fix: export a model whose layers use their weight directly.")
        weight = params.get(name, buffers.get(name))
        if weight is None:
            raise ExportError(f"export_onnx: {name!r} has no tensor in the model.")
        graph.drop_init(name)
        if bits == 16:
            graph.add_init(f"{name}_fp16", weight.detach().cpu().numpy().astype(np.float16))
            new_nodes.append(helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT,
                                              name=f"{name}_cast"))
            halves.append(name.rsplit(".weight", 1)[0])
            continue
        codes, scales = quantize_codes(weight.detach().cpu(), bits)
        c, s = codes.numpy().astype(np.int8), scales.numpy().astype(np.float32)
        codes_of[name] = (c, s)
        graph.add_init(f"{name}_quantized", c)
        graph.add_init(f"{name}_scale", s)
        graph.add_init(f"{name}_zero_point", np.zeros(s.shape, dtype=np.int8))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_quantized", f"{name}_scale",
                                                                f"{name}_zero_point"], [name], axis=0,
                                          name=f"{name}_dequantize"))
    for i, n in enumerate(new_nodes):  # before every consumer: a valid topological order
        graph.g.node.insert(i, n)
    return codes_of, halves


def _calibrate(plain: nn.Module, modules: Sequence[str], batches: Sequence[Any]) -> dict[str, tuple[float, int]]:
    """The uint8 (scale, zero point) of each named module's input over the calibration batches: the
    range [min(0, lo), max(0, hi)] over 255 steps, as DynamicQuantizeLinear computes it per batch."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    hooks = []
    for name in modules:
        def seen(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            x = args[0].detach()
            lo[name] = min(lo.get(name, 0.0), float(x.min()))
            hi[name] = max(hi.get(name, 0.0), float(x.max()))
        hooks.append(plain.get_submodule(name).register_forward_pre_hook(seen))
    try:
        with torch.inference_mode():
            for batch in batches:
                plain(*_example_tuple(batch))
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name in modules:
        a, b = lo.get(name, 0.0), hi.get(name, 0.0)
        scale = (b - a) / 255.0 if b > a else 1.0
        out[name] = (scale, int(np.clip(round(-a / scale), 0, 255)))
    return out


def _integer_gemm(graph: _Graph, weight: str, codes: np.ndarray, static: tuple[float, int] | None = None) -> bool:
    """Rewrite the Linear that consumes `weight` (Gemm transB=1, or Transpose -> MatMul [-> Add]) into
    DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> (Add bias), or with `static` (the
    activations' calibrated scale and zero point) QuantizeLinear -> MatMulInteger -> Cast -> Mul by the
    constant product of the scales -> (Add bias). False where the pattern differs."""
    from onnx import TensorProto, helper

    users = graph.consumers(weight)
    if len(users) != 1 or codes.ndim != 2:
        return False
    node = users[0]
    bias = None
    if node.op_type == "Gemm" and node.input[1] == weight:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or not attrs.get("transB", 0) or attrs.get("alpha", 1.0) != 1.0 or \
                attrs.get("beta", 1.0) != 1.0:
            return False
        x, out = node.input[0], node.output[0]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        removed = [node]
    elif node.op_type == "Transpose":
        mm = graph.consumers(node.output[0])
        if len(mm) != 1 or mm[0].op_type != "MatMul" or mm[0].input[1] != node.output[0]:
            return False
        x, out = mm[0].input[0], mm[0].output[0]
        removed = [node, mm[0]]
    else:
        return False
    stem = weight.rsplit(".weight", 1)[0]
    wt = graph.add_init(f"{weight}_quantized_t", np.ascontiguousarray(codes.T))  # [in, out]
    wzp = graph.add_init(f"{weight}_zero_point_scalar", np.zeros((), dtype=np.int8))
    xq, xs, xz = graph.fresh(f"{stem}_x_q"), graph.fresh(f"{stem}_x_scale"), graph.fresh(f"{stem}_x_zero_point")
    acc, accf, scale = graph.fresh(f"{stem}_int32"), graph.fresh(f"{stem}_int32_float"), graph.fresh(f"{stem}_scale")
    mm_out = graph.fresh(f"{stem}_matmul") if bias else out
    if static is None:
        nodes = [helper.make_node("DynamicQuantizeLinear", [x], [xq, xs, xz], name=graph.fresh(f"{stem}_quantize_x")),
                 helper.make_node("Mul", [xs, f"{weight}_scale"], [scale], name=graph.fresh(f"{stem}_scales"))]
    else:
        xs = graph.add_init(xs, np.array(static[0], dtype=np.float32))
        xz = graph.add_init(xz, np.array(static[1], dtype=np.uint8))
        scale = graph.add_init(scale, (graph.array(f"{weight}_scale") * np.float32(static[0])).astype(np.float32))
        nodes = [helper.make_node("QuantizeLinear", [x, xs, xz], [xq], name=graph.fresh(f"{stem}_quantize_x"))]
    nodes += [helper.make_node("MatMulInteger", [xq, wt, xz, wzp], [acc], name=graph.fresh(f"{stem}_matmul_integer")),
              helper.make_node("Cast", [acc], [accf], to=TensorProto.FLOAT, name=graph.fresh(f"{stem}_cast")),
              helper.make_node("Mul", [accf, scale], [mm_out], name=graph.fresh(f"{stem}_rescale"))]
    if bias:
        nodes.append(helper.make_node("Add", [mm_out, bias], [out], name=graph.fresh(f"{stem}_bias")))
    at = min(list(graph.g.node).index(n) for n in removed)
    for n in removed:
        graph.g.node.remove(n)
    for i, n in enumerate(nodes):
        graph.g.node.insert(at + i, n)
    dq = graph.producer(weight)  # the weight's DequantizeLinear has no consumer left
    if dq is not None and not graph.consumers(weight):
        graph.g.node.remove(dq)
        graph.drop_init(f"{weight}_quantized")
        graph.drop_init(f"{weight}_zero_point")
        if not graph.consumers(f"{weight}_scale"):  # static: folded into the constant rescale
            graph.drop_init(f"{weight}_scale")
    return True


def to_onnx(model: nn.Module, example_input: Any, *, activations: str = "dynamic", opset: int = OPSET,
            calibration: Sequence[Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The compressed model as an onnx ModelProto, and what was done to each compressed layer.
    `calibration`: input batches (tensors or tuples of tensors) for activations="static"."""
    if activations not in ACTIVATIONS:
        raise ExportError(f"export_onnx: activations={activations!r}; use one of {', '.join(ACTIVATIONS)} "
                          "(dynamic: int8 kernels for quantized Linear layers, activations quantized per batch; "
                          "static: the same with calibrated activation scales; weights: QDQ weights, float compute).")
    if activations == "static" and (calibration is None or isinstance(calibration, torch.Tensor)
                                    or len(calibration) == 0):
        raise ExportError("export_onnx: activations='static' needs calibration=[a few input batches] (e.g. training "
                          "inputs) to fix the activations' scales; or use activations='dynamic'.")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 21:
        raise ExportError(f"export_onnx: opset={opset!r}; use an ONNX opset between 13 and 21 (default {OPSET}).")
    example = _example_tuple(example_input)
    quantized = _quantized_weights(model)
    plain = strip_parametrizations(copy.deepcopy(model)).eval().cpu()  # the float runtime's materialized model
    proto = _torch_export(plain, tuple(t.detach().cpu() for t in example), opset)
    graph = _Graph(proto)
    codes_of, halves = _dequantize_weights(graph, quantized, plain)
    linear = {f"{n}.weight" for n, m in plain.named_modules() if isinstance(m, nn.Linear)}
    int8 = []
    if activations in ("dynamic", "static"):
        gemm = [n for n in codes_of if n in linear]
        static = (_calibrate(plain, [n.rsplit(".weight", 1)[0] for n in gemm], calibration)
                  if activations == "static" else {})
        for name in gemm:
            stem = name.rsplit(".weight", 1)[0]
            if _integer_gemm(graph, name, codes_of[name][0], static.get(stem)):
                int8.append(stem)
    qdq = [n.rsplit(".weight", 1)[0] for n in codes_of if n.rsplit(".weight", 1)[0] not in int8]
    onnx = _onnx()
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001 - an internal rewrite bug must not ship a broken file
        raise ExportError(f"export_onnx: the rewritten graph is not valid ONNX ({e}); please report it.") from e
    info = {"int8_kernels": tuple(int8), "qdq_weights": tuple(qdq), "float16_weights": tuple(halves),
            "inputs": tuple(i.name for i in proto.graph.input), "outputs": tuple(o.name for o in proto.graph.output)}
    return proto, info


def export_onnx(model: nn.Module, path: str | os.PathLike, *, example_input: Any, activations: str = "dynamic",
                opset: int = OPSET, calibration: Sequence[Any] | None = None) -> OnnxExport:
    """Write the compressed `model` as ONNX to `path` (see the module docstring for what the file holds;
    `calibration`: input batches for activations="static").
    The file is written to a temporary name and renamed, so a failure leaves nothing behind."""
    check_target(path)
    proto, info = to_onnx(model, example_input, activations=activations, opset=opset, calibration=calibration)
    return write_onnx(proto, info, path, activations=activations, opset=opset)


def check_target(path: str | os.PathLike) -> Path:
    """`path` as a Path, or an ExportError where no file can be written there."""
    target = Path(path)
    if target.is_dir():
        raise ExportError(f"export_onnx: {str(target)!r} is a directory; give a file path such as model.onnx.")
    if not target.parent.exists():
        raise ExportError(f"export_onnx: the folder {str(target.parent)!r} does not exist; create it first.")
    return target


def write_onnx(proto: Any, info: dict[str, Any], path: str | os.PathLike, *, activations: str,
               opset: int = OPSET) -> OnnxExport:
    """Write a `to_onnx` result atomically (temporary file, then rename)."""
    target = check_target(path)
    data = proto.SerializeToString()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return OnnxExport(path=str(target), size_bytes=len(data), opset=opset, activations=activations, **info)


def ort_session(source: str | os.PathLike | bytes | Any, threads: int = 1, device: str = "cpu",
                optimize: str = "all") -> Any:
    """An ONNX Runtime inference session on `device` ("cpu", or "cuda" where the CUDA provider exists)
    with `threads` intra-op threads and ORT's graph optimizations at `optimize` ("all": what a
    deployment uses, it may fuse a DequantizeLinear -> MatMul into ORT's own quantized kernel;
    "basic": float compute as written); a model ONNX Runtime cannot load is one ExportError."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - the extra is installed by make
        raise ExportError("ONNX Runtime is not installed: pip install 'autoshrink[onnx]'.") from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}
    if optimize not in levels:
        raise ExportError(f"ort_session: optimize={optimize!r}; use 'all' or 'basic'.")
    opts.graph_optimization_level = levels[optimize]
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ExportError("ONNX Runtime here has no CUDA execution provider; measure on device='cpu' or install "
                              "onnxruntime-gpu.")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    data = source.SerializeToString() if hasattr(source, "SerializeToString") else source
    if isinstance(data, (str, os.PathLike)):
        data = Path(data).read_bytes()
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=providers)
    except Exception as e:  # noqa: BLE001 - one clear error
        raise ExportError(f"ONNX Runtime cannot run this model: {str(e).splitlines()[0]}. Fix: export with "
                          "activations='weights', or deploy with the float runtime.") from e


def run_session(session: Any, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Run an ORT session on torch tensors (in the order of the session's inputs); numpy outputs."""
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ExportError(f"the ONNX model takes {len(names)} inputs ({', '.join(names)}), got {len(inputs)}.")
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)}
    return session.run(None, feed)


__all__ = ["ExportError", "OnnxExport", "check_target", "export_onnx", "ort_session", "run_session", "to_onnx",
           "write_onnx"]
