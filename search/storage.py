"""Storage URLs -> Optuna storages and the artifact store; where run state lives on disk.

SQLite is the embedded default. Each storage gets heartbeats, so a trial whose process died
is failed and re-queued with the same parameters by the next worker that looks.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from lightning_modules.errors import UserInputError

HOME_ENV = "MNIST_SEARCH_HOME"
DB_NAME = "mnist-search.db"
HEARTBEAT_SECONDS = 5
GRACE_SECONDS = 20
SQLITE_BUSY_TIMEOUT_SECONDS = 60
SQLITE_WAL_ATTEMPTS = 10
MAX_RETRY = 3

T = TypeVar("T")


class StorageError(UserInputError):
    """A storage URL that is malformed, unreachable, or names a study that is not there."""


def runtime_dir() -> Path:
    """The folder for the default database, artifacts and exports (git-ignored `storage/`)."""
    return Path(os.environ.get(HOME_ENV, "storage")).expanduser().resolve()


def default_storage_url() -> str:
    return f"sqlite:///{runtime_dir() / DB_NAME}"


def artifact_dir() -> Path:
    return runtime_dir() / "artifacts"


def exports_dir() -> Path:
    return runtime_dir() / "exports"


def checkpoints_dir() -> Path:
    """Per-epoch checkpoints of running trials, kept until the trial finishes (for resume)."""
    return runtime_dir() / "checkpoints"


def redact(url: str) -> str:
    """The URL with any password replaced by ***, safe to print and to log."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable storage URL>"


def _sqlite_path(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _prepare_sqlite(path: Path) -> None:
    """WAL lets the dashboard read while workers write; set once, it stays with the file."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StorageError(
            f"SQLite database {path} is on a read-only file system or not writable; a study writes to it: "
            "make it writable, or copy it somewhere writable and pass that with --storage"
        )
    try:
        # Workers starting together on a new file race to switch it to WAL; the switch does not
        # wait on the busy timeout, so the losers retry and then find it done.
        _retry_lost_race(lambda: _switch_to_wal(path), lambda e: isinstance(e, sqlite3.OperationalError) and "locked" in str(e), SQLITE_WAL_ATTEMPTS)
    except sqlite3.Error as error:
        raise StorageError(f"SQLite database {path} cannot be opened ({error}); check the path and its permissions") from None


def _switch_to_wal(path: Path) -> None:
    with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_SECONDS) as connection:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode=WAL")


def _retry_lost_race(action: Callable[[], T], lost_race: Callable[[Exception], bool], attempts: int) -> T:
    """Run `action`, again after a short wait each time it fails because another worker opening
    the same new database got there first; any other failure, or the last one, propagates."""
    for attempt in range(attempts - 1):
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - re-raised unless `lost_race` says otherwise
            if not lost_race(error):
                raise
        time.sleep(0.1 * (attempt + 1))
    return action()


class StudyStorage(RDBStorage):
    """RDBStorage whose stale check also catches RUNNING trials that never wrote a heartbeat.

    Optuna only fails trials whose last heartbeat is old; a worker that died (or whose disk
    filled) before its first heartbeat would leave its trial RUNNING forever, and a resumed
    study would wait for it.
    """

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        from optuna.storages._rdb import models
        from optuna.trial import TrialState

        stale = super()._get_stale_trial_ids(study_id)
        grace = timedelta(seconds=self.grace_period or 2 * (self.heartbeat_interval or 1))
        now = datetime.now()
        with self.scoped_session() as session:
            running = session.query(models.TrialModel).filter(
                models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING
            )
            for trial in running:
                silent = not trial.heartbeats
                if silent and trial.datetime_start is not None and now - trial.datetime_start > grace:
                    stale.append(trial.trial_id)
        return sorted(set(stale))


def build_storage(
    url: str | None = None, heartbeat: bool = True, heartbeat_seconds: int = HEARTBEAT_SECONDS, grace_seconds: int = GRACE_SECONDS
) -> RDBStorage:
    """An RDB storage for `url` (default: the SQLite file), with heartbeats and retry of dead trials."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    url = url or default_storage_url()
    engine_kwargs: dict[str, object] = {}
    try:
        sqlite_path = _sqlite_path(url)
    except ArgumentError:
        raise StorageError(f"storage URL {redact(url)!s} is not a valid SQLAlchemy URL (e.g. sqlite:///path.db or postgresql://user@host/db)") from None
    if sqlite_path is not None:
        _prepare_sqlite(sqlite_path)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
    else:
        engine_kwargs["pool_pre_ping"] = True
    options: dict[str, object] = {}
    if heartbeat:
        options = dict(
            heartbeat_interval=heartbeat_seconds,
            grace_period=grace_seconds,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        )
    try:
        return _retry_lost_race(lambda: StudyStorage(url, engine_kwargs=engine_kwargs, **options), _lost_schema_race, SCHEMA_ATTEMPTS)
    except ImportError:
        raise StorageError(f"no database driver for {redact(url)}; for PostgreSQL install the extra: pip install -e '.[postgres]'") from None
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        for secret in _secrets(url):
            reason = reason.replace(secret, "***")
        raise StorageError(f"cannot open storage {redact(url)} ({reason}); check that the server is running and the URL is right") from None


# What a database says when another process created the same table, or stamped the same
# schema version, a moment earlier (SQLite's and PostgreSQL's wording).
_SCHEMA_RACE_MARKERS = ("already exists", "UNIQUE constraint failed", "duplicate key value")
SCHEMA_ATTEMPTS = 5


def _lost_schema_race(error: Exception) -> bool:
    """Optuna's "create the tables if missing" is not atomic across processes: the loser sees
    "table ... already exists" although the schema is now complete. Opening writes nothing but
    the schema, so a retry cannot duplicate anything."""
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(error, SQLAlchemyError) and any(marker in str(error) for marker in _SCHEMA_RACE_MARKERS)


def _secrets(url: str) -> list[str]:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except ArgumentError:
        return []
    return [str(password)] if password else []


def storage_passwords(words: list[str]) -> list[str]:
    """Passwords inside any URL among `words` (e.g. argv), to mask them in messages."""
    return [secret for word in words if "://" in word for secret in _secrets(word)]


def storage_guard(url: str) -> Callable[[], None]:
    """A check to run between trials: a SQLite file deleted or replaced under a running study
    would otherwise swallow every later trial into an unlinked inode, silently."""
    path = _sqlite_path(url)
    if path is None:
        return lambda: None
    inode = path.stat().st_ino

    def check() -> None:
        try:
            same = path.stat().st_ino == inode
        except FileNotFoundError:
            same = False
        if not same:
            raise StorageError(
                f"the database file {path} was deleted or replaced during the run; the trials it held went "
                "with it: restore it from a backup, or run again to start a new study there"
            )

    return check


def build_artifact_store(directory: Path | None = None) -> FileSystemArtifactStore:
    """The artifact store shared by the study's trials and optuna-dashboard."""
    directory = directory or artifact_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(directory))


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [summary.study_name for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load_existing_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Load a study that must exist; the error lists the ones that do."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = study_names(storage)
        listing = ", ".join(names) if names else "none"
        raise StorageError(f"no study named {name!r} in this storage (studies there: {listing}); pass --study-name") from None
