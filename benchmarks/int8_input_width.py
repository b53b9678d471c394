"""What torch's 7-bit activation inputs cost the int8 runtime: the same refined MiniLM model measured on
runtime "int8" (torch's dynamic int8 Linear, reduce_range: 7-bit inputs), on "int8-full" (the same kernel
with 8-bit inputs, which runs where a worst-case probe finds this CPU's kernel exact) and on ONNX Runtime
(8-bit inputs).

Fixed before the runs: the model of benchmarks/activation_rounding.py's "float" arm (the `transformer` space's
uniform structural point, refitted, after the refine stage's 200 one-shot steps at each seed), the metric
(the drop from the float32 reference on the selection split, 500 snippets, and on the development split,
snippets 5,500..7,499; the held-out test split is not read) and a latency ratio of the two torch runtimes at
batch 1 x 128 tokens, 2 threads, timed interleaved in one run.

Usage: make bench-deps; .venv/bin/python benchmarks/int8_input_width.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import activation_rounding as rounding  # noqa: E402
import transformer as bench  # noqa: E402

import autoshrink as ash  # noqa: E402
from autoshrink.evaluate import compress  # noqa: E402
from autoshrink.measure.runtime import int8_full_available, int8_runtime  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(bench.THREADS)
    device = torch.device("cpu")
    if not int8_full_available(device):
        raise SystemExit("this CPU's int8 kernel is not exact with 8-bit inputs (no VNNI): nothing to compare")
    rows = []
    for seed in args.seeds:
        t = time.perf_counter()
        model, task, policy, cfg, _ = rounding.minilm(seed, "float")
        ref = ash.measure(model, task, runtime="float", test=True)
        small, _ = compress(model, policy, task=task, finetune_config=cfg)
        seven = int8_runtime(small, device)
        eight = int8_runtime(small, device, full=True)
        row = {"seed": seed}
        for name, runtime in (("torch_7bit", "int8"), ("torch_8bit", "int8-full")):
            m = ash.measure(small, task, runtime=runtime, test=True)
            row[f"{name}_selection"] = round((ref.accuracy - m.accuracy) * 100, 2)
            row[f"{name}_dev"] = round((ref.test_accuracy - m.test_accuracy) * 100, 2)
        ort = ash.measure(small, task, runtime="onnxruntime", test=True)
        row["ort_selection"] = round((ref.accuracy - ort.accuracy) * 100, 2)
        row["ort_dev"] = round((ref.test_accuracy - ort.test_accuracy) * 100, 2)
        x = {k: v.to(device) for k, v in task.example_input.items()}  # batch 1 x 128 tokens
        with torch.inference_mode():
            lat = bench.interleaved({"7bit": lambda m=seven, x=x: m(**x), "8bit": lambda m=eight, x=x: m(**x)})
        row["latency_8bit_over_7bit"] = round(lat["8bit"] / lat["7bit"], 3)
        row["wall_s"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k not in ("seed", "wall_s")]
    print(json.dumps({"median": {k: statistics.median(r[k] for r in rows) for k in keys}}))


if __name__ == "__main__":
    main()
