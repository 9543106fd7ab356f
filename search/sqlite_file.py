"""An SQLite study file: what it holds before a search writes to it, its journal, its write lock.

Plain `sqlite3` and SQLAlchemy engine events, no Optuna: `search/storage.py` turns a URL into a
storage and calls these on the file it names.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

SQLITE_BUSY_TIMEOUT_SECONDS = 60
# Tables every Optuna study database has: a database without them is not one.
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})


def switch_to_wal(path: Path) -> None:
    """WAL lets the dashboard read while workers write; set once, it stays with the file."""
    with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_SECONDS) as connection:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode=WAL")


def foreign_tables(path: Path) -> list[str]:
    """The tables of an existing SQLite file that holds no Optuna study but other tables (an
    application's database named by mistake), read without writing; empty when the file is new,
    empty, a study database, or cannot be read this way (the open that follows reports that)."""
    if not path.is_file() or path.stat().st_size == 0:
        return []
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_SECONDS)
        try:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        finally:
            connection.close()
    except sqlite3.Error:
        return []
    tables = sorted(name for (name,) in rows if not name.startswith("sqlite_"))
    return [] if OPTUNA_TABLES & set(tables) else tables


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
