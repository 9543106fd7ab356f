"""search/workers.py's StopRequest in a real process: what one and two signals do, without a clock.

The process below never finishes its stop by itself (as a trial stuck in a long batch would), so
the only way it can end is the second signal's hard exit: no timing assumption is needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

STUCK = """
import sys, time
from search.workers import StopRequest

stop = (StopRequest(second=sys.argv[1]) if len(sys.argv) > 1 else StopRequest()).install()
stop.add_first(lambda signum: print("first", flush=True))
print("ready", flush=True)
while True:  # a stop that never completes
    time.sleep(0.01)
"""


@pytest.mark.parametrize("command", ["search", "export"])
def test_a_second_signal_ends_a_stop_that_never_finishes(command: str, python: str, run_env: dict[str, str]) -> None:
    """The search's words by default; the export's own (it trains no trial, so "a trial it was
    training resumes" was untrue there)."""
    from search.export.__main__ import EXPORT_SECOND_STOP

    second = [EXPORT_SECOND_STOP] if command == "export" else []
    process = subprocess.Popen([python, "-c", STUCK, *second], env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    err = process.stderr.read()
    assert "Traceback" not in err
    assert err.strip().startswith("stopped at once (a second stop request)") and "run the same command again" in err, err  # it said nothing
    assert ("the previous export is as it was" in err) == (command == "export") and ("trial" in err) == (command == "search"), err


ORPHANED = """
import ctypes, os, signal, time
from search.workers import PARENT_DIED, StopRequest, die_with_parent

stop = StopRequest(parent_pid=os.getppid()).install()
die_with_parent(os.getppid())
asked = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(asked), 0, 0, 0)  # PR_GET_PDEATHSIG: the signal a runner's death sends
print(f"ready {asked.value == PARENT_DIED}", flush=True)
for _ in range(3):  # the kernel's repeats, once per dying runner thread, while getppid() still names the runner
    os.kill(os.getpid(), PARENT_DIED)
    time.sleep(0.05)
print(f"stopping {stop.event.is_set()} {stop.exit_code}", flush=True)
"""


def test_a_dead_runners_repeated_death_signal_is_one_stop_request(python: str, run_env: dict[str, str]) -> None:
    """The kernel sent a worker its runner's death signal (SIGTERM) once per runner thread it
    passed to, while getppid() still named the dying runner: the repeat took the "second Ctrl-C"
    exit mid-stop (exit 143 within 10 ms) and left its trial running with no retry queued. The
    death now has a signal of its own, and its repeats are the one stop request."""
    result = subprocess.run([python, "-c", ORPHANED], env=run_env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["ready True", f"stopping True {128 + signal.SIGTERM}"], result.stdout


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


TEARDOWN = """
import os, sys
from search.workers import answered

class TornDown:  # a module global whose finaliser runs in the interpreter's teardown, as torch's do
    def __del__(self) -> None:
        os.write(1, b"tearing down\\n")
        os.read(0, 1)  # until the test closes stdin

keep = TornDown()
sys.exit(answered(0))
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_in_the_interpreters_teardown_keeps_the_answered_code(signum: int, python: str, run_env: dict[str, str]) -> None:
    """The interpreter puts Python's signal handlers back to the default before it tears modules
    down: a Ctrl-C then, after a run's last line of success, still ended it with 130."""
    process = subprocess.Popen([python, "-c", TEARDOWN], env=run_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline().strip() == b"tearing down"
        process.send_signal(signum)
        process.stdin.close()
        code = process.wait(timeout=60)  # a hang guard, not a speed check
    finally:
        process.kill()
    assert code == 0, process.stderr.read() if process.stderr else ""


def test_a_hang_up_is_a_stop_request_unless_nohup_ignores_it() -> None:
    """Closing the terminal (or a dropped ssh session) killed the run mid-trial: no resume line,
    and the trial counted a death, so three hang-ups left it failed for good."""
    from search.workers import StopRequest

    before = signal.getsignal(signal.SIGHUP)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a terminal starts it (this suite may run under nohup)
        stop = StopRequest().install()
        os.kill(os.getpid(), signal.SIGHUP)  # handled in this (main) thread before the next line runs
        assert stop.event.is_set() and stop.exit_code == 128 + signal.SIGHUP
        stop.uninstall()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts it
        ignored = StopRequest().install()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        ignored.uninstall()
    finally:
        signal.signal(signal.SIGHUP, before)


SUSPENDED = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from search.workers import StopRequest, WorkerPool
from worker_bodies import spin_until_stopped

folder = Path({folder!r})
stop = StopRequest().install()
pool = WorkerPool(spin_until_stopped, (str(folder),), 2, stop)
said = []
def poll():
    if not said and len(list(folder.glob("pid-*"))) == 2:
        said.append(print("ready", flush=True))
sys.exit(0 if pool.run(poll) else 1)
"""


def process_state(pid: int) -> str:
    """R, S, T (stopped), ... from /proc/PID/stat."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def wait_for_state(pids: list[int], stopped: bool) -> None:
    for _ in range(6000):  # a hang guard (60 s), not a speed check
        if all((process_state(pid) == "T") == stopped for pid in pids):
            return
        time.sleep(0.01)
    raise AssertionError(f"{pids} never {'stopped' if stopped else 'went on'}: {[process_state(pid) for pid in pids]}")


def test_ctrl_z_stops_the_workers_with_the_runner_and_fg_resumes_them(tmp_path: Path, python: str, run_env: dict[str, str]) -> None:
    """The workers sit in their own process group, so the terminal's SIGTSTP reached the runner
    only: the job read "Stopped" while both workers trained its whole budget."""
    script = SUSPENDED.format(tests=str(Path(__file__).parent), folder=str(tmp_path))
    # a process group of its own under this one, as a shell's job is: in an orphaned group (the
    # suite run by setsid or nohup) the kernel discards a stop signal's default action
    runner = subprocess.Popen([python, "-c", script], env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, process_group=0)
    try:
        assert runner.stdout is not None and runner.stdout.readline().strip() == "ready"
        workers = [int((tmp_path / f"pid-{i}").read_text()) for i in range(2)]
        runner.send_signal(signal.SIGTSTP)  # Ctrl-Z
        wait_for_state([runner.pid, *workers], stopped=True)
        runner.send_signal(signal.SIGCONT)  # fg
        wait_for_state([runner.pid, *workers], stopped=False)
        runner.send_signal(signal.SIGTERM)
        code = runner.wait(timeout=60)  # a hang guard, not a speed check
    finally:
        runner.kill()
    assert code == 128 + signal.SIGTERM or code == 0, runner.stderr.read() if runner.stderr else ""


@pytest.mark.slow
@pytest.mark.parametrize("command", ["search.run", "search.export", "search.dashboard", "search.predict"])
def test_ctrl_c_while_a_command_still_imports_is_one_line(command: str, tmp_path: Path, python: str, run_env: dict[str, str]) -> None:
    """A Ctrl-C in the first ~0.5 s, while a command imports its modules (before its main takes
    SIGINT over), printed a KeyboardInterrupt traceback from whichever module was loading: the
    signal is sent here once the command has begun its own imports (-X importtime prints a line as
    each finishes; argparse is the first after search.console's handler), well before they end."""
    args = ["--model", str(tmp_path), "x.png"] if command == "search.predict" else ["--storage", f"sqlite:///{tmp_path}/s.db"]
    child = subprocess.Popen(
        [python, "-X", "importtime", "-m", command, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env, cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert child.stderr is not None
        for line in child.stderr:
            if line.rstrip().endswith("| argparse"):  # the command's first import after its handler
                child.send_signal(signal.SIGINT)
                break
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    said = [line for line in err.splitlines() if line and not line.startswith("import time:")]
    expected = (0, "", ["dashboard stopped"]) if command == "search.dashboard" else (130, "", ["stopped before it started; nothing was done"])
    assert (child.returncode, out, said) == expected, err[-2000:]  # the dashboard's Ctrl-C is how it is stopped: 0 at any moment
    assert not (tmp_path / "s.db").exists()
