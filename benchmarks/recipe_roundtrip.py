"""Recipe round trip: search -> export -> re-apply in a fresh process -> measure, side by side.

For each digits model (DigitsCNN; DigitsResNet, with BatchNorm and residual blocks) a search over
the default space (12 trials, 100 fine-tune steps) runs here; `autoshrink export` writes the chosen
recipe (best size within 1 pp) and `result.recipe(n)` the recipe of every completed trial. A fresh
Python process then retrains the model (`digits_model` is deterministic), loads each recipe,
applies it with the task (policy + recorded fine-tune) and measures it on the recorded runtime;
the chosen recipe is also applied to a copy retrained with another seed (same architecture,
different weights). Usage: python benchmarks/recipe_roundtrip.py [--models cnn resnet] [--trials 12] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import autoshrink as ash
from autoshrink.cli import main as cli
from autoshrink.zoo import digits_model, digits_task

FRESH = textwrap.dedent("""
    import json, sys
    import autoshrink as ash
    from autoshrink.recipe import measure_recipe
    from autoshrink.zoo import digits_model, digits_task

    kind, paths, chosen = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    task, cfg = digits_task(), ash.LatencyConfig(warmup=3, min_repeats=10, min_seconds=0.05)
    out = {}
    for label, path, seed in [(p, p, 0) for p in paths] + [("retrained", chosen, 1)]:
        recipe = ash.Recipe.load(path)
        small = ash.apply_recipe(digits_model(kind, seed=seed), recipe, task=task)
        m = measure_recipe(small, recipe, task, latency=cfg)
        out[label] = {"accuracy": m.accuracy, "size_bytes": m.size_bytes, "latency_ms": m.latency_ms,
                      "runtime": m.runtime}
    print(json.dumps(out))
""")


def describe(policy: ash.Policy) -> str:
    parts = []
    for name, lp in policy.active().items():
        bits = [
            f"{lp.sparsity:.0%}{' ch' if lp.structured else ''}" if lp.sparsity else "",
            f"int{lp.bits}" if lp.bits <= 8 else ("fp16" if lp.bits == 16 else ""),
            f"r{lp.rank:g}" if lp.rank < 1 else "",
        ]
        parts.append(f"{name} " + "/".join(b for b in bits if b))
    return ", ".join(parts) + (" + KD" if policy.distill else "") if parts else "untouched"


def run(kind: str, trials: int, steps: int, tmp: Path) -> None:
    t0 = time.perf_counter()
    model, task = digits_model(kind), digits_task()
    storage, name = f"sqlite:///{tmp}/{kind}.db", f"recipe_{kind}"
    result = ash.search(
        model,
        task,
        ash.load_space("default"),
        n_trials=trials,
        finetune_steps=steps,
        storage=storage,
        study_name=name,
        seed=0,
    )
    t_search = time.perf_counter() - t0
    chosen = tmp / f"{kind}_chosen.yaml"
    if cli(["export", name, "--storage", storage, "--max-accuracy-drop", "0.01", "-o", str(chosen)]):
        raise SystemExit(f"{kind}: no trial within 1 pp to export")
    paths = {}
    for t in result.study.trials:
        if t.state.name == "COMPLETE":
            paths[t.number] = str(tmp / f"{kind}_t{t.number}.yaml")
            result.recipe(t.number).save(paths[t.number])
    t1 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, kind, json.dumps(list(paths.values())), str(chosen)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    pick = ash.Recipe.load(chosen)
    b = result.baseline
    print(
        f"\n### {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters): "
        f"baseline {b.accuracy * 100:.2f} %, {b.size_bytes} B; search {t_search:.0f} s, fresh-process replay "
        f"of {len(paths)} recipes {time.perf_counter() - t1:.0f} s\n"
    )
    print(
        "| trial | policy | recorded acc % | re-applied acc % | recorded B | re-applied B | runtime | "
        "recorded ms | re-applied ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    same = 0
    for n, path in paths.items():
        r, got = ash.Recipe.load(path), fresh[path]
        same += got["size_bytes"] == r.metrics.size_bytes and got["accuracy"] == r.metrics.accuracy
        mark = " (chosen)" if n == pick.trial else ""
        print(
            f"| {n}{mark} | {describe(r.policy)} | {r.metrics.accuracy * 100:.2f} | {got['accuracy'] * 100:.2f} | "
            f"{r.metrics.size_bytes} | {got['size_bytes']} | {r.metrics.runtime} / {got['runtime']} | "
            f"{r.metrics.latency_ms:.3f} | {got['latency_ms']:.3f} |"
        )
    got = fresh["retrained"]
    print(
        f"| {pick.trial} on a copy retrained with seed 1 | (same recipe) | {pick.metrics.accuracy * 100:.2f} | "
        f"{got['accuracy'] * 100:.2f} | {pick.metrics.size_bytes} | {got['size_bytes']} | "
        f"{pick.metrics.runtime} / {got['runtime']} | {pick.metrics.latency_ms:.3f} | {got['latency_ms']:.3f} |"
    )
    print(f"\n{same} of {len(paths)} recipes reproduced size and accuracy exactly in the fresh process.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cnn", "resnet"], choices=["mlp", "cnn", "resnet"])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models:
            run(kind, args.trials, args.steps, Path(tmp))


if __name__ == "__main__":
    main()
