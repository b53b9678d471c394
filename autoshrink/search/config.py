"""SearchConfig: every setting of a search, as one frozen, validated object.

`ash.search(...)` keywords, study-config YAML keys and `autoshrink search` flags all build it from the
one SETTINGS table below, so a new setting is one dataclass field plus one table row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ..errors import ConfigError, describe, finite_number
from ..measure import LatencyConfig
from ..train import FinetuneConfig
from .objectives import OBJECTIVES, resolve
from .preflight import NAME
from .sampling.samplers import SAMPLERS
from .stages.fidelity import Screening
from .stages.runtime import RUNTIME_CHOICES

MAX_INT = 2**32  # no count, step or seed anyone means is larger
EXECUTOR_METHODS = ("start", "submit", "wait", "cancel", "shutdown")


class SettingError(ValueError):
    """A setting's value is refused; `fix` says what to give instead (the caller names where)."""

    def __init__(self, fix: str) -> None:
        super().__init__(fix)
        self.fix = fix


@dataclass(frozen=True)
class SearchConfig:
    """How a search runs (see docs/search.md). Unset optional settings are None; defaults below."""

    objectives: tuple[str, ...] = ("accuracy", "size", "latency")
    n_trials: int | None = 40
    timeout: float | None = None
    finetune_steps: int | None = None
    executor: Any = "local"
    storage: str | None = None
    study_name: str | None = None
    sampler: Any = "front"
    seed: int = 0
    max_accuracy_drop: float | None = None
    max_latency_ms: float | None = None
    latency: LatencyConfig | None = None
    runtime: str = "auto"
    sensitivity: bool | str = True  # True: within the pre-pass budget; "full": every choice; False: none
    narrow_cutoff: float | None = None
    warm_start: bool | int = True
    screen: bool | float | Screening = True
    refine_top: int = 0
    refine_steps: int | None = None
    refine_slack: float | None = None
    refine_finetune: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                object.__setattr__(self, f.name, SETTINGS[f.name].check(value))
            except SettingError as exc:
                raise ConfigError(f"search: {f.name}={describe(value)}; {exc.fix}") from None
        for _, message in cross_check(self.values()):
            raise ConfigError(f"search: {message}")

    def values(self) -> dict[str, Any]:
        """The settings by name, as they are (objects included)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> SearchConfig:
        """A copy with `changes` (validated); unknown names are refused."""
        check_names(changes, "search")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (executor and sampler objects by their type name)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (LatencyConfig, Screening)):
                v = {g.name: getattr(v, g.name) for g in fields(v)}
            elif not (v is None or isinstance(v, (str, int, float, bool, tuple, Mapping))):
                v = type(v).__name__
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


_dataclass_init = SearchConfig.__init__


def _checked_init(self: SearchConfig, *args: Any, **kwargs: Any) -> None:
    """SearchConfig(...) refuses an unknown setting by name, with the closest (not a bare TypeError)."""
    check_names(kwargs, "SearchConfig")
    if len(args) > len(SETTINGS):
        raise ConfigError(f"SearchConfig: got {len(args)} positional settings; give them by name, e.g. n_trials=20.")
    _dataclass_init(self, *args, **kwargs)


SearchConfig.__init__ = _checked_init  # type: ignore[method-assign]


def check_names(given: Mapping[str, Any], where: str) -> None:
    """Refuse names that are not settings, suggesting the closest."""
    import difflib

    for name in given:
        if name not in SETTINGS:
            close = difflib.get_close_matches(name, SETTINGS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown setting {name!r}{hint}; the settings are {', '.join(SETTINGS)}.")


def cross_check(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Rules between (checked) settings, as (the setting to fix, message); empty: none broken."""
    out = []
    if values["n_trials"] is None and values["timeout"] is None:
        out.append(("n_trials", "give n_trials and/or timeout, or it would never stop."))
    if values["max_latency_ms"] is not None and "latency" not in values["objectives"]:
        out.append(
            (
                "max_latency_ms",
                "max_latency_ms needs 'latency' among the objectives (the limit is checked on the measured "
                "latency, and the lookup table that predicts it is filled only then); add it, e.g. "
                "objectives=('accuracy', 'size', 'latency').",
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- checks
def _integer(low: int, optional: bool, what: str) -> Callable[[Any], int | None]:
    def check(v: Any) -> int | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= MAX_INT:
            raise SettingError(f"use an integer >= {low} (at most {MAX_INT:,}){what}.")
        return v

    return check


def _number(low: float, high: float, closed_low: bool, closed_high: bool, fix: str) -> Callable[[Any], float | None]:
    def check(v: Any) -> float | None:
        if v is None:
            return None
        ok = finite_number(v) and (v >= low if closed_low else v > low) and (v <= high if closed_high else v < high)
        if not ok:
            raise SettingError(fix)
        return float(v)

    return check


def _sensitivity(v: Any) -> bool | str:
    if v is True or v is False or v == "full":
        return v
    raise SettingError(
        'use true (the pre-pass within its budget, a quarter of the search\'s), "full" (every choice '
        "whatever the budget) or false (none)."
    )


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise SettingError("use true or false.")
    return v


def _objectives(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = (v,)
    if not isinstance(v, (list, tuple)) or not all(isinstance(n, str) for n in v):
        raise SettingError(f"use a list of objective names from {', '.join(OBJECTIVES)}.")
    try:
        return tuple(o.name for o in resolve(v))
    except ConfigError as exc:
        raise SettingError(str(exc)) from None


def _executor(v: Any) -> Any:
    if isinstance(v, str):
        if v not in ("local", "ray"):
            raise SettingError("use 'local', 'ray' or an executor object.")
        return v
    missing = [m for m in EXECUTOR_METHODS if not callable(getattr(v, m, None))]
    if missing:
        raise SettingError(f"use 'local', 'ray' or an executor object ({type(v).__name__} has no {missing[0]}()).")
    return v


def _text(fix: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None:
            return None
        if not isinstance(v, str) or not v.strip():
            raise SettingError(fix)
        return v

    return check


def _study_name(v: Any) -> str | None:
    if v is not None and (not isinstance(v, str) or not NAME.fullmatch(v)):
        raise SettingError(
            "use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit (it names "
            "the study database file)."
        )
    return v


def _sampler(v: Any) -> Any:
    if isinstance(v, str):
        if v not in SAMPLERS:
            raise SettingError(f"use one of {', '.join(SAMPLERS)} or an optuna sampler object.")
        return v
    if not callable(getattr(v, "sample_relative", None)):
        raise SettingError(f"use one of {', '.join(SAMPLERS)} or an optuna sampler object.")
    return v


def _seed(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**32:
        raise SettingError("use an integer in [0, 2^32).")
    return v


def _latency(v: Any) -> LatencyConfig | None:
    if v is None or isinstance(v, LatencyConfig):
        return v
    known = [f.name for f in fields(LatencyConfig) if f.name != "layers"]
    if not isinstance(v, Mapping) or not set(v) <= set(known):
        raise SettingError(f"use a mapping with any of {', '.join(known)} (or an ash.LatencyConfig).")
    for key, value in v.items():
        if not finite_number(value) or value < 0 or (key != "min_seconds" and not isinstance(value, int)):
            raise SettingError(f"latency.{key}: use a number >= 0 (an integer for counts).")
    return LatencyConfig(**dict(v))


def _runtime(v: Any) -> str:
    if v not in RUNTIME_CHOICES:
        raise SettingError(f"use {', '.join(RUNTIME_CHOICES)}.")
    return v


def _warm_start(v: Any) -> bool | int:
    if isinstance(v, bool) or (isinstance(v, int) and 0 <= v <= MAX_INT):
        return v
    raise SettingError("use true (default), false or a count >= 0.")


def _screen(v: Any) -> bool | float | Screening:
    if isinstance(v, (bool, Screening)):
        return v
    if finite_number(v):
        try:
            Screening(share=float(v))
        except ConfigError:
            raise SettingError(
                "use true (default), false, a share of the steps in (0, 1) (e.g. 0.25) or a "
                "mapping of share, slack, margin, calibrate, zero_step."
            ) from None
        return float(v)
    known = [f.name for f in fields(Screening)]
    if isinstance(v, Mapping) and set(v) <= set(known):
        try:
            return Screening(**dict(v))
        except (ConfigError, TypeError) as exc:
            raise SettingError(str(exc)) from None
    raise SettingError(
        f"use true (default), false, a share of the steps in (0, 1) (e.g. 0.25) or a mapping of {', '.join(known)}."
    )


def _refine_finetune(v: Any) -> Mapping[str, Any] | None:
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise SettingError("use a mapping of fine-tune settings (e.g. {lr: 0.001}).")
    try:
        FinetuneConfig.from_dict({**FinetuneConfig().to_dict(), **dict(v)})
    except (ConfigError, TypeError) as exc:
        raise SettingError(str(exc)) from None
    return dict(v)


@dataclass(frozen=True)
class Setting:
    """One row of SETTINGS: how a value is checked, what the CLI flag parses, one line of help."""

    check: Callable[[Any], Any]
    help: str
    cli: str = "yaml"  # how the flag's text is read: "int", "float", "text" (as it is) or "yaml" (a YAML value)


SETTINGS: dict[str, Setting] = {
    "objectives": Setting(_objectives, f"objectives to optimize, any of {', '.join(OBJECTIVES)}"),
    "n_trials": Setting(_integer(1, True, ""), "finished candidate trials in the study (all drivers)", cli="int"),
    "timeout": Setting(
        _number(0, math.inf, False, False, "use seconds > 0."),
        "stop asking new trials after this many seconds",
        cli="float",
    ),
    "finetune_steps": Setting(_integer(0, True, ""), "fine-tune steps per candidate (default: the space's)", cli="int"),
    "executor": Setting(_executor, "local or ray"),
    "storage": Setting(
        _text("use an Optuna storage URL, e.g. sqlite:///studies/name.db."),
        "Optuna storage URL (default sqlite:///studies/<study_name>.db)",
        cli="text",
    ),
    "study_name": Setting(_study_name, "the study's name (default: the config's name)", cli="text"),
    "sampler": Setting(_sampler, f"one of {', '.join(SAMPLERS)}", cli="text"),
    "seed": Setting(_seed, "seed of the sampler and the fine-tunes", cli="int"),
    "max_accuracy_drop": Setting(
        _number(0, 1, True, False, "use a fraction in [0, 1) (0.01 = 1 pp)."),
        "constraint: the largest accuracy drop (fraction)",
        cli="float",
    ),
    "max_latency_ms": Setting(
        _number(0, math.inf, False, False, "use a latency in milliseconds > 0, or None."),
        "constraint: the largest measured latency (ms; needs the latency objective)",
        cli="float",
    ),
    "latency": Setting(_latency, "latency timing: {warmup, min_repeats, min_seconds, max_repeats}"),
    "runtime": Setting(_runtime, "the runtime every trial is measured on (decided once per study)", cli="text"),
    "sensitivity": Setting(
        _sensitivity, 'the sensitivity pre-pass (and narrowing, warm start): true (budgeted), "full" or false'
    ),
    "narrow_cutoff": Setting(
        _number(0, 1, False, True, "use a drop in (0, 1] (0.1 = 10 pp), or None."),
        "drop a choice that alone costs more than this (fraction)",
        cli="float",
    ),
    "warm_start": Setting(_warm_start, "enqueue policies allocated from the pre-pass (true, false or a count)"),
    "screen": Setting(_screen, "multi-fidelity screening: true, false, a share of the steps or a mapping"),
    "refine_top": Setting(
        _integer(0, False, ""), "refine stage: re-run the K best policies with a long fine-tune", cli="int"
    ),
    "refine_steps": Setting(_integer(1, True, ""), "fine-tune steps of the refine stage", cli="int"),
    "refine_slack": Setting(
        _number(0, 1, True, True, "use a drop in [0, 1] (0.02 = 2 pp), or None."),
        "refine stage: how far past max_accuracy_drop a candidate may be (fraction)",
        cli="float",
    ),
    "refine_finetune": Setting(_refine_finetune, "fine-tune settings of the refine stage (a mapping)"),
}


def from_mapping(
    data: Mapping[str, Any],
    on_error: Callable[[str, Any, str], Exception],
    on_rule: Callable[[str], Exception],
    base: SearchConfig | None = None,
) -> SearchConfig:
    """A SearchConfig from settings read from a file or the command line: each value checked alone
    first, so that `on_error(name, value, fix)` can say where it came from; a rule between settings
    broken is `on_rule(setting, message)`."""
    checked = {}
    for name, value in data.items():
        try:
            checked[name] = SETTINGS[name].check(value)
        except SettingError as exc:
            raise on_error(name, value, exc.fix) from None
    base = base or SearchConfig()
    broken = cross_check({**base.values(), **checked})
    if broken:
        raise on_rule(*broken[0])
    return replace(base, **checked)
