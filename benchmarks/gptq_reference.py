"""autoshrink's GPTQ against an established one (llm-compressor's `quantize_weight`) on the same layers,
calibration data and scales.

Fixed before the runs:
- layers: LeNet-300-100's fc1 (300 x 784) and fc2 (100 x 300) on Fashion-MNIST; the residual CNN's
  layer2.conv1 (32 x 16 x 3 x 3, unfolded: 32 x 144); all-MiniLM-L6-v2's encoder.layer.0.attention.self.query
  (384 x 384) and encoder.layer.0.output.dense (384 x 1536).
- calibration: each layer's input Gram matrix over 512 training examples (autoshrink's calibration,
  seed 0); judged on the Gram matrix of 512 other training examples (seed 1) as the reconstruction
  error tr((W - Q) G (W - Q)^T) / rows / n, relative to round-to-nearest's.
- both GPTQs get the same Hessian, the same bfloat16 scales (per output channel, or per 64 inputs),
  1 % dampening, blocks of 128, act-order (llm-compressor: "static" per channel, "weight" with groups,
  whose scales stay with their columns as ours do). The one difference left: compressed-tensors' signed
  grid reaches -2^(b-1) (-8 at 4 bits), autoshrink's is symmetric (+-7).
- 4 and 3 bits. llm-compressor 0.14.0.1 with compressed-tensors 0.20.1, unpacked from their wheels beside
  torch 2.13 and imported without llmcompressor's top-level package (which pulls datasets, accelerate's
  hooks and more): `--llmc DIR` is a folder with the unpacked wheels of llmcompressor==0.14.0.1,
  compressed-tensors==0.20.1, loguru, psutil and accelerate (`pip download --no-deps ...`, then unzip
  each into DIR).

Usage: .venv/bin/python benchmarks/gptq_reference.py --llmc /tmp/llmc/site [--out OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch

from autoshrink.techniques.calibration import calibration_inputs, collect
from autoshrink.techniques.gptq import gptq
from autoshrink.weights import group_scales, quantize_value

LAYERS = {
    "lenet300": ["fc1", "fc2"],
    "resnet": ["layer2.conv1"],
    "minilm": ["encoder.encoder.layer.0.attention.self.query", "encoder.encoder.layer.0.output.dense"],
}


def load(name: str):
    from autoshrink.zoo import fashion

    if name == "lenet300":
        return fashion.lenet300_fashion(seed=0), fashion.fashion_task(device="cpu", selection=5000)
    if name == "resnet":
        return fashion.resnet_fashion(seed=0), fashion.fashion_task(device="cpu", selection=5000)
    from autoshrink.zoo.minilm import minilm_sentiment, minilm_task

    return minilm_sentiment(), minilm_task(device="cpu")


def error(w: torch.Tensor, q: torch.Tensor, gram: torch.Tensor, rows: int) -> float:
    d = (w - q).reshape(w.shape[0], -1).double()
    return float(torch.einsum("ij,jk,ik->", d, gram.double(), d)) / w.shape[0] / max(rows, 1)


def theirs(quantize_weight, QuantizationArgs, w, h, scales, bits, group):  # noqa: N803 - their class name
    w2 = w.reshape(w.shape[0], -1).float()
    if group:
        args = QuantizationArgs(num_bits=bits, symmetric=True, strategy="group", group_size=group, actorder="weight")
        s = scales
    else:
        args = QuantizationArgs(num_bits=bits, symmetric=True, strategy="channel", actorder="static")
        s = scales.reshape(-1, 1)
    q, _, fallback = quantize_weight(
        w2.unsqueeze(0).clone(), h.unsqueeze(0).clone(), s.unsqueeze(0), torch.zeros_like(s).unsqueeze(0), None, args
    )
    assert not bool(fallback.any())
    return q[0].reshape(w.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llmc", required=True)
    ap.add_argument("--out")
    args = ap.parse_args()
    sys.path.insert(0, args.llmc)
    for pkg in ("llmcompressor", "llmcompressor.modifiers", "llmcompressor.modifiers.gptq"):  # skip their __init__
        stub = types.ModuleType(pkg)
        stub.__path__ = [str(Path(args.llmc, *pkg.split(".")))]
        sys.modules[pkg] = stub
    from compressed_tensors.quantization import QuantizationArgs
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

    torch.set_num_threads(2)
    rows = []
    for model_name, names in LAYERS.items():
        model, task = load(model_name)
        layers = [model.get_submodule(n) for n in names]
        calib = collect(model, layers, calibration_inputs(task.train_data, task.batch_size, seed=0))
        judge = collect(model, layers, calibration_inputs(task.train_data, task.batch_size, seed=1))
        for name, layer in zip(names, layers):
            w = layer.weight.detach().float()
            h, g = calib[id(layer)].hessian(), judge[id(layer)]
            for bits in (4, 3):
                for group in (0, 64):
                    rtn = quantize_value(w, bits, group)
                    ours, scales = gptq(w, h, bits, group_size=group)
                    ref = theirs(quantize_weight, QuantizationArgs, w, h, group_scales(w, bits, group), bits, group)
                    base = error(w, rtn, g.gram, g.rows)
                    row = {
                        "model": model_name,
                        "layer": name,
                        "bits": bits,
                        "group": group,
                        "rtn_error": base,
                        "autoshrink_rel": error(w, ours, g.gram, g.rows) / base,
                        "llmcompressor_rel": error(w, ref, g.gram, g.rows) / base,
                        "same_values": float((ours == ref).float().mean()),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
