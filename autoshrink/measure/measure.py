"""measure(model, task) -> Measurement: accuracy, packed size, latency and MACs, all measured."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..task import Task, require_model_and_task
from .accuracy import score
from .cost import CostClock
from .gpu_runtime import GPU_RUNTIMES, gpu_available, gpu_runtime, require_gpu
from .latency import LatencyConfig, time_forward, timing_guard
from .layer_latency import layer_latencies
from .macs import count_macs
from .measurement import HeldOut, LayerStats, Measurement, RuntimeTiming
from .packing import packed_size
from .paired import pack_correct
from .runtime import (
    deploy_runtime,
    int8_available,
    int8_full_available,
    int8_runtime,
    materialize,
    require_int8_full,
)

RUNTIMES = ("float", "int8", "int8-full", "onnxruntime", "onnxruntime-static", "cuda-graph", "cuda-int8", "auto")


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
    test: bool = False,
    clock: CostClock | None = None,
    examples: Sequence[int] | None = None,
) -> Measurement:
    """Measure `model` on `task`: metric, packed size, latency, MACs (see Measurement).

    runtime: where the model runs, for its latency *and* its accuracy.
      "float"  plain float kernels (masks and fake quantization baked into the weights);
      "int8"   torch's dynamic int8 kernels for every Linear quantized to <= 8 bits (our exact codes
               and scales; CPU only), float for the rest; a model with no such layer runs all-float
               and reports runtime "float"; the kernel quantizes its inputs to 7 bits (torch's reduce_range);
      "int8-full"  the same kernels with 8-bit inputs, where this CPU computes them exactly (x86 with VNNI;
               probed once, measure/int8_linear.py; elsewhere a ConfigError);
      "onnxruntime"  the ONNX export (ash.export_onnx, int8 GEMM for every Linear at <= 8 bits,
               activations quantized per batch) in an ONNX Runtime session with torch's thread count;
      "onnxruntime-static"  the same with static activation quantization: the activations' scales
               calibrated on the task's first 4 training batches (no per-batch min/max);
      "cuda-graph"  float16 on a CUDA GPU, captured as CUDA graphs; 2:4-sparse Linear layers through
               the semi-structured kernels (measure/gpu_runtime.py);
      "cuda-int8"  the same, with every Linear at <= 8 bits (one scale per channel) an int8 matmul;
               on either, Measurement.simulated lists the layers whose compression runs as plain weights;
      "auto"   times float and int8 (int8-full where the CPU has it; on a CUDA device: float, cuda-graph
               and cuda-int8) in interleaved rounds and reports the faster -- timing-dependent, so two calls
               can pick differently; use it to explore, not to compare.
      None     (default) the runtime recorded for this model by `apply_recipe` (the recipe's), else
               "float". A search decides its runtime once per study (see `search(runtime=...)`).
    The same model measured twice on "float" or "int8" gives the same accuracy.
    test: also score the task's held-out test_data (test_accuracy); a search never asks for it while
    it decides.
    clock: where the seconds of this call's stages (evaluate, pack, latency) are added (`evaluate`
    passes the candidate's); Measurement.cost is its split.
    examples: score only these indices of eval_data (the accuracy metric; the sensitivity pre-pass's
    subsample); Measurement.examples and correct then describe them.
    """
    require_model_and_task(model, task, "measure")
    if runtime is None:
        runtime = deploy_runtime(model) or "float"
    if runtime not in RUNTIMES:
        raise ConfigError(f"measure: runtime={runtime!r}; use one of {', '.join(RUNTIMES)} (or None).")
    device = task.torch_device
    config = LatencyConfig.of(latency, "measure")
    if runtime == "int8" and not int8_available(device):
        raise ConfigError(
            f"measure: runtime='int8' but the device ({device}) has no int8 kernels (torch's dynamic "
            "int8 Linear runs on CPU); use runtime='float'."
        )
    if runtime == "int8-full":
        require_int8_full(device, "measure")
    if runtime in GPU_RUNTIMES:
        require_gpu(runtime, device, "measure")
    clock = clock or CostClock()
    with clock.stage("pack"):
        size, entries = packed_size(model, where="measure()")
    with clock.stage("latency"):
        plain = materialize(model).to(device)
        candidates = _candidates(model, plain, task, runtime, device)
        with timing_guard():  # one timing at a time per machine when an executor installed a guard
            latencies = _pick_runtime(candidates, task, device, config)
        chosen = min(latencies, key=latencies.get)
        layer_ms: dict[str, float] = {}
        if config.layers:
            runtime_model = candidates.get("int8-dynamic", candidates.get("int8-full"))
            if chosen in GPU_RUNTIMES:
                runtime_model = candidates[chosen].module
            with timing_guard():
                layer_ms = layer_latencies(
                    model, plain, runtime_model, chosen, task.example_input, config.layers, device
                )
        macs = count_macs(plain, task.example_input, device)
    with clock.stage("evaluate"):
        accuracy, hits = score(candidates[chosen], task, device, indices=examples)
        held_out = (
            score(candidates[chosen], task, device, split="test") if test and task.test_data is not None else None
        )
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
        size_bytes=size,
        latency_ms=latencies[chosen],
        macs=macs,
        device=_device_name(device),
        threads=torch.get_num_threads(),
        batch_size=task.deploy_batch,
        runtime=chosen,
        params=sum(p.numel() for p in params),
        nonzero_params=sum(int((p != 0).sum()) for p in params),
        latency_by_runtime=latencies,
        layers=layers,
        skipped=tuple(skipped),
        simulated=tuple(getattr(candidates[chosen], "notes", ())),
        layer_latency_ms=layer_ms,
        examples=len(task.eval_data) if examples is None else len(examples),
        correct="" if hits is None else pack_correct(hits),
        test_accuracy=None if held_out is None else held_out[0],
        test_examples=0 if held_out is None else len(task.test_data),
        test_correct="" if held_out is None or held_out[1] is None else pack_correct(held_out[1]),
        cost=clock.rounded(),
    )


def time_runtimes(model: nn.Module, task: Task, *, latency: LatencyConfig | None = None) -> RuntimeTiming:
    """Time `model` on float and (where the device has the kernels) int8, or on a CUDA device float,
    cuda-graph and cuda-int8, in interleaved rounds as measure(runtime="auto") does, and nothing else:
    what a search's runtime decision needs."""
    require_model_and_task(model, task, "time_runtimes")
    device = task.torch_device
    candidates = _candidates(model, materialize(model).to(device), task, "auto", device)
    with timing_guard():
        latencies = _pick_runtime(candidates, task, device, LatencyConfig.of(latency, "time_runtimes"))
    return RuntimeTiming(latency_by_runtime=latencies, device=_device_name(device), batch_size=task.deploy_batch)


def _device_name(device: torch.device) -> str:
    return str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"


def _candidates(
    model: nn.Module, plain: nn.Module, task: Task, runtime: str, device: torch.device
) -> dict[str, nn.Module]:
    """The runnable forms of `model` that `runtime` times: {recorded runtime name: module}."""
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
    for gpu in GPU_RUNTIMES:
        if runtime == gpu or (runtime == "auto" and gpu_available(device)):
            candidates[gpu] = gpu_runtime(model, gpu, device)[0]
    full = runtime == "int8-full" or (runtime == "auto" and int8_full_available(device))
    q = int8_runtime(model, device, full=full) if runtime in ("auto", "int8", "int8-full") else None
    if q is not None:
        candidates["int8-full" if full else "int8-dynamic"] = q
    if runtime in ("auto", "float") or (q is None and not candidates):
        candidates["float"] = plain
    return candidates


def score_held_out(model: nn.Module, task: Task, runtime: str) -> HeldOut:
    """Score `model` on the task's held-out test_data on `runtime` (a recorded one: "float",
    "int8-dynamic", "onnxruntime", "onnxruntime-static"), and on eval_data again (the replay check)."""
    if task.test_data is None:
        raise ConfigError("score_held_out: the task has no test_data; give test_data= or holdout= to ash.Task.")
    wanted = {"int8-dynamic": "int8"}.get(runtime, runtime)
    if wanted not in RUNTIMES:
        raise ConfigError(f"score_held_out: runtime={runtime!r} is not a recorded runtime.")
    device = task.torch_device
    forms = _candidates(model, materialize(model).to(device), task, wanted, device)
    if runtime not in forms:
        raise ConfigError(
            f"score_held_out: the model cannot run on {runtime!r} here (it has {', '.join(forms)}); "
            "score it where the search ran."
        )
    accuracy, hits = score(forms[runtime], task, device, split="test")
    return HeldOut(
        accuracy=accuracy,
        examples=len(task.test_data),
        correct="" if hits is None else pack_correct(hits),
        runtime=runtime,
        eval_accuracy=score(forms[runtime], task, device)[0],
    )
