"""Choosing and judging on different data: autoshrink's default search selects on one half of the
Fashion-MNIST test set and every figure quoted is judged on the other half.

Fixed before the runs (not tuned here):
- data: eval_data = test[:5000] (the selection split), test_data = test[5000:] (held out; the search
  reads it only to score its final front, stages/held_out.py);
- tasks: "lenet300" -- LeNet-300-100 (autoshrink.zoo.lenet300_fashion), 1,000 fine-tune steps per trial,
  the model, step count and refine stage (3 policies) of benchmarks/search_efficiency.py; "resnet" -- a
  residual CNN with BatchNorm (autoshrink.zoo.resnet_fashion, a family the defaults were never tuned
  on), 100 steps per trial and a refine stage of 1 policy (a ResNet step costs ~60x a LeNet-300 step on
  2 cores: at 1,000 steps a 10-minute search would see a handful of trials);
- the search: the default space and every default (pre-pass, narrowing, warm start, screening, front
  sampler, refine steps 5x the search's), objectives accuracy and packed size, max_accuracy_drop 0.5 pp,
  float runtime, local executor, timeout = 70 % of --budget, then the refine stage;
- picks: the trials within 0.5 pp on the selection split, smallest first; the five smallest are each
  judged on the held-out split (the search's own score where it scored them, else the recipe replayed
  with `apply_recipe` and measured with `measure(test=True)`); intervals: the paired 95 % interval of the
  drop (measure/paired.py);
- hypervolume: completed trials within 0.5 pp on the selection split, coordinates (drop, log2 of the size
  ratio to the baseline), reference (0.5 pp, log2 1.1) -- the reference drop is the constraint;
- beyond-constraint share: over fully fine-tuned trials, and over all candidates with the screened-out
  ones counted as beyond;
- --method random / nsga2: the same search with that sampler and no pre-pass, warm start or screening --
  the same fine-tune (the space's), the same refine stage and the same packing, so a comparison isolates
  the search; NSGA-II's population is a quarter of --trials-fit (the full trials autoshrink fitted in the
  same budget, 8..50), so that it breeds several generations.

Usage: make bench-deps; .venv/bin/python benchmarks/held_out.py --task lenet300 --budget 600 [--seeds 0 1 2]
       [--out OUT.json] [--method autoshrink|random|nsga2 [--trials-fit N]]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import autoshrink as ash
from autoshrink.measure.paired import paired
from autoshrink.search.pareto import hypervolume

MAX_DROP = 0.005
REFINE_SHARE = 0.3
PICKS = 5


def task_and_model(name: str):
    from autoshrink import zoo

    task = zoo.fashion_task(device="cpu", selection=5000)
    if name == "lenet300":
        return zoo.lenet300_fashion(), task, 1000, 3
    if name == "resnet":
        return zoo.resnet_fashion(), task, 100, 1
    raise SystemExit(f"unknown task {name!r}")


def log_hv(df, base_size: int, max_drop: float = MAX_DROP) -> float:
    """The hypervolume of completed trials within `max_drop` on the selection split: coordinates (drop,
    log2 of the size ratio to the baseline), reference (max_drop, log2 1.1)."""
    ok = df[(df["state"] == "COMPLETE") & (df["accuracy_drop"] <= max_drop + 1e-12)]
    pts = np.array([[d, math.log2(s / base_size)] for d, s in zip(ok["accuracy_drop"], ok["size_bytes"])])
    return hypervolume(pts.reshape(-1, 2), np.array([max_drop, math.log2(1.1)]))


def judge(r: ash.SearchResult, model, task, trial: int) -> dict:
    """A pick's held-out figures: the search's own score, else its recipe replayed and measured."""
    base = r.held_out(None)
    held = r.held_out(trial)
    row = r.trials.set_index("trial").loc[trial]
    if held is not None:
        correct, acc, replayed, source = held.correct, held.accuracy, bool(row["replayed"]), "search"
    else:
        small = ash.apply_recipe(model, r.recipe(trial), task=task)
        m = ash.measure(small, task, runtime="float", test=True)
        correct, acc, replayed, source = m.test_correct, m.test_accuracy, m.accuracy == row["accuracy"], "replayed"
    d = paired(base.correct, correct, base.examples, base.examples)
    return {
        "trial": trial,
        "ratio": float(row["compression"]),
        "selection_drop_pp": float(row["accuracy_drop"]) * 100,
        "selection_half_width_pp": float(row["drop_high"] - row["drop_low"]) * 50,
        "test_drop_pp": (base.accuracy - acc) * 100,
        "test_low_pp": d.low * 100,
        "test_high_pp": d.high * 100,
        "test_half_width_pp": d.half_width * 100,
        "replay_matches": bool(replayed),
        "scored_by": source,
    }


def held_out_picks(r: ash.SearchResult, model, task, done, max_drop: float) -> tuple[list[dict], dict]:
    """The PICKS smallest of `done` (completed trials) within `max_drop` on the selection split, judged
    on the held-out split; and {trial: (ratio, held-out drop in pp)} of those and of the front's points
    the search scored."""
    within = done[done["accuracy_drop"] <= max_drop + 1e-12]
    within = within.sort_values(["size_bytes", "accuracy"], ascending=[True, False])
    picks = [judge(r, model, task, int(t)) for t in within["trial"].head(PICKS)]
    front = r.pareto.dropna(subset=["test_drop"])
    scored = {p["trial"]: (p["ratio"], p["test_drop_pp"]) for p in picks}
    scored.update(
        {int(t): (float(c), float(d) * 100) for t, c, d in zip(front.trial, front.compression, front.test_drop)}
    )
    return picks, scored


def run(args: argparse.Namespace, seed: int, tmp: Path) -> dict:
    model, task, steps, refine_top = task_and_model(args.task)
    name = f"{args.task}-held-out-{args.method}-{seed}"
    baseline_search = {}
    if args.method != "autoshrink":
        import optuna

        sampler = (
            optuna.samplers.RandomSampler(seed=seed)
            if args.method == "random"
            else optuna.samplers.NSGAIISampler(population_size=max(8, min(50, args.trials_fit // 4)), seed=seed)
        )
        baseline_search = dict(sampler=sampler, sensitivity=False, warm_start=False, screen=False)
    t0 = time.perf_counter()
    r = ash.search(
        model,
        task,
        ash.load_space("default"),
        objectives=("accuracy", "size"),
        n_trials=None,
        timeout=args.budget * (1 - REFINE_SHARE),
        finetune_steps=steps,
        seed=seed,
        max_accuracy_drop=MAX_DROP,
        storage=f"sqlite:///{tmp}/{name}.db",
        study_name=name,
        runtime="float",
        refine_top=refine_top,
        refine_steps=5 * steps,
        **baseline_search,
    )
    wall = time.perf_counter() - t0
    df = r.trials
    done = df[df["state"] == "COMPLETE"].dropna(subset=["accuracy"])
    screened = df[(df["state"] == "PRUNED") & df["skipped"].isna()]
    beyond = int((done["accuracy_drop"] > MAX_DROP + 1e-12).sum())
    picks, scored = held_out_picks(r, model, task, done, MAX_DROP)
    ok = [ratio for ratio, drop in scored.values() if drop <= MAX_DROP * 100 + 1e-9]
    b = r.baseline
    return {
        "seed": seed,
        "wall_s": round(wall, 1),
        "trials_full": len(done),
        "screened_out": len(screened),
        "beyond_share_full": beyond / len(done) if len(done) else None,
        "beyond_share_all": (beyond + len(screened)) / (len(done) + len(screened)) if len(done) else None,
        "baseline_selection_acc": b.accuracy,
        "baseline_test_acc": r.held_out(None).accuracy,
        "selection_examples": b.examples,
        "test_examples": r.held_out(None).examples,
        "log_hv": log_hv(df, b.size_bytes),
        "picks": picks,
        "optimism_pp": statistics.median(p["test_drop_pp"] - p["selection_drop_pp"] for p in picks) if picks else None,
        "best_ratio_test_within": max(ok) if ok else None,
        "front_scored": int(r.pareto["test_drop"].notna().sum()),
        "held_out_s": r.timing.get("held_out_s"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("lenet300", "resnet"), required=True)
    ap.add_argument("--budget", type=float, default=600.0, help="seconds per search, refine included")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", help="write every run as JSON here")
    ap.add_argument("--method", choices=("autoshrink", "random", "nsga2"), default="autoshrink")
    ap.add_argument("--trials-fit", type=int, default=100, help="nsga2: full trials autoshrink fitted (population /4)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    runs = []
    for seed in args.seeds:
        s = run(args, seed, tmp)
        runs.append(s)
        first = s["picks"][0] if s["picks"] else None
        print(
            f"{args.task} {args.method} seed {seed}: {s['wall_s']} s, "
            f"{s['trials_full']} full + {s['screened_out']} screened out; "
            f"beyond 0.5 pp {s['beyond_share_full']:.2f} of full, {s['beyond_share_all']:.2f} of all; "
            f"log HV {s['log_hv']:.4f}; smallest pick "
            + (
                f"trial {first['trial']} {first['ratio']:.1f}x: selection {first['selection_drop_pp']:.2f} pp, "
                f"test {first['test_drop_pp']:.2f} pp [{first['test_low_pp']:.2f}, {first['test_high_pp']:.2f}]"
                if first
                else "none"
            )
            + f"; optimism {s['optimism_pp']} pp; best ratio with test drop <= 0.5 pp {s['best_ratio_test_within']}",
            flush=True,
        )
    firsts = [s["picks"][0] for s in runs if s["picks"]]

    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    summary = {
        "task": args.task,
        "method": args.method,
        "budget": args.budget,
        "seeds": args.seeds,
        "median_smallest_pick_test_drop_pp": med(p["test_drop_pp"] for p in firsts),
        "median_smallest_pick_test_half_width_pp": med(p["test_half_width_pp"] for p in firsts),
        "median_smallest_pick_selection_drop_pp": med(p["selection_drop_pp"] for p in firsts),
        "median_smallest_pick_ratio": med(p["ratio"] for p in firsts),
        "median_optimism_pp": med(s["optimism_pp"] for s in runs),
        "median_best_ratio_test_within": med(s["best_ratio_test_within"] for s in runs),
        "median_log_hv": med(s["log_hv"] for s in runs),
        "median_beyond_share_full": med(s["beyond_share_full"] for s in runs),
        "median_beyond_share_all": med(s["beyond_share_all"] for s in runs),
        "replays_matching": int(sum(p["replay_matches"] for s in runs for p in s["picks"])),
        "picks": sum(len(s["picks"]) for s in runs),
        "wall_s": sum(s["wall_s"] for s in runs),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
