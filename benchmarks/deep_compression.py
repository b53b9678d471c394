"""Deep Compression's three stages through autoshrink on LeNet-300-100 / full Fashion-MNIST (issue: codebooks).

Policies (shared/ANCHORS.md): the hand pipeline's densities -- fc1 / fc2 / fc3 keep 8 / 9 / 26 % --
at 6 bits, and the best hand push -- 4 / 5 / 15 % kept at 4 bits. Each is applied with
`ash.apply_policy` (codebook "kmeans": a trained 2^b - 1 value codebook per layer; "linear": per-channel
integer codes) and fine-tuned with `ash.finetune` (gradual pruning, labels only -- on 60k images the
labels recover LeNet best, benchmarks/RESULTS.md -- Adam 1e-3, cosine, batch 128, --steps steps).
Each fine-tuned model is packed twice: with entropy coding (the default: each stream fixed-width or
ANS-coded, whichever is smaller) and without (`pack(entropy=False)`: every stream fixed-width, the
format before entropy coding). Ratio = the untouched model's .ashz bytes / the compressed model's.
Accuracy on the 10k test set; drop against the untouched model. Anchors: hand pipeline 30.2x
(35.1x with Huffman) at 89.05 %; hand push 55.9x at 0.44 pp. Pack and load times: medians of 5.

Every setting over fine-tune seeds 0, 1, 2; medians reported with each run's wall time.

Usage: make bench-deps; .venv/bin/python benchmarks/deep_compression.py [--steps 6000] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import autoshrink as ash
from autoshrink.measure.packing import pack
from autoshrink.measure.packing.unpack import unpack
from autoshrink.zoo import fashion_task, lenet300_fashion

L = ash.LayerPolicy
HAND = {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}
PUSH = {"fc1": 0.96, "fc2": 0.95, "fc3": 0.85}
SETTINGS = {
    "hand 8/9/26 % 6-bit kmeans": (HAND, 6, "kmeans"),
    "hand 8/9/26 % 6-bit linear": (HAND, 6, "linear"),
    "push 4/5/15 % 4-bit linear": (PUSH, 4, "linear"),
    "push 4/5/15 % 4-bit kmeans": (PUSH, 4, "kmeans"),
}


def _median_time(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    model = lenet300_fashion()
    task = fashion_task(device="cpu")
    base = ash.measure(model, task, runtime="float")
    print(
        f"untouched: {base.accuracy * 100:.2f} %, {base.size_bytes} B; torch threads {torch.get_num_threads()}; "
        f"{args.steps} gradual labels-only fine-tune steps\n"
    )
    print(
        f"{'setting':28s} {'seed':>4} {'acc %':>6} {'drop pp':>7} {'entropy B':>9} {'ratio':>6} {'fixed B':>8} "
        f"{'ratio':>6} {'pack ms':>7} {'load ms':>7} {'wall s':>6}  streams (fc1 / fc2 / fc3)"
    )
    rows: dict[str, list[dict]] = {k: [] for k in SETTINGS}
    for seed in args.seeds:
        for name, (sparsity, bits, codebook) in SETTINGS.items():
            t0 = time.perf_counter()
            policy = ash.Policy(layers={n: L(sparsity=s, bits=bits, codebook=codebook) for n, s in sparsity.items()})
            small = ash.finetune(
                ash.apply_policy(model, policy), task, steps=args.steps, seed=seed, schedule="gradual", alpha=0.0
            )
            wall = time.perf_counter() - t0
            m = ash.measure(small, task, runtime="float")
            data, report = pack(small)
            fixed, _ = pack(small, entropy=False)
            assert len(data) == m.size_bytes and len(data) <= len(fixed)
            pack_s = _median_time(lambda small=small: pack(small))
            load_s = _median_time(lambda data=data: unpack(data))
            x = task.example_input
            with torch.no_grad():
                assert torch.equal(unpack(data)(x), small(x))  # the file replays the model bitwise
            r = dict(
                drop=(base.accuracy - m.accuracy) * 100,
                acc=m.accuracy * 100,
                entropy=len(data),
                fixed=len(fixed),
                ratio=base.size_bytes / len(data),
                fixed_ratio=base.size_bytes / len(fixed),
                pack_ms=pack_s * 1000,
                load_ms=load_s * 1000,
                wall=wall,
                streams=" / ".join(t.streams for t in report if t.name.endswith("weight")),
            )
            rows[name].append(r)
            print(
                f"{name:28s} {seed:>4} {r['acc']:6.2f} {r['drop']:7.2f} {r['entropy']:>9} {r['ratio']:5.1f}x "
                f"{r['fixed']:>8} {r['fixed_ratio']:5.1f}x {r['pack_ms']:7.1f} {r['load_ms']:7.1f} {wall:6.0f}  "
                f"{r['streams']}",
                flush=True,
            )
    print("\nmedians over seeds", args.seeds)
    for name, rs in rows.items():
        med = {
            k: statistics.median(r[k] for r in rs)
            for k in ("acc", "drop", "ratio", "fixed_ratio", "pack_ms", "load_ms", "wall")
        }
        print(
            f"{name:28s} acc {med['acc']:.2f} %, drop {med['drop']:.2f} pp, {med['ratio']:.1f}x with entropy coding "
            f"({med['fixed_ratio']:.1f}x fixed-width), pack {med['pack_ms']:.0f} ms, load {med['load_ms']:.0f} ms, "
            f"wall {med['wall']:.0f} s"
        )


if __name__ == "__main__":
    main()
