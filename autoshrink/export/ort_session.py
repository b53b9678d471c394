"""ONNX Runtime sessions over exported models: creation with threads, device and optimization level,
and running them on torch tensors."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ExportError


def ort_session(
    source: str | os.PathLike | bytes | Any, threads: int = 1, device: str = "cpu", optimize: str = "all"
) -> Any:
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
            raise ExportError(
                "ONNX Runtime here has no CUDA execution provider; measure on device='cpu' or install onnxruntime-gpu."
            )
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    data = source.SerializeToString() if hasattr(source, "SerializeToString") else source
    if isinstance(data, (str, os.PathLike)):
        data = Path(data).read_bytes()
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=providers)
    except Exception as e:  # noqa: BLE001 - one clear error
        raise ExportError(
            f"ONNX Runtime cannot run this model: {str(e).splitlines()[0]}. Fix: export with "
            "activations='weights', or deploy with the float runtime."
        ) from e


def session_feed(session: Any, inputs: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The feed dict of an ORT session for torch tensors given in the order of the session's inputs, or
    by name (a mapping: the entries the graph does not read are left out, as the exporter dropped them)."""
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise ExportError(f"the ONNX model takes inputs {', '.join(names)}; {', '.join(missing)} not given.")
        return {n: np.ascontiguousarray(inputs[n].detach().cpu().numpy()) for n in names}
    if len(names) != len(inputs):
        raise ExportError(f"the ONNX model takes {len(names)} inputs ({', '.join(names)}), got {len(inputs)}.")
    return {n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in zip(names, inputs)}


def run_session(session: Any, inputs: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> list[np.ndarray]:
    """Run an ORT session on torch tensors (in the order of the session's inputs); numpy outputs."""
    return session.run(None, session_feed(session, inputs))


__all__ = ["ort_session", "run_session", "session_feed"]
