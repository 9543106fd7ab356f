"""python -m search.dashboard: watch the study live in optuna-dashboard, artifacts included.

One command instead of remembering the storage URL and the artifact folder. It opens the study
database read-only (pass --allow-writes to edit notes or upload files in the page), and SQLite
in WAL mode lets it read while workers write, so opening it never blocks a running search. It
answers only requests addressed to the host it listens on (no DNS rebinding), listens on this
machine only unless told otherwise, and imports no torch, so it starts in a second or two.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from lightning_modules.errors import UserInputError
from search.options import OneLineParser
from search.paths import artifact_dir
from search.redaction import mask_known, redact

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class DashboardError(UserInputError):
    """The dashboard cannot start as asked (no database yet, port taken)."""


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    """The browser opens several connections at once; one thread each, none blocks Ctrl-C."""

    daemon_threads = True
    block_on_close = False


class _QuietHandler(WSGIRequestHandler):
    """No access log: the terminal shows the URL, then only errors."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m search.dashboard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default=None, help="storage URL (default: the SQLite file under storage/, or $MNIST_SEARCH_HOME)")
    parser.add_argument("--artifact-dir", type=Path, default=None, help="artifact folder (default: artifacts/ next to the default database)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--allow-writes", action="store_true", help="let the page save notes and upload files (default: read-only)")
    parser.add_argument("--allow-remote", action="store_true", help="required with a --host other than this machine's loopback")
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK and not args.allow_remote:
        parser.error(
            f"--host {args.host[:60]} makes the dashboard reachable from other machines, without a password; "
            "add --allow-remote if that is what you want, or use an SSH tunnel to 127.0.0.1"
        )
    return args


def allowed_hosts(host: str, port: int) -> set[str]:
    """Host headers this server answers: its own address and port, by name or number."""
    names = {host, *LOOPBACK} if host in LOOPBACK else {host}
    if host in ("0.0.0.0", "::"):
        names |= {socket.gethostname(), *LOOPBACK}
    return {f"{name}:{port}" for name in names} | {f"[{name}]:{port}" for name in names if ":" in name}


def host_guard(app: Callable[..., Iterable[bytes]], allowed: Callable[[], set[str]]) -> Callable[..., Iterable[bytes]]:
    """WSGI middleware that refuses any request whose Host header names another host: a page on
    another site that re-points its own name at 127.0.0.1 (DNS rebinding) cannot reach the study."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_HOST", "") not in allowed():
            start_response("421 Misdirected Request", [("Content-Type", "text/plain")])
            return [b"this dashboard answers only requests addressed to its own host and port\n"]
        return app(environ, start_response)

    return guarded


def bind_server(app: Any, host: str, port: int) -> WSGIServer:
    """Listen before printing anything, so a taken port is one clear error line."""
    try:
        return make_server(host, port, app, server_class=_ThreadedServer, handler_class=_QuietHandler)
    except socket.gaierror as error:
        raise DashboardError(f"cannot listen on {host}:{port} ({error.strerror}); pass --host an address of this machine") from None
    except (OSError, OverflowError) as error:
        reason = getattr(error, "strerror", None) or error
        raise DashboardError(f"cannot listen on {host}:{port} ({reason}); pass a free --port") from None


def server_url(server: WSGIServer, host: str) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{'[' + shown + ']' if ':' in shown else shown}:{server.server_address[1]}"


def study_urls(storage: Any, base_url: str) -> dict[str, str]:
    """Each study's page, so the user can open the one they care about directly."""
    from search.storage import study_names

    return {name: f"{base_url}/dashboard/studies/{storage.get_study_id_from_name(name)}" for name in study_names(storage)}


def serve(args: argparse.Namespace) -> int:
    from optuna_dashboard import wsgi

    from search.storage import (
        build_artifact_store,
        check_storage_url,
        open_existing_storage,
    )

    url = check_storage_url(args.storage)
    storage = open_existing_storage(url, read_only=not args.allow_writes)
    store = build_artifact_store(args.artifact_dir, create=False)
    bound: dict[str, set[str]] = {"hosts": set()}
    server = bind_server(host_guard(wsgi(storage, artifact_store=store), lambda: bound["hosts"]), args.host, args.port)
    bound["hosts"] = allowed_hosts(args.host, server.server_address[1])
    base = server_url(server, args.host)
    mode = "read-write" if args.allow_writes else "read-only"
    print(f"optuna-dashboard ({mode}) on {redact(url)}, artifacts in {args.artifact_dir or artifact_dir()}")
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}: anyone who can reach this machine's port {server.server_address[1]} can read the studies", file=sys.stderr)
    urls = study_urls(storage, base)
    for name, page in urls.items():
        print(f"  study {name!r}: {page}")
    if not urls:
        print("  no study yet: it is listed once python -m search.run has started")
    print(f"open {base}/dashboard   (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return serve(args)
    except UserInputError as error:
        print(f"error: {mask_known(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C is how a user stops it, even while it starts
        print("\ndashboard stopped", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
