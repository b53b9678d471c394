"""ONNX export of a compressed model: standard ONNX that ONNX Runtime runs with int8 kernels.

Low-rank and structured layers export as their smaller layers; 2..8-bit weights as int8 initializers of
their exact codes (pruned: 0) with per-output-channel scales and a QDQ `DequantizeLinear` (axis 0); bits
16 as float16 and a `Cast`; an embedding table read only by row Gathers gathers its int8 codes and
per-row scales and dequantizes just those rows. The batch axis is dynamic, and the sequence axis of
integer inputs (token ids, masks). Rewrites: onnx_graph.py; sessions: ort_session.py.
`activations`: "dynamic" (default; Linear -> DynamicQuantizeLinear -> MatMulInteger, ORT's integer GEMM),
"static" (the same with the uint8 activation scale / zero point fixed from `calibration=` batches; out of
range saturates) or "weights" (QDQ weights, float compute). Tested: "weights" within 1e-5 x (1 + max
|output|); "dynamic" / "static" within 5 % of (1 + max |output|), top-1 agreeing on >= 98 %.
"""

from __future__ import annotations

import copy
import inspect
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ExportError, describe
from ..files import write_atomically
from ..inputs import is_mapping
from ..weights import per_channel, strip_parametrizations, weight_bits, weight_parametrizations, weight_quantizer
from .onnx_graph import Graph, calibrate, dequantize_weights, gather_then_dequantize, integer_gemm

OPSET = 17
ACTIVATIONS = ("dynamic", "static", "weights")


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
    gathered_weights: tuple[str, ...] = ()  # embedding tables: codes gathered by row, only those dequantized


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper  # noqa: F401
    except ImportError as e:  # pragma: no cover - the extra is installed by make
        raise ExportError("ONNX export needs the onnx package: pip install 'autoshrink[onnx]'.") from e
    return onnx


def _quantized_weights(model: nn.Module) -> dict[str, tuple[int, torch.Tensor | None]]:
    """'<module>.weight' -> (bits, fixed per-channel scales or None) for every weight stored below 32
    bits with one scale per output channel. Group-wise weights are left as the float values they are
    (DequantizeLinear's blocked form needs opset 21, which the int8 GEMM rewrite does not read)."""
    out = {}
    for name, module in model.named_modules():
        if weight_parametrizations(module) and per_channel(module):
            bits = weight_bits(module)
            if bits < 32:
                fq = weight_quantizer(module)
                out[f"{name}.weight" if name else "weight"] = (bits, None if fq is None else fq.scales)
    return out


def _example_args(example_input: Any) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """(positional, keyword) example inputs: a mapping of named tensors is passed as keywords."""
    if is_mapping(example_input):
        named = dict(example_input)
        if not named or not all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in named.items()):
            raise ExportError(
                f"export_onnx: example_input={describe(example_input)}; a mapping input must hold tensors "
                "under str names (e.g. a tokenizer's output with return_tensors='pt')."
            )
        if any(t.dim() == 0 for t in named.values()):
            raise ExportError("export_onnx: example_input has a 0-d tensor; it needs a batch dimension (dim 0).")
        return (), {k: t.detach().cpu() for k, t in named.items()}
    return tuple(t.detach().cpu() for t in _example_tuple(example_input)), {}


def _in_signature_order(model: nn.Module, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keyword inputs in the order of the model's forward parameters: the exporter binds them so, and the
    graph's input names must follow (a tokenizer's order -- input_ids, token_type_ids, attention_mask --
    is not BERT's forward's, and named in it the graph would feed the mask as token types)."""
    try:
        order = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return dict(named)
    rank = {name: i for i, name in enumerate(order)}
    return dict(sorted(named.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def _dynamic_axes(t: torch.Tensor) -> dict[int, str]:
    """The batch axis of every input, and the sequence axis (1) of integer inputs of 2+ dims (token ids,
    attention masks): the exported graph takes any batch and any sequence length."""
    if t.dim() >= 2 and not t.is_floating_point():
        return {0: "batch", 1: "sequence"}
    return {0: "batch"}


def _example_tuple(example_input: Any) -> tuple[torch.Tensor, ...]:
    items = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise ExportError(
            f"export_onnx: example_input={describe(example_input)}; pass a tensor (or a tuple of "
            "tensors) shaped like one batch of the model's input, e.g. task.example_input."
        )
    if any(t.dim() == 0 for t in items):
        raise ExportError("export_onnx: example_input has a 0-d tensor; it needs a batch dimension (dim 0).")
    return items


def _torch_export(
    plain: nn.Module, example: tuple[torch.Tensor, ...], opset: int, named: dict[str, torch.Tensor] | None = None
) -> Any:
    """The float graph from torch's TorchScript-based exporter (initializers keep the state_dict names).
    `named`: keyword inputs (a mapping example input); the graph's inputs take their names."""
    onnx = _onnx()
    named = _in_signature_order(plain, named or {})
    inputs = list(named) or ["input" if len(example) == 1 else f"input_{i}" for i in range(len(example))]
    tensors = list(named.values()) or list(example)
    try:
        with torch.no_grad():
            y = plain(*example, **named)
    except Exception as e:  # noqa: BLE001 - one clear error
        raise ExportError(
            f"export_onnx: the model fails on example_input ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); pass one batch shaped like its input."
        ) from e
    n_out = len(y) if isinstance(y, (tuple, list, dict)) else 1
    if isinstance(y, dict):  # a ModelOutput: its fields, by name
        outputs = [str(k) for k in y]
    else:
        outputs = ["output" if n_out == 1 else f"output_{i}" for i in range(n_out)]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices; errors still raise
        try:
            with torch.no_grad():
                torch.onnx.export(
                    plain,
                    example,
                    buf,
                    kwargs=named or None,
                    dynamo=False,
                    input_names=inputs,
                    output_names=outputs,
                    dynamic_axes={n: _dynamic_axes(t) for n, t in zip(inputs, tensors)},
                    do_constant_folding=False,
                    opset_version=opset,
                )
        except Exception as e:  # noqa: BLE001 - re-raised as one clear error
            raise ExportError(
                f"export_onnx: torch's ONNX exporter cannot export {type(plain).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. Fix: replace the "
                "unsupported operation in the model's forward, or deploy the .ashz file."
            ) from e
    model = onnx.load_from_string(buf.getvalue())
    for out in model.graph.output:  # the batch axis of every output is dynamic too
        dims = out.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    return model


