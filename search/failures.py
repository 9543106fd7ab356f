"""Failures of the disk or the database under a run: found behind any exception, told in one line.

A full or read-only disk, or a database that fails mid-run, is not a bug to show as a traceback:
the runner, each worker and the objective (which hands the running trial back for a retry)
recognise it here and say which file or storage failed.
"""

from __future__ import annotations

import errno
import sys
import tempfile
import threading
from collections.abc import Iterable

from lightning_modules.errors import one_line
from search import sqlite_file
from search.redaction import clip

DISK_ERRORS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EFBIG})
EXIT_STORAGE_FAILED = 2  # the runner's and each worker's exit status after such a failure


def disk_failure(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_ERRORS


def storage_failure(error: BaseException) -> BaseException | None:
    """The database or disk failure behind `error`, if any: Optuna may re-raise such a failure
    as another exception while handling it, so the whole chain is searched."""
    database_errors: tuple[type[BaseException], ...] = ()
    if "sqlalchemy" in sys.modules:  # not imported yet: no database failure can be behind it
        from sqlalchemy.exc import SQLAlchemyError

        database_errors = (SQLAlchemyError,)
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, database_errors) or disk_failure(current):
            return current
        current = current.__cause__ or current.__context__
    return None


RECONNECT_PAUSES = (1, 2, 4, 8, 16)  # seconds before each retry of a worker that lost its database server
_LOST = ("server closed the connection", "terminating connection", "connection refused", "could not connect", "connection timed out",
         "connection already closed", "ssl connection has been closed", "the database system is",
         "can't reconnect until invalid transaction")  # the session after a failed rollback (optuna_compat.forget_broken_session)


def lost_connection(error: BaseException) -> BaseException | None:
    """The failure behind `error` when it is a database server's connection lost mid-query (a
    restart, a failover, an administrator's terminate): the server comes back, so a worker pauses
    and goes on (the objective has handed its trial back); anything else stays a failure."""
    cause = storage_failure(error)
    if cause is None or isinstance(cause, OSError):
        return None
    text = str(getattr(cause, "orig", None) or cause).lower()
    return cause if getattr(cause, "connection_invalidated", False) or any(words in text for words in _LOST) else None


def reconnect_pause(error: Exception, lost: int) -> float:
    """The pause before a worker's next attempt after `lost` (+1) connections lost in a row, told
    in one line; re-raises `error` when it is no lost connection, or once the server stayed away
    through every pause. One dropped connection stopped every worker of every machine."""
    cause = lost_connection(error)
    if cause is None or lost >= len(RECONNECT_PAUSES):
        raise error
    reason = clip(str(getattr(cause, "orig", None) or cause).strip().splitlines()[0], 120)
    print(f"note: lost the study's database connection ({reason}); trying again in {RECONNECT_PAUSES[lost]} s", file=sys.stderr, flush=True)
    return RECONNECT_PAUSES[lost]


def describe_storage_failure(cause: BaseException, secrets: Iterable[str] = (), during: str = "mid-run") -> str:
    """'cannot write /x/trial-3.ckpt (No space left on device)': for a copy or a rename, the
    file it was writing (the second name), not the temporary file it came from."""
    if isinstance(cause, OSError):
        verb = "cannot access" if cause.errno == errno.EACCES else "cannot write"  # a denied read, too
        named = cause.filename2 or cause.filename
        if named is None:  # Lightning writes a checkpoint through a temporary file first, and its error names no file
            return one_line(f"{verb} run state ({cause.strerror}; the run-state folder or the temporary folder, {tempfile.gettempdir()})")
        return one_line(f"{verb} {named} ({cause.strerror})")
    reason = clip(str(getattr(cause, "orig", None) or cause).strip().splitlines()[0], 200, secrets)
    if reason == "database is locked":  # SQLite's busy timeout ran out: someone else's lock, not a broken file
        return one_line(
            f"the study's SQLite database stayed locked by another process for {sqlite_file.SQLITE_BUSY_TIMEOUT_SECONDS} s ({reason}; "
            "a sqlite3 shell or a backup holding it?)"
        )
    return one_line(f"the study's storage failed {during} ({reason})")


def quiet_storage_failures_in_threads() -> None:
    """Optuna's heartbeat thread hits the same database failure as the main thread, which
    reports it in one line; the thread's traceback would only bury that line."""
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or storage_failure(args.exc_value) is None:
            default(args)

    threading.excepthook = hook
