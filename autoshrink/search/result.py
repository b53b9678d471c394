"""SearchResult: the baseline, the trials, the feasible Pareto front, selection and hypervolume."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd

from ..errors import ConfigError, RecipeError, finite_number
from ..measure import HeldOut, Measurement
from ..measure.cost import COLUMNS, columns
from ..measure.paired import paired
from ..recipe import Recipe, recipe_from_search
from . import display
from .context import Session
from .front import feasible, feasible_front, normalized
from .objectives import Objective
from .pareto import hypervolume
from .stages.latency_limit import over_limit
from .stages.refine import refine_study
from .study.latency_records import load_table, prediction_errors
from .study.schema import StudyAttr, TrialAttr, held_out_key

# the columns a trial's measurement gives in `trials` and `pareto`
MEASURED = (
    "accuracy",
    "accuracy_drop",
    "size_bytes",
    "latency_ms",
    "macs",
    "compression",
    "speedup",
    "mac_reduction",
    "runtime",
    "device",
)
# the paired 95 % interval of each drop and the example count; the held-out split's figures
# (stages/held_out.py): NaN where a trial has none
SPLITS = (
    "drop_low",
    "drop_high",
    "examples",
    "test_accuracy",
    "test_drop",
    "test_drop_low",
    "test_drop_high",
    "test_examples",
    "replayed",
)
COST_COLUMNS = ("eval_s", *COLUMNS)
MINIMIZE = {"size": "size_bytes", "latency": "latency_ms", "macs": "macs"}
NAN = float("nan")


def trial_cost(u: Mapping[str, Any]) -> dict[str, float]:
    """COST_COLUMNS of a trial from its user attributes: its zero-step, screening and full evaluations summed."""
    screen = u.get(TrialAttr.SCREEN) or {}
    zero = u.get(TrialAttr.ZERO_STEP) or {}
    # EVAL is the last evaluation (the rung that stopped it, or the full one); earlier rungs it passed add theirs
    evals = [
        (u.get(TrialAttr.EVAL) or {}).get("seconds"),
        screen.get("seconds") if screen.get("decision") == "promoted" else None,
        zero.get("seconds") if zero.get("decision") == "promoted" else None,
    ]
    measured = [u.get(TrialAttr.MEASUREMENT), screen.get("measurement"), zero.get("measurement")]
    seconds = [float(e) for e in evals if e is not None]
    return {
        "eval_s": round(sum(seconds), 4) if seconds else NAN,
        **columns(*((m or {}).get("cost") for m in measured)),
    }


@dataclass
class SearchResult:
    """What a search found. `pareto` holds feasible Pareto-optimal trials; see `best`, `hypervolume`."""

    study: optuna.Study
    baseline: Measurement
    objectives: tuple[Objective, ...]
    max_accuracy_drop: float | None = None
    timing: dict[str, float] = field(default_factory=dict)
    storage: str | None = None  # the Optuna storage URL the study lives in
    session: Session | None = field(default=None, repr=False)
    max_latency_ms: float | None = None  # the search's latency limit (search/latency_limit.py)

    # ------------------------------------------------------------------ tables
    @property
    def trials(self) -> pd.DataFrame:
        """Every trial: number, state, measured values, drop/compression/speedup, policy, failure, skipped;
        simulated (how many compressed layers a GPU runtime ran as plain weights, Measurement.simulated);
        eval_s (its evaluation's wall seconds, the screening one included) and its cost split (COST_COLUMNS:
        apply_s, calibrate_s, finetune_s, evaluate_s, pack_s, latency_s; measure/cost.py)."""
        rows = []
        attrs = self.study.user_attrs  # one read of the study's attributes (a query on server storages)
        for t in self.study.get_trials(deepcopy=False):
            u = t.user_attrs
            row: dict[str, Any] = {"trial": t.number, "state": t.state.name, "stage": u.get(TrialAttr.STAGE)}
            m = u.get(TrialAttr.MEASUREMENT)
            if m:
                row.update(self._derived(m, t.number, attrs))
            row["policy"] = u.get(TrialAttr.POLICY)
            row["failure"] = u.get(TrialAttr.FAILURE)
            row["retry_of"] = u.get(TrialAttr.RETRY_OF)
            row["refined_from"] = u.get(TrialAttr.REFINED_FROM)
            row["skipped"] = u.get(TrialAttr.SKIPPED)  # a warm-start twin not run (search/tell.py twin_verdict)
            row["finetune_steps"] = (u.get(TrialAttr.FINETUNE) or attrs.get(StudyAttr.FINETUNE, {})).get("steps")
            row.update(trial_cost(u))
            rows.append(row)
        return pd.DataFrame(rows)

    def _derived(self, m: dict[str, Any], trial: int, attrs: Mapping[str, Any]) -> dict[str, Any]:
        b = self.baseline
        return {
            "accuracy": m["accuracy"],
            "accuracy_drop": b.accuracy - m["accuracy"],
            "size_bytes": m["size_bytes"],
            "latency_ms": m["latency_ms"],
            "macs": m["macs"],
            "compression": b.size_bytes / m["size_bytes"],
            "speedup": b.latency_ms / m["latency_ms"],
            "mac_reduction": b.macs / m["macs"] if m["macs"] else float("nan"),
            "runtime": m["runtime"],
            "device": m["device"],
            "simulated": len(m.get("simulated") or ()),  # layers a GPU runtime ran without a fast kernel
            **self._splits(m, trial, attrs),
        }

    def _splits(self, m: Mapping[str, Any], trial: int, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """The SPLITS columns of one measured trial (`attrs`: the study's user attributes)."""
        b = self.baseline
        out: dict[str, Any] = dict.fromkeys(SPLITS, NAN)
        out["examples"] = m.get("examples") or NAN
        drop = paired(b.correct, m.get("correct"), b.examples, m.get("examples"))
        if drop is not None:
            out["drop_low"], out["drop_high"] = drop.low, drop.high
        base, held = self.held_out(None, attrs), self.held_out(trial, attrs)
        if base is not None and held is not None:
            out["test_accuracy"] = held.accuracy
            out["test_drop"] = base.accuracy - held.accuracy
            out["test_examples"] = held.examples
            out["replayed"] = held.eval_accuracy == m["accuracy"]
            test = paired(base.correct, held.correct, base.examples, held.examples)
            if test is not None:
                out["test_drop_low"], out["test_drop_high"] = test.low, test.high
        return out

    def held_out(self, trial: int | None, attrs: Mapping[str, Any] | None = None) -> HeldOut | None:
        """The held-out score of `trial` (None: the baseline's), where the search scored it; `attrs`: the
        study's user attributes where the caller has read them already."""
        record = (self.study.user_attrs if attrs is None else attrs).get(held_out_key(trial))
        return HeldOut.from_dict(record) if record and "failure" not in record else None

    def _feasible(self) -> list[optuna.trial.FrozenTrial]:
        return feasible(self.study, self.baseline, self.max_accuracy_drop, self.max_latency_ms)

    def _normalized(self, trials: Sequence[optuna.trial.FrozenTrial]) -> np.ndarray:
        return normalized(trials, self.objectives, self.baseline)

    @property
    def pareto(self) -> pd.DataFrame:
        """Feasible (within max_accuracy_drop and max_latency_ms) Pareto-optimal trials, best accuracy first."""
        front = feasible_front(self.study, self.baseline, self.objectives, self.max_accuracy_drop, self.max_latency_ms)
        if not front:
            return pd.DataFrame(columns=["trial", *MEASURED, *SPLITS, "policy", "stage", "refined_from"])
        attrs = self.study.user_attrs
        rows = [
            {
                "trial": t.number,
                **self._derived(t.user_attrs[TrialAttr.MEASUREMENT], t.number, attrs),
                "policy": t.user_attrs.get(TrialAttr.POLICY),
                "stage": t.user_attrs.get(TrialAttr.STAGE),
                "refined_from": t.user_attrs.get(TrialAttr.REFINED_FROM),
            }
            for t in front
        ]
        return (
            pd.DataFrame(rows).sort_values(["accuracy", "size_bytes"], ascending=[False, True]).reset_index(drop=True)
        )

    # ------------------------------------------------------------------ selection
    def recipe(self, trial_number: int) -> Recipe:
        """The Recipe of one COMPLETE trial: its policy, fine-tune, measurement, the baseline and the
        model fingerprint, all from the study's records (no model needed)."""
        trials = self.study.trials
        if isinstance(trial_number, bool) or not isinstance(trial_number, int) or not 0 <= trial_number < len(trials):
            raise ConfigError(f"trial {trial_number!r}: the study has trials 0..{len(trials) - 1}; pick one of them.")
        t = trials[trial_number]
        if t.state != optuna.trial.TrialState.COMPLETE or TrialAttr.MEASUREMENT not in t.user_attrs:
            raise ConfigError(f"trial {trial_number} is {t.state.name}, not COMPLETE; pick a completed trial.")
        attrs = self.study.user_attrs
        name = self.study.study_name
        if StudyAttr.FINGERPRINT not in attrs or StudyAttr.EXAMPLE_INPUT not in attrs:
            raise RecipeError(
                f"study {name!r} holds no model fingerprint (it was created by an older autoshrink), "
                "so no recipe can be checked against a model. Fix: run the search in a new study."
            )
        return recipe_from_search(
            study=name,
            storage=self.storage or "unknown",
            trial=t.number,
            policy=t.user_attrs[TrialAttr.POLICY],
            measurement=self._with_test(t.user_attrs[TrialAttr.MEASUREMENT], t.number),
            baseline=self._with_test(self.baseline.to_dict(), None),
            finetune=t.user_attrs.get(TrialAttr.FINETUNE) or attrs[StudyAttr.FINETUNE],
            fingerprint=attrs[StudyAttr.FINGERPRINT],
            example_input=attrs[StudyAttr.EXAMPLE_INPUT],
            train_transform=attrs.get(StudyAttr.TRAIN_TRANSFORM),
            unlabeled=attrs.get(StudyAttr.UNLABELED),
            produced_by=attrs.get(StudyAttr.VERSIONS),
        )

    def _confident(self, ok: pd.DataFrame, max_drop: float, confidence: float) -> pd.DataFrame:
        """The rows of `ok` whose drop's upper bound at `confidence` is within `max_drop`."""
        measurements = {t.number: t.user_attrs.get(TrialAttr.MEASUREMENT) for t in self.study.trials}
        highs = []
        for n in ok["trial"]:
            m = measurements[int(n)]
            drop = paired(
                self.baseline.correct, m.get("correct"), self.baseline.examples, m.get("examples"), confidence
            )
            if drop is None:
                raise ConfigError(
                    f"best: confidence needs each trial's per-example record (the accuracy metric, measured by "
                    f"autoshrink >= 0.2); trial {int(n)} has none. Fix: best(confidence=None), or search again."
                )
            highs.append(drop.high)
        return ok[np.array(highs) <= max_drop + 1e-12]

    def _with_test(self, m: Mapping[str, Any], trial: int | None) -> dict[str, Any]:
        """A measurement's record with its held-out accuracy, where the search scored it."""
        held = self.held_out(trial)
        if held is None:
            return dict(m)
        return {**m, "test_accuracy": held.accuracy, "test_examples": held.examples}

    def best(
        self,
        max_accuracy_drop: float = 0.01,
        minimize: str = "size",
        max_latency_ms: float | None = None,
        confidence: float | None = None,
    ) -> Recipe:
        """The Recipe of the trial with the smallest `minimize` (size, latency or macs) among those
        within `max_accuracy_drop` (a fraction: 0.01 = 1 pp) of the baseline and measured at most
        `max_latency_ms` (default: the search's limit, if it had one); ties -> higher accuracy, then the
        smaller other costs. Its recipe carries held-out figures where the search scored the trial (the
        final front under the search's constraints).
        Selects on the selection split only. `confidence` (e.g. 0.95): only trials whose paired interval
        of the drop (at that confidence) lies within `max_accuracy_drop` -- the drop is likely within the
        limit, not only measured within it on these examples."""
        if minimize not in MINIMIZE:
            raise ConfigError(f"best: minimize={minimize!r}; use one of {', '.join(MINIMIZE)}.")
        if not isinstance(max_accuracy_drop, (int, float)) or max_accuracy_drop < 0:
            raise ConfigError(f"best: max_accuracy_drop={max_accuracy_drop!r}; use a fraction >= 0 (0.01 = 1 pp).")
        if max_latency_ms is not None and (
            isinstance(max_latency_ms, bool) or not isinstance(max_latency_ms, (int, float)) or not max_latency_ms > 0
        ):
            raise ConfigError(
                f"best: max_latency_ms={max_latency_ms!r}; use milliseconds > 0, or None for the search's own limit."
            )
        if confidence is not None and (not finite_number(confidence) or not 0 < confidence < 1):
            raise ConfigError(f"best: confidence={confidence!r}; use a probability in (0, 1), e.g. 0.95, or None.")
        limit = self.max_latency_ms if max_latency_ms is None else float(max_latency_ms)
        df = self.trials
        if df.empty or "accuracy" not in df:
            raise ConfigError(f"study {self.study.study_name!r} has no completed trial yet; run the search first.")
        done = df[df["state"] == "COMPLETE"].dropna(subset=["accuracy"])
        ok = done[done["accuracy_drop"] <= max_accuracy_drop + 1e-12]
        if limit is not None and not ok.empty:
            fast = ok[~ok["latency_ms"].map(lambda v: over_limit(v, limit))]
            if fast.empty:
                quickest = ok.sort_values("latency_ms").iloc[0]
                raise ConfigError(
                    f"no trial within {max_accuracy_drop * 100:.2f} pp runs in {limit:g} ms or less; the "
                    f"fastest is trial {int(quickest['trial'])} at {quickest['latency_ms']:.4g} ms. "
                    "Relax max_latency_ms or max_accuracy_drop, or run more trials."
                )
            ok = fast
        if confidence is not None and not ok.empty:
            ok = self._confident(ok, max_accuracy_drop, confidence)
        if ok.empty:
            closest = done.sort_values("accuracy_drop").iloc[0]
            raise ConfigError(
                f"no trial is within {max_accuracy_drop * 100:.2f} pp of the baseline; the closest is "
                f"trial {int(closest['trial'])} at {closest['accuracy_drop'] * 100:.2f} pp. "
                "Relax max_accuracy_drop or run more trials."
            )
        # ties: higher accuracy, then the other costs -- so that the pick is never a point another one
        # dominates (a refined twin of the same size and accuracy but slower, say)
        order = [
            MINIMIZE[minimize],
            "accuracy",
            *(c for c in ("latency_ms", "size_bytes", "macs") if c != MINIMIZE[minimize]),
        ]
        pick = ok.sort_values(order, ascending=[True, False, True, True], kind="stable").iloc[0]
        return self.recipe(int(pick["trial"]))

    # ------------------------------------------------------------------ refine
    def refine(
        self,
        k: int = 1,
        *,
        steps: int | None = None,
        trials: Sequence[int] | None = None,
        model: Any = None,
        task: Any = None,
        executor: Any = None,
        finetune: Mapping[str, Any] | None = None,
        slack: float | None = None,
        distill: bool | None = None,
        progress: Callable[[Any], None] | bool | None = None,
    ) -> pd.DataFrame:
        """Refine stage after the search (see search/refine.py): re-run the k best feasible or
        near-feasible policies (or the given `trials`) with `steps` fine-tune steps (default 5x the
        study's) and gradual pruning, each keeping its own policy, as new trials of this study: with
        the source's distillation choice and, where the space searches it, the other one (`distill`
        forces one). Model, task and executor default to the search's own (needed after
        `load_result`). Returns the new trials' rows of `trials` (with `refined_from`). `slack` widens
        "near-feasible" (default: 2 pp, 10 pp after a post-training search; stages/refine.py's
        refine_slack). `progress` as in `search`."""
        shown = display.resolve(progress, "refine")
        try:
            numbers = refine_study(
                self.study,
                self.baseline,
                self.objectives,
                max_accuracy_drop=self.max_accuracy_drop,
                max_latency_ms=self.max_latency_ms,
                storage=self.storage,
                session=self.session,
                k=k,
                steps=steps,
                trials=trials,
                model=model,
                task=task,
                executor=executor,
                finetune=finetune,
                slack=slack,
                distill=distill,
                progress=shown,
            )
        finally:
            display.close(shown)
        df = self.trials
        return df[df["trial"].isin(numbers)].reset_index(drop=True)

    # ------------------------------------------------------------------ latency lookup table
    def latency_table(self) -> pd.DataFrame:
        """The study's latency lookup table (measure/latency_table.py): one row per (layer, choice, runtime,
        device, batch) with the median latency_ms of its observations; empty unless latency is an objective."""
        return load_table(self.study).frame()

    def latency_predictions(self) -> pd.DataFrame:
        """Each trial's sum-rule latency predicted from the table before it ran, against its measured
        latency: columns trial, fidelity, predicted_ms, measured_ms, error (predicted / measured - 1)."""
        return prediction_errors(self.study)

    # ------------------------------------------------------------------ quality
    def reference_point(self) -> np.ndarray:
        """Hypervolume reference (normalized units, see Objective.normalized): 5 pp accuracy drop,
        1.1x the baseline's size / latency / MACs."""
        return np.array([o.hv_reference for o in self.objectives], dtype=float)

    def hypervolume(self) -> float:
        """Hypervolume of the feasible trials in normalized units against `reference_point()`.

        Units: accuracy as drop (fraction), the others as ratios to the baseline, all minimized;
        points not strictly better than the reference in every objective add nothing.
        """
        return hypervolume(self._normalized(self._feasible()), self.reference_point())
