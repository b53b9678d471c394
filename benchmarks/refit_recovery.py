"""MiniLM's uniform structural point with and without a refit of its projections, post-training and
after the refine's fine-tune, with and without unlabeled texts (selection split only; indicative).

Fixed: the cached reference classifier of benchmarks/transformer.py (its task: 3,000 labelled snippets,
500 to select on); the policy the `transformer` space's last baseline is (every layer 8-bit GPTQ, 8-bit
word embeddings, half of every block's heads and FFN neurons, activation-ranked, distilled), with
`refit` set per arm. Post-training: the space's 0-step fine-tune. Refine: the refine stage's settings
(200 steps, one-shot: the policy is calibrated) at each seed. `--unlabeled`: the task also holds snippets
5500.. without labels. Drops in pp of the selection split (one snippet = 0.2 pp); torch int8 runtime.

Usage: make bench-deps; .venv/bin/python benchmarks/refit_recovery.py [--seeds 0 1 2] [--steps 200]
       [--post-training-only] [--unlabeled]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import transformer as bench  # noqa: E402

import autoshrink as ash  # noqa: E402
from autoshrink.evaluate import compress  # noqa: E402
from autoshrink.policy import Policy  # noqa: E402
from autoshrink.search.setup import _baselines  # noqa: E402
from autoshrink.search.stages.refine import refine_config  # noqa: E402
from autoshrink.space import bind  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--post-training-only", action="store_true")
    ap.add_argument("--unlabeled", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(bench.THREADS)
    from transformers import AutoTokenizer

    model = bench.reference_model()
    path, train, evals, _ = bench._data()
    extra = bench.unlabeled_texts() if args.unlabeled else None
    task = ash.hf.text_task(
        AutoTokenizer.from_pretrained(path),
        train=train,
        eval=evals,
        unlabeled=extra,
        max_length=64,
        deploy_length=128,
        device="cpu",
    )
    space = ash.load_space("transformer")
    uniform = bind(space, model).policy_from_params(_baselines(bind(space, model))[-1])
    base = ash.measure(model, task, runtime="float").accuracy
    runs = [(None, space.finetune)] if args.post_training_only else []
    for seed in args.seeds if not args.post_training_only else []:
        cfg = refine_config(space.finetune, args.steps)
        runs.append((seed, ash.FinetuneConfig.from_dict({**cfg.to_dict(), "schedule": "oneshot", "seed": seed})))
    for seed, cfg in runs:
        for refit in (False, True):
            blocks = {n: dataclasses.replace(bp, refit=refit) for n, bp in uniform.blocks.items()}
            policy = Policy(layers=uniform.layers, distill=uniform.distill, blocks=blocks)
            t = time.perf_counter()
            small, _ = compress(model, policy, task=task, finetune_config=cfg)
            acc = ash.measure(small, task, runtime="int8").accuracy
            row = {"refit": refit, "steps": cfg.steps, "seed": seed, "unlabeled": task.unlabeled_count}
            print(json.dumps({**row, "drop_pp": round((base - acc) * 100, 2), "s": round(time.perf_counter() - t)}))


if __name__ == "__main__":
    main()
