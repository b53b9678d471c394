"""`autoshrink export` and `autoshrink apply`: recipes from the shell."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .outputs import check_output


def _study_location(study: str, storage: str | None) -> tuple[str, str]:
    """STUDY is a study config YAML (its name and storage) or a study name (default SQLite storage)."""
    from pathlib import Path

    if Path(study).suffix in (".yaml", ".yml") or Path(study).is_file():
        from ..search.study_config import load_study_config

        cfg = load_study_config(study)
        return cfg.name, storage or cfg.settings.storage or f"sqlite:///studies/{cfg.name}.db"
    return study, storage or f"sqlite:///studies/{study}.db"


def study_inputs(study: str, storage: str) -> list[tuple[str, str | None]]:
    """What a command reading a study reads: its config YAML (if STUDY is a file) and its SQLite file."""
    from pathlib import Path

    from .outputs import sqlite_file

    return [
        ("the study config", study if Path(study).is_file() else None),
        ("the study database", sqlite_file(storage)),
    ]


def _cmd_export(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..search import load_result

    if args.trial is not None and args.minimize is not None:
        raise ConfigError("export: --minimize goes with --max-accuracy-drop, not with --trial; drop one of them.")
    if args.trial is not None and args.confidence is not None:
        raise ConfigError("export: --confidence goes with --max-accuracy-drop, not with --trial; drop one of them.")
    if args.trial is not None and args.max_latency_ms is not None:
        raise ConfigError("export: --max-latency-ms goes with --max-accuracy-drop, not with --trial; drop one of them.")
    name, storage = _study_location(args.study, args.storage)
    check_output(args.output, "-o", "recipe", study_inputs(args.study, storage))
    result = load_result(name, storage)
    if args.trial is not None:
        recipe = result.recipe(args.trial)
    else:
        recipe = result.best(
            max_accuracy_drop=args.max_accuracy_drop,
            minimize=args.minimize or "size",
            max_latency_ms=args.max_latency_ms,
            confidence=args.confidence,
        )
    recipe.save(args.output)
    m, b = recipe.metrics, recipe.baseline
    if args.json:
        print(
            json.dumps(
                {
                    "recipe": args.output,
                    "study": name,
                    "trial": recipe.trial,
                    "selection": split_figures(result, recipe.trial, "selection"),
                    "test": split_figures(result, recipe.trial, "test"),
                    "metrics": m.to_dict(),
                    "baseline": b.to_dict(),
                    "policy": recipe.policy.to_dict(),
                },
                indent=1,
            )
        )
        return 0
    print(
        f"wrote {args.output}: study {name!r} trial {recipe.trial}: accuracy {m.accuracy * 100:.2f}% (baseline "
        f"{b.accuracy * 100:.2f}%), {m.size_bytes} B ({b.size_bytes / m.size_bytes:.1f}x smaller), "
        f"{m.latency_ms:.3f} ms ({m.runtime}, batch {m.batch_size}, {recipe.device}), {m.macs} MACs"
    )
    print(drop_text(result, recipe.trial))
    return 0


def split_figures(result: Any, trial: int, split: str) -> dict[str, Any] | None:
    """A trial's accuracy, drop, paired 95 % interval and example count on one split (None: not measured)."""
    row = result.trials.set_index("trial").loc[trial]
    prefix = "" if split == "selection" else "test_"
    accuracy = row[f"{prefix}accuracy"]
    if accuracy != accuracy:  # NaN: not scored on this split
        return None
    low, high = row["drop_low" if split == "selection" else "test_drop_low"], row[f"{prefix}drop_high"]
    return {
        "accuracy": float(accuracy),
        "drop": float(row["accuracy_drop" if split == "selection" else "test_drop"]),
        "drop_95": None if low != low else [float(low), float(high)],
        "examples": None if row[f"{prefix}examples"] != row[f"{prefix}examples"] else int(row[f"{prefix}examples"]),
    }


def drop_text(result: Any, trial: int) -> str:
    """Selection and held-out figures of a trial side by side (one line)."""
    from .common import interval

    sel, test = split_figures(result, trial, "selection"), split_figures(result, trial, "test")
    parts = []
    for name, f in (("selection split", sel), ("held-out split", test)):
        if f is None:
            continue
        span = "" if f["drop_95"] is None else f", 95 % interval {interval(*f['drop_95'])} pp"
        count = "" if f["examples"] is None else f" over {f['examples']} examples"
        parts.append(f"{name}: drop {f['drop'] * 100:.2f} pp{span}{count}")
    if test is None:
        parts.append("not scored on a held-out split (its accuracy is the one it was chosen on)")
    return "; ".join(parts)


