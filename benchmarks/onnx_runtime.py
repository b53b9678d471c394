"""ONNX Runtime as the deployment runtime: latency and accuracy of compressed LeNet-300-100 exports.

LeNet-300-100 trained on full Fashion-MNIST (autoshrink.zoo.lenet300_fashion, as in ANCHORS.md), 1 thread,
CPU, batch 1 and batch 256. Models, each fine-tuned --steps steps (gradual, labels only) per seed:
- "int8 all": every Linear at 8 bits (what Olive's int8 search ships);
- "lowrank 61x": fc1 rank 0.1 / fc2 rank 0.25 at 3 bits, fc3 at 6 bits (the front point the search
  finds, benchmarks/RESULTS.md "Search efficiency, LeNet-300-100");
- "sparse 57x": the best hand push's densities 4 / 5 / 15 % at 4 bits (unstructured: smaller file,
  dense kernels).
For each: the file sizes (.ashz and .onnx), the accuracy on the 10k test set through the ORT session,
and latencies in interleaved rounds (medians) of: float32 torch (the untouched model, the reference),
ORT float32 (the untouched model exported), the compressed model in torch (float runtime), and the
compressed model's ONNX export on ORT (activations "dynamic"). Speed-ups are against float32 torch
measured in the same process. Seeds --seeds; the median accuracy drop is reported.

Usage: make bench-deps; .venv/bin/python benchmarks/onnx_runtime.py [--seeds 0 1 2] [--steps 3000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import autoshrink as ash
from autoshrink import zoo
from autoshrink.export import export_onnx, ort_session, run_session
from autoshrink.measure.latency import LatencyConfig, time_forward
from autoshrink.measure.onnxruntime import OrtModule
from autoshrink.measure.runtime import materialize

L = ash.LayerPolicy
POLICIES = {
    "int8 all": {"fc1": L(bits=8), "fc2": L(bits=8), "fc3": L(bits=8)},
    "lowrank 61x": {"fc1": L(rank=0.1, bits=3), "fc2": L(rank=0.25, bits=3), "fc3": L(bits=6)},
    "sparse 57x": {"fc1": L(sparsity=0.96, bits=4), "fc2": L(sparsity=0.95, bits=4), "fc3": L(sparsity=0.85, bits=4)},
}
ROUNDS = 5


def ort_accuracy(session, task: ash.Task) -> float:
    x, y = task.eval_data.tensors
    correct = 0
    for i in range(0, len(x), 1000):
        out = run_session(session, [x[i : i + 1000]])[0]
        correct += int((torch.from_numpy(out).argmax(1) == y[i : i + 1000]).sum())
    return correct / len(x)


def latencies(models: dict[str, torch.nn.Module], x: torch.Tensor) -> dict[str, float]:
    """Median ms per forward of each model, interleaved rounds."""
    cfg = LatencyConfig(warmup=10, min_repeats=50, min_seconds=0.3)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(ROUNDS):
        for k, m in models.items():
            times[k].extend(time_forward(m, x, torch.device("cpu"), cfg))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, task = zoo.lenet300_fashion(), zoo.fashion_task(device="cpu")
    tmp = Path(tempfile.mkdtemp())
    base_acc = ash.measure(model, task, runtime="float").accuracy
    base_onnx = export_onnx(model, tmp / "base.onnx", example_input=task.example_input)
    base_sess = ort_session(base_onnx.path, threads=1)
    print(
        f"untouched: torch {base_acc * 100:.2f} %, ORT float32 {ort_accuracy(base_sess, task) * 100:.2f} %, "
        f"{ash.save_packed(model, tmp / 'base.ashz')} B .ashz, {base_onnx.size_bytes} B .onnx"
    )
    for name, layers in POLICIES.items():
        drops, walls, small = [], [], None
        for seed in args.seeds:
            t0 = time.perf_counter()
            small = ash.apply_policy(model, ash.Policy(layers=layers))
            ash.finetune(small, task, steps=args.steps, seed=seed, schedule="gradual", alpha=0.0)
            out = export_onnx(small, tmp / f"{name}-{seed}.onnx".replace(" ", "_"), example_input=task.example_input)
            sess = ort_session(out.path, threads=1)
            drops.append((base_acc - ort_accuracy(sess, task)) * 100)
            walls.append(time.perf_counter() - t0)
        ashz = ash.save_packed(small, tmp / "small.ashz")
        print(
            f"\n{name}: ORT accuracy drop median {statistics.median(drops):.2f} pp (seeds "
            f"{', '.join(f'{d:.2f}' for d in drops)}), {ashz} B .ashz ({base_onnx.size_bytes / ashz:.1f}x smaller "
            f"than the float .onnx), {out.size_bytes} B .onnx ({base_onnx.size_bytes / out.size_bytes:.1f}x); "
            f"int8 kernels {', '.join(out.int8_kernels)}; {statistics.median(walls):.0f} s per seed"
        )
        for batch in args.batches:
            x = task.eval_data.tensors[0][:batch]
            lat = latencies(
                {
                    "float32 torch": model,
                    "ORT float32": OrtModule(base_sess, "float"),
                    "compressed torch": materialize(small),
                    "compressed ORT": OrtModule(sess, "dynamic"),
                },
                x,
            )
            ref = lat["float32 torch"]
            print(f"  batch {batch:>3}: " + ", ".join(f"{k} {v:.4f} ms ({ref / v:.2f}x)" for k, v in lat.items()))


if __name__ == "__main__":
    main()
