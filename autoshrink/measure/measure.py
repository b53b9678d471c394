"""measure(model, task) -> Measurement: accuracy, packed size, latency and MACs, all measured."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import torch
from torch import nn

from ..errors import ConfigError
from ..task import Task, require_model_and_task
from .accuracy import evaluate_metric
from .latency import LatencyConfig, time_forward, timing_guard
from .layer_latency import layer_latencies
from .macs import count_macs
from .measurement import LayerStats, Measurement
from .packing import pack
from .runtime import deploy_runtime, int8_available, int8_runtime, materialize

RUNTIMES = ("float", "int8", "onnxruntime", "onnxruntime-static", "auto")


def _pick_runtime(
    candidates: dict[str, nn.Module], task: Task, device: torch.device, config: LatencyConfig, rounds: int = 3
) -> dict[str, float]:
    """Median latency of each candidate, timed in interleaved rounds so drift hits all alike."""
    per_round = LatencyConfig(
        warmup=config.warmup,
        min_repeats=max(1, config.min_repeats // rounds),
        min_seconds=config.min_seconds / rounds,
        max_repeats=config.max_repeats,
    )
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(rounds if len(candidates) > 1 else 1):
        for key, m in candidates.items():
            times[key].extend(time_forward(m, task.example_input, device, per_round if len(candidates) > 1 else config))
    return {k: statistics.median(v) for k, v in times.items()}


def measure(
    model: nn.Module,
    task: Task,
    *,
    runtime: str | None = None,
    latency: LatencyConfig | None = None,
    skipped: Iterable[str] = (),
) -> Measurement:
    """Measure `model` on `task`: metric, packed size, latency, MACs (see Measurement).

    runtime: where the model runs, for its latency *and* its accuracy.
      "float"  plain float kernels (masks and fake quantization baked into the weights);
      "int8"   torch's dynamic int8 kernels for every Linear quantized to <= 8 bits (our exact codes
               and scales; CPU only), float for the rest; a model with no such layer runs all-float
               and reports runtime "float";
      "onnxruntime"  the ONNX export (ash.export_onnx, int8 GEMM for every Linear at <= 8 bits,
               activations quantized per batch) in an ONNX Runtime session with torch's thread count;
      "onnxruntime-static"  the same with static activation quantization: the activations' scales
               calibrated on the task's first 4 training batches (no per-batch min/max);
      "auto"   times float and int8 in interleaved rounds and reports the faster -- timing-dependent, so two
               calls can pick differently; use it to explore, not to compare.
      None     (default) the runtime recorded for this model by `apply_recipe` (the recipe's), else
               "float". A search decides its runtime once per study (see `search(runtime=...)`).
    The same model measured twice on "float" or "int8" gives the same accuracy.
    """
    require_model_and_task(model, task, "measure")
    if runtime is None:
        runtime = deploy_runtime(model) or "float"
    if runtime not in RUNTIMES:
        raise ConfigError(f"measure: runtime={runtime!r}; use one of {', '.join(RUNTIMES)} (or None).")
    device = task.torch_device
    config = latency or LatencyConfig()
    if runtime == "int8" and not int8_available(device):
        raise ConfigError(
            f"measure: runtime='int8' but the device ({device}) has no int8 kernels (torch's dynamic "
            "int8 Linear runs on CPU); use runtime='float'."
        )
    blob, entries = pack(model)
    plain = materialize(model).to(device)
    candidates: dict[str, nn.Module] = {}
    if runtime in ("onnxruntime", "onnxruntime-static"):
        from .onnxruntime import calibration_batches, ort_runtime

        static = runtime == "onnxruntime-static"
        candidates[runtime] = ort_runtime(
            model,
            task.example_input,
            device,
            activations="static" if static else "dynamic",
            calibration=calibration_batches(task) if static else None,
        )
    q = int8_runtime(model, device) if runtime in ("auto", "int8") else None
    if q is not None:
        candidates["int8-dynamic"] = q
    if runtime in ("auto", "float") or (q is None and not candidates):
        candidates["float"] = plain
    with timing_guard():  # one timing at a time per machine when an executor installed a guard
        latencies = _pick_runtime(candidates, task, device, config)
    chosen = min(latencies, key=latencies.get)
    layer_ms: dict[str, float] = {}
    if config.layers:
        with timing_guard():
            layer_ms = layer_latencies(
                model, plain, candidates.get("int8-dynamic"), chosen, task.example_input, config.layers, device
            )
    accuracy = evaluate_metric(candidates[chosen], task, device)
    params = [p for p in plain.parameters()]
    layers = tuple(
        LayerStats(
            name=e.name,
            shape=tuple(e.shape),
            params=e.numel,
            nonzero=e.nonzero,
            bits=e.bits,
            encoding=e.streams,
            bytes=e.nbytes,
        )
        for e in entries
        if e.name.endswith("weight") and len(e.shape) >= 2
    )
    return Measurement(
        accuracy=accuracy,
        size_bytes=len(blob),
        latency_ms=latencies[chosen],
        macs=count_macs(plain, task.example_input, device),
        device=str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        threads=torch.get_num_threads(),
        batch_size=task.deploy_batch,
        runtime=chosen,
        params=sum(p.numel() for p in params),
        nonzero_params=sum(int((p != 0).sum()) for p in params),
        latency_by_runtime=latencies,
        layers=layers,
        skipped=tuple(skipped),
        layer_latency_ms=layer_ms,
    )
