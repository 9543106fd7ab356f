"""The dashboard's HTTP server: one thread per connection, at most MAX_CONNECTIONS of them, an idle
one closed after IDLE_SECONDS, IPv6 as well as IPv4, no access log and no tracebacks."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

MAX_CONNECTIONS = 256  # open at once; a browser uses about six
IDLE_SECONDS = 60  # a connection that sends nothing for this long is closed


class ThreadedServer(ThreadingMixIn, WSGIServer):
    """The browser opens several connections at once; one thread each, none blocks Ctrl-C.

    At most MAX_CONNECTIONS at a time (one more is closed at once): 3,000 idle connections held
    3,000 threads, and nothing bounded them short of the open-file limit."""

    daemon_threads = True
    block_on_close = False

    def server_activate(self) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """ThreadingMixIn's, with the slot given back before the socket is closed: after it, a
        client that saw its connection closed could find no slot free yet for its next one."""
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - socketserver's own contract: handle_error says what it is
            self.handle_error(request, client_address)
        finally:
            self.slots.release()
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver printed a traceback for any error in a connection: an idle one closed
        after IDLE_SECONDS (TimeoutError) or a client that hung up is routine and says nothing,
        anything else is one line (a failed request is web_guards' line already)."""
        error = sys.exc_info()[1]
        if isinstance(error, (TimeoutError, ConnectionError)):
            return
        print(f"dashboard: a connection from {client_address[0]} failed ({type(error).__name__}: {str(error)[:200]})", file=sys.stderr, flush=True)


class ThreadedServer6(ThreadedServer):
    """The same on an IPv6 address (--host ::1 or ::): WSGIServer's socket is IPv4 only.

    On `::` it also takes IPv4 (dual stack, as `python -m http.server` does) where the system
    allows, whatever its default (`net.ipv6.bindv6only`): "all interfaces" includes 127.0.0.1."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        if self.server_address[0] == "::":
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def server_class(host: str) -> type[ThreadedServer]:
    try:
        return ThreadedServer6 if ipaddress.ip_address(host).version == 6 else ThreadedServer
    except ValueError:  # a host name: resolved as IPv4, as before
        return ThreadedServer


class QuietHandler(WSGIRequestHandler):
    """No access log: the terminal shows the URL, then only errors. A connection silent for
    IDLE_SECONDS is closed (none was: each held its thread for ever)."""

    timeout = IDLE_SECONDS

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass
