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
- "subsample": the noise the pre-pass's subsample adds (fixed before its run, 2026-12-06): every single
  choice of the default space on the residual CNN (the resnet part's model and task, 5,000 selection
  images), each measured twice without fine-tuning -- on the whole selection split and on the pre-pass's
  fixed draw of 1,000 (prepass_examples), its drop against the untouched model on the same images.
  Reported: the median and 95th percentile of |subsample drop - whole drop| in pp, Spearman's rank
  correlation of the two, how many choices the default search's narrowing cutoff (narrow_cutoff without
  a constraint) removes with each and how many differ, and the seconds of each pass. Deterministic.
- seeds 0, 1, 2 (the search's seed), medians with the range; 2 torch threads; one search at a time.

Usage: make bench-deps; .venv/bin/python benchmarks/prepass_budget.py [--parts minilm resnet subsample]
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


def subsample() -> dict:
    from autoshrink.executors import Job, LocalExecutor
    from autoshrink.policy import Policy
    from autoshrink.search.stages.narrow import narrow, narrow_cutoff
    from autoshrink.search.stages.prepass_budget import prepass_examples, subsample_accuracy
    from autoshrink.search.stages.sensitivity import choices, run_choices
    from autoshrink.space import bind
    from autoshrink.techniques.structured import structured_blockers
    from autoshrink.train import FinetuneConfig
    from autoshrink.zoo.fashion import fashion_task, resnet_fashion

    model, task = resnet_fashion(seed=0), fashion_task(device="cpu", selection=5000)
    space = ash.load_space("default")
    bound = bind(space, model)
    bound = bound.without_structured(structured_blockers(model, bound.structured_candidates(), task.example_input))
    ex = LocalExecutor()
    ex.start(Job(model=model, task=task, finetune=space.finetune))
    ex.submit(0, Policy(), FinetuneConfig(steps=0), runtime="float")
    baseline = ex.wait()[0].measurement
    items = choices(bound)
    idx = prepass_examples(task)
    out: dict = {"choices": len(items), "examples": len(idx), "of": len(task.eval_data)}
    rows = {}
    for name, sub in (("whole", None), ("subsample", idx)):
        t0 = time.perf_counter()
        base = None if sub is None else subsample_accuracy(baseline, sub)
        rows[name], _ = run_choices(
            ex, lambda e: e.wait(), items, baseline, "float", 8, 0, examples=sub, base_accuracy=base
        )
        out[f"{name}_s"] = time.perf_counter() - t0
    a = [r["accuracy_drop"] * 100 for r in rows["whole"]]
    b = [r["accuracy_drop"] * 100 for r in rows["subsample"]]
    diffs = sorted(abs(x - y) for x, y in zip(a, b))
    out["median_abs_diff_pp"] = statistics.median(diffs)
    out["p95_abs_diff_pp"] = diffs[int(0.95 * (len(diffs) - 1))]
    out["max_abs_diff_pp"] = diffs[-1]
    rank = lambda v: {i: r for r, i in enumerate(sorted(range(len(v)), key=lambda i: v[i]))}  # noqa: E731
    ra, rb = rank(a), rank(b)
    n = len(a)
    out["spearman"] = 1 - 6 * sum((ra[i] - rb[i]) ** 2 for i in range(n)) / (n * (n * n - 1))
    cutoff = narrow_cutoff(None)
    removed = {k: {(r["layer"], r["field"], r["value"]) for r in narrow(bound, rows[k], cutoff)[1]} for k in rows}
    out["cutoff"] = cutoff
    out["narrowed_whole"], out["narrowed_subsample"] = len(removed["whole"]), len(removed["subsample"])
    out["narrowed_differ"] = len(removed["whole"] ^ removed["subsample"])
    out["pairs"] = [[x, y] for x, y in zip(a, b)]
    return out


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
        if part == "subsample":
            report[part] = subsample()
            print(json.dumps({k: v for k, v in report[part].items() if k != "pairs"}), flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(report, indent=1, default=str))
            continue
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
