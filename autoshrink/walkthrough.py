"""A compression walk-through on the digits task: hand-picked policies, every number measured."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .evaluate import compress
from .measure import LatencyConfig, Measurement, measure
from .measure.latency import time_forward
from .policy import LayerPolicy, Policy
from .task import Task
from .train import FinetuneConfig

L = LayerPolicy


def cnn_policies() -> list[tuple[str, Policy]]:
    """Hand-picked policies for zoo.DigitsCNN (layers conv1, conv2, fc1, fc2)."""
    every = ("conv1", "conv2", "fc1", "fc2")
    uniform = lambda **kw: {n: L(**kw) for n in every}  # noqa: E731
    return [
        ("float16 everywhere", Policy(layers=uniform(bits=16))),
        ("int8 everywhere", Policy(layers=uniform(bits=8))),
        ("int4 everywhere + KD", Policy(layers=uniform(bits=4), distill=True)),
        ("50% sparse + int8", Policy(layers=uniform(sparsity=0.5, bits=8))),
        (
            "fc1 90% + conv2 70% sparse, int8 + KD",
            Policy(
                layers={
                    "conv1": L(bits=8),
                    "conv2": L(sparsity=0.7, bits=8),
                    "fc1": L(sparsity=0.9, bits=8),
                    "fc2": L(bits=8),
                },
                distill=True,
            ),
        ),
        (
            "structured 50% channels + KD",
            Policy(
                layers={
                    "conv1": L(sparsity=0.5, structured=True),
                    "conv2": L(sparsity=0.5, structured=True),
                    "fc1": L(sparsity=0.5, structured=True),
                },
                distill=True,
            ),
        ),
        (
            "low-rank fc1 r=0.1, conv2 r=0.5, int8 + KD",
            Policy(
                layers={"conv1": L(bits=8), "conv2": L(rank=0.5, bits=8), "fc1": L(rank=0.1, bits=8), "fc2": L(bits=8)},
                distill=True,
            ),
        ),
        (
            "fc1 95% + conv2 80% sparse, int4 + KD",
            Policy(
                layers={
                    "conv1": L(bits=8),
                    "conv2": L(sparsity=0.8, bits=4),
                    "fc1": L(sparsity=0.95, bits=4),
                    "fc2": L(bits=8),
                },
                distill=True,
            ),
        ),
        (
            "structured 50% + fc1 90% sparse, int4 + KD",
            Policy(
                layers={
                    "conv1": L(sparsity=0.5, structured=True, bits=8),
                    "conv2": L(sparsity=0.5, structured=True, bits=4),
                    "fc1": L(sparsity=0.9, bits=4),
                    "fc2": L(bits=8),
                },
                distill=True,
            ),
        ),
    ]


@dataclass(frozen=True)
class Row:
    name: str
    measurement: Measurement
    seconds: float
    onnxruntime: Measurement | None = None  # the same model exported to ONNX Runtime (where installed, CPU)


def ort_ready(task: Task) -> bool:
    """Whether the walk-through can add its ONNX Runtime column: onnx and onnxruntime installed, CPU."""
    import importlib.util

    return (
        task.torch_device.type == "cpu"
        and importlib.util.find_spec("onnx") is not None
        and importlib.util.find_spec("onnxruntime") is not None
    )


def run(
    model: nn.Module,
    task: Task,
    policies: list[tuple[str, Policy]],
    *,
    steps: int = 300,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[Row, list[Row]]:
    """Measure the baseline and each policy (applied, fine-tuned `steps` steps, measured on the faster
    of the float and int8 runtimes in this run: the walk-through shows where int8 kernels pay off) and,
    where ONNX Runtime is installed and the device is the CPU, the same model on ONNX Runtime too.

    The process is warmed up first (allocator, thread pool, CPU clocks), so the baseline -- timed
    first -- is not penalized against the policies timed after it.
    """
    time_forward(
        model.to(task.torch_device).eval(),
        task.example_input,
        task.torch_device,
        LatencyConfig(warmup=20, min_repeats=50, min_seconds=1.0),
    )
    ort = ort_ready(task)
    baseline = Row(
        "baseline (float32, untouched)",
        measure(model, task),
        0.0,
        measure(model, task, runtime="onnxruntime") if ort else None,
    )
    rows = []
    for name, policy in policies:
        t0 = time.perf_counter()
        small, report = compress(model, policy, task=task, finetune_config=FinetuneConfig(steps=steps, seed=seed))
        m = measure(small, task, runtime="auto", skipped=report.lines())
        rows.append(
            Row(name, m, time.perf_counter() - t0, measure(small, task, runtime="onnxruntime") if ort else None)
        )
        if progress:
            progress(f"  {name}: done in {rows[-1].seconds:.1f} s")
    return baseline, rows


def format_table(baseline: Row, rows: list[Row]) -> str:
    """Plain-text table: accuracy and drop, packed bytes and ratio, latency and speedup (against the
    float32 torch baseline), runtime, MACs and, where measured, latency and speedup on ONNX Runtime."""
    ort = baseline.onnxruntime is not None
    b = baseline.measurement
    head = (
        f"{'policy':44} {'acc %':>6} {'drop pp':>7} {'bytes':>8} {'ratio':>6} {'lat ms':>7} {'speedup':>7} "
        f"{'runtime':>12} {'MACs':>9}" + (f" {'ORT ms':>7} {'ORT x':>6}" if ort else "")
    )
    lines = [head, "-" * len(head)]

    def line(r: Row) -> str:
        m = r.measurement
        drop = (b.accuracy - m.accuracy) * 100
        text = (
            f"{r.name[:44]:44} {m.accuracy * 100:6.2f} {drop:7.2f} {m.size_bytes:8d} "
            f"{b.size_bytes / m.size_bytes:5.1f}x {m.latency_ms:7.3f} "
            f"{b.latency_ms / m.latency_ms:6.2f}x {m.runtime:>12} {m.macs:9d}"
        )
        if ort and r.onnxruntime is not None:
            text += f" {r.onnxruntime.latency_ms:7.3f} {b.latency_ms / r.onnxruntime.latency_ms:5.2f}x"
        return text

    lines += [line(baseline)] + [line(r) for r in rows]
    lines += ["", "how each weight is stored (layout; streams fixed-width or entropy-coded, whichever is smaller):"]
    lines += [
        f"  {r.name[:44]}: " + "; ".join(f"{l.name} {l.encoding} {l.bytes} B" for l in r.measurement.layers)
        for r in rows
    ]
    notes = [f"  {r.name}: {s}" for r in rows for s in r.measurement.skipped]
    if notes:
        lines += ["", "not compressed as asked:"] + notes
    if ort:
        lines += [
            "",
            "ORT: the same model exported to ONNX (int8 GEMM for Linear layers at <= 8 bits, activations "
            "quantized per batch) in an ONNX Runtime session with the same threads; ORT x is its speedup over "
            "the float32 torch baseline.",
        ]
    return "\n".join(lines)
