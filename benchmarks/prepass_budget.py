"""A pre-pass the budget can pay for: how long a short search waits before its first trial, and how many
trials of a timed search the sampler proposes.

Fixed before the runs (issue 29, Deliver 5):
- "minilm": the pretrained all-MiniLM-L6-v2 sentiment classifier (zoo.minilm: 300 selection / 1,000
  held-out snippets), the built-in quantize-only space, `search(n_trials=5, finetune_steps=0)` from the
  API, runtime "auto", everything else default. Measured: seconds from the call to the first trial's
  start (the "trials" stage's first report) over the search's wall time. Target: <= 25 %.
- "resnet": the residual CNN on Fashion-MNIST (zoo.resnet_fashion; test images 0..4,999 select,
  5,000..9,999 held out), the default space, `search(timeout=900)`, everything else default.
  Measured: the share of trials the sampler proposed (stage "search") among all trials. Target: >= 50 %.
- seeds 0, 1, 2 (the search's seed), medians with the range; 2 torch threads; one search at a time.

Usage: make bench-deps; .venv/bin/python benchmarks/prepass_budget.py [--parts minilm resnet]
       [--seeds 0 1 2] [--timeout 900] [--out OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import autoshrink as ash

THREADS = 2


def minilm(seed: int) -> dict:
    from autoshrink.zoo.minilm import minilm_sentiment, minilm_task

    model, task = minilm_sentiment(), minilm_task(device="cpu")
    seen: list[tuple[float, str, int]] = []
    t0 = time.perf_counter()
    result = ash.search(
        model,
        task,
        ash.load_space("quantize_only"),
        n_trials=5,
        finetune_steps=0,
        seed=seed,
        storage=f"sqlite:///{tempfile.mkdtemp()}/m.db",
        study_name="m",
        progress=lambda p: seen.append((time.perf_counter() - t0, p.stage, p.done)),
    )
    wall = time.perf_counter() - t0
    first = next(t for t, stage, _ in seen if stage == "trials")
    plan = result.study.user_attrs.get("sensitivity", {}).get("plan", {})
    return {
        "wall_s": wall,
        "before_first_trial_s": first,
        "share_before_first_trial": first / wall,
        "stages_s": {s: round(t, 3) for t, s, d in seen if d == 0},
        "prepass": plan,
        "trials": len(result.study.trials),
    }


def resnet(seed: int, timeout: float) -> dict:
    from autoshrink.zoo.fashion import fashion_task, resnet_fashion

    model, task = resnet_fashion(seed=0), fashion_task(device="cpu", selection=5000)
    t0 = time.perf_counter()
    result = ash.search(
        model,
        task,
        ash.load_space("default"),
        timeout=timeout,
        seed=seed,
        storage=f"sqlite:///{tempfile.mkdtemp()}/r.db",
        study_name="r",
        progress=False,
    )
    wall = time.perf_counter() - t0
    stages = [t.user_attrs.get("stage") for t in result.study.trials]
    return {
        "wall_s": wall,
        "trials": len(stages),
        "by_stage": {s: stages.count(s) for s in set(stages)},
        "sampler_share": stages.count("search") / max(len(stages), 1),
        "prepass": result.study.user_attrs.get("sensitivity", {}).get("plan", {}),
        "sensitivity_s": result.timing.get("sensitivity_s"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["minilm", "resnet"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    report: dict = {"threads": THREADS}
    for part in args.parts:
        runs = []
        for seed in args.seeds:
            runs.append(minilm(seed) if part == "minilm" else resnet(seed, args.timeout))
            print(json.dumps({part: runs[-1]}, default=str), flush=True)
        key = "share_before_first_trial" if part == "minilm" else "sampler_share"
        values = [r[key] for r in runs]
        report[part] = {"runs": runs, key: {"median": statistics.median(values), "range": [min(values), max(values)]}}
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({p: {k: v for k, v in r.items() if k != "runs"} for p, r in report.items() if p != "threads"}))


if __name__ == "__main__":
    main()
