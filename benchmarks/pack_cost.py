"""What a candidate's evaluation costs on a pretrained transformer, before and after incremental packed size.

Fixed before the runs:
- model and data: all-MiniLM-L6-v2 with a sentiment head (autoshrink.zoo.minilm: 38 Linear layers, 22.7M
  parameters), 300 evaluation snippets at 48 tokens; 2 torch threads; float runtime; default latency timing;
- "one layer changed": the model with one Linear layer at 4 bits (seeds 0, 1, 2 pick the layer), measured
  after the untouched model was measured once in the same process; its pack share (pack seconds / measure
  wall) and its measure wall over the forward passes over the evaluation set alone (`score`, median of 3);
- the pre-pass: `sensitivity` over the quantize-only space restricted to block 0 and the head (8 layers x 7
  widths = 56 single choices: today's code needs ~12 s a choice), or with --full-prepass the whole space
  (38 layers x 7 widths = 266, an hour of today's code), its wall time, and the two tables compared row
  by row (sizes equal, accuracies identical);
- encoding: ms per million weights of one 1536 x 384 tensor (float32 untouched or 50 % sparse, 8-bit,
  4-bit dense or 50 % sparse, 2-bit 90 % sparse), median over seeds 0, 1, 2; the payloads must be equal;
- "today": commit 3d9413c (`git worktree add /tmp/old 3d9413c`), run in its own process on the same
  machine, one after the other, the same model files;
- sizes: `packed_size` against the length of the file `save_packed` writes, for random policies over
  LeNet-300-100, the Fashion residual CNN and MiniLM (sparse, structured, 2..8 bits, codebooks, fp16, rank);
- cost split: a 4-trial search of each model (finetune 20 steps, no pre-pass) -- the six cost columns
  against each trial's evaluation wall time;
- progress: the MiniLM search started under a pseudo-terminal; seconds from the call to the first
  "pre-pass" bar.

Usage: make bench-deps; git worktree add /tmp/old 3d9413c; .venv/bin/python benchmarks/pack_cost.py
       [--old /tmp/old] [--out OUT.json] [--parts measure prepass sizes costs progress] [--full-prepass]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
THREADS = 2
SPACE = """
defaults:
  bits: [32, 16, 8, 6, 5, 4, 3, 2]
rules:
  - match: "re:encoder\\\\.encoder\\\\.layer\\\\.[1-5]\\\\..*"
    skip: true
