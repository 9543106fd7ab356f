"""python -m search.dashboard: watch the study live in optuna-dashboard, artifacts included.

One command instead of remembering the storage URL and the artifact store (by default the one
the studies recorded: a shared folder or s3://bucket/prefix, else artifacts/ under
$MNIST_SEARCH_HOME). It is read-only unless given --allow-writes: it opens the study database
read-only and refuses every request other than GET and HEAD (so the page can neither edit notes
nor upload or delete artifacts), and SQLite in WAL mode lets it read while workers write, so
opening it never blocks a running search. It answers only requests addressed to the host it
listens on (no DNS rebinding; name more with --allowed-host), listens on this machine only
unless told otherwise, and imports no torch, so it starts in a second or two.
"""

from __future__ import annotations

from search.console import OutputGuard, quiet_interrupt_while_starting, starting_done

if __name__ == "__main__":
    quiet_interrupt_while_starting("dashboard stopped", 0)  # as a Ctrl-C once it serves

import argparse
import errno
import ipaddress
import re
import socket
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from lightning_modules.errors import UserInputError, error_line
from search.options import OneLineParser, add_artifact_store_flag
from search.paths import DEFAULT_DB
from search.redaction import clip, mask_known, redact
from search.web_guards import host_guard, read_only_guard, tolerant
from search.web_server import QuietHandler, server_class

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
LOOPBACK = ("127.0.0.1", "localhost", "::1")
UNSPECIFIED = ("0.0.0.0", "::")  # every address of this machine: no one name or number to answer to
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]{0,251}[a-z0-9_])?", re.IGNORECASE)


class DashboardError(UserInputError):
    """The dashboard cannot start as asked (no database yet, port taken)."""


def host_name(value: str) -> str:
    """An --allowed-host value: a host name or an IP address (IPv6 with or without brackets), no port."""
    name = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(name))  # the form a browser writes in the Host header
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"expected a host name or IP address without a port, got {clip(value, 60)!r}")
    return name.lower()


def port_number(value: str) -> int:
    """A --port value, checked before the storage is opened (the bind was the first to refuse it)."""
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {clip(value, 20)!r}")
    return port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m search.dashboard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default=None, help=f"storage URL (default: {DEFAULT_DB})")
    add_artifact_store_flag(parser, "show artifacts from")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument(
        "--allow-writes", action="store_true",
        help="let the page save notes and upload or delete artifacts (default: read-only, only GET and HEAD answered)",
    )
    parser.add_argument("--allow-remote", action="store_true", help="required with a --host other than this machine's loopback")
    parser.add_argument(
        "--allowed-host", action="append", type=host_name, default=[], metavar="NAME",
        help="also answer requests addressed to this host name or IP address (repeatable); "
        "e.g. the machine's IP with --host 0.0.0.0, which otherwise answers only to its host name",
    )
    args = parser.parse_args(argv)
    if args.storage is not None and not args.storage.strip():  # it opened the default database, as if --storage were left out
        parser.error("--storage is empty; give a storage URL, or leave --storage out for the default database")
    if args.host.startswith("[") and args.host.endswith("]"):  # a URL's form: no address to bind, yet called "reachable from other machines"
        parser.error(f"--host {clip(args.host, 60)}: write an IPv6 address without its brackets (--host {clip(args.host[1:-1], 58)})")
    if not is_loopback(args.host) and not args.allow_remote:
        parser.error(
            f"--host {clip(args.host, 60)} makes the dashboard reachable from other machines, without a password; "
            "add --allow-remote if that is what you want, or use an SSH tunnel to 127.0.0.1"
        )
    return args