def _json_kwargs(text: str | None, flag: str) -> dict:
    from ..errors import ConfigError

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{flag}: not valid JSON ({exc.msg} at column {exc.colno}): {text!r}; "
            """use an object such as '{"kind": "cnn"}'."""
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag}: got {text!r}; use a JSON object of keyword arguments, e.g. '{{\"seed\": 1}}'.")
    return value


def _cmd_apply(args: argparse.Namespace) -> int:
    from torch import nn

    from ..errors import ConfigError
    from ..measure import save_packed
    from ..recipe import Recipe, apply_recipe_with_report, measure_recipe
    from ..search.study_config import call_factory
    from ..space.yaml_source import Source
    from ..task import Task

    check_output(args.out, "--out", "packed", [("the recipe", args.recipe)])
    if args.onnx:
        check_output(args.onnx, "--onnx", "onnx", [("the recipe", args.recipe), ("--out", args.out)])
    recipe = Recipe.load(args.recipe)
    cli = Source("command line")
    model = call_factory(
        args.model, _json_kwargs(args.model_args, "--model-args"), "--model", cli, nn.Module, "--model-args"
    )
    task = None
    if args.task:
        task = call_factory(args.task, _json_kwargs(args.task_args, "--task-args"), "--task", cli, Task, "--task-args")
    onnx = None
    if args.onnx:
        from ..export.onnx import check_target

        check_target(args.onnx)
    small, report = apply_recipe_with_report(model, recipe, task, strict=not args.no_strict)
    if args.onnx:  # built before anything is written: a model that cannot be exported leaves no file behind
        from ..export.onnx import to_onnx

        calibration = None
        if args.onnx_activations == "static":
            if task is None:
                raise ConfigError(
                    "--onnx-activations static calibrates the activations on training batches: pass "
                    "--task (or use --onnx-activations dynamic)."
                )
            from ..measure.onnxruntime import calibration_batches

            calibration = calibration_batches(task)
        onnx = to_onnx(
            small,
            task.example_input if task is not None else recipe.example_input.zeros(),
            activations=args.onnx_activations,
            calibration=calibration,
        )
    written = save_packed(small, args.out)
    exported = None
    if onnx is not None:
        from ..export.onnx import write_onnx

        exported = write_onnx(*onnx, args.onnx, activations=args.onnx_activations)
    got, rec = measure_recipe(small, recipe, task), recipe.metrics
    keys = ("accuracy", "size_bytes", "latency_ms", "macs")
    if rec.test_accuracy is not None or (task is not None and task.test_data is not None):
        keys += ("test_accuracy",)  # the held-out split's, recorded and re-measured
    measured = {k: (None if k == "accuracy" and task is None else getattr(got, k)) for k in keys}
    if args.json:
        print(
            json.dumps(
                {
                    "recipe": args.recipe,
                    "study": recipe.source.study,
                    "trial": recipe.trial,
                    "out": args.out,
                    "file_bytes": written,
                    "finetuned": report.finetuned,
                    "runtime": got.runtime,
                    "recorded": {k: getattr(rec, k) for k in keys},
                    "measured": measured,
                    "notes": report.lines(),
                    "onnx": None
                    if exported is None
                    else {
                        "path": exported.path,
                        "bytes": exported.size_bytes,
                        "activations": exported.activations,
                        "int8_kernels": list(exported.int8_kernels),
                        "qdq_weights": list(exported.qdq_weights),
                        "float16_weights": list(exported.float16_weights),
                    },
                },
                indent=1,
            )
        )
        return 0
    how = (
        f"with the task and the recorded fine-tune ({recipe.finetune.steps} steps, seed {recipe.seed})"
        if report.finetuned
        else "policy only"
        + ("" if task else f" (no --task: no fine-tune, traced with zeros of {recipe.example_input.shown()})")
    )
    print(
        f"applied {args.recipe} (study {recipe.source.study!r} trial {recipe.trial}) to {type(small).__name__}, {how}"
    )
    print(f"{'':<12}{'recorded':>14}{'re-applied':>14}")
    for k in keys:
        fmt = (
            (lambda v: "-" if v is None else f"{v * 100:.2f}%")
            if k in ("accuracy", "test_accuracy")
            else ((lambda v: f"{v:.4f}") if k == "latency_ms" else str)
        )
        print(f"{k:<12}{fmt(getattr(rec, k)):>14}{fmt(measured[k]):>14}")
    print(
        f"latency: {got.runtime} runtime, batch {got.batch_size}, {got.device}, {got.threads} threads "
        f"(recorded: {rec.runtime}, batch {rec.batch_size}, {recipe.device}, {rec.threads} threads)"
    )
    for line in report.lines():
        print(f"note: {line}")
    print(f"wrote {args.out} ({written} bytes)")
    if exported is not None:
        print(
            f"wrote {exported.path} ({exported.size_bytes} bytes, ONNX opset {exported.opset}; int8 kernels: "
            f"{', '.join(exported.int8_kernels) or 'none'}; int8 weights dequantized to float: "
            f"{', '.join(exported.qdq_weights) or 'none'}; float16: {', '.join(exported.float16_weights) or 'none'})"
        )
    return 0


