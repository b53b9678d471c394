"""What removing attention heads and FFN neurons costs a fine-tuned MiniLM before and after a refine-length
fine-tune, and whether hidden-state distillation helps that fine-tune.

Fixed: benchmarks/transformer.py's reference classifier and splits (selection split, 500 snippets); the
same fraction of heads and of neurons removed in all 6 blocks, ranked by activation on calibration batches;
then 200 steps (ash.finetune, Adam lr 5e-5, one-shot, alpha 0.7, the teacher = the reference) with logits
only (hidden 0) and with hidden-state distillation (hidden 1.0). Accuracy on the selection split: this
measures recovery, it chooses nothing reported elsewhere.

Usage: .venv/bin/python benchmarks/block_recovery.py [--seeds 0] [--out OUT.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

import autoshrink as ash

sys.path.insert(0, str(Path(__file__).parent))
import transformer as bench  # noqa: E402

SETTINGS = [(0.5, 0.5), (0.25, 0.75), (0.5, 0.75)]  # (heads, neurons) removed in every block


def run(seed: int) -> dict:
    from transformers import AutoTokenizer

    torch.set_num_threads(bench.THREADS)
    model = bench.reference_model()
    path, train, evals, test = bench._data()
    tok = AutoTokenizer.from_pretrained(path)
    task = ash.hf.text_task(tok, train=train, eval=evals, test=test, max_length=64, device="cpu")
    base = ash.measure(model, task, runtime="float")
    blocks = [f"bert.encoder.layer.{i}" for i in range(6)]
    rows = []
    for heads, neurons in SETTINGS:
        bp = ash.BlockPolicy(heads=heads, neurons=neurons, criterion="activation")
        small = ash.apply_policy(model, ash.Policy(blocks=dict.fromkeys(blocks, bp)), task=task)
        row = {
            "heads": heads,
            "neurons": neurons,
            "encoder_removed": 1 - bench.encoder_params(small) / bench.encoder_params(model),
            "post_training": ash.measure(small, task, runtime="float").accuracy,
        }
        for hidden in (0.0, 1.0):
            s = copy.deepcopy(small)
            t = time.perf_counter()
            ash.finetune(s, task, steps=200, lr=5e-5, teacher=model, hidden=hidden, schedule="oneshot", seed=seed)
            row[f"hidden_{hidden}"] = ash.measure(s, task, runtime="float").accuracy
            row[f"hidden_{hidden}_s"] = time.perf_counter() - t
        print(row, flush=True)
        rows.append(row)
    return {"seed": seed, "baseline": base.accuracy, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = [run(s) for s in args.seeds]
    text = json.dumps(runs, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