def is_loopback(host: str) -> bool:
    """This machine only: localhost in any case, or any loopback address however written
    (127.0.0.2, ::1 in full, 127.1 as the resolver reads it). Exact strings called 127.0.0.2, and
    ipaddress alone 127.1, reachable from other machines."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        return ipaddress.ip_address(socket.inet_aton(host)).is_loopback  # the short forms the server's bind takes
    except OSError:
        return False


def allowed_hosts(host: str, port: int, bound: str = "", extra: Iterable[str] = ()) -> set[str]:
    """Host headers this server answers, in lower case: its own address and port, by name or
    number, the address it bound when that is a concrete IP (--host gave a name), and each of
    `extra` (--allowed-host)."""
    names = {host, *LOOPBACK} if host in LOOPBACK else {host}
    if host in UNSPECIFIED:
        names |= {socket.gethostname(), *LOOPBACK}
    if bound and bound not in UNSPECIFIED:
        names.add(bound)
    names = {name.lower() for name in (*names, *extra) if name}
    hosts = {f"{name}:{port}" for name in names} | {f"[{name}]:{port}" for name in names if ":" in name}
    if port == 80:  # a browser leaves the default port out of the Host header
        hosts |= {f"[{name}]" if ":" in name else name for name in names}
    return hosts


def bind_server(app: Any, host: str, port: int) -> WSGIServer:
    """Listen before printing anything, so a taken port is one clear error line."""
    try:
        return make_server(host, port, app, server_class=server_class(host), handler_class=QuietHandler)
    except socket.gaierror as error:
        raise DashboardError(f"cannot listen on {host}:{port} ({error.strerror}); pass --host an address of this machine") from None
    except (OSError, OverflowError) as error:
        reason = getattr(error, "strerror", None) or error
        raise DashboardError(f"cannot listen on {host}:{port} ({reason}); {_bind_fix(getattr(error, 'errno', None))}") from None


def _bind_fix(code: int | None) -> str:
    """The advice for a refused bind, by its errno: "pass a free --port" was given for an address
    this machine does not have too (--host 10.255.255.1 --allow-remote), where no port would do."""
    if code == errno.EADDRNOTAVAIL:
        return "pass --host an address of this machine (or 0.0.0.0 for all of them)"
    if code in (errno.EACCES, errno.EPERM):
        return "pass a --port of 1024 or more (lower ones need privileges)"
    return "pass a free --port"


def takes_ipv4(server: WSGIServer) -> bool:
    """Whether an IPv6 socket bound to `::` also answers on 127.0.0.1 (dual stack)."""
    return server.socket.family != socket.AF_INET6 or not server.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)


def server_url(server: WSGIServer, host: str) -> str:
    """The URL to print: on all interfaces, the loopback address the socket answers on."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "127.0.0.1" if takes_ipv4(server) else "::1"}.get(host, host)
    return f"http://{'[' + shown + ']' if ':' in shown else shown}:{server.server_address[1]}"


def study_urls(storage: Any, url: str, base_url: str) -> dict[str, str]:
    """Each study's page, so the user can open the one they care about directly."""
    from search.storage import checked_read
    from search.studies import study_names

    return checked_read(url, lambda: {
        name: f"{base_url}/dashboard/studies/{storage.get_study_id_from_name(name)}" for name in study_names(storage)
    })


@dataclass
class Dashboard:
    """A dashboard bound to its port and not yet serving: `serve` runs it, tests call its app."""

    server: WSGIServer
    storage: Any
    url: str
    base: str
    artifacts: str = ""  # the artifact store's location


def open_dashboard(args: argparse.Namespace) -> Dashboard:
    """Open the storage and the artifact folder and listen; read-only unless --allow-writes."""
    from search.artifact_stores import check_location, open_store, storage_location
    from search.storage import check_storage_url, checked_read, open_existing_storage

    url = check_storage_url(args.storage)
    given = check_location(args.artifact_store, writable=args.allow_writes) if args.artifact_store is not None else None
    from optuna_dashboard import wsgi

    # what Optuna warns while it computes a page (an importance on few trials) is no one's to act on here
    warnings.filterwarnings("ignore", module=r"optuna(\.|$)")
    storage = open_existing_storage(url, read_only=not args.allow_writes)
    location = given or checked_read(url, lambda: storage_location(storage))  # its first read: a damaged file fails here
    store = open_store(location, create=False, writable=args.allow_writes)
    app = tolerant(wsgi(storage, artifact_store=store))
    if not args.allow_writes:
        app = read_only_guard(app)
    hosts: set[str] = set()  # filled once the port is known (--port 0 picks one)
    server = bind_server(host_guard(app, lambda: hosts), args.host, args.port)
    hosts |= allowed_hosts(args.host, server.server_address[1], str(server.server_address[0]), args.allowed_host)
    return Dashboard(server, storage, url, server_url(server, args.host), str(location))


def serve(args: argparse.Namespace) -> int:
    board = open_dashboard(args)
    port = board.server.server_address[1]
    try:
        urls = study_urls(board.storage, board.url, board.base)  # first: a damaged file fails before the banner
        mode = "read-write" if args.allow_writes else "read-only"
        print(f"optuna-dashboard ({mode}) on {redact(board.url)}, artifacts in {board.artifacts}")
        if not is_loopback(args.host):
            print(f"warning: listening on {args.host}: anyone who can reach this machine's port {port} can read the studies", file=sys.stderr)
        if args.host in UNSPECIFIED and not args.allowed_host:
            hint = f"open it as http://{socket.gethostname()}:{port}; add --allowed-host to use an IP address"
            print(f"note: from other machines {hint}", file=sys.stderr)
        for name, page in urls.items():
            print(f"  study {name!r}: {page}")
        if not urls:
            print("  no study yet: it is listed once python -m search.run has started")
        print(f"open {board.base}/dashboard   (Ctrl-C to stop)", flush=True)
        board.server.serve_forever()
    finally:
        board.server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    guard = OutputGuard().install()  # `| head -1` exited: it serves on, its console to /dev/null
    try:
        starting_done()
        return serve(args)
    except UserInputError as error:
        print(f"error: {error_line(mask_known(str(error)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C is how a user stops it, even while it starts
        print("\ndashboard stopped", file=sys.stderr)
        return 0
    finally:
        guard.uninstall()


if __name__ == "__main__":
    sys.exit(main())
