"""The `autoshrink` command."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

from . import __version__
from .errors import AutoshrinkError


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from . import walkthrough
    from .zoo import digits_model, digits_task

    say = (lambda s: None) if args.quiet or args.json else (lambda s: print(s, flush=True))
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    say(f"autoshrink {__version__}: compression walk-through on the digits task (scikit-learn load_digits, "
        f"1,437 train / 360 test images), {args.model.upper()} trained on the fly ...")
    task = digits_task(deploy_batch=args.batch, seed=0, device=args.device)
    model = digits_model(args.model, seed=args.seed)
    say(f"trained in {time.perf_counter() - t0:.1f} s; measuring the baseline and "
        f"{len(walkthrough.cnn_policies())} policies ({args.steps} fine-tune steps each) ...")
    baseline, rows = walkthrough.run(model, task, walkthrough.cnn_policies(), steps=args.steps, seed=args.seed,
                                     progress=say)
    if args.json:
        print(json.dumps({"baseline": baseline.to_dict(),
                          "rows": [{"policy": r.name, **r.measurement.to_dict()} for r in rows]}, indent=1))
        return 0
    m = baseline
    print(f"\nlatency: median of repeated forwards at batch {m.batch_size} on {m.device}, {m.threads} threads; "
          "size: exact bytes of the packed .ashz file\n")
    print(walkthrough.format_table(baseline, rows))
    say(f"\ntotal {time.perf_counter() - t0:.1f} s")
    return 0


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _cmd_search(args: argparse.Namespace) -> int:
    from .search.config import load_entry_point, load_study_config
    from .space import load_space
    from .search import search

    cfg = load_study_config(args.config)
    quiet = args.quiet or args.json
    src = cfg.source
    space = load_space(cfg.space_path())
    task = load_entry_point(cfg.task, "task", src)(**cfg.task_args)
    model = load_entry_point(cfg.model, "model", src)(**cfg.model_args)
    n_trials = args.n_trials if args.n_trials is not None else cfg.n_trials

    def show(p) -> None:
        last = p.last
        what = (f"acc {last['accuracy'] * 100:.2f}%  {last['size_bytes']} B  {last['latency_ms']:.3f} ms" if last["ok"]
                else f"FAILED: {last['error']}")
        best = f"{p.best_compression:.1f}x" if p.best_compression else "-"
        print(f"[{p.done:>3}/{p.target}] trial {last['trial']:>3} {what} | failed {p.failed} | front {p.front_size} "
              f"| best size within the drop {best} | {_fmt_s(p.elapsed_s)} elapsed, ~{_fmt_s(p.remaining_s)} left",
              flush=True)

    result = search(model, task, space, objectives=cfg.objectives, n_trials=n_trials,
                    timeout=args.timeout if args.timeout is not None else cfg.timeout,
                    finetune_steps=cfg.finetune_steps, executor=args.executor or cfg.executor,
                    storage=args.storage or cfg.storage, study_name=args.study_name or cfg.name,
                    sampler=cfg.sampler, seed=cfg.seed if args.seed is None else args.seed,
                    max_accuracy_drop=cfg.max_accuracy_drop, progress=None if quiet else show)
    front = result.pareto
    if args.json:
        print(json.dumps({"study": result.study.study_name, "baseline": result.baseline.to_dict(),
                          "timing": result.timing, "hypervolume": result.hypervolume(),
                          "pareto": json.loads(front.to_json(orient="records"))}, indent=1))
        return 0
    b = result.baseline
    print(f"\nbaseline: accuracy {b.accuracy * 100:.2f}%, {b.size_bytes} B, {b.latency_ms:.3f} ms at batch "
          f"{b.batch_size} on {b.device} ({b.threads} threads), {b.macs} MACs")
    cols = ["trial", "accuracy", "accuracy_drop", "size_bytes", "compression", "latency_ms", "speedup", "macs", "runtime"]
    if front.empty:
        print("no feasible trial yet")
    else:
        table = front[cols].copy()
        table["accuracy"] = (table["accuracy"] * 100).round(2)
        table["accuracy_drop"] = (table["accuracy_drop"] * 100).round(2)
        print(f"Pareto front ({len(front)} trials; accuracy and drop in %):")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    t = result.timing
    print(f"\n{t['wall_s']:.1f} s wall, {t['eval_s']:.1f} s evaluating, engine overhead "
          f"{t['overhead_fraction'] * 100:.1f}%; hypervolume {result.hypervolume():.4f}; "
          f"study {result.study.study_name!r} in {args.storage or cfg.storage or 'sqlite:///studies/' + cfg.name + '.db'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoshrink", description="Automated per-layer model compression.")
    parser.add_argument("--version", action="version", version=f"autoshrink {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="compression walk-through on the built-in digits task",
                          description="Train the digits model, apply hand-picked policies, print measured numbers.")
    demo.add_argument("--model", choices=("cnn",), default="cnn", help="built-in digits model (default cnn)")
    demo.add_argument("--steps", type=int, default=300, help="fine-tune steps per policy (default 300)")
    demo.add_argument("--batch", type=int, default=1, help="deployment batch size for latency (default 1)")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    demo.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    demo.add_argument("--json", action="store_true", help="print the results as JSON")
    demo.add_argument("--quiet", action="store_true", help="print only the table")
    demo.set_defaults(func=_cmd_demo)

    srch = sub.add_parser("search", help="run (or resume) a search from a study config YAML",
                          description="Run the study described by a studies/<name>.yaml config; re-running resumes it.")
    srch.add_argument("config", help="study config YAML, e.g. studies/digits_cnn.yaml")
    srch.add_argument("--n-trials", type=int, help="override n_trials (finished trials in the study)")
    srch.add_argument("--timeout", type=float, help="stop asking new trials after this many seconds")
    srch.add_argument("--executor", choices=("local", "ray"), help="override the executor")
    srch.add_argument("--storage", help="override the Optuna storage URL")
    srch.add_argument("--study-name", help="override the study name")
    srch.add_argument("--seed", type=int, help="override the seed")
    srch.add_argument("--json", action="store_true", help="print the result as JSON")
    srch.add_argument("--quiet", action="store_true", help="no live progress")
    srch.set_defaults(func=_cmd_search)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AutoshrinkError as exc:
        print(f"autoshrink: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoshrink: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
