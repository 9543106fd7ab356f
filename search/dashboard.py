"""python -m search.dashboard: watch the study live in optuna-dashboard, artifacts included.

One command instead of remembering the storage URL and the artifact folder. It only reads the
storage unless you edit a note or upload a file in the page, and SQLite in WAL mode lets it
read while workers write, so opening it never blocks a running search. It imports no torch,
so it starts in a second or two.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from lightning_modules.errors import UserInputError
from search.cli import OneLineParser
from search.storage import (
    artifact_dir,
    build_artifact_store,
    build_storage,
    default_storage_url,
    redact,
    study_names,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


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
    parser = OneLineParser(prog="python -m search.dashboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default=None, help="storage URL (default: the SQLite file under storage/, or $MNIST_SEARCH_HOME)")
    parser.add_argument("--artifact-dir", type=Path, default=None, help="artifact folder (default: artifacts/ next to the default database)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    return parser.parse_args(argv)


def open_storage(url: str | None) -> optuna.storages.RDBStorage:
    """The study's storage, read-only in practice; a missing SQLite file is an error, not a new empty database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = url or default_storage_url()
    try:
        parsed = make_url(url)
    except ArgumentError:
        parsed = None  # build_storage reports the malformed URL
    if parsed is not None and parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise DashboardError(
                f"no study database at {parsed.database}; start a search first (python -m search.run) or pass --storage"
            )
    return build_storage(url, heartbeat=False)


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
    return f"http://{host}:{server.server_address[1]}"


def study_urls(storage: optuna.storages.BaseStorage, base_url: str) -> dict[str, str]:
    """Each study's page, so the user can open the one they care about directly."""
    return {name: f"{base_url}/dashboard/studies/{storage.get_study_id_from_name(name)}" for name in study_names(storage)}


def serve(storage_url: str | None, artifacts: Path | None, host: str, port: int) -> int:
    from optuna_dashboard import wsgi

    storage = open_storage(storage_url)
    store = build_artifact_store(artifacts)
    server = bind_server(wsgi(storage, artifact_store=store), host, port)
    base = server_url(server, host)
    print(f"optuna-dashboard on {redact(storage_url or default_storage_url())}, artifacts in {artifacts or artifact_dir()}")
    urls = study_urls(storage, base)
    for name, url in urls.items():
        print(f"  study {name!r}: {url}")
    if not urls:
        print("  no study yet: it is listed once python -m search.run has started")
    print(f"open {base}/dashboard   (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _fmt(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def study_note(study_name: str, summary: Mapping[str, Any]) -> str:
    """The Markdown note of a run: what it aimed at, what it found, where the export is.

    Keys (missing ones read "n/a"): target_accuracy (None = whole budget), budget, stopped,
    best_trial, classifier, val_accuracy, test_accuracy, export_dir. The names match
    export_study's metrics, so the runner can pass `{**metrics, "target_accuracy": ..., ...}`.
    """
    target = summary.get("target_accuracy")
    classifier = summary.get("classifier")
    best = f"trial {summary['best_trial']}" if summary.get("best_trial") is not None else "n/a"
    export_dir = summary.get("export_dir")
    lines = [
        f"## Run summary: study `{study_name}`",
        "",
        f"- **Target** validation accuracy: {_fmt(target) if target is not None else 'none (spend the whole budget)'}",
        f"- **Budget**: {summary.get('budget', 'n/a')} finished trials",
        f"- **Stopped**: {summary.get('stopped') or 'n/a'}",
        f"- **Best**: {best}{f' ({classifier})' if classifier else ''}",
        f"- **Best validation accuracy**: {_fmt(summary.get('val_accuracy'))}",
        f"- **Test accuracy** of the best trial: {_fmt(summary.get('test_accuracy'))}",
        f"- **Export folder**: {f'`{export_dir}`' if export_dir else 'none (export off)'}",
        "",
        "The best trial's Artifacts show its model file and the exported pictures; "
        "the Intermediate Values chart shows validation accuracy per epoch, where pruned trials stop early.",
    ]
    return "\n".join(lines) + "\n"


def write_study_note(study: optuna.Study, summary: Mapping[str, Any]) -> None:
    """Replace the study's dashboard note with the summary of the run that just ended."""
    from optuna_dashboard import save_note

    save_note(study, study_note(study.study_name, summary))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return serve(args.storage, args.artifact_dir, args.host, args.port)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C is how a user stops it, even while it starts
        print("\ndashboard stopped", file=sys.stderr)
        return 0


__all__ = ["DashboardError", "main", "study_note", "write_study_note"]

if __name__ == "__main__":
    sys.exit(main())
