"""evaluate(model, task, policy) -> Measurement: apply, fine-tune, measure. Pure and picklable.

This is what an executor runs for one candidate: no Optuna, no Ray, plain inputs and outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .errors import ConfigError, PolicyError, TrainingError, describe
from .measure import HeldOut, LatencyConfig, Measurement, RuntimeTiming, measure, score_held_out, time_runtimes
from .measure.cost import CostClock
from .policy import LayerPolicy, Policy
from .task import Task, require_model_and_task
from .techniques import ApplyReport, apply_policy_with_report
from .techniques.apply import task_calibration
from .techniques.calibration import StatsCache
from .train import FinetuneConfig, StructuredPlan, recalibrate_batchnorm, run_finetune
from .train.bias import correct_biases


def compress(
    model: nn.Module,
    policy: Policy,
    *,
    task: Task | None = None,
    finetune_config: FinetuneConfig | None = None,
    example_input: Tensor | None = None,
    clock: CostClock | None = None,
    calibration_cache: StatsCache | None = None,
    runtime: str | None = None,
) -> tuple[nn.Module, ApplyReport]:
    """Apply `policy` to a copy of `model` and, given a task, fine-tune it (distilling from `model`
    when the policy says so): the compressed model that `evaluate` measures and `apply_recipe`
    returns. `example_input` (default: the task's) traces the model for structured pruning.

    With a task, BatchNorm statistics are re-estimated (FinetuneConfig.bn_batches) where channels were
    removed or layers factorized, before fine-tuning; and for every post-training candidate (a policy
    that changes a layer, with no fine-tune to follow), since pruned or quantized weights shift the
    activations the statistics describe; before that, with FinetuneConfig.bias_correction, a
    post-training candidate's biases are corrected (train/bias.py). With
    schedule="gradual" the structured channels are removed in rounds during the fine-tune (see
    train/gradual.py), ending exactly where the one-shot prune would. A policy that changes no
    layer is not fine-tuned: that would not be "no compression". Calibrated choices (gptq, wanda,
    sparsegpt) calibrate on the task's training inputs (techniques/calibration.py). `clock` gets the
    seconds of its apply, calibrate (statistics and BatchNorm) and finetune stages; `calibration_cache`
    keeps calibration statistics across calls on this unchanged `model` (techniques/calibration.py);
    `runtime`: where the result will be measured, which FinetuneConfig.activations="auto" simulates."""
    clock = clock or CostClock()
    x = example_input if example_input is not None or task is None else task.example_input
    if finetune_config is not None and not isinstance(finetune_config, FinetuneConfig):
        raise ConfigError(
            f"compress: finetune_config={describe(finetune_config)}; use an ash.FinetuneConfig (or None for no "
            "fine-tune)."
        )
    cfg = finetune_config or FinetuneConfig(steps=0)
    train = task is not None and cfg.steps > 0 and policy.changes_model
    teacher = model if policy.distill else None
    structured = {n for n, lp in policy.layers.items() if lp.structured and lp.sparsity > 0}
    calibration = None if task is None else task_calibration(task, seed=cfg.seed)
    if train and cfg.schedule == "gradual":
        calibrated = [n for n, lp in policy.layers.items() if lp.calibrated]
        if calibrated:
            raise PolicyError(
                f"layers.{calibrated[0]}: a calibrated choice (rounding 'gptq', criterion 'wanda' or "
                "'sparsegpt') is set once from calibration data, and schedule='gradual' re-chooses masks "
                "and codes by magnitude during the fine-tune. Fix: use schedule='oneshot' with it."
            )
        if structured:
            return _gradual_structured(model, policy, structured, task, cfg, x, clock, runtime)
    with clock.stage("apply"):
        small, report = apply_policy_with_report(
            model, policy, example_input=x, calibration=calibration, calibration_cache=calibration_cache
        )
    clock.move("apply", "calibrate", report.calibration_s)
    post_training = task is not None and not train and policy.changes_model
    if post_training and cfg.bias_correction:
        with clock.stage("calibrate"):
            correct_biases(small, model, calibration)
    if task is not None and (report.restructured or post_training):
        with clock.stage("calibrate"):  # a post-training candidate's statistics follow its compression
            recalibrate_batchnorm(small, task, batches=cfg.bn_batches, seed=cfg.seed)
    if train:
        with clock.stage("finetune"):
            run_finetune(small, task, cfg, teacher=teacher, runtime=runtime)
    return small, report


def _gradual_structured(
    model: nn.Module,
    policy: Policy,
    structured: set[str],
    task: Task,
    cfg: FinetuneConfig,
    x: Tensor | None,
    clock: CostClock,
    runtime: str | None,
) -> tuple[nn.Module, ApplyReport]:
    """A one-shot dry run says which channels the policy removes (and what it skips); the fine-tune
    then starts from the model with everything but the channel removal applied and removes them in
    rounds. The returned report is the dry run's; the final channel counts must equal it."""
    with clock.stage("apply"):
        _, report = apply_policy_with_report(
            model, policy, example_input=x, calibration=task_calibration(task, seed=cfg.seed)
        )
    removals = {n: before - after for n, (before, after) in report.channels.items() if n in structured}
    rest = {}
    for name, lp in policy.layers.items():
        if name in structured:
            lp = LayerPolicy(bits=lp.bits, rank=lp.rank)
        if not lp.is_identity:
            rest[name] = lp
    with clock.stage("apply"):
        small, rest_report = apply_policy_with_report(
            model,
            Policy(layers=rest, distill=policy.distill, blocks=policy.blocks),
            example_input=x,
            calibration=task_calibration(task, seed=cfg.seed),
        )
    if rest_report.restructured:
        with clock.stage("calibrate"):
            recalibrate_batchnorm(small, task, batches=cfg.bn_batches, seed=cfg.seed)
    plan = StructuredPlan(removals=removals, layers=dict(policy.layers), example_input=x)
    with clock.stage("finetune"):
        run_finetune(small, task, cfg, teacher=model if policy.distill else None, plan=plan, runtime=runtime)
    for name, (_, after) in report.channels.items():
        module = small.get_submodule(name)
        layer = getattr(module, "second", module)
        got = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        if got != after:
            raise TrainingError(
                f"gradual structured pruning left {name} with {got} channels where one-shot "
                f"leaves {after}. Fix: use schedule='oneshot' for this policy."
            )
    return small, report


def evaluate_held_out(
    model: nn.Module,
    task: Task,
    policy: Policy,
    *,
    finetune_config: FinetuneConfig | None = None,
    runtime: str = "float",
    calibration_cache: StatsCache | None = None,
) -> HeldOut:
    """Replay what `evaluate` measured -- the same compression and fine-tune, so the same model on the
    same machine -- and score it on the task's held-out test_data on `runtime` (the trial's recorded
    one). No latency or packing: the search measured those."""
    small, _ = compress(
        model, policy, task=task, finetune_config=finetune_config, calibration_cache=calibration_cache, runtime=runtime
    )
    return score_held_out(small, task, runtime)


def evaluate_runtimes(
    model: nn.Module,
    task: Task,
    policy: Policy,
    *,
    latency: LatencyConfig | None = None,
    calibration_cache: StatsCache | None = None,
) -> RuntimeTiming:
    """Apply `policy` (no fine-tune) and time the result on float and int8: the runtime='auto' probe,
    which needs no accuracy and no packed size."""
    small, _ = compress(model, policy, task=task, calibration_cache=calibration_cache)
    return time_runtimes(small, task, latency=latency)


def evaluate(
    model: nn.Module,
    task: Task,
    policy: Policy,
    *,
    finetune_config: FinetuneConfig | None = None,
    latency: LatencyConfig | None = None,
    runtime: str | None = None,
    calibration_cache: StatsCache | None = None,
    examples: Sequence[int] | None = None,
) -> Measurement:
    """Compress a copy of `model` by `policy`, fine-tune it (distilling from `model` when the
    policy says so) and measure it on `runtime` (see `measure`). `model` is not modified. A policy
    that changes no layer is measured as is: fine-tuning the untouched model would not be "no
    compression". `calibration_cache`: see `compress`; `examples`: score only these indices of
    eval_data (see `measure`)."""
    require_model_and_task(model, task, "evaluate")
    return _evaluate(model, task, policy, finetune_config, latency, runtime, calibration_cache, examples)[1]


def evaluate_and_score_test(
    model: nn.Module,
    task: Task,
    policy: Policy,
    *,
    finetune_config: FinetuneConfig | None = None,
    latency: LatencyConfig | None = None,
    runtime: str | None = None,
    calibration_cache: StatsCache | None = None,
) -> tuple[Measurement, HeldOut]:
    """`evaluate`, then the same model scored on the task's held-out test_data on the runtime it was
    measured on: what `evaluate_held_out` would give, without repeating a long fine-tune. Nothing may
    decide on the score (the search keeps it for its held-out stage)."""
    require_model_and_task(model, task, "evaluate")
    small, m = _evaluate(model, task, policy, finetune_config, latency, runtime, calibration_cache, None)
    return m, score_held_out(small, task, m.runtime)


def _evaluate(
    model: nn.Module,
    task: Task,
    policy: Policy,
    finetune_config: FinetuneConfig | None,
    latency: LatencyConfig | None,
    runtime: str | None,
    calibration_cache: StatsCache | None,
    examples: Sequence[int] | None,
) -> tuple[nn.Module, Measurement]:
    if not isinstance(policy, Policy):
        raise PolicyError(
            f"evaluate: policy must be an autoshrink.Policy, got {describe(policy)}; build one with "
            "ash.Policy(layers={name: ash.LayerPolicy(...)})."
        )
    clock = CostClock()
    small, report = compress(
        model,
        policy,
        task=task,
        finetune_config=finetune_config,
        clock=clock,
        calibration_cache=calibration_cache,
        runtime=runtime,
    )
    m = measure(small, task, runtime=runtime, latency=latency, skipped=report.lines(), clock=clock, examples=examples)
    return small, m
