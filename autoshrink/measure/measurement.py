"""Measurement: what a (compressed) model measured, every number measured, never estimated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LayerStats:
    """Per-tensor breakdown of the packed artifact (one row per stored weight tensor)."""

    name: str
    shape: tuple[int, ...]
    params: int
    nonzero: int
    bits: int
    encoding: str  # layout, and how its streams are stored: "dense", "relidx (gaps: entropy, values: fixed)", ...
    bytes: int


@dataclass(frozen=True)
class HeldOut:
    """A compressed model scored on the task's held-out test_data once, after the search decided.

    accuracy / examples / correct: on test_data (correct as in Measurement); runtime: the runtime it
    ran on (the trial's); eval_accuracy: the same replayed model on eval_data again -- equal to the
    trial's accuracy when the replay reproduced the model the search measured.
    """

    accuracy: float
    examples: int
    correct: str
    runtime: str
    eval_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeldOut:
        return cls(**dict(data))


@dataclass(frozen=True)
class RuntimeTiming:
    """Latency of one model on each runtime that can run it here (the runtime='auto' probe): no accuracy,
    no packing, so deciding a study's runtime costs its timings only."""

    latency_by_runtime: dict[str, float]
    device: str
    batch_size: int

    @property
    def fastest(self) -> str:
        return min(self.latency_by_runtime, key=self.latency_by_runtime.get)


@dataclass(frozen=True)
class Measurement:
    """Measured numbers of one model on one task.

    accuracy: the task metric on eval_data (higher is better), on the runtime timed below.
    size_bytes: exact byte length of the packed artifact (`save_packed`), == its file size.
    latency_ms: median wall time of one forward of `example_input` (batch `batch_size`) on
        `device` with `threads` CPU threads, after warm-up, device synchronized, on `runtime`
        ("float": dense float kernels; "int8-dynamic": int8 Linear kernels, 7-bit inputs; "int8-full": the
        same with 8-bit inputs; "onnxruntime", ...), the faster of those timed for this model.
    macs: multiply-accumulates of one forward of example_input.
    simulated: on a GPU runtime, the compressed layers it runs without a fast kernel for their compression
        ("fc1: float16; simulated: 4-bit codes run as float16 weights"; measure/gpu_runtime.py).
    layer_latency_ms: the layers named in LatencyConfig.layers, each timed alone on the same runtime
        (measure/layer_latency.py); empty unless asked for.
    examples / correct: eval_data's example count and, for the accuracy metric, which examples the
        model got right (measure/paired.py: base64 of packed bits; "" otherwise) -- the paired intervals.
    test_accuracy / test_examples / test_correct: the same on the task's held-out test_data, measured
        only where asked (`measure(..., test=True)`, a search's final front); None / 0 / "" otherwise.
    cost: wall seconds by stage of producing this measurement (measure/cost.py STAGES: apply,
        calibrate, finetune from `evaluate`; evaluate, pack, latency from `measure`).
    """

    accuracy: float
    size_bytes: int
    latency_ms: float
    macs: int
    device: str
    threads: int
    batch_size: int
    runtime: str = "float"
    params: int = 0
    nonzero_params: int = 0
    latency_by_runtime: Mapping[str, float] = field(default_factory=dict)
    layers: tuple[LayerStats, ...] = ()
    skipped: tuple[str, ...] = ()
    simulated: tuple[str, ...] = ()  # "layer: kernel; simulated: why" where the GPU runtime has no fast kernel
    layer_latency_ms: Mapping[str, float] = field(default_factory=dict)
    examples: int = 0
    correct: str = ""
    test_accuracy: float | None = None
    test_examples: int = 0
    test_correct: str = ""
    cost: Mapping[str, float] = field(default_factory=dict, compare=False)  # timings: two equal models differ

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency_by_runtime"] = dict(self.latency_by_runtime)
        d["layers"] = [dict(asdict(l), shape=list(l.shape)) for l in self.layers]
        d["skipped"] = list(self.skipped)
        d["simulated"] = list(self.simulated)
        d["layer_latency_ms"] = dict(self.layer_latency_ms)
        d["cost"] = dict(self.cost)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        d = dict(data)
        d["layers"] = tuple(LayerStats(**dict(l, shape=tuple(l["shape"]))) for l in d.get("layers", ()))
        d["skipped"] = tuple(d.get("skipped", ()))
        d["simulated"] = tuple(d.get("simulated", ()))
        d["latency_by_runtime"] = dict(d.get("latency_by_runtime", {}))
        d["layer_latency_ms"] = dict(d.get("layer_latency_ms", {}))
        d["cost"] = dict(d.get("cost", {}))
        return cls(**d)

    def summary(self) -> str:
        return (
            f"accuracy={self.accuracy:.4f} size={self.size_bytes} B latency={self.latency_ms:.3f} ms "
            f"({self.runtime}, {self.device}, {self.threads} threads, batch {self.batch_size}) macs={self.macs}"
        )
