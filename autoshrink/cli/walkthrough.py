"""`autoshrink walkthrough`: hand-picked policies on the digits task, every number measured."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from .. import __version__


def _cmd_walkthrough(args: argparse.Namespace) -> int:
    import torch

    from .. import walkthrough
    from ..zoo import digits_model, digits_task

    say = (lambda s: None) if args.quiet or args.json else (lambda s: print(s, flush=True))
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    say(
        f"autoshrink {__version__}: compression walk-through on the digits task (scikit-learn load_digits, "
        f"1,437 train / 360 test images), {args.model.upper()} trained on the fly ..."
    )
    task = digits_task(deploy_batch=args.batch, seed=0, device=args.device)
    model = digits_model(args.model, seed=args.seed)
    say(
        f"trained in {time.perf_counter() - t0:.1f} s; measuring the baseline and "
        f"{len(walkthrough.cnn_policies())} policies ({args.steps} fine-tune steps each) ..."
    )
    baseline, rows = walkthrough.run(
        model, task, walkthrough.cnn_policies(), steps=args.steps, seed=args.seed, progress=say
    )
    if args.json:
        ort = lambda r: {"onnxruntime": r.onnxruntime.to_dict()} if r.onnxruntime else {}  # noqa: E731
        print(
            json.dumps(
                {
                    "baseline": {**baseline.measurement.to_dict(), **ort(baseline)},
                    "rows": [{"policy": r.name, **r.measurement.to_dict(), **ort(r)} for r in rows],
                },
                indent=1,
            )
        )
        return 0
    m = baseline.measurement
    print(
        f"\nlatency: median of repeated forwards at batch {m.batch_size} on {m.device}, {m.threads} threads; "
        "size: exact bytes of the packed .ashz file\n"
    )
    print(walkthrough.format_table(baseline, rows))
    say(f"\ntotal {time.perf_counter() - t0:.1f} s")
    return 0


def add_parser(sub: Any) -> None:
    cmd = sub.add_parser(
        "walkthrough",
        help="hand-picked policies on the built-in digits task, measured",
        description="Train the digits model, apply hand-picked policies, print measured numbers.",
    )
    cmd.add_argument("--model", choices=("cnn",), default="cnn", help="built-in digits model (default cnn)")
    cmd.add_argument("--steps", type=int, default=300, help="fine-tune steps per policy (default 300)")
    cmd.add_argument("--batch", type=int, default=1, help="deployment batch size for latency (default 1)")
    cmd.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    cmd.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    cmd.add_argument("--json", action="store_true", help="print the results as JSON")
    cmd.add_argument("--quiet", action="store_true", help="print only the table")
    cmd.set_defaults(func=_cmd_walkthrough)
