"""NSGA-II vs random search at the same budget: hypervolume over several seeds.

Digits CNN (autoshrink.zoo), default space, objectives accuracy/size/latency (batch 1),
`--trials` trials of `--steps` fine-tune steps each. Hypervolume: SearchResult.hypervolume()
(normalized units, reference = 5 pp drop and 1.1x baseline size and latency). One process, the
samplers interleaved by seed. Usage: python benchmarks/sampler_comparison.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import autoshrink as ash
from autoshrink.zoo import digits_model, digits_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--samplers", nargs="+", default=["nsga2", "random"])
    args = ap.parse_args()
    model, task, space = digits_model("cnn"), digits_task(), ash.load_space("default")
    hv: dict[str, list[float]] = {s: [] for s in args.samplers}
    best: dict[str, list[float]] = {s: [] for s in args.samplers}
    tmp = tempfile.mkdtemp()
    print(
        f"{'sampler':>8} {'seed':>4} {'hypervolume':>11} {'best ratio <=1pp':>16} {'front':>5} "
        f"{'wall s':>6} {'overhead':>8}"
    )
    for seed in args.seeds:
        for sampler in args.samplers:
            t0 = time.perf_counter()
            r = ash.search(
                model,
                task,
                space,
                n_trials=args.trials,
                finetune_steps=args.steps,
                sampler=sampler,
                seed=seed,
                storage=f"sqlite:///{tmp}/{sampler}-{seed}.db",
                study_name=f"{sampler}-{seed}",
            )
            ratio = r.baseline.size_bytes / r.best(max_accuracy_drop=0.01, minimize="size").measurement.size_bytes
            hv[sampler].append(r.hypervolume())
            best[sampler].append(ratio)
            print(
                f"{sampler:>8} {seed:>4} {hv[sampler][-1]:11.5f} {ratio:15.1f}x {len(r.pareto):5d} "
                f"{time.perf_counter() - t0:6.1f} {r.timing['overhead_fraction'] * 100:7.1f}%",
                flush=True,
            )
    print()
    for s in args.samplers:
        print(
            f"{s:>8}: median hypervolume {statistics.median(hv[s]):.5f} (all {', '.join(f'{v:.5f}' for v in hv[s])}); "
            f"median best size ratio within 1 pp {statistics.median(best[s]):.1f}x"
        )


if __name__ == "__main__":
    main()
