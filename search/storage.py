"""Storage URLs -> Optuna storages.

SQLite is the embedded default; PostgreSQL (psycopg 3, the driver SQLAlchemy 2.1 picks for
`postgresql://`) scales out. A URL is checked (`check_storage_url`, search/storage_url.py)
before anything is imported or opened. The runner opens a storage to write
(`open_study_storage`: creates the SQLite file, switches it to WAL, adds heartbeats); export,
dashboard and benchmarks open an existing one (`open_existing_storage`): they never create a
file, a folder or a table, and the dashboard's connection is read-only.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from search import sqlite_file
from search.redaction import clip, message_secrets, redact
from search.storage_url import StorageError, check_storage_url, driver_hint, sqlite_path

POSTGRES_CONNECT_TIMEOUT_SECONDS = 10  # a host that never answers is an error, not a hang (libpq waits for ever)
SQLITE_WAL_ATTEMPTS = 10
SCHEMA_ATTEMPTS = 5
# What a database says when another process created the same table, or stamped the same
# schema version, a moment earlier (SQLite's and PostgreSQL's wording).
_SCHEMA_RACE_MARKERS = ("already exists", "UNIQUE constraint failed", "duplicate key value")

T = TypeVar("T")


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


def refuse_a_foreign_sqlite_file(url: str) -> None:
    """StorageError if the URL names a path a search cannot keep a study in (a folder, a file of
    another kind, another application's database, a folder it cannot make): for the runner to
    answer before it loads any data (opening the storage checks again). A file it cannot read
    here (on a read-only disk, a WAL file without its -shm cannot be opened) is left to that
    open, which names the problem."""
    path = sqlite_path(url)
    if path is None:
        return
    sqlite_file.check_location(path)
    try:
        foreign = sqlite_file.foreign_tables(path)
    except sqlite3.Error:
        return
    if foreign:
        raise sqlite_file.foreign_file(path, foreign)


def _prepare_sqlite(path: Path) -> set[str]:
    """Check the file a search will write to, and switch a new one to WAL (set once, it stays
    with the file; WAL lets the dashboard read while workers write). Returns the tables the file
    holds: a study database is switched only once Optuna has accepted its schema version
    (`_switch_to_wal` after the open), so a refused file stays byte for byte as it was. A file
    that holds another application's tables is refused first (`sqlite_file.foreign_file`); a file
    of another kind fails the schema read below."""
    sqlite_file.check_location(path, content=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"cannot make the folder of SQLite database {path} ({error.strerror}); pass another path with --storage") from None
    if not sqlite_file.writable(path):
        raise StorageError(
            f"SQLite database {path} is on a read-only file system or not writable; a study writes to it: "
            "make it writable, or copy it somewhere writable and pass that with --storage"
        )
    schema = _sqlite_schema(path)
    foreign = sqlite_file.foreign_in(schema)
    if foreign:
        raise sqlite_file.foreign_file(path, foreign)
    if sqlite_file.locked_by_another(path):
        print(
            f"note: another program holds the write lock on {path} (a sqlite3 shell, a backup?); "
            f"waiting up to {sqlite_file.SQLITE_BUSY_TIMEOUT_SECONDS} s for it",
            file=sys.stderr, flush=True,
        )
    if not sqlite_file.OPTUNA_TABLES <= schema.names:
        _switch_to_wal(path)
    return schema.names


def _sqlite_tables(path: Path, *, recover: bool = True) -> set[str]:
    return _sqlite_schema(path, recover=recover).names


def _sqlite_schema(path: Path, *, recover: bool = True) -> sqlite_file.Schema:
    try:
        return sqlite_file.read_schema(path, recover=recover)
    except sqlite3.Error as error:
        raise StorageError(f"SQLite database {path} cannot be read ({error}); check the path and its permissions") from None


def _switch_to_wal(path: Path) -> None:
    try:
        # Workers starting together on a new file race to switch it to WAL; the switch does not
        # wait on the busy timeout, so the losers retry and then find it done.
        _retry_lost_race(lambda: sqlite_file.switch_to_wal(path), lambda e: isinstance(e, sqlite3.OperationalError) and "locked" in str(e), SQLITE_WAL_ATTEMPTS)
    except sqlite3.Error as error:
        raise StorageError(f"SQLite database {path} cannot be opened ({error}); check the path and its permissions") from None


def _lost_schema_race(error: Exception) -> bool:
    """Optuna's "create the tables if missing" is not atomic across processes: the loser sees
    "table ... already exists" although the schema is now complete. Opening writes nothing but
    the schema, so a retry cannot duplicate anything."""
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(error, SQLAlchemyError) and any(marker in str(error) for marker in _SCHEMA_RACE_MARKERS)


def _open(url: str, build: Callable[[], T]) -> T:
    """Run `build` (an RDBStorage constructor), turning driver and connection failures into one line."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return _retry_lost_race(build, _lost_schema_race, SCHEMA_ATTEMPTS)
    except StorageInternalError as error:  # Optuna's wrapper of a failed commit (e.g. a read-only database) or read
        cause = error.__cause__
        reason = clip(str(getattr(cause, "orig", None) or cause or error).strip().splitlines()[0], 200, message_secrets(url))
        hint = "the file is damaged: restore it from a backup" if "malformed" in reason else "check that this user can write beside it"
        raise StorageError(f"cannot open storage {redact(url)} ({reason}); {hint}") from None
    except ImportError as error:
        module = error.name or getattr(error.__cause__, "name", None)  # Optuna wraps the driver's ImportError
        if module is None:
            raise StorageError(f"no database driver for {redact(url)} ({error}); install the driver its URL names") from None
        raise StorageError(f"no database driver for {redact(url)} (module {module!r} is missing); {driver_hint(module)}") from None
    except SQLAlchemyError as error:
        reason = clip(str(getattr(error, "orig", None) or error).strip().splitlines()[0], 200, message_secrets(url))
        hint = "check that the server is running and the URL is right"
        if url.startswith("sqlite"):  # no server: the file's disk or folder is what failed
            hint = "free space on its disk" if "full" in reason else "check the path, its permissions and its disk"
        raise StorageError(f"cannot open storage {redact(url)} ({reason}); {hint}") from None
    except RuntimeError as error:  # Optuna's schema check: another Optuna version's tables
        reason = clip(str(error).strip().splitlines()[0], 300, message_secrets(url)) if str(error).strip() else type(error).__name__
        raise StorageError(f"cannot open storage {redact(url)}: {reason} (back the database up first)") from None


def checked_read(url: str, read: Callable[[], T]) -> T:
    """A first read of an opened storage (the dashboard's study list), failing in one line as an
    open does: an SQLite file damaged past its first pages opens, then failed with a traceback."""
    return _open(url, read)


def _server_connect_args(url: str) -> dict[str, object]:
    """Driver arguments every connection to a database server gets: PostgreSQL's connect timeout."""
    return {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS} if url.startswith("postgresql") else {}


def _server_tables(url: str, engine_kwargs: dict[str, object]) -> set[str]:
    return _server_schema(url, engine_kwargs).names


def _server_schema(url: str, engine_kwargs: dict[str, object]) -> sqlite_file.Schema:
    """The tables of a database server's database, in the schema Optuna would create its own in;
    the columns of those named as Optuna's (the others' do not matter: a server database is
    often shared with other applications' tables)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        inspector = sqlalchemy.inspect(engine)
        return sqlite_file.Schema({
            name: frozenset(column["name"] for column in inspector.get_columns(name)) if name in sqlite_file.OPTUNA_KEYS else frozenset()
            for name in inspector.get_table_names()
        })
    finally:
        engine.dispose()


def open_study_storage(url: str | None, *, heartbeat_seconds: int, grace_seconds: int, on_stale: Callable[..., None] | None = None):  # noqa: ANN201
    """The storage a search writes to (an RDBStorage), with heartbeats, `on_stale` called for a
    trial whose heartbeat stopped (the trial loop's retry, search.resume: given, not imported, as
    the storage lies before the objective); creates a SQLite file (and its folder) if missing."""
    from search.optuna_compat import SilentTrialAwareStorage

    url = check_storage_url(url)
    engine_kwargs: dict[str, object] = {"pool_pre_ping": True, "connect_args": _server_connect_args(url)}
    path = sqlite_path(url)
    if path is not None:
        tables = _prepare_sqlite(path)
        engine_kwargs = {"connect_args": {"timeout": sqlite_file.SQLITE_BUSY_TIMEOUT_SECONDS}}
    else:
        schema = _open(url, lambda: _server_schema(url, engine_kwargs))
        if borrowed := sqlite_file.borrowed_names(schema):
            raise StorageError(
                f"database {redact(url)} holds tables named as Optuna's that are another application's ({', '.join(borrowed[:5])}); "
                "a search cannot add its own beside them: pass another database with --storage"
            )
        tables = schema.names
    existing = sqlite_file.OPTUNA_TABLES <= tables

    def build(create: bool) -> SilentTrialAwareStorage:
        return SilentTrialAwareStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_seconds, grace_period=grace_seconds,
            heartbeat_stale_trial_callback=on_stale, skip_table_creation=not create,
        )

    # A study database is opened as it is: Optuna's schema check refuses another version's untouched.
    storage = _open(url, lambda: build(create=not existing))
    if existing and not sqlite_file.OPTUNA_SCHEMA <= tables:  # its version, with tables a creation cut short left out
        storage.engine.dispose()
        storage = _open(url, lambda: build(create=True))
    if path is not None:
        if existing:
            _switch_to_wal(path)
        sqlite_file.serialise_writers(storage.engine)
    return storage


def open_existing_storage(url: str | None, *, read_only: bool = False, flag: str = "--storage", one_read: bool = False):  # noqa: ANN201 - RDBStorage
    """A storage that must already hold Optuna's tables: never creates a file, folder or table,
    never changes the journal mode; `read_only` refuses every write at the database. `flag` is
    the option the user named it with, for the error that says what to pass instead. `one_read`
    (a warm start's read, done at once): a SQLite file with no writer's -wal or -journal beside
    it is read as the whole database, where a read-only connection of a WAL file would create
    its -wal and -shm and, being read-only, leave them beside it (a dashboard, which must see a
    run that starts later, cannot read that way)."""
    from optuna.storages import RDBStorage

    url = check_storage_url(url)
    path = sqlite_path(url)
    engine_kwargs: dict[str, object] = {"pool_pre_ping": True, "connect_args": _server_connect_args(url)}
    open_url = url
    if path is not None:
        if not path.is_file():
            if path.exists():  # a folder, a device, a pipe: "no study database" sent the user looking for a missing file
                raise StorageError(f"{path} is not a regular file, so not a study database; pass {flag} the database file a search wrote")
            raise StorageError(f"no study database at {path}; start a search first (python -m search.run) or pass {flag}")
        if path.stat().st_size and not sqlite_file.is_sqlite(path):  # a damaged header read as "no studies table"
            raise StorageError(f"{path} is not an SQLite database (a file of another kind, or one damaged); pass {flag} a study database")
        engine_kwargs = {"connect_args": {"timeout": sqlite_file.SQLITE_BUSY_TIMEOUT_SECONDS}}
        real = path.resolve()
        writable = sqlite_file.writable(real)
        if read_only:
            # A WAL file with no writer, where this user cannot create its -shm (a read-only disk,
            # another user's folder), is read as it is; the -shm was a traceback for every reader.
            quiet = (one_read or not writable) and not sqlite_file.writer_files_beside(real)
            open_url = f"sqlite:///file:{real}?mode=ro&uri=true" + ("&immutable=1" if quiet else "")
        elif not writable:
            raise StorageError(
                f"SQLite database {path} is on a read-only file system or not writable, and this command writes to it "
                f"(an export links its files to the best trial): copy it somewhere writable and pass that with {flag}"
            )
    elif read_only and url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {**_server_connect_args(url), "options": "-c default_transaction_read_only=on"}
    _open(url, lambda: _require_optuna_tables(path, open_url, engine_kwargs, url, flag, recover=not read_only))
    return _open(url, lambda: RDBStorage(open_url, engine_kwargs=engine_kwargs, skip_table_creation=True))


def _require_optuna_tables(
    path: Path | None, open_url: str, engine_kwargs: dict[str, object], url: str, flag: str, *, recover: bool
) -> None:
    """Refuse a database without Optuna's tables before Optuna reads (or writes) it. An SQLite
    file is read as `search/sqlite_file.py` reads it, leaving nothing beside another program's file
    (and, unless `recover`, never rolling back a journal a crashed writer left: a read-only command)."""
    tables = _sqlite_tables(path, recover=recover) if path is not None else _server_tables(open_url, engine_kwargs)
    if not sqlite_file.OPTUNA_TABLES <= tables:
        raise StorageError(f"{redact(url)} is not an Optuna study database (no studies table); pass the {flag} a search wrote")


def storage_guard(url: str) -> Callable[[], None]:
    """A check to run between trials: a SQLite file deleted or replaced under a running study
    would otherwise swallow every later trial into an unlinked inode, silently."""
    path = sqlite_path(url)
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
                f"the database file {path} was deleted or replaced during the run, which stopped rather than write where no one "
                "reads; what it wrote since may be missing from the file there now: check it, restore it from a backup if need be, "
                "and run again (a new study if the file is gone)"
            )

    return check
