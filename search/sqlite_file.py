"""An SQLite study file: what it holds before a search writes to it, its journal, its write lock.

Plain `sqlite3` and SQLAlchemy engine events, no Optuna import: `search/storage.py` turns a URL
into a storage and calls these on the file it names.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.paths import DB_NAME, nearest_existing
from search.storage_url import StorageError

SQLITE_BUSY_TIMEOUT_SECONDS = 60
# A write lock held longer than this when a search opens the file is another program's (a
# sqlite3 shell, a backup): a search's own writes hold it for milliseconds.
LOCK_NOTICE_SECONDS = 2.0
# Tables every Optuna study database has: a database without them is not one.
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})
# Every table Optuna's RDB storage creates, with its key column (Optuna 5;
# tests/test_optuna_compat.py checks both against Optuna's own models). A file holding only
# some of them is a study database another process is creating right now; a table with one of
# these names but without its key column is an application's (`trials(id, patient, outcome)`).
OPTUNA_KEYS = {
    "studies": "study_id", "trials": "trial_id", "version_info": "version_info_id", "study_directions": "study_direction_id",
    "study_user_attributes": "study_user_attribute_id", "study_system_attributes": "study_system_attribute_id",
    "trial_user_attributes": "trial_user_attribute_id", "trial_system_attributes": "trial_system_attribute_id",
    "trial_params": "param_id", "trial_values": "trial_value_id", "trial_intermediate_values": "trial_intermediate_value_id",
    "trial_heartbeats": "trial_heartbeat_id", "alembic_version": "version_num",
}
OPTUNA_SCHEMA = frozenset(OPTUNA_KEYS)


@dataclass(frozen=True)
class Schema:
    """What a database holds, as far as telling a study database from an application's goes."""

    tables: dict[str, frozenset[str]] = field(default_factory=dict)  # name -> its columns
    others: tuple[str, ...] = ()  # views and triggers ("view totals"): Optuna makes none
    user_version: int = 0  # an application's schema mark (PRAGMA user_version); Optuna sets none

    @property
    def names(self) -> set[str]:
        return set(self.tables)


def check_location(path: Path, *, content: bool = True) -> None:
    """StorageError unless `path` can be a study file: absent (with a folder on the way this
    process can make it in), empty, or (with `content`) an SQLite database. A folder, a file of
    another kind or a file where a folder should be were found only after the data was loaded,
    some as tracebacks. A symbolic link is judged by where it points (SQLite makes a missing
    target). One `stat`: workers starting together make the file between any two looks."""
    path = Path(os.path.realpath(path))
    try:
        mode, size = (info := path.stat()).st_mode, info.st_size
    except (FileNotFoundError, NotADirectoryError):  # absent, or below a file: the folder check names it
        mode = size = None
    except OSError:
        return  # unreadable: the open names it
    if mode is not None and stat.S_ISDIR(mode):
        raise StorageError(  # the folder may be the default database's place (MNIST_SEARCH_HOME): moving it is a fix too
            f"SQLite database {path} is a folder; move the folder aside, or pass a file's path with --storage (e.g. {path / DB_NAME})"
        )
    if mode is not None and not stat.S_ISREG(mode):
        raise StorageError(f"SQLite database {path} is not a regular file; pass another path with --storage")
    if mode is not None:
        if content and size and not is_sqlite(path):
            raise StorageError(f"{path} is not an SQLite database (a file of another kind); pass another path with --storage")
        return
    folder = nearest_existing(path.parent)
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        why = "is not a folder" if not folder.is_dir() else "is not writable here"
        raise StorageError(f"{folder} {why}, so SQLite database {path} cannot be made there; pass another path with --storage")


def is_sqlite(path: Path) -> bool:
    """Whether SQLite reads `path` as a database (an unreadable one counts: its open names the
    problem). Asked through SQLite, never with open(): closing any descriptor of the file drops
    every POSIX lock this process holds on it, SQLite connections' included, and a reader in
    another process then took itself for the last one and deleted the -wal and -shm under a
    running search ("disk I/O error")."""
    try:
        connection = sqlite3.connect(_read_only_uri(path), uri=True, timeout=SQLITE_BUSY_TIMEOUT_SECONDS)
        try:
            connection.execute("PRAGMA schema_version").fetchone()
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        return "not a database" not in str(error)
    return True


def writable(path: Path) -> bool:
    """Whether this user can write the SQLite file and beside it (its -wal, -shm and -journal);
    False on a read-only file system too."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def locked_by_another(path: Path, wait: float = LOCK_NOTICE_SECONDS) -> bool:
    """Whether another connection holds the file's write lock for over `wait` seconds: the open
    that follows then waits up to the busy timeout without a word, so the caller says why first.
    A missing file is not locked; one SQLite cannot read is left to the open, which names it."""
    if not path.is_file():
        return False
    try:
        connection = sqlite3.connect(path, timeout=wait, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.OperationalError as error:
        return "locked" in str(error)
    except sqlite3.DatabaseError:
        return False
    return False


def foreign_file(path: Path, foreign: list[str]) -> StorageError:
    """Refused before anything is written to it: a search would otherwise add its tables to
    someone else's database (and switch it to WAL)."""
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    return StorageError(
        f"SQLite database {path} holds another application's tables ({shown}) and no Optuna study; a search adds its tables only to "
        "a new file or a study database: pass another path with --storage"
    )


