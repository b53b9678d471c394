"""GPU paths on one CUDA device: fractional-GPU Ray actors, CUDA latency, quantization-aware fine-tune speed.

Run where CUDA is present (CI has none; the project's GPU tests are `pytest -m gpu`). Prints:
1. the device, torch and ONNX Runtime versions and ORT's execution providers;
2. CUDA latency (ms per forward, synchronized; median of interleaved rounds) of LeNet-300-100 untouched
   and compressed three ways, at batch 1 and 256, on the "float" runtime (the only one torch has on CUDA),
   with the same model's CPU latency (1 thread) beside it; weights are random (latency does not depend
   on them);
3. fine-tune throughput (steps per second) of LeNet-300-100 at 4 bits with 90 % sparsity (fake
   quantization and masks kept in force every step), on a linear grid and on a k-means codebook
   (re-assigned every forward), on CUDA and on the CPU, batch 128, synthetic data;
4. a digits-CNN search of --trials trials with Ray actors sharing the GPU (4 x 0.25) against one actor
   holding it (1 x 1): wall time, trials per minute, and the devices the trials recorded.

Usage: python benchmarks/gpu_paths.py [--trials 16] [--steps 200] [--parts latency qat ray]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time

import torch

import autoshrink as ash
from autoshrink.measure.latency import LatencyConfig, time_forward
from autoshrink.measure.runtime import materialize
from autoshrink.zoo import digits_model, digits_task
from autoshrink.zoo.models import LeNet300

L = ash.LayerPolicy
POLICIES = {
    "lowrank 61x": {"fc1": L(rank=0.1, bits=3), "fc2": L(rank=0.25, bits=3), "fc3": L(bits=6)},
    "structured 50%": {"fc1": L(sparsity=0.5, structured=True), "fc2": L(sparsity=0.5, structured=True)},
    "fp16 all": {"fc1": L(bits=16), "fc2": L(bits=16), "fc3": L(bits=16)},
}

PARTS = ("latency", "qat", "ray")


def synthetic_task(n: int, batch: int, device: str) -> ash.Task:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    return ash.Task(train_data=(x, y), eval_data=(x[:512], y[:512]), example_input=x[:batch], device=device)


def latencies(models: dict[str, torch.nn.Module], x: torch.Tensor, device: torch.device) -> dict[str, float]:
    cfg = LatencyConfig(warmup=20, min_repeats=100, min_seconds=0.3)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(3):
        for k, m in models.items():
            times[k].extend(time_forward(m, x, device, cfg))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run (default: all)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_paths: CUDA is not available here; run it on a machine with an NVIDIA GPU.")
    try:
        import onnxruntime as ort

        providers = f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}"
    except ImportError:
        providers = "onnxruntime not installed"
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; {providers}")

    if "latency" in args.parts:
        latency_part()
    if "qat" in args.parts:
        qat_part()
    if "ray" in args.parts:
        ray_part(args.trials, args.steps)


def latency_part() -> None:
    """CUDA and 1-thread CPU latency of LeNet-300-100 compressed three ways; the runtimes CUDA refuses."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    torch.manual_seed(0)
    base = LeNet300().eval()
    models = {"float32": base}
    for name, layers in POLICIES.items():
        models[name] = materialize(
            ash.apply_policy(LeNet300().eval(), ash.Policy(layers), example_input=torch.randn(1, 1, 28, 28))
        )
    for batch in (1, 256):
        x = torch.randn(batch, 1, 28, 28)
        on_cuda = latencies({k: m.to(cuda) for k, m in models.items()}, x.to(cuda), cuda)
        torch.set_num_threads(1)
        on_cpu = latencies({k: m.to(cpu) for k, m in models.items()}, x, cpu)
        for k in models:
            print(
                f"latency b{batch:<3} {k:>15}: cuda {on_cuda[k]:.4f} ms ({on_cuda['float32'] / on_cuda[k]:.2f}x), "
                f"cpu-1-thread {on_cpu[k]:.4f} ms ({on_cpu['float32'] / on_cpu[k]:.2f}x)"
            )
    torch.set_num_threads(8)
    for runtime in ("onnxruntime", "int8"):  # each must work on CUDA or say clearly why not
        try:
            m = ash.measure(models["lowrank 61x"].to(cuda), synthetic_task(512, 1, "cuda"), runtime=runtime)
            print(f"runtime {runtime} on cuda: {m.latency_ms:.4f} ms on {m.device}")
        except ash.AutoshrinkError as exc:
            print(f"runtime {runtime} on cuda: refused: {exc}")


def qat_part() -> None:
    """Quantization-aware fine-tune throughput, linear grid and k-means codebook, CUDA and CPU."""
    torch.set_num_threads(8)
    for dev, book in (("cuda", "linear"), ("cpu", "linear"), ("cuda", "kmeans"), ("cpu", "kmeans")):
        task = synthetic_task(8192, 1, dev)
        layer = L(sparsity=0.9, bits=4, codebook=book)
        model = ash.apply_policy(LeNet300(), ash.Policy({n: layer for n in ("fc1", "fc2", "fc3")}))
        ash.finetune(model, task, steps=20, seed=0)  # warm-up (CUDA context, kernels)
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        ash.finetune(model, task, steps=300, seed=0)
        if dev == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        size = ash.measure(model.to("cpu"), synthetic_task(512, 1, "cpu")).size_bytes
        print(
            f"QAT fine-tune ({book} 4-bit) on {dev}: {300 / wall:.0f} steps/s (300 steps in {wall:.2f} s); "
            f"packed {size} B"
        )


def ray_part(trials: int, steps: int) -> None:
    """A digits-CNN search with 4 actors sharing the GPU against 1 actor holding it."""
    import ray

    ray.init(num_cpus=8, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.2", logging_level="ERROR")
    try:
        tmp = tempfile.mkdtemp()
        model, task, space = digits_model("cnn"), digits_task(device="auto"), ash.load_space("default")
        for actors, share in ((4, 0.25), (1, 1.0)):
            t0 = time.perf_counter()
            r = ash.search(
                model,
                task,
                space,
                n_trials=trials,
                finetune_steps=steps,
                sampler="random",
                seed=0,
                executor=ash.RayExecutor(actors=actors, gpus_per_actor=share),
                storage=f"sqlite:///{tmp}/g{actors}.db",
                study_name=f"g{actors}",
                sensitivity=False,
            )
            wall = time.perf_counter() - t0
            done = [t for t in r.study.trials if t.state.name == "COMPLETE"]
            devices = sorted({t.user_attrs["measurement"]["device"] for t in done})
            states = collections.Counter(t.state.name for t in r.study.trials)
            failures = [t.user_attrs.get("failure") for t in r.study.trials if t.state.name == "FAIL"]
            print(
                f"ray {actors} actor(s) x {share:g} GPU: {trials} trials in {wall:.1f} s "
                f"= {trials / wall * 60:.1f} trials/min; states {dict(states)}; devices {devices}"
                + (f"; failures {failures}" if failures else "")
            )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
