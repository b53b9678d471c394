"""The GPU runtimes ("cuda-graph", "cuda-int8") and 2:4 sparsity against float32 torch eager on one CUDA GPU.

One prepared script for the device (issue: faster on the GPU, not only smaller). Weights are random where
only latency is reported (latency does not depend on them). Parts:
1. sparse: one 4096 x 4096 Linear at M = 8192 in float16, dense against its 2:4 form
   (`to_sparse_semi_structured`), CUDA-event timed, and the largest difference of their outputs;
2. lenet: LeNet-300-100 (the RESULTS "GPU paths" model) untouched and compressed (low-rank 61x,
   structured 50 %, fp16, 8-bit, 2:4) at batch 1 and 256: float32 eager against cuda-graph and cuda-int8,
   every figure a ratio to float32 eager of the same batch, "slower" where below 1;
3. bert: a BERT-base config (random init) at batch 256 x 128 tokens: float32 eager, then cuda-graph and
   cuda-int8 untouched, every Linear 8-bit, every Linear 2:4, and half of every block's heads and FFN
   neurons with every Linear 8-bit;
4. resnet: the residual Fashion CNN (zoo.models.FashionResNet) at batch 256: the same runtimes, untouched,
   8-bit, structured 50 % of its convolutions' channels.
Each model's ratios come from one process, float32 eager timed interleaved with the runtimes. Accuracy
is not measured here (random weights).

Usage: python benchmarks/gpu_runtimes.py [--parts sparse lenet bert resnet] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

import autoshrink as ash
from autoshrink.measure.gpu_runtime import gpu_runtime, gpu_versions
from autoshrink.measure.latency import LatencyConfig, time_forward
from autoshrink.measure.runtime import materialize
from autoshrink.zoo.models import FashionResNet, LeNet300

L = ash.LayerPolicy
PARTS = ("sparse", "lenet", "bert", "resnet")
CFG = LatencyConfig(warmup=10, min_repeats=30, min_seconds=0.2)


def event_ms(fn, repeats: int = 50) -> float:
    """Median CUDA-event milliseconds of `fn` after a warm-up."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return statistics.median(out)


def sparse_part() -> dict:
    from autoshrink.techniques.prune import semi_structured_mask

    torch.manual_seed(0)
    dev = torch.device("cuda")
    w = torch.randn(4096, 4096, device=dev, dtype=torch.float16)
    w = w * semi_structured_mask(w.abs()).to(w.dtype)
    x = torch.randn(8192, 4096, device=dev, dtype=torch.float16)
    from torch.sparse import to_sparse_semi_structured

    ws = to_sparse_semi_structured(w)
    dense = event_ms(lambda: torch.nn.functional.linear(x, w))
    sparse = event_ms(lambda: torch.nn.functional.linear(x, ws))
    diff = (torch.nn.functional.linear(x, w) - torch.nn.functional.linear(x, ws)).abs().max().item()
    return {"dense_ms": dense, "sparse_ms": sparse, "speedup": dense / sparse, "max_abs_diff": diff}


def runtimes(name: str, model: nn.Module, policies: dict[str, ash.Policy], x, example) -> dict:
    """float32 eager of the untouched model against each policy on float32 eager, cuda-graph, cuda-int8."""
    dev = torch.device("cuda")
    calls = {"untouched float32 eager": materialize(model).to(dev)}
    plans = {}
    for label, policy in policies.items():
        small = ash.apply_policy(model, policy, example_input=example) if policy.changes_model else model
        calls[f"{label} float32 eager"] = materialize(small).to(dev)
        for rt in ("cuda-graph", "cuda-int8"):
            graphed, plan = gpu_runtime(small, rt, dev)
            calls[f"{label} {rt}"] = graphed
            plans[f"{label} {rt}"] = {k: v for k, v in plan.items() if "simulated" in v}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(3):
        for k, m in calls.items():
            times[k] += time_forward(m, x, dev, CFG)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["untouched float32 eager"]
    rows = {k: {"ms": v, "x_float32_eager": base / v, "slower": base / v < 1.0} for k, v in med.items()}
    for k, row in rows.items():
        flag = "  SLOWER" if row["slower"] else ""
        print(f"{name:>7} {k:>40}: {row['ms']:.4f} ms, {row['x_float32_eager']:.2f}x float32 eager{flag}", flush=True)
    return {"rows": rows, "simulated": plans}


def lenet_part() -> dict:
    torch.manual_seed(0)
    model = LeNet300().eval()
    lin = ("fc1", "fc2", "fc3")
    policies = {
        "untouched": ash.Policy(),
        "lowrank 61x": ash.Policy({"fc1": L(rank=0.1, bits=3), "fc2": L(rank=0.25, bits=3), "fc3": L(bits=6)}),
        "structured 50%": ash.Policy(
            {"fc1": L(sparsity=0.5, structured=True), "fc2": L(sparsity=0.5, structured=True)}
        ),
        "fp16": ash.Policy({n: L(bits=16) for n in lin}),
        "8-bit": ash.Policy({n: L(bits=8) for n in lin}),
        "2:4": ash.Policy({n: L(sparsity="2:4") for n in ("fc1", "fc2")}),
    }
    out = {}
    for batch in (1, 256):
        x = torch.randn(batch, 1, 28, 28)
        out[f"b{batch}"] = runtimes(f"lenet b{batch}", model, policies, x, x)
    return out


def bert_part() -> dict:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval()  # BERT-base shapes, random weights
    x = {
        "input_ids": torch.randint(0, 30522, (256, 128)),
        "attention_mask": torch.ones(256, 128, dtype=torch.long),
    }
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    blocks = {f"bert.encoder.layer.{i}": ash.BlockPolicy(heads=0.5, neurons=0.5) for i in range(12)}
    policies = {
        "untouched": ash.Policy(),
        "8-bit": ash.Policy({n: L(bits=8) for n in linears}),
        "2:4": ash.Policy({n: L(sparsity="2:4") for n in linears if n != "classifier"}),
        "heads/neurons 50% + 8-bit": ash.Policy({n: L(bits=8) for n in linears}, blocks=blocks),
    }
    return runtimes("bert", model, policies, x, {k: v[:1] for k, v in x.items()})


def resnet_part() -> dict:
    torch.manual_seed(0)
    model = FashionResNet().eval()
    x = torch.randn(256, 1, 28, 28)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    weights = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    policies = {
        "untouched": ash.Policy(),
        "8-bit": ash.Policy({n: L(bits=8) for n in weights}),
        "structured 50%": ash.Policy({n: L(sparsity=0.5, structured=True) for n in convs}),
    }
    return runtimes("resnet", model, policies, x, x[:1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_runtimes: CUDA is not available here; run it on a machine with an NVIDIA GPU.")
    t0 = time.perf_counter()
    result = {"device": torch.cuda.get_device_name(0), "versions": gpu_versions()}
    print(result, flush=True)
    for part in args.parts:
        t = time.perf_counter()
        result[part] = globals()[f"{part}_part"]()
        result[f"{part}_s"] = time.perf_counter() - t
        print(f"{part}: {result[f'{part}_s']:.1f} s", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1, default=str)
    if "sparse" in result:
        print("2:4 alone (4096 x 4096, M = 8192, fp16):", result["sparse"])
    print(f"wall {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