def switch_to_wal(path: Path) -> None:
    """WAL lets the dashboard read while workers write; set once, it stays with the file."""
    with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_SECONDS) as connection:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode=WAL")


def foreign_tables(path: Path) -> list[str]:
    """What an existing SQLite file that is not a study database (an application's database
    named by mistake) holds, as `foreign_in` tells it."""
    return foreign_in(read_schema(path))


def foreign_in(schema: Schema) -> list[str]:
    """What makes `schema` (a database's) another application's, sorted: its tables, views and
    triggers; empty when it is a study database (Optuna's tables, with or without others) or one
    being created (only some of Optuna's tables so far, nothing else), or new or empty. A table
    named as one of Optuna's but without its key column, anything but tables, or a schema
    version, make it an application's unless it already holds a whole study database."""
    borrowed = bool(borrowed_names(schema))
    if OPTUNA_TABLES <= schema.names and not borrowed:
        return []
    if schema.names <= OPTUNA_SCHEMA and not (borrowed or schema.others or schema.user_version):
        return []
    version = [f"user_version {schema.user_version}"] if schema.user_version else []
    return sorted(schema.names) + sorted(schema.others) + version


def borrowed_names(schema: Schema) -> list[str]:
    """Tables named as one of Optuna's but without its key column: Optuna would take them for its
    own, skip creating them, and fail at the first trial."""
    return sorted(name for name, columns in schema.tables.items() if name in OPTUNA_KEYS and OPTUNA_KEYS[name] not in columns)


def read_schema(path: Path, *, recover: bool = True) -> Schema:
    """The schema of an SQLite file (empty: missing, empty or not SQLite), SQLite's own tables left out.

    Read without writing first; a file the read-only open cannot read (a hot journal left by a
    crashed writer) is read on an ordinary connection, which only does SQLite's own recovery,
    unless `recover` is false (a read-only command: the error goes to the caller)."""
    if not path.is_file() or path.stat().st_size == 0:
        return Schema()
    try:
        return _read_schema(_read_only_uri(path), uri=True)
    except sqlite3.DatabaseError as error:
        if "not a database" in str(error):
            return Schema()
        if not recover:
            raise
        return _read_schema(str(path), uri=False)


def _read_only_uri(path: Path) -> str:
    """A read-only URI; `immutable=1` when no -wal or -journal lies beside the file, so the file
    alone is the database: a plain read-only open of a WAL file creates its -wal and -shm and,
    being read-only, cannot remove them, which would leave them beside another program's file.
    An immutable read assumes nobody writes meanwhile; a writer starting in that moment can make
    it fail (then read again on an ordinary connection) or miss that writer's change, which for
    the table list only matters while the file is being created."""
    real = path.resolve()  # SQLite keeps the -wal and -journal beside the file a symbolic link names
    uri = f"{real.as_uri()}?mode=ro"
    return uri if writer_files_beside(real) else uri + "&immutable=1"


def writer_files_beside(real: Path) -> bool:
    """Whether a -wal or -journal lies beside the (resolved) file: a writer's work in progress,
    without which the file alone is the whole database and can be read as immutable."""
    return any(real.with_name(real.name + suffix).exists() for suffix in ("-wal", "-journal"))


def _read_schema(database: str, *, uri: bool) -> Schema:
    connection = sqlite3.connect(database, uri=uri, timeout=SQLITE_BUSY_TIMEOUT_SECONDS)
    try:
        rows = connection.execute("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view', 'trigger')").fetchall()
        tables = {
            name: frozenset(column for (_, column, *_) in connection.execute("SELECT * FROM pragma_table_info(?)", (name,)))
            for kind, name in rows if kind == "table" and not name.startswith("sqlite_")
        }
        others = tuple(f"{kind} {name}" for kind, name in rows if kind != "table")
        return Schema(tables, others, connection.execute("PRAGMA user_version").fetchone()[0])
    finally:
        connection.close()


def serialise_writers(engine: Any) -> None:
    """Every transaction of this engine takes SQLite's write lock when it begins (BEGIN IMMEDIATE).

    pysqlite runs a SELECT outside any transaction and opens one only at the next write, so
    Optuna's "read the waiting trial, then mark it running" could succeed in two processes at
    once: both trained the same queued trial (the baseline, a retry) and one crashed telling it.
    SQLAlchemy's documented recipe for pysqlite: let the driver begin nothing, begin here.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners were added would begin the old way
