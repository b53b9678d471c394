"""Open, create, validate and repair the Optuna study that holds a search."""

from __future__ import annotations

import errno
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from ...errors import ConfigError, StorageError
from ..objectives import Objective
from .readonly import damaged, is_sqlite, sqlite_damage, sqlite_tables
from .schema import FORMAT, StudyAttr, TrialAttr
from .urls import engine_kwargs, rdb_url, redact, storage_error


def default_storage(study_name: str) -> str:
    """sqlite:///studies/<study_name>.db (relative to the working directory; the folder is created
    when the study is opened, after every check passed)."""
    return f"sqlite:///studies/{study_name}.db"


def make_storage(url: str) -> Any:
    """An Optuna storage for `url`. SQLite files get WAL journaling and synchronous=NORMAL: cheaper
    commits per trial, and the dashboard can read while a search writes."""
    if not url.startswith("sqlite:///"):
        if url.startswith("sqlite:"):
            return url
        return optuna.storages.RDBStorage(rdb_url(url), engine_kwargs=engine_kwargs(url))
    path = Path(url[len("sqlite:///") :])
    check_own_sqlite(url, path)
    check_folder(url, path)
    if not path.parent.exists():  # a studies/ folder (check_folder refused any other)
        path.parent.mkdir()
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})

    @event.listens_for(storage.engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    storage.engine.dispose()  # later connections get the pragmas
    return storage


def check_storage(url: str) -> None:
    """Before anything is created: an SQLite file a search would write into must be its own
    (check_own_sqlite), in a folder that exists (check_folder)."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :].split("?", 1)[0])
        check_own_sqlite(url, path)
        check_folder(url, path)


DEFAULT_FOLDER = Path("studies")  # default_storage's folder, relative to the working directory: created


def check_folder(url: str, path: Path) -> None:
    """The SQLite file's folder must exist and be a folder: a mistyped path is refused, never created
    (deep paths included). Only a `studies/` folder -- the default storage's, relative to the working
    directory or a config's folder -- is created, one level in an existing folder."""
    folder = path.parent
    if folder.is_dir():
        return
    if folder.exists() or any(p.exists() and not p.is_dir() for p in folder.parents):
        blocker = next(p for p in (folder, *folder.parents) if p.exists() and not p.is_dir())
        raise ConfigError(f"storage {url!r}: {blocker} is a file, not a folder; name a .db file in a folder.")
    if folder.name == DEFAULT_FOLDER.name and folder.parent.is_dir():  # studies/ (one level) beside a config
        return
    raise ConfigError(
        f"storage {url!r}: the folder {folder} does not exist; create it (mkdir -p {folder}) or name a .db "
        "file in an existing folder."
    )


def check_own_sqlite(url: str, path: Path) -> None:
    """An existing file a search would write into must be an SQLite database that is empty or already
    an Optuna storage: never another application's database, nor a file of another kind."""
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return
    if not path.is_file():
        raise ConfigError(f"storage {url!r}: {path} is not a regular file; name a .db file.")
    if not is_sqlite(path):
        raise ConfigError(
            f"storage {url!r}: {path} exists and is not an SQLite database; a search never writes "
            "into another file. Fix: name a new .db file."
        )
    why = sqlite_damage(path)
    if why is not None:
        raise damaged(url, str(path), why)
    tables = sqlite_tables(path)
    if tables and "studies" not in tables:
        raise ConfigError(
            f"storage {url!r}: {path} is another application's SQLite database (tables "
            f"{', '.join(sorted(tables)[:5])}); a search never adds Optuna's tables to it. Fix: name a "
            "new .db file."
        )


def open_study(
    storage: str,
    study_name: str,
    objectives: Sequence[Objective],
    sampler: optuna.samplers.BaseSampler,
    signature: dict[str, Any],
) -> tuple[optuna.Study, bool]:
    """Create the study or resume it. Resuming checks what Optuna does not: the objectives, their
    directions and the searched parameters must be those the study was created with."""
    url = storage
    try:
        storage = make_storage(url)
        existing = study_name in optuna.study.get_all_study_names(storage)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any storage failure: say which storage and why
        raise storage_error(url, exc) from None
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        sampler=sampler,
        load_if_exists=True,
        directions=[o.direction for o in objectives],
    )
    names = [o.name for o in objectives]
    if existing:
        attrs = study.user_attrs
        if attrs.get(StudyAttr.FORMAT) != FORMAT:
            raise ConfigError(
                f"study {study_name!r} in {redact(url)} was not created by autoshrink search; use another study_name."
            )
        stored = attrs.get(StudyAttr.OBJECTIVES)
        if stored != names or [d.name.lower() for d in study.directions] != [o.direction for o in objectives]:
            raise ConfigError(
                f"study {study_name!r} was created with objectives {stored}, not {names}; "
                "resume it with the same objectives, or use a new study_name."
            )
        old = attrs.get(StudyAttr.SIGNATURE, {})
        if old != signature:
            changed = sorted(k for k in set(old) | set(signature) if old.get(k) != signature.get(k))
            raise ConfigError(
                f"study {study_name!r} was created with a different search setup "
                f"(changed: {', '.join(changed[:8])}); resume with the same model, space and "
                "settings, or use a new study_name."
            )
    else:
        study.set_user_attr(StudyAttr.FORMAT, FORMAT)
        study.set_user_attr(StudyAttr.OBJECTIVES, names)
        study.set_user_attr(StudyAttr.SIGNATURE, signature)
        with warnings.catch_warnings():  # set_metric_names is marked experimental; it only labels axes
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.field for o in objectives])
    return study, not existing


