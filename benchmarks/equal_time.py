"""Equal wall time on the transformer: a post-training search plus the refine of its front against
today's search, which fine-tunes every candidate.

Fixed before the runs (issue 29, acceptance 3):
- model and data: the pretrained all-MiniLM-L6-v2 sentiment classifier (zoo.minilm; 300 snippets
  select, 1,000 held out, 2,000 others fine-tune and calibrate), 2 torch threads, float runtime,
  objectives accuracy and packed size, constraint max_accuracy_drop 1 pp, local executor.
- "posttraining": the built-in `post_training` space (per layer: SparseGPT sparsity 0..70 %, 3..8-bit
  GPTQ codes per channel or in groups of 128/64/32, 16 or 32 bits), `finetune_steps=0`, timeout 75 %
  of --budget, then the refine stage on its 3 most compressed front points within the constraint
  (refine_top=3, 200 steps, one-shot).
- "finetune": today's search: the `default` space (200 fine-tune steps per candidate, gradual pruning,
  screening, distillation searched), timeout = --budget, no refine.
- both: every other setting default (pre-pass within its budget, warm start, front sampler); the same
  fine-tune settings (the spaces' lr 0.001, Adam); wall time = the call's seconds less the held-out
  stage (which scores the final front on the held-out split and is the same work for both).
- measured: candidates evaluated (completed + screened out; target: post-training >= 5x); the best
  packed ratio among points whose held-out drop is <= 1 pp (the front's points scored by the search,
  plus the 5 smallest completed ones, refined included, within the constraint on the selection split,
  replayed; target: post-training higher); the hypervolume of benchmarks/held_out.py (completed
  trials within 1 pp on the selection split, coordinates (drop, log2 size ratio), reference (1 pp,
  log2 1.1)).
- seeds 0, 1, 2 (each search's seed), medians; one search at a time, nothing else on the machine.

Usage: make bench-deps; .venv/bin/python benchmarks/equal_time.py [--arms posttraining finetune]
       [--seeds 0 1 2] [--budget 1800] [--out OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import autoshrink as ash

sys.path.insert(0, str(Path(__file__).resolve().parent))
from held_out import held_out_picks, log_hv  # noqa: E402 - a sibling script

MAX_DROP = 0.01
THREADS = 2


def run(arm: str, seed: int, budget: float, tmp: Path) -> dict:
    from autoshrink.zoo.minilm import minilm_sentiment, minilm_task

    model, task = minilm_sentiment(), minilm_task(device="cpu")
    name = f"minilm-{arm}-{seed}"
    common = dict(
        objectives=("accuracy", "size"),
        n_trials=None,
        seed=seed,
        max_accuracy_drop=MAX_DROP,
        storage=f"sqlite:///{tmp}/{name}.db",
        study_name=name,
        runtime="float",
        progress=False,
    )
    if arm == "posttraining":
        space, settings = ash.load_space("post_training"), dict(timeout=0.75 * budget, refine_top=3)
    else:
        space, settings = ash.load_space("default"), dict(timeout=budget)
    t0 = time.perf_counter()
    r = ash.search(model, task, space, **common, **settings)
    wall = time.perf_counter() - t0 - r.timing["held_out_s"]
    df = r.trials
    done = df[(df["state"] == "COMPLETE") & (df["stage"] != "refined")].dropna(subset=["accuracy"])
    screened = df[(df["state"] == "PRUNED") & df["skipped"].isna()]
    picks, scored = held_out_picks(r, model, task, df[df["state"] == "COMPLETE"].dropna(subset=["accuracy"]), MAX_DROP)
    ok = [ratio for ratio, drop in scored.values() if drop <= MAX_DROP * 100 + 1e-9]
    best = max(ok) if ok else None
    return {
        "arm": arm,
        "seed": seed,
        "wall_s": round(wall, 1),
        "held_out_s": round(r.timing["held_out_s"], 1),
        "sensitivity_s": round(r.timing["sensitivity_s"], 1),
        "cost_s": r.timing["cost"],
        "candidates": len(done) + len(screened),
        "completed": len(done),
        "screened_out": len(screened),
        "refined": int((df["stage"] == "refined").sum()),
        "log_hv": log_hv(df, r.baseline.size_bytes, MAX_DROP),
        "best_ratio_test_within": best,
        "best": next(({"trial": t, "ratio": c, "test_drop_pp": d} for t, (c, d) in scored.items() if c == best), None),
        "picks": picks,
        "baseline_selection_acc": r.baseline.accuracy,
        "baseline_test_acc": r.held_out(None).accuracy,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", nargs="+", choices=("posttraining", "finetune"), default=["posttraining", "finetune"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=float, default=1800.0, help="seconds per search, refine included")
    ap.add_argument("--out", help="write every run as JSON here (rewritten after each run)")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    tmp = Path(tempfile.mkdtemp())
    runs: list[dict] = []
    t_all = time.perf_counter()
    for seed in args.seeds:
        for arm in args.arms:
            s = run(arm, seed, args.budget, tmp)
            runs.append(s)
            print(
                f"{arm} seed {seed}: {s['wall_s']} s (+{s['held_out_s']} s held out), {s['candidates']} candidates "
                f"({s['completed']} completed, {s['screened_out']} screened out, {s['refined']} refined); "
                f"log HV {s['log_hv']:.4f}; best ratio with held-out drop <= 1 pp: {s['best']}",
                flush=True,
            )
            if args.out:
                Path(args.out).write_text(json.dumps({"runs": runs}, indent=1))

    def med(arm: str, key: str):
        values = [s[key] for s in runs if s["arm"] == arm and s[key] is not None]
        return statistics.median(values) if values else None

    summary = {
        arm: {k: med(arm, k) for k in ("wall_s", "candidates", "completed", "log_hv", "best_ratio_test_within")}
        for arm in args.arms
    }
    if len(args.arms) == 2:
        pairs = {s["seed"]: {} for s in runs}
        for s in runs:
            pairs[s["seed"]][s["arm"]] = s
        summary["candidate_ratio_per_seed"] = {
            seed: p["posttraining"]["candidates"] / max(1, p["finetune"]["candidates"]) for seed, p in pairs.items()
        }
    summary["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
