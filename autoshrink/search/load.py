"""load_result: a finished (or running) search's SearchResult from storage alone, without the model."""

from __future__ import annotations

import optuna

from ..errors import ConfigError
from ..measure import Measurement
from .objectives import resolve
from .result import SearchResult
from .study.readonly import open_readonly
from .study.schema import FORMAT, StudyAttr


def load_result(study_name: str, storage: str | None = None) -> SearchResult:
    """Open study `study_name` in `storage` (default sqlite:///studies/<study_name>.db) for reading and
    return its SearchResult (baseline, trials, front, `best`, `recipe`). Nothing is written; a
    missing study is an error listing the studies that storage holds."""
    url = storage or f"sqlite:///studies/{study_name}.db"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        rdb = open_readonly(url)  # creates nothing: a foreign or empty file is refused untouched
        names = optuna.study.get_all_study_names(rdb)
        if study_name not in names:
            listed = ", ".join(map(repr, sorted(names))) or "none"
            raise ConfigError(
                f"storage {url!r} holds no study {study_name!r}; the studies there: {listed}. "
                "Fix: use one of those names, or pass the storage the search used."
            )
        study = optuna.load_study(study_name=study_name, storage=rdb)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any storage failure: say which storage and why
        raise ConfigError(f"storage {url!r}: cannot open it ({type(exc).__name__}: {exc}).") from None
    finally:
        optuna.logging.set_verbosity(verbosity)
    attrs = study.user_attrs
    if attrs.get(StudyAttr.FORMAT) != FORMAT or StudyAttr.OBJECTIVES not in attrs:
        raise ConfigError(f"study {study_name!r} in {url} was not created by autoshrink search; nothing to export.")
    if StudyAttr.BASELINE not in attrs:
        raise ConfigError(
            f"study {study_name!r} in {url} has no baseline measurement yet (the search stopped "
            "before measuring the untouched model); run the search again to resume it."
        )
    return SearchResult(
        study=study,
        baseline=Measurement.from_dict(attrs[StudyAttr.BASELINE]),
        max_accuracy_drop=attrs.get(StudyAttr.MAX_ACCURACY_DROP),
        max_latency_ms=attrs.get(StudyAttr.MAX_LATENCY_MS),
        objectives=resolve(attrs[StudyAttr.OBJECTIVES]),
        storage=url,
        timing=dict(attrs.get(StudyAttr.LAST_RUN) or {}),
    )
