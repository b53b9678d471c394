"""autoshrink's int8 ONNX graph against ONNX Runtime's own `quantize_dynamic` of the same model.

Fixed before the runs (issue 26, deliverable 5): the graph autoshrink writes for a model whose every
Linear is at 8 bits (`ash.export_onnx`, activations "dynamic") must run at least as fast on ONNX Runtime
as `quantize_dynamic` (QInt8 weights, its defaults) of the model's standard float32 export (constant
folding on, so each Linear is a MatMul of an initializer). Models and shapes:
- LeNet-300-100 (zoo.lenet300_fashion), batch 1, 1 thread; also fc1 50 % structured + every Linear int8
  (the issue's example) against quantize_dynamic of the unpruned model;
- all-MiniLM-L6-v2 as a sequence classifier (benchmarks/transformer.py's fine-tuned reference), batch 1,
  128 tokens, 2 threads.
Latencies: `session.run` medians in interleaved rounds, all sessions of a model in one process, ORT
graph optimizations "all"; speed-ups against float32 torch eager measured in the same rounds. Runs
--seeds times (the seed only names the repeat: nothing is random), medians over them.

Usage: make bench-deps; .venv/bin/python benchmarks/ort_int8.py [--seeds 0 1 2] [--out OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import autoshrink as ash

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transformer import interleaved, reference_model, standard_onnx  # noqa: E402 - a sibling script


def _lenet():
    from autoshrink import zoo

    model = zoo.lenet300_fashion().eval()
    return model, torch.randn(1, 1, 28, 28), 1


def _minilm():
    model = reference_model()
    ids = torch.full((1, 128), 1000, dtype=torch.long)
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    return model, x, 2


def _standard_plain(model, x, path: Path) -> None:
    """standard_onnx for a one-tensor model."""
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True, opset_version=17,
        )  # fmt: skip


def run(name: str, tmp: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from autoshrink.export.ort_session import ort_session, session_feed

    model, x, threads = _lenet() if name == "lenet300" else _minilm()
    torch.set_num_threads(threads)
    if isinstance(x, dict):
        standard_onnx(model, x, tmp / "float.onnx")
    else:
        _standard_plain(model, x, tmp / "float.onnx")
    quantize_dynamic(str(tmp / "float.onnx"), str(tmp / "qd.onnx"), weight_type=QuantType.QInt8)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    graphs = {"float": tmp / "float.onnx", "quantize_dynamic": tmp / "qd.onnx"}
    policies = {"autoshrink int8": {n: ash.LayerPolicy(bits=8) for n in linear}}
    if name == "lenet300":
        policies["autoshrink fc1 50% structured + int8"] = {
            **policies["autoshrink int8"],
            "fc1": ash.LayerPolicy(bits=8, sparsity=0.5, structured=True),
        }
    info = {}
    for label, layers in policies.items():
        small = ash.apply_policy(model, ash.Policy(layers=layers), example_input=x)
        path = tmp / f"{label.replace(' ', '_').replace('%', '')}.onnx"
        info[label] = ash.export_onnx(small, path, example_input=x, activations="dynamic")
        graphs[label] = path
    calls = {}
    for label, path in graphs.items():
        session = ort_session(path, threads=threads)
        feed = session_feed(session, x if isinstance(x, dict) else (x,))
        calls[label] = lambda s=session, f=feed: s.run(None, f)
    plain = x if isinstance(x, dict) else {"input": x}
    with torch.inference_mode():
        calls["float32 torch"] = (lambda: model(**x)) if isinstance(x, dict) else (lambda: model(plain["input"]))
        ms = interleaved(calls)
    return {
        "model": name,
        "threads": threads,
        "latency_ms": ms,
        "speedup_vs_torch": {k: ms["float32 torch"] / v for k, v in ms.items()},
        "vs_quantize_dynamic": {k: ms["quantize_dynamic"] / ms[k] for k in policies},
        "int8_kernels": {k: len(v.int8_kernels) for k, v in info.items()},
        "file_bytes": {k: p.stat().st_size for k, p in graphs.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=["lenet300", "minilm"])
    ap.add_argument("--out", help="write every run as JSON here")
    args = ap.parse_args()
    runs = []
    for seed in args.seeds:
        for name in args.models:
            with tempfile.TemporaryDirectory() as tmp:
                runs.append({"seed": seed, **run(name, Path(tmp))})
            print(json.dumps(runs[-1], indent=1), flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(runs, indent=1))
    for name in args.models:
        mine = [r for r in runs if r["model"] == name]
        for label in mine[0]["vs_quantize_dynamic"]:
            ratio = statistics.median(r["vs_quantize_dynamic"][label] for r in mine)
            print(f"{name}: {label} vs quantize_dynamic: {ratio:.2f}x (median of {len(mine)})")


if __name__ == "__main__":
    main()