finetune: {steps: 0}
"""


# ----------------------------------------------------------------------------- workers (one tree each)
def _load(tree: str):
    """The autoshrink of `tree` with this tree's MiniLM module (an older tree has none)."""
    sys.path.insert(0, tree)
    import importlib.util

    import autoshrink  # noqa: F401 - the tree's package, so the module below resolves against it

    if (Path(tree) / "autoshrink/zoo/minilm.py").exists():
        import autoshrink.zoo.minilm as own

        return own
    spec = importlib.util.spec_from_file_location("autoshrink.zoo.minilm", HERE / "autoshrink/zoo/minilm.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["autoshrink.zoo.minilm"] = mod
    spec.loader.exec_module(mod)
    return mod


def worker_measure(tree: str) -> dict:
    import random

    import torch

    zoo = _load(tree)
    import autoshrink as ash
    from autoshrink.measure.accuracy import score
    from autoshrink.measure.packing import pack

    torch.set_num_threads(THREADS)
    model, task = zoo.minilm_sentiment(), zoo.minilm_task(device="cpu")
    device = torch.device("cpu")
    forward = []
    for _ in range(3):
        t0 = time.perf_counter()
        score(model, task, device)
        forward.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    base = ash.measure(model, task, runtime="float")
    first = time.perf_counter() - t0
    linear = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    runs = []
    for seed in (0, 1, 2):
        layer = random.Random(seed).choice(linear)
        small = ash.apply_policy(model, ash.Policy(layers={layer: ash.LayerPolicy(bits=4)}))
        t0 = time.perf_counter()
        m = ash.measure(small, task, runtime="float")
        wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        blob, _ = pack(small)
        full_pack = time.perf_counter() - t0
        cost = dict(getattr(m, "cost", {}) or {})
        runs.append(
            {
                "seed": seed,
                "layer": layer,
                "wall_s": wall,
                "cost": cost,
                "full_pack_s": full_pack,
                "size_bytes": m.size_bytes,
                "file_bytes": len(blob),
                "accuracy": m.accuracy,
            }
        )
    return {
        "forward_s": statistics.median(forward),
        "first_measure_s": first,
        "base_size": base.size_bytes,
        "runs": runs,
    }


ENCODE_CASES = (  # (label, bits, density): a 1536 x 384 weight (0.59M), MiniLM's FFN shape
    ("float32 untouched", 0, 1.0),
    ("float32 50% sparse", 0, 0.5),
    ("8-bit", 8, 1.0),
    ("4-bit", 4, 1.0),
    ("4-bit 50% sparse", 4, 0.5),
    ("2-bit 90% sparse", 2, 0.1),
)


def worker_encode(tree: str) -> dict:
    """Encode time in ms per million weights, median over seeds 0, 1, 2, of each ENCODE_CASES tensor."""
    sys.path.insert(0, tree)
    import torch

    from autoshrink import weights
    from autoshrink.measure.packing import codec

    torch.set_num_threads(THREADS)
    out = {}
    for label, bits, density in ENCODE_CASES:
        times, sizes = [], []
        for seed in (0, 1, 2):
            g = torch.Generator().manual_seed(seed)
            w = torch.randn(1536, 384, generator=g) * (torch.rand(1536, 384, generator=g) < density)
            if bits:
                w = weights.quantize_value(w, bits)
            t0 = time.perf_counter()
            enc = codec.encode_tensor(w, bits)
            times.append(time.perf_counter() - t0)
            sizes.append(len(enc.payload))
        out[label] = {"ms_per_million": statistics.median(times) / w.numel() * 1e9, "bytes": sizes}
    return out


def worker_prepass(tree: str, space_path: str) -> dict:
    import torch

    zoo = _load(tree)
    import autoshrink as ash
    from autoshrink.search.stages.sensitivity import sensitivity

    torch.set_num_threads(THREADS)
    model, task = zoo.minilm_sentiment(), zoo.minilm_task(device="cpu")
    t0 = time.perf_counter()
    df = sensitivity(model, task, ash.load_space(space_path), runtime="float")
    wall = time.perf_counter() - t0
    cost_cols = [c for c in df.columns if c.endswith("_s") and c != "seconds"]
    return {
        "wall_s": wall,
        "rows": df[["layer", "field", "value", "accuracy", "size_bytes"]].to_dict("records"),
        "cost": {c: float(df[c].sum()) for c in cost_cols},
    }


# ----------------------------------------------------------------------------- in this process (new code)
def sizes() -> dict:
    import random
    import warnings

    import torch
    from torch import nn

    import autoshrink as ash
    from autoshrink.measure.packing import packed_size, save_packed
    from autoshrink.zoo import fashion_task, lenet300_fashion, resnet_fashion
    from autoshrink.zoo.minilm import minilm_sentiment, minilm_task

    torch.set_num_threads(THREADS)
    fx = fashion_task(device="cpu").example_input
    models = {
        "lenet300": (lenet300_fashion(), fx, 80, None),
        "resnet": (resnet_fashion(), fx, 70, None),
        "minilm": (minilm_sentiment(), minilm_task(device="cpu").example_input, 70, 3),
    }
    out: dict = {}
    tmp = Path(tempfile.mkdtemp()) / "m.ashz"
    for name, (model, x, count, touched) in models.items():
        layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        rng = random.Random(name)
        kinds: dict[str, int] = {}
        equal = 0
        seconds = []
        for _ in range(count):
            chosen = rng.sample(layers, touched) if touched else layers
            policy = {}
            for n in chosen:
                kind = rng.choice(["none", "sparse", "structured", "bits", "codebook", "fp16", "rank", "mixed"])
                lp = {
                    "none": ash.LayerPolicy(),
                    "sparse": ash.LayerPolicy(sparsity=rng.choice([0.5, 0.9, 0.97])),
                    "structured": ash.LayerPolicy(sparsity=rng.choice([0.25, 0.5]), structured=True),
                    "bits": ash.LayerPolicy(bits=rng.choice([2, 3, 4, 5, 6, 8])),
                    "codebook": ash.LayerPolicy(bits=rng.choice([2, 3, 4]), codebook="kmeans"),
                    "fp16": ash.LayerPolicy(bits=16),
                    "rank": ash.LayerPolicy(rank=0.25),
                    "mixed": ash.LayerPolicy(sparsity=0.8, bits=rng.choice([2, 4])),
                }[kind]
                policy[n] = lp
                kinds[kind] = kinds.get(kind, 0) + 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                small = ash.apply_policy(model, ash.Policy(layers=policy), example_input=x)
            t0 = time.perf_counter()
            size, _ = packed_size(small)
            seconds.append(time.perf_counter() - t0)
            equal += size == save_packed(small, tmp) == tmp.stat().st_size
        out[name] = {
            "policies": count,
            "equal": equal,
            "kinds": kinds,
            "median_packed_size_s": statistics.median(seconds),
        }
    return out


def costs() -> dict:
    import torch

    import autoshrink as ash
    from autoshrink.measure.cost import COLUMNS
    from autoshrink.zoo import fashion_task, lenet300_fashion, resnet_fashion
    from autoshrink.zoo.minilm import minilm_sentiment, minilm_task

    torch.set_num_threads(THREADS)
    ft = fashion_task(device="cpu", selection=2000)
    cases = {
        "lenet300": (lenet300_fashion(), ft, "default"),
        "resnet": (resnet_fashion(), ft, "default"),
        "minilm": (minilm_sentiment(), minilm_task(device="cpu"), "quantize_only"),
    }
    out = {}
    tmp = tempfile.mkdtemp()
    for name, (model, task, space) in cases.items():
        r = ash.search(
            model,
            task,
            ash.load_space(space),
            n_trials=4,
            finetune_steps=20,
            sensitivity=False,
            storage=f"sqlite:///{tmp}/{name}.db",
            study_name=name,
            seed=0,
            progress=False,
        )
        df = r.trials
        df = df[df["eval_s"].notna() & df["apply_s"].notna()]
        shares = (df[list(COLUMNS)].sum(axis=1) / df["eval_s"]).tolist()
        out[name] = {
            "trials": len(df),
            "covered_min": min(shares),
            "covered_max": max(shares),
            "by_stage_s": {c: float(df[c].sum()) for c in COLUMNS},
        }
    return out


PROGRESS = """
import sys, time, torch
import autoshrink as ash
from autoshrink.zoo.minilm import minilm_sentiment, minilm_task
torch.set_num_threads(2)
model, task = minilm_sentiment(), minilm_task(device="cpu")
space = ash.load_space(sys.argv[1])
print("START", flush=True)
ash.search(model, task, space, n_trials=1, storage=sys.argv[2], study_name="p", timeout=1)
"""


def progress(space_path: str) -> dict:
    import fcntl
    import pty
    import select
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    db = f"sqlite:///{tempfile.mkdtemp()}/p.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRESS, space_path, db], stdout=follower, stderr=follower, cwd=HERE
    )
    os.close(follower)
    text, start, first = "", None, None
    while first is None:
        ready, _, _ = select.select([leader], [], [], 600)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096).decode(errors="replace")
        except OSError:
            break
        if not chunk:
            break
        text += chunk
        if start is None and "START" in text:
            start = time.perf_counter()
        if start is not None and "pre-pass" in text[text.index("START") :]:
            first = time.perf_counter() - start
    proc.kill()
    proc.wait()
    os.close(leader)
    return {"first_pre_pass_s": first, "shown": text[text.find("START") :][:400]}


