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


def _study_location(study: str, storage: str | None) -> tuple[str, str]:
    """STUDY is a study config YAML (its name and storage) or a study name (default SQLite storage)."""
    from pathlib import Path

    if Path(study).suffix in (".yaml", ".yml") or Path(study).is_file():
        from .search.config import load_study_config

        cfg = load_study_config(study)
        return cfg.name, storage or cfg.storage or f"sqlite:///studies/{cfg.name}.db"
    return study, storage or f"sqlite:///studies/{study}.db"


def _cmd_export(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .search import load_result

    if args.trial is not None and args.minimize is not None:
        raise ConfigError("export: --minimize goes with --max-accuracy-drop, not with --trial; drop one of them.")
    name, storage = _study_location(args.study, args.storage)
    result = load_result(name, storage)
    if args.trial is not None:
        recipe = result.recipe(args.trial)
    else:
        recipe = result.best(max_accuracy_drop=args.max_accuracy_drop, minimize=args.minimize or "size")
    recipe.save(args.output)
    m, b = recipe.metrics, recipe.baseline
    print(f"wrote {args.output}: study {name!r} trial {recipe.trial}: accuracy {m.accuracy * 100:.2f}% (baseline "
          f"{b.accuracy * 100:.2f}%), {m.size_bytes} B ({b.size_bytes / m.size_bytes:.1f}x smaller), "
          f"{m.latency_ms:.3f} ms ({m.runtime}, batch {m.batch_size}, {recipe.device}), {m.macs} MACs")
    return 0


def _json_kwargs(text: str | None, flag: str) -> dict:
    from .errors import ConfigError

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag}: not valid JSON ({exc.msg} at column {exc.colno}): {text!r}; "
                          """use an object such as '{"kind": "cnn"}'.""") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag}: got {text!r}; use a JSON object of keyword arguments, e.g. '{{\"seed\": 1}}'.")
    return value


def _cmd_apply(args: argparse.Namespace) -> int:
    from torch import nn

    from .errors import ConfigError
    from .measure import save_packed
    from .recipe import Recipe, apply_recipe_with_report, measure_recipe
    from .search.config import load_entry_point
    from .space.yaml_source import Source
    from .task import Task

    recipe = Recipe.load(args.recipe)
    cli = Source("command line")
    model = load_entry_point(args.model, "--model", cli)(**_json_kwargs(args.model_args, "--model-args"))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {args.model} returned {type(model).__name__}, not a torch.nn.Module; "
                          "name a factory that returns the trained model.")
    task = None
    if args.task:
        task = load_entry_point(args.task, "--task", cli)(**_json_kwargs(args.task_args, "--task-args"))
        if not isinstance(task, Task):
            raise ConfigError(f"--task {args.task} returned {type(task).__name__}, not an autoshrink.Task.")
    small, report = apply_recipe_with_report(model, recipe, task, strict=not args.no_strict)
    written = save_packed(small, args.out)
    got, rec = measure_recipe(small, recipe, task), recipe.metrics
    keys = ("accuracy", "size_bytes", "latency_ms", "macs")
    measured = {k: (None if k == "accuracy" and task is None else getattr(got, k)) for k in keys}
    if args.json:
        print(json.dumps({"recipe": args.recipe, "study": recipe.source.study, "trial": recipe.trial, "out": args.out,
                          "file_bytes": written, "finetuned": report.finetuned, "runtime": got.runtime,
                          "recorded": {k: getattr(rec, k) for k in keys}, "measured": measured,
                          "notes": report.lines()}, indent=1))
        return 0
    how = (f"with the task and the recorded fine-tune ({recipe.finetune.steps} steps, seed {recipe.seed})"
           if report.finetuned else "policy only" + ("" if task else f" (no --task: no fine-tune, traced with zeros "
                                                                   f"of shape {list(recipe.example_input.shape)})"))
    print(f"applied {args.recipe} (study {recipe.source.study!r} trial {recipe.trial}) to "
          f"{type(small).__name__}, {how}")
    print(f"{'':<12}{'recorded':>14}{'re-applied':>14}")
    for k in keys:
        fmt = (lambda v: "-" if v is None else f"{v * 100:.2f}%") if k == "accuracy" else (
            (lambda v: f"{v:.4f}") if k == "latency_ms" else str)
        print(f"{k:<12}{fmt(getattr(rec, k)):>14}{fmt(measured[k]):>14}")
    print(f"latency: {got.runtime} runtime, batch {got.batch_size}, {got.device}, {got.threads} threads "
          f"(recorded: {rec.runtime}, batch {rec.batch_size}, {recipe.device}, {rec.threads} threads)")
    for line in report.lines():
        print(f"note: {line}")
    print(f"wrote {args.out} ({written} bytes)")
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

    exp = sub.add_parser("export", help="export a trial of a study as a recipe YAML (no model needed)",
                         description="Write the recipe of one trial of a finished search: a trial by number, or "
                                     "the smallest (or fastest) within an accuracy drop. Opens the study read-only.")
    exp.add_argument("study", metavar="STUDY", help="a study config YAML (its name and storage) or a study name")
    pick = exp.add_mutually_exclusive_group(required=True)
    pick.add_argument("--trial", type=int, help="the trial number to export")
    pick.add_argument("--max-accuracy-drop", type=float, metavar="X",
                      help="export the best trial within this accuracy drop (a fraction: 0.01 = 1 pp)")
    exp.add_argument("--minimize", choices=("size", "latency", "macs"),
                     help="with --max-accuracy-drop: what the best trial minimizes (default size)")
    exp.add_argument("-o", "--output", required=True, help="the recipe YAML to write, e.g. recipe.yaml")
    exp.add_argument("--storage", help="Optuna storage URL (default: the config's, or sqlite:///studies/<name>.db)")
    exp.set_defaults(func=_cmd_export)

    app = sub.add_parser("apply", help="apply a recipe to a model and write the packed .ashz",
                         description="Check the model against the recipe's fingerprint, replay its policy (and, with "
                                     "--task, its fine-tune), write the packed artifact and print its measured "
                                     "numbers next to the recipe's.")
    app.add_argument("recipe", help="recipe YAML written by `autoshrink export` or Recipe.save")
    app.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                     help="'package.module:callable' returning the trained model")
    app.add_argument("--model-args", metavar="JSON", help="keyword arguments of the model factory, a JSON object")
    app.add_argument("--task", metavar="MODULE:FACTORY",
                     help="'package.module:callable' returning an ash.Task: fine-tune as recorded, measure accuracy")
    app.add_argument("--task-args", metavar="JSON", help="keyword arguments of the task factory, a JSON object")
    app.add_argument("--out", required=True, help="the packed model to write, e.g. model.ashz")
    app.add_argument("--no-strict", action="store_true",
                     help="apply the policy to the layers that match the fingerprint and report the others")
    app.add_argument("--json", action="store_true", help="print the result as JSON")
    app.set_defaults(func=_cmd_apply)
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
