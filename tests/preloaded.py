"""`python -m search.run ARGV` as a real process that starts with torch and Lightning imported.

A test that kills or signals a search, or runs one beside itself, needs a process of its own, but
not a fresh interpreter: every `python -m search.run` spends 5-8 s of CPU importing torch and
Lightning before it does anything, and on the 2-core CI machine that was most of what such a test
cost. Here one forkserver per pytest process imports them once (multiprocessing's forkserver
with preloaded modules), and each run is forked from it: a process with its own pid, storage
connections, signal handlers and exit status, killed for real, from the same `search.run.main`
the command line calls.

What a fork of a warm interpreter cannot check stays a `subprocess` running `python -m`: what a
command imports before it answers (`test_input_errors_answer_before_torch_is_imported`), a
signal while the interpreter starts, a worker pool's runner (its workers are spawned by the
product, which is what those tests check), the benchmark and GPU-check scripts, and how a
command ends: a forked run leaves through multiprocessing's bootstrap (`os._exit` after joining
its threads), so no atexit hook and no interpreter finalization runs, where shutdown noise or an
abort would show. `test_tiny_run_then_resume_to_a_larger_budget` (a clean end with an export) and
`test_postgres_restart_mid_run` (an error end while the storage is down) keep `python -m`.

A run a test leaves behind (a failed assertion before its kill) is killed when the test ends
(`kill_started_during`, an autouse fixture in conftest.py) and at exit: multiprocessing's own
exit hook would otherwise wait for it without a limit.
"""

from __future__ import annotations

import atexit
import io
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Self

# What a search run imports on its way to training and exporting: imported once per pytest process.
# A module missing here is imported by the run itself, as on the command line (slower, not different).
PRELOAD = [
    "lightning.pytorch", "search.run", "search.settings_file", "search.storage", "search.data", "search.artifact_stores",
    "search.warm_start", "search.trial_loop", "search.objective", "search.export.exporter",
]

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)
_started: set[SearchProcess] = set()  # every run, until it is known to have ended


def _text_stream(fd: int) -> io.TextIOWrapper:
    """A text stream on `fd` that writes through, as `PYTHONUNBUFFERED=1` gives a subprocess."""
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True)


def _search_process(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str, new_session: bool) -> None:
    """Body of the forked process: the command line's environment, streams and folder, then
    `search.run.main(argv)` and its exit code. What the forkserver fixed at its start and a new
    interpreter would not have is reset: multiprocessing's start method and the temp folder."""
    if new_session:
        os.setsid()
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout, sys.stderr = _text_stream(1), _text_stream(2)
    os.environ.clear()
    os.environ.update(env)
    multiprocessing.set_start_method(None, force=True)  # the platform's default, as in `python -m`
    tempfile.tempdir = None  # read again from this environment's TMPDIR
    os.chdir(cwd)
    sys.argv = [str(Path(cwd) / "search" / "run.py"), *argv]
    from search.run import main

    sys.exit(main(argv))


class SearchProcess:
    """The part of `subprocess.Popen` the tests use, for a search forked from the preloaded server.

    Its output goes to two files in `logs`, `NAME.out` and `NAME.err` (files, not pipes: a chatty
    run never blocks on a full pipe); `communicate` reads them once the process has ended."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], logs: Path, name: str = "search", *, cwd: Path | None = None,
        new_session: bool = False,
    ) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = logs / f"{name}.out", logs / f"{name}.err"
        self.args = ["search.run", *argv]
        self._process = _context.Process(
            target=_search_process,
            args=(list(argv), dict(env), str(cwd or Path(__file__).parents[1]), str(self.out_path), str(self.err_path), new_session),
        )
        self._process.start()
        self.pid: int = self._process.pid  # type: ignore[assignment]
        _started.add(self)

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self._process.exitcode

    def output(self) -> tuple[str, str]:
        """What it has printed so far."""
        return self.out_path.read_text(errors="replace"), self.err_path.read_text(errors="replace")

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.output()

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.wait(60)


def run_search(argv: Sequence[str], env: Mapping[str, str], logs: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`subprocess.run([python, "-m", "search.run", *argv], capture_output=True, text=True)`, forked."""
    process = SearchProcess(argv, env, logs)
    deadline = time.monotonic() + timeout
    try:
        out, err = process.communicate(max(0.0, deadline - time.monotonic()))
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _end(processes: set[SearchProcess]) -> None:
    """Kill each that still runs and wait for it (a killed run ends at once)."""
    for process in processes:
        process.kill()
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            pass
        _started.discard(process)


def _kill_all() -> None:
    _end(set(_started))


atexit.register(_kill_all)  # runs before multiprocessing's exit hook, which joins its children


@contextmanager
def kill_started_during() -> Iterator[None]:
    """Kill every run started inside the block that is still running when it ends."""
    before = set(_started)
    try:
        yield
    finally:
        _end(set(_started) - before)
