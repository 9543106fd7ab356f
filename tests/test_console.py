"""A console whose reader has gone: `python -m search.run | head -1` once `head` has exited.

Python ignores SIGPIPE and raises BrokenPipeError from the next write instead: the run ended in a
traceback from its progress bar, and with `--workers 2` the pool's clean-up then killed both
workers mid-trial (their trials left running, later counted as deaths).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from helpers import reader_storage
from search import record
from search.console import GuardedStream, OutputGuard


def test_a_write_to_a_closed_pipe_is_told_once_and_the_rest_goes_to_dev_null() -> None:
    read_end, write_end = os.pipe()
    stream = io.TextIOWrapper(os.fdopen(write_end, "wb", buffering=0), write_through=True)
    told: list[int] = []
    guarded = GuardedStream(stream, lambda: told.append(1))
    guarded.write("first line\n")
    assert os.read(read_end, 100) == b"first line\n"
    os.close(read_end)  # `head -1` has exited
    for _ in range(3):
        assert guarded.write("a line nobody reads\n") == len("a line nobody reads\n")
        guarded.flush()
    assert told == [1] and guarded.gone
    assert os.path.realpath(f"/proc/self/fd/{stream.fileno()}") == os.devnull  # the interpreter's last flush lands there
    stream.close()


def closed_pipe() -> io.TextIOWrapper:
    """A stream whose reader has gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return io.TextIOWrapper(os.fdopen(write_end, "wb", buffering=0), write_through=True)


def test_the_guard_puts_the_streams_back_and_tells_either_once() -> None:
    """`2>&1 | head -1`: both streams are the one closed pipe; the run is told once."""
    import sys

    before = (sys.stdout, sys.stderr)
    told: list[int] = []
    guard = OutputGuard(lambda: told.append(1)).install()
    pipes = [closed_pipe(), closed_pipe()]
    try:
        assert isinstance(sys.stdout, GuardedStream) and isinstance(sys.stderr, GuardedStream)
        sys.stdout.stream, sys.stderr.stream = pipes  # not pytest's own capture: its descriptor must stay
        print("to stdout")
        print("to stderr", file=sys.stderr)
    finally:
        guard.uninstall()
        for pipe in pipes:
            pipe.close()
    assert (sys.stdout, sys.stderr) == before and told == [1]


CONFIG = """
data: {val_size: 200, train_size: 600}
training: {max_epochs: 4, snapshot_steps: [5]}
pruner: {name: none}
"""


@pytest.mark.slow
def test_a_run_whose_output_closes_stops_its_workers_cleanly(tmp_path: Path, python: str, run_env: dict[str, str]) -> None:
    """`... --workers 2 | head -N`: once the reader has gone, the run stops as on a stop request:
    every running trial queued again, no traceback, exit 141 (as a death by SIGPIPE)."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    url = f"sqlite:///{tmp_path / 'pipe.db'}"
    argv = ["--config", str(config), "--storage", url, "--trials", "20", "--target-accuracy", "none", "--no-export", "--workers", "2"]
    process = subprocess.Popen([python, "-m", "search.run", *argv], env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stderr is not None
        line = b"-"
        while line and not line.startswith(b"trial "):  # a trial finished: others are training
            line = process.stdout.readline()
        assert line, "the run ended before its first trial line"
        process.stdout.close()  # the reader leaves, as `head` does
        code = process.wait(timeout=300)  # a hang guard, not a speed check
        err = process.stderr.read().decode()
    finally:
        process.kill()
    assert code == 128 + signal.SIGPIPE, err
    assert "Traceback" not in err and "Resume with: python -m search.run" in err, err
    trials = optuna.load_study(study_name="mnist", storage=reader_storage(url)).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(t.user_attrs.get(record.DIED) == record.INTERRUPTED for t in trials if t.state == TrialState.FAIL)  # stopped, not dead


def test_a_terminal_that_hung_up_is_a_closed_output_too() -> None:
    """Writing to a terminal after its window or ssh session closed fails with EIO, not EPIPE:
    with workers the runner's report raised it and the pool killed both workers mid-trial."""
    import errno

    from search.console import _closed_pipe

    assert _closed_pipe(OSError(errno.EIO, "Input/output error"))
    assert not _closed_pipe(OSError(errno.ENOSPC, "No space left on device"))  # a full disk is not a reader that left


def test_what_a_pipe_still_buffers_is_flushed_under_the_guard() -> None:
    """Output to a pipe is block-buffered: the guard came off first, and the interpreter's own last
    flush printed "Exception ignored ... BrokenPipeError" and exited 120."""
    import sys

    read_end, write_end = os.pipe()
    buffered = io.TextIOWrapper(os.fdopen(write_end, "wb"))  # block-buffered, as sys.stdout is into a pipe
    told: list[int] = []
    guard = OutputGuard(lambda: told.append(1)).install()
    sys.stdout.stream = buffered
    try:
        print("a line the reader never takes")  # buffered: no error yet
        os.close(read_end)
    finally:
        guard.uninstall()
    assert told == [1]
    buffered.flush()  # what the interpreter does at exit: to /dev/null now
    buffered.close()
