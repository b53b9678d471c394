"""A fine-tune that simulates the deploy runtime's activation rounding (FinetuneConfig.activations) against
one that does not, on the integer runtimes the models are deployed on.

Fixed before the runs: the metric (the accuracy drop from the float32 reference on each integer runtime),
the arms ("float": nothing simulated, the setting before; "int8": torch's 7-bit per-tensor inputs;
"onnxruntime": DynamicQuantizeLinear's 8-bit) and the policies:
- minilm: the cached reference classifier of benchmarks/transformer.py and the policy the `transformer`
  space's last baseline is (every Linear 8-bit GPTQ, 8-bit word embeddings, half of every block's heads
  and FFN neurons, refitted, distilled), fine-tuned as the refine stage does (200 steps, one-shot);
  drops on the 500-snippet selection split (one snippet 0.2 pp) and on a development split, snippets
  5,500..7,499 (no split of transformer.py holds their labels; one snippet 0.05 pp). The held-out test
  split is not read: the default this decides is judged on lenet300.
- lenet300: LeNet-300-100 on Fashion-MNIST (zoo.lenet300_fashion), every Linear 4-bit GPTQ with one
  scale per output channel, 300 fine-tune steps (the default settings otherwise); drops on the selection
  split test[:5000] and the held-out test[5000:] (one image 0.02 pp). A task never used to tune this.

Usage: make bench-deps; .venv/bin/python benchmarks/activation_rounding.py --task minilm|lenet300
       [--seeds 0 1 2] [--arms float int8 onnxruntime]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import autoshrink as ash  # noqa: E402
from autoshrink.evaluate import compress  # noqa: E402
from autoshrink.policy import Policy  # noqa: E402

RUNTIMES = ("int8", "onnxruntime")
DEV = (5500, 7500)


def minilm(seed: int, arm: str):
    import transformer as bench
    from transformers import AutoTokenizer

    from autoshrink.search.setup import _baselines
    from autoshrink.search.stages.refine import refine_config
    from autoshrink.space import bind
    from autoshrink.zoo.minilm import snippets

    model = bench.reference_model()
    path, train, evals, _ = bench._data()
    texts, labels = snippets()
    tok = AutoTokenizer.from_pretrained(path)
    dev = (list(texts[DEV[0] : DEV[1]]), list(labels[DEV[0] : DEV[1]]))
    task = ash.hf.text_task(tok, train=train, eval=evals, test=dev, max_length=64, deploy_length=128, device="cpu")
    space = ash.load_space("transformer")
    uniform = bind(space, model).policy_from_params(_baselines(bind(space, model))[-1])
    blocks = {n: dataclasses.replace(bp, refit=True) for n, bp in uniform.blocks.items()}
    policy = Policy(layers=uniform.layers, distill=uniform.distill, blocks=blocks)
    base = refine_config(space.finetune, 200).to_dict()
    cfg = ash.FinetuneConfig.from_dict({**base, "schedule": "oneshot", "seed": seed, "activations": arm})
    return model, task, policy, cfg, "dev"


def lenet300(seed: int, arm: str):
    from autoshrink import zoo

    model = zoo.lenet300_fashion()
    task = zoo.fashion_task(device="cpu", selection=5000)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    layers = {n: ash.LayerPolicy(bits=4, rounding="gptq") for n in linears}
    cfg = ash.FinetuneConfig(steps=300, seed=seed, schedule="oneshot", activations=arm)
    return model, task, Policy(layers=layers), cfg, "held_out"


def run(task_name: str, seed: int, arm: str) -> dict:
    model, task, policy, cfg, second = (minilm if task_name == "minilm" else lenet300)(seed, arm)
    ref = ash.measure(model, task, runtime="float", test=True)
    t = time.perf_counter()
    small, _ = compress(model, policy, task=task, finetune_config=cfg)
    row = {"task": task_name, "seed": seed, "arm": arm, "finetune_s": round(time.perf_counter() - t, 1)}
    for runtime in RUNTIMES:
        got = ash.measure(small, task, runtime=runtime, test=True)
        row[f"{runtime}_selection"] = round((ref.accuracy - got.accuracy) * 100, 2)
        row[f"{runtime}_{second}"] = round((ref.test_accuracy - got.test_accuracy) * 100, 2)
    row["wall_s"] = round(time.perf_counter() - t, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("minilm", "lenet300"), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=["float", "int8", "onnxruntime"])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            rows.append(run(args.task, seed, arm))
            print(json.dumps(rows[-1]), flush=True)
    for arm in args.arms:
        mine = [r for r in rows if r["arm"] == arm]
        keys = [k for k in mine[0] if k.startswith(RUNTIMES)]
        print(json.dumps({"arm": arm, "median": {k: statistics.median(r[k] for r in mine) for k in keys}}))


if __name__ == "__main__":
    main()
