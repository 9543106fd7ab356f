"""Storage URLs, checked before anything is imported or opened: the one study database a URL
names (SQLite file or database server), with its password escaped and remembered for masking.

Separate from `search/storage.py`, which opens what a URL names; `StorageError`, the one-line
error of both, lives here and is imported from either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_modules.errors import UserInputError, check_path_length
from search.paths import default_storage_url
from search.redaction import normalise_url, redact, remember_secrets
from search.settings import MAX_URL_LENGTH

BACKENDS = ("sqlite", "postgresql", "mysql")


class StorageError(UserInputError):
    """A storage URL that is malformed, unreachable, or names a study that is not there."""


def check_storage_url(url: str | None) -> str:
    """The URL to use (the default when None), with its password escaped; StorageError if it
    cannot name a persistent study database. Imports SQLAlchemy only."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if url is not None and len(url) > MAX_URL_LENGTH:  # bounded before it is read, masked or quoted
        raise StorageError(f"the storage URL is {len(url):,} characters long; a storage URL may have at most {MAX_URL_LENGTH:,}")
    url = normalise_url(url or default_storage_url())
    remember_secrets(url)
    example = "e.g. sqlite:///path.db or postgresql://user@host/db"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"storage URL {redact(url)} is not a valid SQLAlchemy URL ({example})") from None
    except ValueError:
        raise StorageError(f"storage URL {redact(url)} has a port that is not a number ({example})") from None
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise StorageError(f"storage URL {redact(url)}: {backend!r} is not a database Optuna stores studies in ({example})")
    _check_driver(parsed, url)
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise StorageError(f"storage URL {redact(url)}: port {parsed.port} is outside 1-65535")
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
            raise StorageError("an in-memory SQLite database loses every trial when the process ends; use sqlite:///path/to/file.db")
        if "\x00" in database:
            raise StorageError("the SQLite path contains a NUL byte; pass a real file path")
        check_path_length(database, "the SQLite path")
        if parsed.query or database.startswith("file:"):  # ?mode=ro&uri=true put the study in a file named "a.db?mode=ro"
            raise StorageError(
                f"storage URL {redact(url)}: SQLite options in the URL (?{'&'.join(parsed.query)[:80]} or file:) are not supported; "
                "pass the plain path, e.g. sqlite:///runs/study.db"
            )
    return url


def driver_hint(module: str) -> str:
    """How to install a missing database driver."""
    return "pip install -e '.[postgres]'" if module.startswith("psycopg") and module != "psycopg2" else f"pip install the package that provides {module!r}"


def _check_driver(parsed: Any, url: str) -> None:
    """The URL's driver exists, is installed and is not an asyncio one (Optuna's storage is
    synchronous): found here, before a SQLite file and its folders were made for a driver that
    was then missing, or an async driver printed "coroutine ... was never awaited"."""
    from sqlalchemy.exc import NoSuchModuleError

    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise StorageError(f"storage URL {redact(url)}: SQLAlchemy knows no driver {parsed.drivername!r}; e.g. postgresql:// or sqlite:///") from None
    if getattr(dialect, "is_async", False):
        raise StorageError(
            f"storage URL {redact(url)}: {parsed.drivername!r} is an asyncio driver, and Optuna's storage is synchronous; "
            f"pass {parsed.get_backend_name()}:// instead"
        )
    try:
        dialect.import_dbapi()
    except ImportError as error:
        module = error.name or parsed.get_driver_name()
        raise StorageError(f"no database driver for {redact(url)} (module {module!r} is missing); {driver_hint(module)}") from None


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, or None for any other database."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)
