"""A compression walk-through on the digits task: hand-picked policies, every number measured."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from torch import nn

from .evaluate import evaluate
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
        ("fc1 90% + conv2 70% sparse, int8 + KD", Policy(layers={
            "conv1": L(bits=8), "conv2": L(sparsity=0.7, bits=8), "fc1": L(sparsity=0.9, bits=8), "fc2": L(bits=8)},
            distill=True)),
        ("structured 50% channels + KD", Policy(layers={
            "conv1": L(sparsity=0.5, structured=True), "conv2": L(sparsity=0.5, structured=True),
            "fc1": L(sparsity=0.5, structured=True)}, distill=True)),
        ("low-rank fc1 r=0.1, conv2 r=0.5, int8 + KD", Policy(layers={
            "conv1": L(bits=8), "conv2": L(rank=0.5, bits=8), "fc1": L(rank=0.1, bits=8), "fc2": L(bits=8)},
            distill=True)),
        ("fc1 95% + conv2 80% sparse, int4 + KD", Policy(layers={
            "conv1": L(bits=8), "conv2": L(sparsity=0.8, bits=4), "fc1": L(sparsity=0.95, bits=4), "fc2": L(bits=8)},
            distill=True)),
        ("structured 50% + fc1 90% sparse, int4 + KD", Policy(layers={
            "conv1": L(sparsity=0.5, structured=True, bits=8), "conv2": L(sparsity=0.5, structured=True, bits=4),
            "fc1": L(sparsity=0.9, bits=4), "fc2": L(bits=8)}, distill=True)),
    ]


@dataclass(frozen=True)
class Row:
    name: str
    measurement: Measurement
    seconds: float


def run(model: nn.Module, task: Task, policies: list[tuple[str, Policy]], *, steps: int = 300,
        seed: int = 0, progress: Callable[[str], None] | None = None) -> tuple[Measurement, list[Row]]:
    """Measure the baseline and each policy (applied, fine-tuned `steps` steps, measured on the faster
    of the float and int8 runtimes in this run: the walk-through shows where int8 kernels pay off).

    The process is warmed up first (allocator, thread pool, CPU clocks), so the baseline -- timed
    first -- is not penalized against the policies timed after it.
    """
    time_forward(model.to(task.torch_device).eval(), task.example_input, task.torch_device,
                 LatencyConfig(warmup=20, min_repeats=50, min_seconds=1.0))
    baseline = measure(model, task)
    rows = []
    for name, policy in policies:
        t0 = time.perf_counter()
        m = evaluate(model, task, policy, finetune_config=FinetuneConfig(steps=steps, seed=seed), runtime="auto")
        rows.append(Row(name, m, time.perf_counter() - t0))
        if progress:
            progress(f"  {name}: done in {rows[-1].seconds:.1f} s")
    return baseline, rows


def format_table(baseline: Measurement, rows: list[Row]) -> str:
    """Plain-text table: accuracy and drop, packed bytes and ratio, latency and speedup, MACs."""
    head = f"{'policy':44} {'acc %':>6} {'drop pp':>7} {'bytes':>8} {'ratio':>6} {'lat ms':>7} {'speedup':>7} {'runtime':>12} {'MACs':>9}"
    lines = [head, "-" * len(head)]

    def line(name: str, m: Measurement) -> str:
        drop = (baseline.accuracy - m.accuracy) * 100
        return (f"{name[:44]:44} {m.accuracy * 100:6.2f} {drop:7.2f} {m.size_bytes:8d} "
                f"{baseline.size_bytes / m.size_bytes:5.1f}x {m.latency_ms:7.3f} "
                f"{baseline.latency_ms / m.latency_ms:6.2f}x {m.runtime:>12} {m.macs:9d}")

    lines.append(line("baseline (float32, untouched)", baseline))
    lines += [line(r.name, r.measurement) for r in rows]
    notes = [f"  {r.name}: {s}" for r in rows for s in r.measurement.skipped]
    if notes:
        lines += ["", "not compressed as asked:"] + notes
    return "\n".join(lines)
