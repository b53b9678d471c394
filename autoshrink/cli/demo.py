"""`autoshrink demo`: the main job, end to end, on the built-in digits task.

A real search (default space, Ray with 2 actors, falling back to the local executor with a notice),
live progress, the Pareto table, the recipe of the smallest model within 1 pp, the HTML report,
and the commands to open the dashboard and re-apply the recipe.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from .common import front_table, progress_printer

OUT = Path("studies") / "demo"


def _model(seed: int, say: Any) -> Any:
    """The digits CNN: trained on the fly once, then loaded from studies/demo/digits_cnn.pt."""
    import torch

    from ..zoo import DigitsCNN, digits_model

    cache = OUT / f"digits_cnn-seed{seed}.pt"
    if cache.exists():
        model = DigitsCNN()
        model.load_state_dict(torch.load(cache, weights_only=True))  # a plain state_dict: no code runs
        say(f"model: DigitsCNN from {cache}")
        return model.eval()
    t0 = time.perf_counter()
    model = digits_model("cnn", seed=seed)
    tmp = cache.with_suffix(".partial")
    torch.save(model.state_dict(), tmp)
    tmp.replace(cache)
    say(f"model: DigitsCNN trained in {time.perf_counter() - t0:.1f} s (cached in {cache})")
    return model


def _executor(kind: str, actors: int) -> Any:
    if kind == "local":
        return "local"
    from ..errors import ExecutorUnavailable

    try:
        from ..executors.ray import RayExecutor
    except ImportError as exc:
        raise ExecutorUnavailable(f"Ray cannot be imported ({exc})") from None
    return RayExecutor(actors=actors)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .. import load_space, search
    from ..errors import ExecutorUnavailable
    from ..report import write_report
    from ..zoo import digits_task
    from .recipes import drop_text

    quiet = args.quiet or args.json
    say = (lambda s: None) if quiet else (lambda s: print(s, flush=True))
    t0 = time.perf_counter()
    if args.fresh and OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{OUT / 'demo.db'}"
    say(
        f"autoshrink demo: search per-layer compression of a CNN on scikit-learn's digits "
        f"(1,437 train images; of the 360 test images, 180 to choose on and 180 held out to judge the choice), "
        f"{args.trials} trials x {args.steps} fine-tune steps, objectives "
        f"accuracy / packed size / latency at batch {args.batch}"
    )
    task = digits_task(deploy_batch=args.batch, device=args.device).with_holdout(0.5)
    model = _model(args.seed, say)
    space = load_space("default")
    line = progress_printer(f"{args.max_accuracy_drop * 100:g} pp")
    kwargs = dict(
        objectives=("accuracy", "size", "latency"),
        n_trials=args.trials,
        finetune_steps=args.steps,
        storage=storage,
        study_name="demo",
        seed=args.seed,
        max_accuracy_drop=args.max_accuracy_drop,
        progress=False if quiet else line,
    )
    executor = args.executor
    say(
        f"executor: {'Ray, ' + str(args.actors) + ' actors' if executor == 'ray' else 'local (in process)'}; "
        f"study 'demo' in {storage} (re-running resumes it; --fresh starts over)"
    )
    try:
        result = search(model, task, space, executor=_executor(executor, args.actors), **kwargs)
    except ExecutorUnavailable as exc:
        line.end()
        print(f"notice: Ray is not available here ({exc}); continuing with the local executor.", flush=True)
        executor = "local"
        result = search(model, task, space, executor="local", **kwargs)
    finally:
        line.end()
    recipe_path, report_path = OUT / "recipe.yaml", OUT / "report.html"
    recipe = result.best(max_accuracy_drop=args.max_accuracy_drop, minimize="size")
    recipe.save(recipe_path)
    write_report(result, report_path)
    wall = time.perf_counter() - t0
    if args.json:
        print(
            json.dumps(
                {
                    "study": "demo",
                    "storage": storage,
                    "executor": executor,
                    "wall_s": wall,
                    "baseline": result.baseline.to_dict(),
                    "timing": result.timing,
                    "hypervolume": result.hypervolume(),
                    "recipe": str(recipe_path),
                    "report": str(report_path),
                    "chosen_trial": recipe.trial,
                    "pareto": json.loads(result.pareto.to_json(orient="records")),
                },
                indent=1,
            )
        )
        return 0
    m, b = recipe.metrics, recipe.baseline
    print()
    print(front_table(result))
    print(
        f"\nchosen (smallest within {args.max_accuracy_drop * 100:g} pp): trial {recipe.trial}: "
        f"{b.size_bytes / m.size_bytes:.1f}x smaller ({m.size_bytes} B), accuracy {m.accuracy * 100:.2f}% "
        f"({(b.accuracy - m.accuracy) * 100:+.2f} pp drop), {m.latency_ms:.3f} ms vs {b.latency_ms:.3f} ms"
    )
    print(drop_text(result, recipe.trial))
    print(f"recipe: {recipe_path}\nreport: {report_path}  (open it in a browser; works offline)")
    print(
        f"\ndone in {wall:.0f} s ({executor} executor; "
        f"engine overhead {result.timing['overhead_fraction'] * 100:.1f}%)."
        "\nnext:"
    )
    print(f"  autoshrink dashboard {OUT / 'demo.db'}        # browse every trial in optuna-dashboard (127.0.0.1)")
    print(
        f"  autoshrink apply {recipe_path} --model autoshrink.zoo:digits_model --task autoshrink.zoo:digits_task "
        f"--out {OUT / 'digits_cnn.ashz'}"
    )
    return 0


def add_parser(sub: Any) -> None:
    cmd = sub.add_parser(
        "demo",
        help="search compression policies for the built-in digits CNN (the main job)",
        description="Run a real search on the built-in digits task: live progress, the Pareto table, "
        "studies/demo/recipe.yaml and studies/demo/report.html.",
    )
    cmd.add_argument("--trials", type=int, default=40, help="finished trials in the study (default 40)")
    cmd.add_argument("--steps", type=int, default=200, help="fine-tune steps per trial (default 200)")
    cmd.add_argument(
        "--executor",
        choices=("ray", "local"),
        default="ray",
        help="ray (default; falls back to local with a notice) or local",
    )
    cmd.add_argument("--actors", type=int, default=2, help="Ray actors (default 2)")
    cmd.add_argument("--batch", type=int, default=1, help="deployment batch size for latency (default 1)")
    cmd.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.01,
        help="constraint and choice of the recipe, a fraction (default 0.01 = 1 pp)",
    )
    cmd.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    cmd.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    cmd.add_argument("--fresh", action="store_true", help="delete studies/demo and start over")
    cmd.add_argument("--json", action="store_true", help="print the result as JSON")
    cmd.add_argument("--quiet", action="store_true", help="no live progress")
    cmd.set_defaults(func=_cmd_demo)
