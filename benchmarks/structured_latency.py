"""Structured 50% channel pruning -> measured CPU latency speedup (LeNet-5 on 28x28, batch 64).

Base and pruned models are timed in one process, in interleaved rounds (so machine noise hits
both alike); the speedup is the ratio of medians. Weights are random: latency does not depend on
their values. Usage: python benchmarks/structured_latency.py [--width 1 2 4] [--batch 64] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics

import torch

import autoshrink as ash
from autoshrink.measure.latency import LatencyConfig, time_forward
from autoshrink.measure.macs import count_macs
from autoshrink.measure.runtime import materialize
from autoshrink.zoo import LeNet5

L = ash.LayerPolicy


def run(width: int, batch: int, rounds: int) -> dict:
    torch.manual_seed(0)
    base = LeNet5(width=width).eval()
    x = torch.randn(batch, 1, 28, 28)
    policy = ash.Policy(layers={n: L(sparsity=0.5, structured=True) for n in ("conv1", "conv2", "fc1", "fc2")})
    pruned = materialize(ash.apply_policy(base, policy, example_input=x))
    cfg = LatencyConfig(warmup=3, min_repeats=10, min_seconds=0.05)
    times: dict[str, list[float]] = {"base": [], "pruned": []}
    for _ in range(rounds):
        times["base"] += time_forward(base, x, torch.device("cpu"), cfg)
        times["pruned"] += time_forward(pruned, x, torch.device("cpu"), cfg)
    med = {k: statistics.median(v) for k, v in times.items()}
    macs = {"base": count_macs(base, x), "pruned": count_macs(pruned, x)}
    return {
        "width": width,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "base_ms": med["base"],
        "pruned_ms": med["pruned"],
        "speedup": med["base"] / med["pruned"],
        "mac_reduction": macs["base"] / macs["pruned"],
        "params": (sum(p.numel() for p in base.parameters()), sum(p.numel() for p in pruned.parameters())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--width", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    print(f"{'width':>5} {'batch':>5} {'thr':>3} {'base ms':>8} {'pruned ms':>9} {'speedup':>7} {'MACs /':>7} params")
    for w in args.width:
        r = run(w, args.batch, args.rounds)
        print(
            f"{r['width']:5d} {r['batch']:5d} {r['threads']:3d} {r['base_ms']:8.3f} {r['pruned_ms']:9.3f} "
            f"{r['speedup']:6.2f}x {r['mac_reduction']:6.2f}x {r['params'][0]} -> {r['params'][1]}"
        )


if __name__ == "__main__":
    main()
