"""An SQLite study file: what it holds before a search writes to it, its journal, its write lock.

Plain `sqlite3` and SQLAlchemy engine events, no Optuna import: `search/storage.py` turns a URL
into a storage and calls these on the file it names.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

SQLITE_BUSY_TIMEOUT_SECONDS = 60
# Tables every Optuna study database has: a database without them is not one.
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})
# Every table Optuna's RDB storage creates (Optuna 5; tests/test_optuna_compat.py checks the list
# against Optuna's own models). A file holding only some of them is a study database another
# process is creating right now.
OPTUNA_SCHEMA = OPTUNA_TABLES | frozenset({
    "study_directions", "study_user_attributes", "study_system_attributes", "trial_user_attributes",
    "trial_system_attributes", "trial_params", "trial_values", "trial_intermediate_values", "trial_heartbeats",
    "alembic_version",
})


def switch_to_wal(path: Path) -> None:
    """WAL lets the dashboard read while workers write; set once, it stays with the file."""
    with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_SECONDS) as connection:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode=WAL")


def foreign_tables(path: Path) -> list[str]:
    """The tables of an existing SQLite file that is not a study database (an application's
    database named by mistake), as `foreign_in` tells them."""
    return foreign_in(table_names(path))


def foreign_in(tables: set[str]) -> list[str]:
    """`tables` (a file's) when they are not a study database's, sorted; empty when there are
    none (a new, empty or non-SQLite file: the open that follows says so), when they are a study
    database's (Optuna's tables, with or without others) or one being created (only Optuna's
    tables so far)."""
    if OPTUNA_TABLES <= tables or tables <= OPTUNA_SCHEMA:
        return []
    return sorted(tables)


def table_names(path: Path, *, recover: bool = True) -> set[str]:
    """The tables of an SQLite file (none: missing, empty or not SQLite), SQLite's own left out.

    Read without writing first; a file the read-only open cannot read (a hot journal left by a
    crashed writer) is read on an ordinary connection, which only does SQLite's own recovery,
    unless `recover` is false (a read-only command: the error goes to the caller)."""
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    try:
        rows = _table_names(_read_only_uri(path), uri=True)
    except sqlite3.DatabaseError as error:
        if "not a database" in str(error):
            return set()
        if not recover:
            raise
        rows = _table_names(str(path), uri=False)
    return {name for name in rows if not name.startswith("sqlite_")}


def _read_only_uri(path: Path) -> str:
    """A read-only URI; `immutable=1` when no -wal or -journal lies beside the file, so the file
    alone is the database: a plain read-only open of a WAL file creates its -wal and -shm and,
    being read-only, cannot remove them, which would leave them beside another program's file.
    An immutable read assumes nobody writes meanwhile; a writer starting in that moment can make
    it fail (then read again on an ordinary connection) or miss that writer's change, which for
    the table list only matters while the file is being created."""
    real = path.resolve()  # SQLite keeps the -wal and -journal beside the file a symbolic link names
    uri = f"{real.as_uri()}?mode=ro"
    beside = [real.with_name(real.name + suffix) for suffix in ("-wal", "-journal")]
    return uri if any(p.exists() for p in beside) else uri + "&immutable=1"


def _table_names(database: str, *, uri: bool) -> list[str]:
    connection = sqlite3.connect(database, uri=uri, timeout=SQLITE_BUSY_TIMEOUT_SECONDS)
    try:
        return [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
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