def add_parser(sub: Any) -> None:
    exp = sub.add_parser(
        "export",
        help="export a trial of a study as a recipe YAML (no model needed)",
        description="Write the recipe of one trial of a finished search: a trial by number, or "
        "the smallest (or fastest) within an accuracy drop. Opens the study read-only.",
    )
    exp.add_argument("study", metavar="STUDY", help="a study config YAML (its name and storage) or a study name")
    pick = exp.add_mutually_exclusive_group(required=True)
    pick.add_argument("--trial", type=int, help="the trial number to export")
    pick.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="X",
        help="export the best trial within this accuracy drop (a fraction: 0.01 = 1 pp)",
    )
    exp.add_argument(
        "--minimize",
        choices=("size", "latency", "macs"),
        help="with --max-accuracy-drop: what the best trial minimizes (default size)",
    )
    exp.add_argument(
        "--max-latency-ms",
        type=float,
        metavar="MS",
        help="with --max-accuracy-drop: only trials measured at most this latency (default: the "
        "search's max_latency_ms, if it had one)",
    )
    exp.add_argument(
        "--confidence",
        type=float,
        metavar="P",
        help="with --max-accuracy-drop: only trials whose paired interval of the drop at this confidence "
        "(e.g. 0.95) lies within the limit",
    )
    exp.add_argument("-o", "--output", required=True, help="the recipe YAML to write, e.g. recipe.yaml")
    exp.add_argument("--storage", help="Optuna storage URL (default: the config's, or sqlite:///studies/<name>.db)")
    exp.add_argument("--json", action="store_true", help="print what was exported as JSON")
    exp.set_defaults(func=_cmd_export)

    app = sub.add_parser(
        "apply",
        help="apply a recipe to a model and write the packed .ashz",
        description="Check the model against the recipe's fingerprint, replay its policy (and, with "
        "--task, its fine-tune), write the packed artifact and print its measured "
        "numbers next to the recipe's.",
    )
    app.add_argument("recipe", help="recipe YAML written by `autoshrink export` or Recipe.save")
    app.add_argument(
        "--model", required=True, metavar="MODULE:FACTORY", help="'package.module:callable' returning the trained model"
    )
    app.add_argument("--model-args", metavar="JSON", help="keyword arguments of the model factory, a JSON object")
    app.add_argument(
        "--task",
        metavar="MODULE:FACTORY",
        help="'package.module:callable' returning an ash.Task: fine-tune as recorded, measure accuracy",
    )
    app.add_argument("--task-args", metavar="JSON", help="keyword arguments of the task factory, a JSON object")
    app.add_argument("--out", required=True, help="the packed model to write, e.g. model.ashz")
    app.add_argument(
        "--onnx",
        metavar="PATH",
        help="also write the compressed model as ONNX (int8 codes as int8 initializers; needs autoshrink[onnx])",
    )
    app.add_argument(
        "--onnx-activations",
        choices=("dynamic", "static", "weights"),
        default="dynamic",
        help="with --onnx: 'dynamic' runs quantized Linear layers on ONNX Runtime's int8 GEMM "
        "(activations quantized per batch); 'static' the same with activation scales calibrated "
        "on the task's first 4 training batches (needs --task); 'weights' dequantizes the weights "
        "(float compute)",
    )
    app.add_argument(
        "--no-strict",
        action="store_true",
        help="apply the policy to the layers that match the fingerprint and report the others",
    )
    app.add_argument("--json", action="store_true", help="print the result as JSON")
    app.set_defaults(func=_cmd_apply)
