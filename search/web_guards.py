"""WSGI middleware in front of optuna-dashboard: what a request must be before the app sees it,
and what the terminal shows when the app fails on one.

Separate from `search/dashboard.py` (the command: flags, storage, server), so each guard is a
small function a test can call on a plain WSGI app.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from lightning_modules.errors import one_line

READ_METHODS = frozenset({"GET", "HEAD"})
READ_ONLY_REFUSAL = b"this dashboard is read-only: restart it with --allow-writes to save notes or upload or delete artifacts\n"
MAX_DISCARDED_BODY = 64 << 20  # bytes read and dropped before a refusal; a larger upload is cut off
MAX_SHOWN_PATH = 100  # characters of a request's path in the line a failed request prints

WsgiApp = Callable[..., Iterable[bytes]]
_requests = threading.local()  # the request each server thread handles, for a failure logged without it


def host_guard(app: WsgiApp, allowed: Callable[[], set[str]]) -> WsgiApp:
    """WSGI middleware that refuses any request whose Host header names another host: a page on
    another site that re-points its own name at 127.0.0.1 (DNS rebinding) cannot reach the study."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_HOST", "").lower() not in allowed():
            start_response("421 Misdirected Request", [("Content-Type", "text/plain")])
            return [b"this dashboard answers only requests addressed to its own host and port\n"]
        return app(environ, start_response)

    return guarded


def read_only_guard(app: WsgiApp) -> WsgiApp:
    """WSGI middleware that answers every method but GET and HEAD with 405 before optuna-dashboard
    sees it. The database is opened read-only, but the artifact folder is a plain folder: without
    this, DELETE removed an artifact's file and POST wrote an orphan one before the database
    refused the matching record (a 500 with a traceback)."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # an allow-list, exact: "delete" in lower case, which bottle routes as DELETE, is refused too
        if environ.get("REQUEST_METHOD", "GET") in READ_METHODS:
            return app(environ, start_response)
        _discard_body(environ)
        start_response("405 Method Not Allowed", [
            ("Content-Type", "text/plain; charset=utf-8"), ("Allow", "GET, HEAD"), ("Content-Length", str(len(READ_ONLY_REFUSAL))),
        ])
        return [READ_ONLY_REFUSAL]

    return guarded


def _discard_body(environ: dict[str, Any]) -> None:
    """Read what the client sent before refusing it: a connection closed on unread bytes is reset,
    and the client would see a network error instead of the refusal."""
    try:
        left = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    if left > MAX_DISCARDED_BODY:
        return
    while left > 0:
        chunk = environ["wsgi.input"].read(min(left, 1 << 16))
        if not chunk:
            return
        left -= len(chunk)


class _OneLineErrors:
    """The app's error stream for one request: the traceback bottle writes when the app fails
    (a request without Accept-Encoding, an artifact id past SQLite's integers, a bad query
    value) becomes one line naming the request, so whoever can reach the port cannot fill the
    terminal with pages of traceback, and a real failure is still seen."""

    def __init__(self, environ: dict[str, Any], out: TextIO) -> None:
        self.request = f"{environ.get('REQUEST_METHOD', '?')} {environ.get('PATH_INFO', '')[:MAX_SHOWN_PATH]}"
        self.out = out

    def write(self, text: str) -> None:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        if lines:
            print(f"dashboard: {one_line(self.request)} failed ({one_line(lines[-1].strip())[:200]})", file=self.out, flush=True)

    def flush(self) -> None:
        self.out.flush()


class _OneLineLog(logging.Handler):
    """optuna-dashboard's API views log a failure with its traceback inside the message (bottle's
    error stream never sees it), and Python's last-resort handler printed it whole: a 9-line
    traceback per `?after=abc` anyone could send. One line here, naming this thread's request."""

    def __init__(self, out: TextIO | None) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        lines = [line.strip() for line in record.getMessage().splitlines() if line.strip()]
        reason = (lines[0] if lines else record.levelname).removeprefix("Exception: ")
        request = getattr(_requests, "current", "a request")
        print(f"dashboard: {one_line(request)} failed ({one_line(reason)[:200]})", file=self.out or sys.stderr, flush=True)


def tolerant(app: WsgiApp, out: TextIO | None = None) -> WsgiApp:
    """WSGI middleware: a header optuna-dashboard reads without a default (Accept-Encoding: every
    request from curl or a health check failed with a KeyError) is given an empty one, and the
    app's failures are one line each, whether bottle writes them (`_OneLineErrors`) or
    optuna-dashboard logs them (`_OneLineLog`, on its logger for this process)."""
    logger = logging.getLogger("optuna_dashboard")
    logger.handlers[:], logger.propagate = [_OneLineLog(out)], False

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ.setdefault("HTTP_ACCEPT_ENCODING", "")
        environ["wsgi.errors"] = errors = _OneLineErrors(environ, out or sys.stderr)
        _requests.current = errors.request
        return app(environ, start_response)

    return wrapped
