"""The study's deployment runtime: decided once, recorded, used for every trial's latency and accuracy.

One runtime for every measurement, so a trial's accuracy never depends on a timing race: "float",
"int8" (torch's dynamic int8 kernels for every Linear at <= 8 bits, 7-bit inputs), "int8-full" (the same
kernels with 8-bit inputs, where the CPU computes them exactly), "onnxruntime" (the ONNX export in
ONNX Runtime, measure/onnxruntime.py), "onnxruntime-static" (calibrated static activations), or on a CUDA
GPU "cuda-graph" / "cuda-int8" (float16 CUDA graphs, 2:4 and int8 kernels; measure/gpu_runtime.py);
chosen by the user or, with "auto", by timing the runtimes the device has once with every Linear at 8
bits, at the example-input shape, on the evaluating device. Stored in the study (user attribute "runtime").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from torch import nn

from ...errors import ConfigError
from ...executors import Outcome
from ...measure.gpu_runtime import GPU_RUNTIMES, gpu_versions
from ...policy import LayerPolicy, Policy
from ...train import FinetuneConfig
from ..study.schema import StudyAttr

RUNTIME_CHOICES = ("auto", "float", "int8", "int8-full", "onnxruntime", "onnxruntime-static", "cuda-graph", "cuda-int8")
PROBE_KEY = -2


def check_runtime(runtime: Any) -> str:
    if runtime not in RUNTIME_CHOICES:
        raise ConfigError(
            f"search: runtime={runtime!r}; use 'auto' (the fastest of float, int8 (int8-full where the CPU "
            "has it) and on a GPU cuda-graph and cuda-int8, timed once on the baseline), 'float', 'int8', "
            "'int8-full', 'onnxruntime', 'onnxruntime-static', 'cuda-graph' or 'cuda-int8'."
        )
    return runtime


def probe_policy(model: nn.Module) -> Policy:
    """Every nn.Linear at 8 bits: the model the int8 runtime would run fastest on."""
    return Policy(layers={n: LayerPolicy(bits=8) for n, m in model.named_modules() if type(m) is nn.Linear})


def study_runtime(
    study: optuna.Study, requested: str, model: nn.Module, ex: Any, wait: Callable[[Any], list[Outcome]]
) -> tuple[str, float]:
    """The runtime of this study and the evaluation seconds spent deciding it: the stored one on resume
    (a different explicit request is refused), else the requested one, else ("auto") the faster of
    float and int8 on the probe policy."""
    stored = study.user_attrs.get(StudyAttr.RUNTIME)
    if stored:
        if requested != "auto" and requested != stored["runtime"]:
            raise ConfigError(
                f"study {study.study_name!r} measures on runtime {stored['runtime']!r} "
                f"({stored['decided_by']}); resume it with runtime={stored['runtime']!r} or 'auto', "
                "or use a new study_name."
            )
        return stored["runtime"], 0.0
    seconds = 0.0
    if requested != "auto":
        decision = {"runtime": requested, "decided_by": "the user"}
    else:
        decision, seconds = _probe(model, ex, wait)
    if decision["runtime"] in GPU_RUNTIMES:
        decision["versions"] = gpu_versions()
    study.set_user_attr(StudyAttr.RUNTIME, decision)
    return decision["runtime"], seconds


def _probe(model: nn.Module, ex: Any, wait: Callable[[Any], list[Outcome]]) -> tuple[dict[str, Any], float]:
    policy = probe_policy(model)
    if not policy.layers:
        return {"runtime": "float", "decided_by": "auto: the model has no nn.Linear layer for int8 kernels"}, 0.0
    ex.submit(PROBE_KEY, policy, FinetuneConfig(steps=0), probe=True)
    outcomes: list[Outcome] = []
    while not outcomes:
        outcomes = wait(ex)
    o = outcomes[0]
    if not o.ok:
        raise ConfigError(
            f"deciding the runtime (timing float against int8 on the model with every Linear at 8 bits) "
            f"failed: {o.error}. Fix: pass runtime='float' or 'int8'."
        )
    t = o.timing
    lat = t.latency_by_runtime
    timed = ", ".join(f"{k} {v:.4g} ms" for k, v in sorted(lat.items()))
    chosen = {"int8-dynamic": "int8"}.get(t.fastest, t.fastest)
    how = (
        f"auto: every Linear at 8 bits, batch {t.batch_size} on {t.device}: {timed}"
        if len(lat) > 1
        else f"auto: no integer or GPU runtime on {t.device}"
    )
    return {"runtime": chosen, "decided_by": how}, o.seconds