def requeue_crashed(study: optuna.Study, crashed: Sequence[optuna.trial.FrozenTrial]) -> list[int]:
    """Trials left RUNNING by a dead driver (drivers.dead_running): tell them FAIL and enqueue their
    parameters again (with how they came to be: baseline, warm start). A crashed refine trial is not
    re-queued: the refine stage redoes every source that has no refined trial yet."""
    for t in crashed:
        # attributes can only be written while the trial is still RUNNING, so before the tell
        trial = optuna.trial.Trial(study, t._trial_id)
        refined = t.user_attrs.get(TrialAttr.REFINED_FROM) is not None
        trial.set_user_attr(
            TrialAttr.FAILURE,
            "the search process running this trial died; "
            + ("the refine stage runs it again" if refined else "its parameters were queued again"),
        )
        trial.set_user_attr(TrialAttr.CRASHED, True)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        if not refined:
            study.enqueue_trial(t.params, user_attrs=requeue_attrs(t, t.number), skip_if_exists=False)
    return [t.number for t in crashed]


def counted(study: optuna.Study) -> int:
    """Finished candidates that count towards n_trials: COMPLETE, PRUNED (screened out) and FAIL
    trials, except those re-queued after a crash and the refine stage's trials."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=states)
        if not t.user_attrs.get(TrialAttr.CRASHED) and t.user_attrs.get(TrialAttr.REFINED_FROM) is None
    )


def in_budget(study: optuna.Study) -> int:
    """What n_trials is spent on, over every driver: counted finished trials plus running candidate
    trials (not refine trials). One read of the study."""
    states = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.RUNNING,
    )
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=states)
        if t.user_attrs.get(TrialAttr.REFINED_FROM) is None
        and (t.state == optuna.trial.TrialState.RUNNING or not t.user_attrs.get(TrialAttr.CRASHED))
    )


REQUEUE_KEEP = (TrialAttr.BASELINE_POLICY, TrialAttr.WARM_START)


def requeue_attrs(trial: optuna.trial.Trial | optuna.trial.FrozenTrial, number: int) -> dict[str, Any]:
    """User attributes a re-queued trial keeps (how it came to be), plus retry_of."""
    return {**{k: trial.user_attrs[k] for k in REQUEUE_KEEP if k in trial.user_attrs}, TrialAttr.RETRY_OF: number}


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def storage_failure(exc: BaseException, url: str) -> StorageError | None:
    """A StorageError for `exc` when it is the storage failing under a running search -- a write the
    disk refused (full, over quota, an I/O error), a damaged file, the database server gone -- else
    None (a bug is not relabelled). What was told before stays in the study."""
    import sqlalchemy.exc as sa

    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    if isinstance(cause, OSError) and cause.errno in FULL_ERRNOS:
        text = cause.strerror or str(cause)
    elif isinstance(cause, sa.OperationalError) or type(cause) is sa.DatabaseError:
        text = str(getattr(cause, "orig", None) or cause)
    else:
        return None
    text = " ".join(text.split())[:200]
    full = any(w in text.lower() for w in ("full", "no space", "quota", "too large", "i/o error"))
    fix = (
        "free disk space (or move the study to a disk with room)"
        if full
        else ("check the disk and the file" if url.startswith("sqlite") else "check the database server")
    )
    return StorageError(
        f"storage {redact(url)}: the search could not write its study ({text}); the trials told before "
        f"are kept and the study stays readable. Fix: {fix}, then run the same search to resume."
    )