def to_onnx(
    model: nn.Module,
    example_input: Any,
    *,
    activations: str = "dynamic",
    opset: int = OPSET,
    calibration: Sequence[Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The compressed model as an onnx ModelProto, and what was done to each compressed layer.
    `calibration`: input batches (tensors or tuples of tensors) for activations="static"."""
    if activations not in ACTIVATIONS:
        raise ExportError(
            f"export_onnx: activations={activations!r}; use one of {', '.join(ACTIVATIONS)} "
            "(dynamic: int8 kernels for quantized Linear layers, activations quantized per batch; "
            "static: the same with calibrated activation scales; weights: QDQ weights, float compute)."
        )
    if activations == "static" and (
        calibration is None or isinstance(calibration, torch.Tensor) or len(calibration) == 0
    ):
        raise ExportError(
            "export_onnx: activations='static' needs calibration=[a few input batches] (e.g. training "
            "inputs) to fix the activations' scales; or use activations='dynamic'."
        )
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 21:
        raise ExportError(f"export_onnx: opset={opset!r}; use an ONNX opset between 13 and 21 (default {OPSET}).")
    example, named = _example_args(example_input)
    quantized = _quantized_weights(model)
    plain = strip_parametrizations(copy.deepcopy(model)).eval().cpu()  # the float runtime's materialized model
    proto = _torch_export(plain, example, opset, named)
    graph = Graph(proto)
    codes_of, halves = dequantize_weights(graph, quantized, plain)
    gathered = gather_then_dequantize(graph, codes_of)
    linear = {f"{n}.weight" for n, m in plain.named_modules() if isinstance(m, nn.Linear)}
    int8 = []
    if activations in ("dynamic", "static"):
        gemm = [n for n in codes_of if n in linear]
        static = (
            calibrate(plain, [n.rsplit(".weight", 1)[0] for n in gemm], [_example_args(b) for b in calibration])
            if activations == "static"
            else {}
        )
        for name in gemm:
            stem = name.rsplit(".weight", 1)[0]
            if integer_gemm(graph, name, codes_of[name][0], static.get(stem)):
                int8.append(stem)
    rows = [n.rsplit(".weight", 1)[0] for n in gathered]
    qdq = [n.rsplit(".weight", 1)[0] for n in codes_of if n.rsplit(".weight", 1)[0] not in int8 + rows]
    onnx = _onnx()
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001 - an internal rewrite bug must not ship a broken file
        raise ExportError(f"export_onnx: the rewritten graph is not valid ONNX ({e}); please report it.") from e
    info = {
        "int8_kernels": tuple(int8),
        "qdq_weights": tuple(qdq),
        "float16_weights": tuple(halves),
        "inputs": tuple(i.name for i in proto.graph.input),
        "outputs": tuple(o.name for o in proto.graph.output),
        "gathered_weights": tuple(rows),
    }
    return proto, info


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    example_input: Any,
    activations: str = "dynamic",
    opset: int = OPSET,
    calibration: Sequence[Any] | None = None,
) -> OnnxExport:
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


def write_onnx(
    proto: Any, info: dict[str, Any], path: str | os.PathLike, *, activations: str, opset: int = OPSET
) -> OnnxExport:
    """Write a `to_onnx` result atomically (files.write_atomically)."""
    target = check_target(path)
    data = proto.SerializeToString()
    write_atomically(target, data, "ONNX model", ExportError)
    return OnnxExport(path=str(target), size_bytes=len(data), opset=opset, activations=activations, **info)


__all__ = ["ExportError", "OnnxExport", "check_target", "export_onnx", "to_onnx", "write_onnx"]
