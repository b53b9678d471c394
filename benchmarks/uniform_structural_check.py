"""Indicative: the `transformer` space's uniform structural baseline (every layer 8-bit, half of every
block's heads and FFN neurons) given the refine's fine-tune (200 steps, lr 5e-5, one-shot, logits and
hidden states), on benchmarks/transformer.py's model and splits: selection and held-out accuracy, torch
int8 and ONNX Runtime latency against float32, interleaved. One run, seed 0; not a search.

Usage: .venv/bin/python benchmarks/uniform_structural_check.py
"""

# ruff: noqa: E402 (the benchmarks folder goes on sys.path before its modules are imported)

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from pathlib import Path

import torch

torch.set_num_threads(2)
import transformer as B
from transformers import AutoTokenizer

import autoshrink as ash
from autoshrink.evaluate import compress
from autoshrink.search.setup import _baselines
from autoshrink.search.stages.refine import refine_config
from autoshrink.space import bind

t0 = time.time()
model = B.reference_model()
path, train, evals, test = B._data()
tok = AutoTokenizer.from_pretrained(path)
task = ash.hf.text_task(tok, train=train, eval=evals, test=test, max_length=64, deploy_length=128, device="cpu")
space = ash.load_space("transformer")
b = bind(space, model)
policy = b.policy_from_params(_baselines(b)[-1])
cfg = refine_config(space.finetune, 200)
cfg = ash.FinetuneConfig.from_dict({**cfg.to_dict(), "schedule": "oneshot", "seed": 0})
post, _ = compress(model, policy, task=task)
mp = ash.measure(post, task, runtime="float")
small, _ = compress(model, policy, task=task, finetune_config=cfg)
base = ash.measure(model, task, runtime="float", test=True)
m = ash.measure(small, task, runtime="int8", test=True)
tmp = Path(tempfile.mkdtemp())
x = task.example_input
B.standard_onnx(model, x, tmp / "float.onnx")
from autoshrink.export.ort_session import ort_session, session_feed

fs = ort_session(tmp / "float.onnx", threads=2)
ff = session_feed(fs, x)
s_ort, info, sess = B.ort_call(small, x, tmp, "pick", activations="dynamic")
from autoshrink.measure.runtime import int8_runtime

rm = int8_runtime(small, torch.device("cpu"))
with torch.inference_mode():
    lat = B.interleaved(
        {
            "float_torch": lambda: model(**x),
            "pick_torch": lambda: rm(**x),
            "float_ort": lambda: fs.run(None, ff),
            "pick_ort": s_ort,
        }
    )
out = {
    "policy_blocks": {k: v.to_dict() for k, v in policy.blocks.items()},
    "post_training_sel": mp.accuracy,
    "base_sel": base.accuracy,
    "base_test": base.test_accuracy,
    "sel": m.accuracy,
    "test": m.test_accuracy,
    "encoder_removed": 1 - B.encoder_params(small) / B.encoder_params(model),
    "ratio": B.packed_bytes(model, tmp, "f") / B.packed_bytes(small, tmp, "s"),
    "lat": lat,
    "torch_x": lat["float_torch"] / lat["pick_torch"],
    "ort_x": lat["float_ort"] / lat["pick_ort"],
    "ort_vs_torch_x": lat["float_torch"] / lat["pick_ort"],
    "wall_s": time.time() - t0,
}
print(json.dumps(out, indent=1))
json.dump(out, open(os.environ.get("OUT", "uniform_check.json"), "w"), indent=1)
