"""What torch's 7-bit activation inputs cost the int8 runtime: the same refined MiniLM model on torch's
dynamic int8 Linear as autoshrink runs it (reduce_range: 7-bit inputs), on the same kernel with 8-bit inputs
(reduce_range=False, used only where a worst-case probe shows this CPU's kernel exact at 8 bits), and on
ONNX Runtime (8-bit inputs). An experiment outside the product: the script builds the 8-bit variant itself.

Fixed before the runs: the model of benchmarks/activation_rounding.py's "float" arm (the `transformer` space's
uniform structural point, refitted, after the refine stage's 200 one-shot steps at each seed), the metric
(the drop from the float32 reference on the selection split, 500 snippets, and on the development split,
snippets 5,500..7,499; the held-out test split is not read) and a latency ratio of the two torch variants at
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
from autoshrink.measure.accuracy import score  # noqa: E402
from autoshrink.measure.runtime import int8_runtime  # noqa: E402


def exact_at_eight_bits() -> bool:
    """The worst case for kernels that sum uint8 x int8 pairs into int16 (255 * 127 * 2 > 32767): every input
    at the top code against weights of +127 and -128 codes. Exact only where the kernel accumulates in int32."""
    codes = torch.empty(2, 64, dtype=torch.int8)
    codes[0], codes[1] = 127, -128
    weight = torch._make_per_channel_quantized_tensor(
        codes, torch.tensor([1 / 127, 1 / 128], dtype=torch.double), torch.zeros(2, dtype=torch.long), 0
    )
    y = torch.ops.quantized.linear_dynamic(
        torch.full((2, 64), 10.0), torch.ops.quantized.linear_prepack(weight, None), reduce_range=False
    )
    return torch.allclose(y, torch.tensor([[640.0, -640.0]] * 2), rtol=1e-3)


def eight_bit_inputs(runtime_model: torch.nn.Module) -> torch.nn.Module:
    """The int8 runtime model with every dynamic int8 Linear taking 8-bit inputs (same packed weights)."""
    import torch.ao.nn.quantized.dynamic as nnqd

    def forward(self, x):
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False).to(x.dtype)

    for m in runtime_model.modules():
        if isinstance(m, nnqd.Linear):
            m.forward = forward.__get__(m)
    return runtime_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(bench.THREADS)
    if not exact_at_eight_bits():
        raise SystemExit("this CPU's int8 kernel is not exact with 8-bit inputs (no VNNI): nothing to compare")
    device = torch.device("cpu")
    rows = []
    for seed in args.seeds:
        t = time.perf_counter()
        model, task, policy, cfg, _ = rounding.minilm(seed, "float")
        ref = ash.measure(model, task, runtime="float", test=True)
        small, _ = compress(model, policy, task=task, finetune_config=cfg)
        seven = int8_runtime(small, device)
        eight = eight_bit_inputs(int8_runtime(small, device))
        row = {"seed": seed}
        for name, m in (("torch_7bit", seven), ("torch_8bit", eight)):
            row[f"{name}_selection"] = round((ref.accuracy - score(m, task, device)[0]) * 100, 2)
            row[f"{name}_dev"] = round((ref.test_accuracy - score(m, task, device, split="test")[0]) * 100, 2)
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
