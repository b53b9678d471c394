"""ONNX Runtime as the study's runtime: searches on accuracy, size and latency.

--task lenet300: LeNet-300-100 trained on full Fashion-MNIST (autoshrink.zoo.lenet300_fashion), deploy
batches 1 and 256, picks at least 10x smaller; --task lenet5w4: the wide LeNet-5 (ANCHORS.md, width 4,
autoshrink.zoo.lenet5_fashion), deploy batch 64, structured space, no size floor, the MAC reduction and
speed-up / MAC reduction reported (Torch-Pruning's anchor: 0.56-0.66). 1 thread, CPU. For each
deploy batch (--batches) and seed: `ash.search(..., runtime="onnxruntime" (or --runtime
onnxruntime-static), objectives=("accuracy", "size", "latency"), max_accuracy_drop=0.01)` on the
default space, --steps fine-tune steps per trial, --budget seconds (timeout), local executor. Every
trial's latency is its ONNX export's in an ORT session (1 intra-op thread). Then, in the same process:
- the pick: among the feasible trials (within 1 pp) at least --min-ratio times smaller than the
  untouched model, the fastest on ORT;
- its recipe replayed (`apply_recipe` with the task: the recorded fine-tune, bitwise on CPU), and
  float32 torch (the untouched model), ORT float32 (the untouched model exported) and the pick on ORT
  timed in interleaved rounds (medians): speed-ups against float32 torch, as Olive's figures are;
- its accuracy through the ORT session (the 10k test set) and its packed size ratio;
- the latency lookup table's prediction error over the study (median |predicted / measured - 1|).
Medians over seeds are printed at the end.

Usage: make bench-deps; .venv/bin/python benchmarks/onnx_search.py [--task lenet300|lenet5w4] [--budget 240]
       [--batches 1 256] [--seeds 0 1 2] [--steps 1000] [--space NAME]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from onnx_runtime import latencies as interleaved  # benchmarks/onnx_runtime.py: interleaved rounds, medians

import autoshrink as ash
from autoshrink import zoo
from autoshrink.measure.latency import LatencyConfig
from autoshrink.measure.onnxruntime import calibration_batches, ort_runtime

TASKS = {  # name: (model, deploy batches, space, --min-ratio)
    "lenet300": (zoo.lenet300_fashion, [1, 256], "default", 10.0),
    "lenet5w4": (lambda: zoo.lenet5_fashion(width=4), [64], "structured", 1.0),
}


def one(model: torch.nn.Module, batch: int, seed: int, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    task = zoo.fashion_task(device="cpu", deploy_batch=batch)
    t0 = time.perf_counter()
    r = ash.search(
        model,
        task,
        ash.load_space(args.space),
        objectives=("accuracy", "size", "latency"),
        runtime=args.runtime,
        max_accuracy_drop=0.01,
        timeout=args.budget,
        n_trials=None,
        finetune_steps=args.steps,
        seed=seed,
        storage=f"sqlite:///{tmp}/b{batch}-s{seed}.db",
        study_name=f"b{batch}-s{seed}",
    )
    wall = time.perf_counter() - t0
    trials = r.trials
    ok = trials[
        (trials.state == "COMPLETE") & (trials.accuracy_drop <= 0.01 + 1e-12) & (trials.compression >= args.min_ratio)
    ]
    pred = r.latency_predictions()
    lut_err = float(pred.error.abs().median()) if len(pred) else float("nan")
    out = {
        "wall_s": wall,
        "trials": int((trials.state == "COMPLETE").sum()),
        "lut_trials": len(pred),
        "lut_median_abs_error": lut_err,
    }
    if ok.empty:
        print(f"b{batch} seed {seed}: no feasible trial >= {args.min_ratio}x smaller in {wall:.0f} s")
        return out
    pick = ok.sort_values("latency_ms").iloc[0]
    small = ash.apply_recipe(model, r.recipe(int(pick.trial)), task)
    x = task.example_input
    static = args.runtime == "onnxruntime-static"
    pick_ort = ort_runtime(
        small,
        x,
        torch.device("cpu"),
        activations="static" if static else "dynamic",
        calibration=calibration_batches(task) if static else None,
    )
    lat = interleaved(
        {"torch_fp32": model.eval(), "ort_fp32": ort_runtime(model, x, torch.device("cpu")), "pick_ort": pick_ort}, x
    )
    m = ash.measure(small, task, runtime=args.runtime, latency=LatencyConfig(min_seconds=0.05))
    out.update(
        trial=int(pick.trial),
        ratio=float(pick.compression),
        search_drop_pp=float(pick.accuracy_drop) * 100,
        replay_drop_pp=(r.baseline.accuracy - m.accuracy) * 100 if r.baseline else float("nan"),
        torch_fp32_ms=lat["torch_fp32"],
        ort_fp32_ms=lat["ort_fp32"],
        pick_ms=lat["pick_ort"],
        speedup_vs_torch=lat["torch_fp32"] / lat["pick_ort"],
        ort_fp32_vs_torch=lat["torch_fp32"] / lat["ort_fp32"],
        speedup_vs_ort_fp32=lat["ort_fp32"] / lat["pick_ort"],
        policy=str(pick.policy),
    )
    if r.baseline and m.macs:
        out.update(mac_reduction=r.baseline.macs / m.macs)
        out.update(speedup_per_mac_reduction=out["speedup_vs_torch"] / out["mac_reduction"])
    print(
        f"b{batch} seed {seed}: {wall:.0f} s, {out['trials']} trials; pick trial {out['trial']} "
        f"{out['ratio']:.1f}x smaller, drop {out['search_drop_pp']:.2f} pp "
        f"(replayed on ORT {out['replay_drop_pp']:.2f} pp); "
        f"torch fp32 {lat['torch_fp32']:.4f} ms, ORT fp32 {lat['ort_fp32']:.4f} ms "
        f"({out['ort_fp32_vs_torch']:.2f}x), pick on ORT {lat['pick_ort']:.4f} ms = {out['speedup_vs_torch']:.2f}x "
        f"vs torch fp32 ({out['speedup_vs_ort_fp32']:.2f}x vs ORT fp32); MACs "
        f"{out.get('mac_reduction', float('nan')):.2f}x fewer (speed-up / MAC reduction "
        f"{out.get('speedup_per_mac_reduction', float('nan')):.2f}); LUT median |error| {lut_err * 100:.1f} % "
        f"over {len(pred)} trials; policy {out['policy']}",
        flush=True,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--task", choices=sorted(TASKS), default="lenet300")
    ap.add_argument("--batches", type=int, nargs="+", help="deploy batches (default: the task's)")
    ap.add_argument("--space", help="search space (default: the task's)")
    ap.add_argument("--budget", type=float, default=240.0, help="search timeout per run (s)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--min-ratio", type=float, help="smallest packed-size ratio a pick may have (default: the task's)")
    ap.add_argument("--runtime", choices=("onnxruntime", "onnxruntime-static"), default="onnxruntime")
    args = ap.parse_args()
    make, batches, space, min_ratio = TASKS[args.task]
    args.batches = args.batches or batches
    args.space = args.space or space
    args.min_ratio = min_ratio if args.min_ratio is None else args.min_ratio
    torch.set_num_threads(1)
    model = make()
    tmp = Path(tempfile.mkdtemp())
    print(f"studies in {tmp}")
    for batch in args.batches:
        runs = [one(model, batch, seed, args, tmp) for seed in args.seeds]
        keys = [
            "wall_s",
            "ratio",
            "search_drop_pp",
            "replay_drop_pp",
            "speedup_vs_torch",
            "ort_fp32_vs_torch",
            "speedup_vs_ort_fp32",
            "mac_reduction",
            "speedup_per_mac_reduction",
            "lut_median_abs_error",
        ]
        med = {k: statistics.median(r[k] for r in runs if k in r) for k in keys if any(k in r for r in runs)}
        print(
            f"b{batch} median over seeds {args.seeds}: " + ", ".join(f"{k} {v:.3g}" for k, v in med.items()), flush=True
        )


if __name__ == "__main__":
    main()
