"""The console streams: an output whose reader has gone (`python -m search.run | head -1`, once
`head` exits) is told to the command once, not raised from whichever print came next.

Python ignores SIGPIPE and raises BrokenPipeError from the write instead: a search piped into
`head` ended in a traceback from its progress bar, and with `--workers 2` the pool's clean-up
then killed both workers mid-trial (their trials left running, later counted as deaths). The
run takes the closed output as a stop request (its trials queued again, exit 141 as a SIGPIPE
death would be); a command with little left to do (export, predict, dashboard) goes on writing
to /dev/null.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TextIO


def _closed_pipe(error: OSError) -> bool:
    """A pipe whose reader left, or a terminal that hung up (EIO: the ssh session or window closed)."""
    return isinstance(error, BrokenPipeError) or error.errno in (errno.EPIPE, errno.ECONNRESET, errno.EIO)


class GuardedStream:
    """`stream` whose writes and flushes to a closed pipe call `on_closed` once, then go to
    /dev/null (the interpreter's own last flush included: it printed "Exception ignored")."""

    def __init__(self, stream: TextIO, on_closed: Callable[[], None]) -> None:
        self.stream, self.on_closed, self.gone = stream, on_closed, False

    def _lost(self) -> None:
        if self.gone:
            return
        self.gone = True
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.stream.fileno())  # what the stream still buffers drains there
            os.close(null)
        except (OSError, ValueError, AttributeError):  # no descriptor (a test's capture): writes are dropped below
            pass
        self.on_closed()

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self.stream.write(text)
            except OSError as error:
                if not _closed_pipe(error):
                    raise
                self._lost()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except OSError as error:
                if not _closed_pipe(error):
                    raise
                self._lost()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the stream's own
        return getattr(self.stream, name)


class OutputGuard:
    """sys.stdout and sys.stderr guarded while a command runs (`on_closed` once, whichever closed
    first); `uninstall` puts back what was there (a test calling `main` in-process)."""

    def __init__(self, on_closed: Callable[[], None] = lambda: None) -> None:
        self.on_closed, self.called, self._previous = on_closed, False, (sys.stdout, sys.stderr)

    def _once(self) -> None:
        if not self.called:
            self.called = True
            self.on_closed()

    def install(self) -> OutputGuard:
        self._previous = (sys.stdout, sys.stderr)
        sys.stdout = GuardedStream(sys.stdout, self._once)  # type: ignore[assignment]
        sys.stderr = GuardedStream(sys.stderr, self._once)  # type: ignore[assignment]
        return self

    def uninstall(self) -> None:
        """Flush first: output to a pipe is block-buffered, and what is left would fail in the
        interpreter's own last flush ("Exception ignored ... BrokenPipeError", exit 120)."""
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, GuardedStream):
                stream.flush()
        sys.stdout, sys.stderr = self._previous


_STARTING_STOP = ["stopped before it started; nothing was done", 130]  # what a Ctrl-C while starting says, and its exit code


def _stopped_while_starting(signum: int, frame: object) -> None:
    print(f"\n{_STARTING_STOP[0]}", file=sys.stderr)
    raise SystemExit(_STARTING_STOP[1])


def quiet_interrupt_while_starting(said: str = "stopped before it started; nothing was done", code: int = 130) -> None:
    """Ctrl-C while a command's modules load (0.4-0.6 s, before its main takes SIGINT over): one
    line (`said`) and exit `code` (the dashboard's: its own line and 0, as a Ctrl-C later), not a
    KeyboardInterrupt traceback from whichever module was loading. Only where SIGINT has Python's
    default handler (not where the shell ignores it: `cmd &`)."""
    _STARTING_STOP[:] = [said, code]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _stopped_while_starting)


def starting_done() -> None:
    """The command's main is in its try: Ctrl-C is its own again (KeyboardInterrupt, or its stop handler)."""
    if signal.getsignal(signal.SIGINT) is _stopped_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
