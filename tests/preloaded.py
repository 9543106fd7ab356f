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
product, which is what those tests check), and the benchmark and GPU-check scripts.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
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


def _text_stream(fd: int) -> io.TextIOWrapper:
    """A text stream on `fd` that writes through, as `PYTHONUNBUFFERED=1` gives a subprocess."""
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True)


def _search_process(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str, new_session: bool) -> None:
    """Body of the forked process: the command line's environment, streams and folder, then
    `search.run.main(argv)` and its exit code, as `python -m search.run ARGV` would end."""
    if new_session:
        os.setsid()
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout, sys.stderr = _text_stream(1), _text_stream(2)
    os.environ.clear()
    os.environ.update(env)
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