def run_worker(tree: str, kind: str, *extra: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--tree", tree, *extra],
        capture_output=True,
        text=True,
        check=True,
        cwd="/tmp",
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="/tmp/old", help="a worktree of the code before (commit 3d9413c)")
    ap.add_argument("--out")
    ap.add_argument("--parts", nargs="+", default=["encode", "measure", "prepass", "sizes", "costs", "progress"])
    ap.add_argument(
        "--full-prepass", action="store_true", help="the pre-pass over the whole quantize-only space (266 choices)"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--space", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "measure":
        print(json.dumps(worker_measure(args.tree)))
        return
    if args.worker == "encode":
        print(json.dumps(worker_encode(args.tree)))
        return
    if args.worker == "prepass":
        print(json.dumps(worker_prepass(args.tree, args.space)))
        return
    space = Path(tempfile.mkdtemp()) / "quantize_block0.yaml"
    space.write_text(SPACE)
    report: dict = {}
    t_all = time.perf_counter()
    for part in args.parts:
        t0 = time.perf_counter()
        if part == "encode":
            report["encode"] = {"old": run_worker(args.old, "encode"), "new": run_worker(str(HERE), "encode")}
        elif part == "measure":
            report["measure"] = {"old": run_worker(args.old, "measure"), "new": run_worker(str(HERE), "measure")}
        elif part == "prepass":
            pre_space = HERE / "search_spaces" / "quantize_only.yaml" if args.full_prepass else space
            old = run_worker(args.old, "prepass", "--space", str(pre_space))
            new = run_worker(str(HERE), "prepass", "--space", str(pre_space))
            key = lambda r: (r["layer"], r["field"], r["value"])  # noqa: E731
            o, n = {key(r): r for r in old["rows"]}, {key(r): r for r in new["rows"]}
            report["prepass"] = {
                "choices": len(n),
                "old_wall_s": old["wall_s"],
                "new_wall_s": new["wall_s"],
                "speedup": old["wall_s"] / new["wall_s"],
                "same_choices": set(o) == set(n),
                "sizes_equal": sum(o[k]["size_bytes"] == n[k]["size_bytes"] for k in n if k in o),
                "accuracies_identical": sum(o[k]["accuracy"] == n[k]["accuracy"] for k in n if k in o),
                "new_cost_s": new["cost"],
            }
        elif part == "sizes":
            report["sizes"] = sizes()
        elif part == "costs":
            report["costs"] = costs()
        elif part == "progress":
            report["progress"] = progress(str(space))
        report.setdefault("wall_s", {})[part] = time.perf_counter() - t0
        print(json.dumps({part: report[part]}, indent=1, default=str), flush=True)
    report["total_wall_s"] = time.perf_counter() - t_all
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
