"""MiniLM's uniform structural point with its heads and FFN neurons removed gradually during the refine's
fine-tune, against all at once (selection split only; an experiment, not a product path).

Fixed: the cached reference classifier of benchmarks/transformer.py (3,000 labelled snippets, 500 to select
on); half of every block's heads and FFN neurons (49.9 % of the encoder); the refine's fine-tune settings
(200 steps, lr 5e-5, distillation of logits and block outputs from the reference) at each seed. Both arms
fine-tune in float with the units masked at the out / down projections' inputs (exactly their removal):
"oneshot" masks them all at step 0, ranked by activation importance on the untouched model (what the
search's candidates do); "gradual" raises the masked share on the cubic ramp of train/gradual.py (10
updates over the first half of the steps), re-ranking on the current model at each update. Then the
masked units are removed physically and every layer is quantized as the `transformer` space's uniform
baseline asks (8-bit GPTQ, 8-bit word embeddings), without a further fine-tune. Drops in pp of the
selection split (one snippet = 0.2 pp): float after removal, fake-quantized weights, torch int8 runtime.

The ramp replaces the fine-tune's pruning schedule object (train/finetune.py's GradualPruning) for the run:
the fine-tune itself (optimizer, cosine decay, distillation) is the product's.

Usage: make bench-deps; .venv/bin/python benchmarks/gradual_blocks.py [--seeds 0 1 2] [--modes gradual oneshot]
"""

from __future__ import annotations

import argparse
import copy
import importlib
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
from autoshrink.techniques.apply import task_calibration  # noqa: E402
from autoshrink.techniques.block_importance import block_importance, lowest  # noqa: E402
from autoshrink.techniques.transformer_blocks import find_blocks, remove_heads, remove_neurons  # noqa: E402
from autoshrink.train.gradual import update_schedule  # noqa: E402

finetune_module = importlib.import_module("autoshrink.train.finetune")  # the package re-exports a function


class MaskRamp:
    """Masks of heads and neurons (1 = kept) on the cubic ramp; the fine-tune calls update(model, step)."""

    def __init__(self, model, cfg, fractions: tuple[float, float], calibration) -> None:
        self.blocks = {b.name: b for b in find_blocks(model)}
        self.schedule = dict(update_schedule(cfg.steps, cfg.ramp, cfg.ramp_updates))
        self.fractions = fractions
        self.calibration = calibration
        self.heads = {n: torch.ones(b.heads) for n, b in self.blocks.items()}
        self.neurons = {n: torch.ones(b.neurons) for n, b in self.blocks.items()}
        self.handles = []
        for n, b in self.blocks.items():
            self.handles.append(model.get_submodule(b.out).register_forward_pre_hook(_hook(self.heads, n, b.head_size)))
            self.handles.append(model.get_submodule(b.down).register_forward_pre_hook(_hook(self.neurons, n, 1)))

    def update(self, model, step: int) -> bool:
        share = self.schedule.get(step)
        if not share:
            return False
        scores = block_importance(model, list(self.blocks.values()), self.calibration())  # masked units score 0
        for n in self.blocks:
            for masks, score, fraction in zip((self.heads, self.neurons), scores[n], self.fractions, strict=True):
                m = torch.ones_like(masks[n])
                m[lowest(score, fraction * share)] = 0
                masks[n] = torch.minimum(masks[n], m)
        return False  # no parameter was replaced: the optimizer stays

    def remove(self, model) -> None:
        """Drop the hooks and remove the masked units physically."""
        for h in self.handles:
            h.remove()
        for b in find_blocks(model):
            b = remove_heads(model, b, [int(i) for i in (self.heads[b.name] == 0).nonzero().flatten()])
            remove_neurons(model, b, [int(i) for i in (self.neurons[b.name] == 0).nonzero().flatten()])


def ramped_finetune(student, task, cfg, teacher, calibration) -> MaskRamp:
    """The product's fine-tune of `student` with MaskRamp as its pruning schedule; returns the ramp."""
    made: list[MaskRamp] = []

    def schedule(model, config, plan=None) -> MaskRamp:
        made.append(MaskRamp(model, config, (0.5, 0.5), calibration))
        return made[-1]

    original = finetune_module.GradualPruning
    finetune_module.GradualPruning = schedule
    try:
        finetune_module.run_finetune(student, task, cfg, teacher=teacher)
    finally:
        finetune_module.GradualPruning = original
    return made[0]


def _hook(masks, name: str, width: int):
    def hook(module, args):
        return (args[0] * masks[name].to(args[0].dtype).repeat_interleave(width), *args[1:])

    return hook


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--modes", nargs="+", choices=("gradual", "oneshot"), default=["gradual", "oneshot"])
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(bench.THREADS)
    from transformers import AutoTokenizer

    model = bench.reference_model()
    path, train, evals, _ = bench._data()
    tok = AutoTokenizer.from_pretrained(path)
    task = ash.hf.text_task(tok, train=train, eval=evals, max_length=64, deploy_length=128, device="cpu")
    space = ash.load_space("transformer")
    uniform = bind(space, model).policy_from_params(_baselines(bind(space, model))[-1])
    fractions = {(bp.heads, bp.neurons) for bp in uniform.blocks.values()}
    assert fractions == {(0.5, 0.5)}, fractions  # the space's uniform structural baseline
    base = ash.measure(model, task, runtime="float").accuracy
    drop = lambda acc: round((base - acc) * 100, 2)  # noqa: E731
    for seed in args.seeds:
        for mode in args.modes:
            t = time.perf_counter()
            cfg = refine_config(space.finetune, args.steps)
            ramp = cfg.ramp if mode == "gradual" else 0.0  # ramp 0: one update, everything at step 0
            cfg = ash.FinetuneConfig.from_dict({**cfg.to_dict(), "schedule": "gradual", "seed": seed, "ramp": ramp})
            student = copy.deepcopy(model)
            ramped_finetune(student, task, cfg, model, task_calibration(task, seed)).remove(student)
            removed = ash.measure(student, task, runtime="float").accuracy
            zero = ash.FinetuneConfig.from_dict({**cfg.to_dict(), "steps": 0, "schedule": "oneshot"})
            small, _ = compress(student, Policy(layers=uniform.layers), task=task, finetune_config=zero)
            row = {
                "seed": seed,
                "mode": mode,
                "steps": args.steps,
                "removed_float_drop_pp": drop(removed),
                "fake_quant_drop_pp": drop(ash.measure(small, task, runtime="float").accuracy),
                "int8_drop_pp": drop(ash.measure(small, task, runtime="int8").accuracy),
                "encoder_removed": round(1 - bench.encoder_params(small) / bench.encoder_params(model), 4),
                "s": round(time.perf_counter() - t),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
