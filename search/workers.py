"""Worker processes and stop signals: K spawned workers share one study and die with their parent.

The first Ctrl-C, SIGTERM or SIGHUP asks every worker for a clean stop at the next batch (its trial is
queued again and resumes from its last epoch); a second one ends everything at once. Workers
sit in their own process group, so a Ctrl-C at the terminal reaches the runner only and the
runner forwards exactly one request; each worker asks the kernel for a signal of its own
(PARENT_DIED) when its parent dies, so a killed runner never leaves workers racing the next run.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing
from multiprocessing import resource_tracker
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.5


PARENT_DIED = signal.SIGUSR2
"""The signal the kernel sends a worker when its runner dies: its own, not SIGTERM. The kernel
sends it again for each of the dying runner's threads the worker passes to, while getppid()
still names the runner, so a repeated SIGTERM could not be told from the "second Ctrl-C" and
the worker left mid-stop; a repeated PARENT_DIED is the same single stop request."""


STOP_REQUESTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SECOND_STOP = ("\nstopped at once (a second stop request): what was finished is saved; run the same command again "
               "(a trial it was training resumes from its last epoch once it is found stale)\n")


class StopRequest:
    """The first SIGINT/SIGTERM/SIGHUP sets `event` and runs the `on_first` hooks; a second one runs the
    `on_second` hooks and exits at once. In a worker (`parent_pid` given) PARENT_DIED is a stop
    request as SIGTERM is, however often it comes. `second` is what the command's own process says
    as it exits on the second (a search's words by default; an export trains no trial)."""

    def __init__(self, parent_pid: int | None = None, second: str = SECOND_STOP) -> None:
        self.parent_pid, self.second = parent_pid, second
        self.event = threading.Event()
        self.signum: int | None = None
        self.on_first: list[Callable[[int], None]] = []
        self.on_second: list[Callable[[int], None]] = []
        self._previous: dict[int, Any] = {}

    def install(self) -> StopRequest:
        """SIGHUP (the terminal or ssh session closed) too: it killed the run mid-trial, and each
        hang-up counted as a death of the trial; unless it is ignored (nohup: outlive the terminal)."""
        for signum in STOP_REQUESTS:
            if signum != signal.SIGHUP or signal.getsignal(signum) != signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._handle)
        if self.parent_pid is not None:
            self._previous[PARENT_DIED] = signal.signal(PARENT_DIED, self._parent_died)
        return self

    def uninstall(self) -> None:
        """Give the signals back to whoever had them (a test calling `main` in-process)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set():
            for hook in self.on_second:
                hook(signum)
            if self.parent_pid is None:  # the command's own process: it ended silently, with no word of what stays
                with contextlib.suppress(OSError):
                    os.write(2, self.second.encode())
            os._exit(128 + signum)
        self._first(signum)

    def request(self, signum: int) -> None:
        """A stop asked for without a signal (the run's output closed: `signum` SIGPIPE, its exit code)."""
        if not self.event.is_set():
            self._first(signum)

    def _parent_died(self, signum: int, frame: object) -> None:
        if not self.event.is_set():  # a repeat: the stop the runner's death asked for is under way
            self._first(signal.SIGTERM)

    def _first(self, signum: int) -> None:
        self.signum = signum
        self.event.set()
        for hook in self.on_first:
            hook(signum)

    def add_first(self, hook: Callable[[int], None]) -> None:
        """Run `hook` on the first signal, or now if it already came."""
        self.on_first.append(hook)
        if self.event.is_set():
            hook(self.signum or signal.SIGINT)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for PARENT_DIED when the parent dies (Linux), and leave now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, PARENT_DIED, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's exit hooks are all there is
        pass
    if os.getppid() != parent_pid:
        os._exit(128 + signal.SIGTERM)


STOP_SIGNALS = {*STOP_REQUESTS, PARENT_DIED}  # blocked in a worker until its handlers are in place


def answered(code: int) -> int:
    """`code`; from here on a stop signal ends the process with it. The command has answered: a
    Ctrl-C in the interpreter's teardown (about a second with torch loaded) turned a finished run
    or export into exit 130 after its last line of success. Until the exit hooks a stop signal
    ends the process at once (a thread that hangs must still end on Ctrl-C or a supervisor's
    SIGTERM); from the exit hooks on it is ignored, since the interpreter resets a Python handler
    to the default (death by the signal) before it tears the modules down, but leaves an ignored
    signal ignored."""
    for stream in (sys.stdout, sys.stderr):  # os._exit flushes nothing
        try:
            stream.flush()
        except (OSError, ValueError):
            pass

    def leave(signum: int, frame: object) -> None:
        os._exit(code)

    for signum in STOP_SIGNALS:
        signal.signal(signum, leave)
    atexit.register(lambda: [signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS])  # runs first: registered last
    return code


def worker_main(target: Callable[..., None], parent_pid: int, args: tuple[Any, ...]) -> None:
    """Entry point of a spawned worker: its own process group, tied to its parent, then `target`.

    The worker starts with the stop signals blocked (inherited from `WorkerPool.run`): a Ctrl-C
    that reached it while the interpreter was still starting waits until the handler is in
    place, and then is a stop request like any other rather than a KeyboardInterrupt traceback.
    """
    os.setpgid(0, 0)  # Ctrl-C reaches the runner only; it forwards exactly one stop request
    stop = StopRequest(parent_pid).install()
    die_with_parent(parent_pid)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    target(stop, *args)


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in os.environ for the moment a worker is spawned, then as before: the child's
    interpreter starts with them, before any import of its could start CUDA."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class WorkerPool:
    """K spawned processes running `target(stop, *args, index)`; signals relayed, ends reported.

    `environments` gives each worker extra environment variables (a GPU worker's CUDA_VISIBLE_DEVICES).
    """

    def __init__(
        self, target: Callable[..., None], args: tuple[Any, ...], workers: int, stop: StopRequest,
        environments: Sequence[Mapping[str, str]] = (),
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.processes = [
            context.Process(target=worker_main, args=(target, os.getpid(), (*args, index)), daemon=False)
            for index in range(workers)
        ]
        self.environments = list(environments) or [{} for _ in range(workers)]
        if len(self.environments) != workers:
            raise ValueError(f"{len(self.environments)} environments for {workers} workers")
        self.stop = stop

    def _signal_all(self, signum: int) -> None:
        for process in self.processes:
            if process.pid is not None and process.is_alive():
                try:
                    os.kill(process.pid, signum)
                except ProcessLookupError:
                    pass

    def _suspend(self, signum: int, frame: object) -> None:
        """Ctrl-Z: the workers, in their own process group, never got it and trained on while the job
        read "Stopped"; they stop with the runner, and go on with it (fg, bg)."""
        self._signal_all(signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # the runner stops here until SIGCONT
        signal.signal(signal.SIGTSTP, self._suspend)
        self._signal_all(signal.SIGCONT)

    def run(self, on_poll: Callable[[], None]) -> list[int]:
        """Start every worker, call `on_poll` until all have ended; returns their exit codes."""
        self.stop.on_second.append(lambda _: self._signal_all(signal.SIGKILL))
        try:
            # Children inherit the blocked mask across exec; here the signals stay pending, not lost.
            # The resource tracker first: starting it unblocks SIGINT and SIGTERM again on its way out.
            resource_tracker.ensure_running()
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                for process, values in zip(self.processes, self.environments):
                    with environment(values):
                        process.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            # Relay SIGTERM whatever came: a worker whose handler is in place stops at its next
            # batch; one still starting holds it until its handler is.
            self.stop.add_first(lambda _: self._signal_all(signal.SIGTERM))  # a request during start-up too
            suspend_before = signal.signal(signal.SIGTSTP, self._suspend)
            try:
                while any(p.is_alive() for p in self.processes):
                    on_poll()
                    time.sleep(POLL_SECONDS)
            finally:
                signal.signal(signal.SIGTSTP, suspend_before)
        except BaseException:
            self._signal_all(signal.SIGKILL)
            raise
        for process in self.processes:
            process.join()
        return [int(p.exitcode if p.exitcode is not None else -1) for p in self.processes]


def describe_exit_codes(codes: list[int]) -> str:
    """'2 of 4 workers died (killed by SIGKILL, exit code 1)'; 'all 2 workers exited' when none died."""
    bad = [c for c in codes if c != 0]
    if not bad:
        return f"all {len(codes)} workers exited"
    words = [f"killed by {signal.Signals(-c).name}" if c < 0 and -c in signal.valid_signals() else f"exit code {c}" for c in bad]
    return f"{len(bad)} of {len(codes)} workers died ({', '.join(sorted(set(words)))})"


def flush_std() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
