"""Everything a search stores in its Optuna study, by name: the study's and each trial's user
attributes. Every reader and writer (search, load, refine, report, CLI) uses these names, so a rename
happens here once; the values are what studies written by earlier releases hold, and stay so."""

from __future__ import annotations

FORMAT = "autoshrink-study/1"  # the study's FORMAT attribute


class StudyAttr:
    """User attributes of the study (set once at creation, or per run where noted)."""

    FORMAT = "format"
    OBJECTIVES = "objectives"
    SIGNATURE = "signature"  # model, space digest, fine-tune, input shape: a resume must match
    FINETUNE = "finetune"
    STRUCTURED_EXCLUDED = "structured_excluded"
    FINGERPRINT = "fingerprint"
    EXAMPLE_INPUT = "example_input"
    TRAIN_TRANSFORM = "train_transform"
    UNLABELED = "unlabeled"  # how many unlabeled inputs distillation read (Task.unlabeled_data); absent: none
    VERSIONS = "versions"
    RUNTIME = "runtime"  # the runtime decision: {"runtime": ..., timings}
    MAX_ACCURACY_DROP = "max_accuracy_drop"  # per run
    MAX_LATENCY_MS = "max_latency_ms"  # per run
    SCREEN = "screen"  # the screening rule, per run
    BASELINE = "baseline"  # the untouched model's Measurement
    SENSITIVITY = "sensitivity"  # the pre-pass table {"rows", "eval_s", "wall_s"}
    NARROWED = "narrowed"
    ENQUEUED = "enqueued"
    LAST_RUN = "last_run"  # the last run's SearchResult.timing
    LATENCY_TABLE = "latency_table"
    SPLIT = "split"  # the task's held-out split: {holdout, selection, held_out[, stratified]}
    HELD_OUT = "held_out:"  # + trial number or "baseline": a HeldOut score on test_data (stages/held_out.py)


class TrialAttr:
    """User attributes of a trial."""

    POLICY = "policy"
    STAGE = "stage"  # baseline, warm-start, search or refined
    MEASUREMENT = "measurement"  # the full-fidelity Measurement
    SCREEN = "screen"  # {"steps", "seconds", "decision", "reason", "measurement"}
    ZERO_STEP = "zero_step"  # the zero-step rung: {"seconds", "decision", "reason", "measurement"}
    EVAL = "eval"  # {"seconds", "worker", "attempts"}
    FAILURE = "failure"
    CRASHED = "crashed"
    SKIPPED = "skipped"
    RETRY_OF = "retry_of"
    REFINED_FROM = "refined_from"
    FINETUNE = "finetune"  # a trial's own fine-tune settings (refine trials; one-shot calibrated policies)
    WARM_START = "warm_start"
    BASELINE_POLICY = "baseline_policy"
    DRIVER = "driver"  # host:pid:id of the driver that runs it
    LATENCY_PREDICTED_MS = "latency_predicted_ms"
    # a refine trial's score on the held-out test_data, taken in its own evaluation; read only by the
    # held-out stage, and only once the trial is on the final feasible front
    HELD_OUT = "held_out"


DRIVER_ATTR = TrialAttr.DRIVER


def held_out_key(trial: int | None) -> str:
    """The study attribute holding a trial's (None: the baseline's) held-out score."""
    return StudyAttr.HELD_OUT + ("baseline" if trial is None else str(trial))
