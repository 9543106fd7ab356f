"""search/workers.py's StopRequest in a real process: what one and two signals do, without a clock.

The process below never finishes its stop by itself (as a trial stuck in a long batch would), so
the only way it can end is the second signal's hard exit: no timing assumption is needed.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

STUCK = """
import time
from search.workers import StopRequest

stop = StopRequest().install()
stop.add_first(lambda signum: print("first", flush=True))
print("ready", flush=True)
while True:  # a stop that never completes
    time.sleep(0.01)
"""


def test_a_second_signal_ends_a_stop_that_never_finishes(python: str, run_env: dict[str, str]) -> None:
    process = subprocess.Popen([python, "-c", STUCK], env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGINT)
        assert process.stdout.readline().strip() == "first"  # the first signal asked for a stop
        assert process.poll() is None  # and did not end the process
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)  # a hang guard, not a speed check
    finally:
        process.kill()
    assert code == 128 + signal.SIGINT
    assert "Traceback" not in process.stderr.read()


ORPHANED = """
import signal, time
from search.workers import StopRequest

stop = StopRequest(parent_pid=-1).install()  # a worker whose runner (never pid -1) is gone


def handle(signum, frame):
    stop._handle(signum, frame)
    print("handled", flush=True)


signal.signal(signal.SIGTERM, handle)
print("ready", flush=True)
while True:
    time.sleep(0.01)
"""


def test_a_dead_runners_repeated_death_signal_is_one_stop_request(python: str, run_env: dict[str, str]) -> None:
    """The kernel sent a worker its runner's death signal twice (once per runner thread it passed
    to); the second took the "second Ctrl-C" exit, mid-stop, and left its trial running with no
    retry queued."""
    process = subprocess.Popen([python, "-c", ORPHANED], env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        for _ in range(2):
            process.send_signal(signal.SIGTERM)
            assert process.stdout.readline().strip() == "handled"  # returned: no exit on the repeat
        assert process.poll() is None
    finally:
        process.kill()
        process.wait(timeout=60)


ANSWERED = """
import time
from search.workers import answered

answered(0)
print("answered", flush=True)
while True:  # a teardown that hangs (a thread, a pool)
    time.sleep(0.01)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_command_that_has_answered_ends_on_its_own_code_at_a_stop_signal(signum: int, python: str, run_env: dict[str, str]) -> None:
    """A Ctrl-C in the interpreter's teardown, after a run's or an export's last line of success,
    made its exit code 130; a teardown that hangs must still end on the signal."""
    process = subprocess.Popen([python, "-c", ANSWERED], env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "answered"
        process.send_signal(signum)
        code = process.wait(timeout=60)  # a hang guard, not a speed check
    finally:
        process.kill()
    assert code == 0 and "Traceback" not in process.stderr.read()
