"""Ray executor throughput vs the local executor on a CPU-bound digits search (same trials).

Both runs use sampler="random" with the same seed, so they evaluate the same policies (random
sampling does not depend on results); the Ray run keeps `--actors` trials in flight. Reported:
trials per minute of each end to end (start-up included) and at steady state (first to last
finished trial), the ratios, and the Ray driver's dispatch overhead per trial (time the driver
spends submitting and collecting, excluding waiting). Usage:
python benchmarks/ray_throughput.py [--trials 24] [--steps 200] [--actors 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import autoshrink as ash
from autoshrink.zoo import digits_model, digits_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--model", default="cnn")
    args = ap.parse_args()
    model, task, space = digits_model(args.model), digits_task(device="cpu"), ash.load_space("default")
    tmp = tempfile.mkdtemp()
    runs = {}
    steady: dict[str, float] = {}
    for name, executor in (("local", "local"), ("ray", ash.RayExecutor(actors=args.actors))):
        stamps: list[float] = []
        t0 = time.perf_counter()
        r = ash.search(
            model,
            task,
            space,
            n_trials=args.trials,
            finetune_steps=args.steps,
            sampler="random",
            seed=0,
            executor=executor,
            storage=f"sqlite:///{tmp}/{name}.db",
            study_name=name,
            progress=lambda p, stamps=stamps: stamps.append(time.perf_counter()),
        )
        wall = time.perf_counter() - t0
        runs[name] = (r, wall, executor)
        steady[name] = (len(stamps) - 1) / (stamps[-1] - stamps[0]) * 60
        print(
            f"{name:>5}: {args.trials} trials in {wall:.1f} s = {args.trials / wall * 60:.1f} trials/min end to end, "
            f"{steady[name]:.1f} trials/min steady (evaluation {r.timing['eval_s']:.1f} s summed over workers)",
            flush=True,
        )
    same = [t.params for t in runs["local"][0].study.trials] == [t.params for t in runs["ray"][0].study.trials]
    ray_ex = runs["ray"][2]
    print(
        f"same trials: {same}; throughput ray/local: {runs['local'][1] / runs['ray'][1]:.2f}x end to end, "
        f"{steady['ray'] / steady['local']:.2f}x steady, with {args.actors} actors; "
        f"dispatch overhead {ray_ex.dispatch_s / args.trials * 1e3:.2f} ms per trial"
    )
    sizes_equal = all(
        a.user_attrs["measurement"]["size_bytes"] == b.user_attrs["measurement"]["size_bytes"]
        for a, b in zip(runs["local"][0].study.trials, runs["ray"][0].study.trials)
    )
    print(f"sizes identical trial by trial: {sizes_equal}")


if __name__ == "__main__":
    main()
