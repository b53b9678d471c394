"""Where the time goes on ONNX Runtime at batch 256: fixed LeNet-300-100 policies, timing only.

Each policy applied to the cached LeNet-300-100 (autoshrink.zoo.lenet300_fashion; no fine-tune, since
the weights' values do not change the time of dense kernels), exported three ways -- activations
"dynamic" (int8 GEMM, activation scale per batch: what runtime="onnxruntime" measures), "static"
(calibrated scale, runtime="onnxruntime-static") and "weights" (QDQ weights, float compute) -- and
timed with float32 torch and ORT float32 in interleaved rounds (medians, 1 thread, CPU, deploy batch
--batch). Speed-ups against float32 torch in the same process.

Usage: make bench-deps; .venv/bin/python benchmarks/ort_policy_latency.py [--batch 256]
"""

from __future__ import annotations

import argparse
import time

import torch
from onnx_runtime import latencies as interleaved  # benchmarks/onnx_runtime.py: interleaved rounds, medians

import autoshrink as ash
from autoshrink import zoo
from autoshrink.measure.onnxruntime import calibration_batches, ort_runtime

L = ash.LayerPolicy
POLICIES = {  # name: layer policies
    "low-rank (fc1 r0.1 4b, fc2 r0.25 3b, fc3 6b)": {
        "fc1": L(rank=0.1, bits=4),
        "fc2": L(rank=0.25, bits=3),
        "fc3": L(bits=6),
    },
    "same, fc3 float32": {"fc1": L(rank=0.1, bits=4), "fc2": L(rank=0.25, bits=3), "fc3": L(bits=32)},
    "fc1 50 % structured + r0.1 6b, fc2 r0.25 6b, fc3 8b": {
        "fc1": L(sparsity=0.5, structured=True, rank=0.1, bits=6),
        "fc2": L(rank=0.25, bits=6),
        "fc3": L(bits=8),
    },
    "fc1 70 % structured + r0.1 6b, fc2 r0.25 6b, fc3 8b": {
        "fc1": L(sparsity=0.7, structured=True, rank=0.1, bits=6),
        "fc2": L(rank=0.25, bits=6),
        "fc3": L(bits=8),
    },
    "fc1, fc2 50 % structured, 8b": {
        "fc1": L(sparsity=0.5, structured=True, bits=8),
        "fc2": L(sparsity=0.5, structured=True, bits=8),
        "fc3": L(bits=8),
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, task = zoo.lenet300_fashion(), zoo.fashion_task(device="cpu", deploy_batch=args.batch)
    x, cpu, cal = task.example_input, torch.device("cpu"), calibration_batches(task)
    models = {"float32 torch": model.eval(), "float32 ORT": ort_runtime(model, x, cpu)}
    for name, layers in POLICIES.items():
        small = ash.apply_policy(model, ash.Policy(layers=layers), example_input=x).eval()
        models[f"{name} | dynamic"] = ort_runtime(small, x, cpu, activations="dynamic")
        models[f"{name} | static"] = ort_runtime(small, x, cpu, activations="static", calibration=cal)
        models[f"{name} | weights"] = ort_runtime(small, x, cpu, activations="weights")
    lat = interleaved(models, x)
    ref = lat["float32 torch"]
    print(f"| model | activations | ms at batch {args.batch} | x float32 torch |\n|---|---|---|---|")
    for key, ms in lat.items():
        name, _, acts = key.partition(" | ")
        print(f"| {name} | {acts or '-'} | {ms:.4f} | {ref / ms:.2f}x |")
    print(f"wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
