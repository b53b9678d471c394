"""ONNX Runtime as a measured runtime: the exported model (export/onnx.py) in an ORT session.

`ort_runtime(model, example_input, device)` returns a module whose forward runs the ONNX export of
`model` (activations "dynamic": ONNX Runtime's int8 GEMM for every Linear quantized to <= 8 bits,
activations quantized per batch; "static", the runtime "onnxruntime-static": the same GEMM with the
activations' scales calibrated on the task's first CALIBRATION_BATCHES training batches) in
an InferenceSession with as many intra-op threads as torch uses here, on the CPU execution provider
(CUDA's where the device is a GPU and onnxruntime-gpu is installed). `measure` times it and runs the
task's metric through it, so latency *and* accuracy are ONNX Runtime's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError


class OrtModule(nn.Module):
    """A torch-callable wrapper of an ORT session (inputs to CPU numpy, outputs back to torch)."""

    def __init__(self, session: Any, activations: str) -> None:
        super().__init__()
        self.session = session
        self.activations = activations

    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor) -> Any:
        from ..export.ort_session import run_session

        outs = [torch.from_numpy(o) for o in run_session(self.session, named or inputs)]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def deploy_call(self, example_input: Any) -> Callable[[], Any]:
        """What latency times (measure/latency.py): `session.run` on `example_input` converted to numpy
        once, as a deployment calls ONNX Runtime -- no per-call torch conversion or module dispatch."""
        from ..export.ort_session import session_feed

        inputs = example_input if isinstance(example_input, (tuple, list, Mapping)) else (example_input,)
        feed = session_feed(self.session, inputs)
        run = self.session.run
        return lambda: run(None, feed)


CALIBRATION_BATCHES = 4


def calibration_batches(task: Any, n: int = CALIBRATION_BATCHES) -> list[torch.Tensor]:
    """The inputs of the task's first `n` training batches, in order (no augmentation): what static
    activation quantization is calibrated on, the same every time."""
    from ..task import iterate_batches

    out = []
    for x, _ in iterate_batches(task.train_data, task.batch_size):
        out.append(x)
        if len(out) == n:
            break
    return out


def ort_runtime(
    model: nn.Module, example_input: Any, device: torch.device, activations: str = "dynamic", calibration: Any = None
) -> OrtModule:
    """The ONNX export of `model` in an ORT session on `device` (see the module docstring)."""
    from ..export.onnx import ExportError, to_onnx
    from ..export.ort_session import ort_session

    try:
        proto, _ = to_onnx(model, example_input, activations=activations, calibration=calibration)
        session = ort_session(proto, threads=torch.get_num_threads(), device=device.type)
    except ExportError as e:  # also onnx / onnxruntime missing: the message says which extra to install
        raise ConfigError(f"runtime='onnxruntime': {e}") from e
    return OrtModule(session, activations)
