"""The ONNX graph rewrites of the export (onnx.py): quantized weights as int8 codes + DequantizeLinear
(or float16 + Cast), calibration of static activation scales, and the integer-GEMM rewrite of a Linear."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ExportError
from ..weights import grouped_codes


class Graph:
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


def dequantize_weights(
    graph: Graph, quantized: dict[str, tuple[int, Tensor | None]], model: nn.Module
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Replace each quantized weight initializer by its int8 codes + scales and a DequantizeLinear (or
    float16 + Cast). Returns weight name -> (codes, scales) for the int8 ones, and the float16 names."""
    from onnx import TensorProto, helper

    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    codes_of: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    halves: list[str] = []
    new_nodes = []
    for name, (bits, fixed) in quantized.items():
        if name not in graph.inits:
            raise ExportError(
                f"export_onnx: the quantized weight {name!r} is not an initializer of the exported "
                "graph (the model's forward reshapes or reuses it in a way the exporter folded). "
                "Fix: export a model whose layers use their weight directly."
            )
        weight = params.get(name, buffers.get(name))
        if weight is None:
            raise ExportError(f"export_onnx: {name!r} has no tensor in the model.")
        graph.drop_init(name)
        if bits == 16:
            graph.add_init(f"{name}_fp16", weight.detach().cpu().numpy().astype(np.float16))
            new_nodes.append(
                helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT, name=f"{name}_cast")
            )
            halves.append(name.rsplit(".weight", 1)[0])
            continue
        codes, scales = grouped_codes(weight.detach().cpu(), bits, 0, None if fixed is None else fixed.cpu())
        c, s = codes.numpy().astype(np.int8), scales.reshape(-1).numpy().astype(np.float32)
        codes_of[name] = (c, s)
        graph.add_init(f"{name}_quantized", c)
        graph.add_init(f"{name}_scale", s)
        graph.add_init(f"{name}_zero_point", np.zeros(s.shape, dtype=np.int8))
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
                [name],
                axis=0,
                name=f"{name}_dequantize",
            )
        )
    for i, n in enumerate(new_nodes):  # before every consumer: a valid topological order
        graph.g.node.insert(i, n)
    return codes_of, halves


def calibrate(plain: nn.Module, modules: Sequence[str], batches: Sequence[Any]) -> dict[str, tuple[float, int]]:
    """The uint8 (scale, zero point) of each named module's input over the calibration batches (each a
    (positional, keyword) pair of inputs): the range [min(0, lo), max(0, hi)] over 255 steps, as DynamicQuantizeLinear
    computes it per batch."""
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
            for args, named in batches:
                plain(*args, **named)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name in modules:
        a, b = lo.get(name, 0.0), hi.get(name, 0.0)
        scale = (b - a) / 255.0 if b > a else 1.0
        out[name] = (scale, int(np.clip(round(-a / scale), 0, 255)))
    return out


def integer_gemm(graph: Graph, weight: str, codes: np.ndarray, static: tuple[float, int] | None = None) -> bool:
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
        if (
            attrs.get("transA", 0)
            or not attrs.get("transB", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
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
        nodes = [
            helper.make_node("DynamicQuantizeLinear", [x], [xq, xs, xz], name=graph.fresh(f"{stem}_quantize_x")),
            helper.make_node("Mul", [xs, f"{weight}_scale"], [scale], name=graph.fresh(f"{stem}_scales")),
        ]
    else:
        xs = graph.add_init(xs, np.array(static[0], dtype=np.float32))
        xz = graph.add_init(xz, np.array(static[1], dtype=np.uint8))
        scale = graph.add_init(scale, (graph.array(f"{weight}_scale") * np.float32(static[0])).astype(np.float32))
        nodes = [helper.make_node("QuantizeLinear", [x, xs, xz], [xq], name=graph.fresh(f"{stem}_quantize_x"))]
    nodes += [
        helper.make_node("MatMulInteger", [xq, wt, xz, wzp], [acc], name=graph.fresh(f"{stem}_matmul_integer")),
        helper.make_node("Cast", [acc], [accf], to=TensorProto.FLOAT, name=graph.fresh(f"{stem}_cast")),
        helper.make_node("Mul", [accf, scale], [mm_out], name=graph.fresh(f"{stem}_rescale")),
    ]
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


def gather_then_dequantize(graph: Graph, codes_of: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """Embedding tables: where every reader of a dequantized weight is a Gather of its rows (axis 0),
    gather the int8 codes and the per-row scales first and dequantize only the rows gathered, instead
    of the whole table on every call (a 30k-token table is most of a small encoder's work otherwise).
    The same float32 products as DequantizeLinear then Gather. Returns the weights rewritten."""
    from onnx import helper

    done = []
    for name in list(codes_of):
        readers = graph.consumers(name)
        if not readers or any(n.op_type != "Gather" or n.input[0] != name for n in readers):
            continue
        if any(a.name == "axis" and helper.get_attribute_value(a) != 0 for n in readers for a in n.attribute):
            continue
        dq = graph.producer(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        axis = graph.add_init(graph.fresh(f"{name}_last_axis"), np.array([-1], dtype=np.int64))
        for reader in readers:
            index = list(graph.g.node).index(reader)
            out = reader.output[0]
            codes, scales, floats, column = (graph.fresh(f"{name}_{s}") for s in ("codes", "scales", "float", "col"))
            new = [
                helper.make_node("Gather", [f"{name}_quantized", reader.input[1]], [codes], axis=0, name=codes),
                helper.make_node("Gather", [f"{name}_scale", reader.input[1]], [scales], axis=0, name=scales),
                helper.make_node("Cast", [codes], [floats], to=1, name=floats),  # 1: FLOAT
                helper.make_node("Unsqueeze", [scales, axis], [column], name=column),
                helper.make_node("Mul", [floats, column], [out], name=graph.fresh(f"{name}_rows")),
            ]
            graph.g.node.remove(reader)
            for i, node in enumerate(new):
                graph.g.node.insert(index + i, node)
        graph.g.node.remove(dq)
        done.append(name)
    return done
