"""Storage URLs, checked before anything is imported or opened: the one study database a URL
names (SQLite file or database server), with its password escaped and remembered for masking.

Separate from `search/storage.py`, which opens what a URL names; `StorageError`, the one-line
error of both, lives here and is imported from either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote

from lightning_modules.errors import UserInputError, check_path_length, expand_home, has_control_character
from search.paths import default_storage_url
from search.redaction import normalise_url, redact, remember_secrets
from search.settings import MAX_URL_LENGTH

BACKENDS = ("sqlite", "postgresql", "mysql")


class StorageError(UserInputError):
    """A storage URL that is malformed, unreachable, or names a study that is not there."""


def check_storage_url(url: str | None) -> str:
    """The URL to use (the default when None), with its password escaped and an SQLite path's
    leading `~` written out; StorageError if it cannot name a persistent study database, or any
    part of it holds a control character. Imports SQLAlchemy only."""
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
    _refuse_control_characters(parsed, url)
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise StorageError(f"storage URL {redact(url)}: {backend!r} is not a database Optuna stores studies in ({example})")
    _check_driver(parsed, url)
    if backend != "sqlite":
        _refuse_hidden_credentials(parsed, url)
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise StorageError(f"storage URL {redact(url)}: port {parsed.port} is outside 1-65535")
    return _check_sqlite(parsed, url) if backend == "sqlite" else url


def _refuse_control_characters(parsed: Any, url: str) -> None:
    """StorageError if any part of the URL, as the driver gets it (percent-decoded), holds a
    control character: libpq cut the conninfo at a NUL in the password (`x%00`), dropped the
    port after it and connected to 5432 while the console said port 1; a line break in a SQLite
    path split the 'created study ... in ...' line. The URL is shown redacted, as every URL is;
    the error line escapes the character itself."""
    parts = {"user": parsed.username, "password": parsed.password, "host": unquote(parsed.host or "")}
    parts["path" if parsed.get_backend_name() == "sqlite" else "database"] = parsed.database
    for key, value in parsed.query.items():  # a value given twice is a tuple
        named = f"query parameter {key[:40]!r}" if key.isprintable() else "a query parameter's name"
        parts[named] = key + "".join(value if isinstance(value, tuple) else (value,))
    parts["text"] = url  # a raw one where no part holds it
    bad = next((part for part, text in parts.items() if text and has_control_character(text)), None)
    if bad is not None:
        raise StorageError(f"storage URL {redact(url)}: its {bad} holds a control character (NUL, line break, ...); remove it")


def _refuse_hidden_credentials(parsed: Any, url: str) -> None:
    """StorageError for a server URL whose user or password sits where it would not be masked or
    would reach the server as a name: a libpq string in the query (`?dsn=`, `?conninfo=`: its
    password was printed and stored with the settings), or `user:pw@host` in the database name
    (`postgresql:///u:pw@h/db`, a slash too many: it went to the local socket, whose log kept it)."""
    given = next((key for key in parsed.query if key.lower() in ("dsn", "conninfo")), None)
    if given is not None:
        raise StorageError(f"storage URL {redact(url)}: a connection string in ?{given}= is not supported; write it as "
                           "postgresql://user@host:5432/db, the password in PGPASSWORD or ~/.pgpass")
    database = url.partition("://")[2].partition("/")[2].partition("?")[0]  # as typed: `my%40db` is a database named my@db
    if "@" in database:
        raise StorageError(f"storage URL {redact(url)}: its database name holds an '@', as user:password@host after one slash too "
                           "many does; a server URL is postgresql://user@host:5432/db")


def _check_sqlite(parsed: Any, url: str) -> str:
    """The URL of a study file, with a leading `~` of its path made the home folder (as
    MNIST_SEARCH_HOME, --data-dir and --artifact-store are; SQLite made a folder named `~` in the
    current one): StorageError for a URL that names no file. `sqlite://tmp/x.db` names the host
    `tmp`, which SQLite has no use for: SQLAlchemy refused it only once the search had made `./x.db`."""
    if parsed.host or parsed.username or parsed.password is not None or parsed.port is not None:
        raise StorageError(
            f"storage URL {redact(url)} names a host, user, password or port, and an SQLite database is a file: "
            "an absolute path takes four slashes (sqlite:////tmp/x.db), a relative one three (sqlite:///x.db)"
        )
    database = parsed.database or ""
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        raise StorageError("an in-memory SQLite database loses every trial when the process ends; use sqlite:///path/to/file.db")
    check_path_length(database, "the SQLite path")
    if parsed.query or database.startswith("file:"):  # ?mode=ro&uri=true put the study in a file named "a.db?mode=ro"
        raise StorageError(
            f"storage URL {redact(url)}: SQLite options in the URL (?{'&'.join(parsed.query)[:80]} or file:) are not supported; "
            "pass the plain path, e.g. sqlite:///runs/study.db"
        )
    if not database.startswith("~"):
        return url
    try:
        return parsed.set(database=str(expand_home(database, "the SQLite path"))).render_as_string(hide_password=False)  # re-quoted: %3F stays
    except UserInputError as error:
        raise StorageError(str(error)) from None


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
    """The file of a SQLite URL, or None for any other database; a leading `~` is the home folder."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    try:
        return Path(parsed.database).expanduser()  # as check_storage_url wrote it out
    except RuntimeError:  # no such user: check_storage_url refuses it
        return Path(parsed.database)
