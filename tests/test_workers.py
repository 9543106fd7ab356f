"""Several workers on one study: real processes on the local PostgreSQL and on a SQLite file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from helpers import reader_storage, writer_storage
from search import record

TINY = """
data: {val_size: 300, train_size: 600}
training: {max_epochs: 2, snapshot_steps: [5]}
pruner: {name: none}
"""

pytestmark = pytest.mark.slow


def start(python: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [python, "-m", "search.run", "--no-export", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen[str], timeout: float = 300) -> tuple[str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
    assert process.returncode == 0, err
    return out, err


def assert_budget_exact(study: optuna.Study, budget: int) -> None:
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == budget
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # any trial that is not finished stepped aside before training (a lost race for the last slot)
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == TrialState.FAIL)
    assert len({t.number for t in trials}) == len(trials)


@pytest.mark.postgres
def test_target_stop_reaches_every_worker(python: str, run_env: dict[str, str], tmp_path: Path, postgres_url: str, unique_name: str) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    args = ("--config", str(config), "--storage", postgres_url, "--study-name", unique_name, "--trials", "40", "--target-accuracy", "0.6")
    first, second = start(python, run_env, *args), start(python, run_env, *args)
    (out1, _), (out2, _) = finish(first), finish(second)
    assert "target reached" in out1 and "target reached" in out2
    study = optuna.load_study(study_name=unique_name, storage=reader_storage(postgres_url))
    hit = min((t for t in study.trials if t.state == TrialState.COMPLETE and t.value >= 0.6), key=lambda t: t.datetime_complete)
    # no worker starts a trial after the target was reached (a trial already running finishes);
    # a queued trial no worker took before then (the first DNN, when the baseline hits the
    # target) stays WAITING, never started, for a resume with a higher target
    started = [t for t in study.trials if t.datetime_start is not None]
    late = [t for t in started if t.datetime_start > hit.datetime_complete and not t.user_attrs.get("surplus")]
    assert late == []
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


# `python -m search.run ARGV` whose last line names the heavy modules the runner itself imported.
RUN_THEN_LIST_IMPORTS = """
import json, sys
from search.run import main
code = main(sys.argv[1:])
print(json.dumps(sorted({"lightning", "torchmetrics", "matplotlib"} & set(sys.modules))))
sys.exit(code)
"""


def test_two_local_workers_on_one_sqlite_file(python: str, run_env: dict[str, str], tmp_path: Path) -> None:
    """Two writers are enough to contend for SQLite's lock (4 workers, then 3, cost the suite
    35-65 s on 2 cores and found nothing 2 did not). The runner only spawns, reports and relays
    signals: it imports neither Lightning nor matplotlib (about 4 s of CPU at each start)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("max_epochs: 2", "max_epochs: 1"))
    url = f"sqlite:///{tmp_path / 'w2.db'}"
    argv = ["--no-export", "--config", str(config), "--storage", url, "--trials", "6", "--workers", "2", "--target-accuracy", "none"]
    runner = subprocess.Popen([python, "-c", RUN_THEN_LIST_IMPORTS, *argv], env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = finish(runner)
    assert out.splitlines()[-1] == "[]", out
    assert "database is locked" not in err
    study = optuna.load_study(study_name="mnist", storage=reader_storage(url))
    assert_budget_exact(study, 6)
    assert study.trials[0].params["classifier"] == "linear"  # the baseline was enqueued before workers started
    # the runner prints every trial its workers finish, once
    assert len([line for line in out.splitlines() if line.startswith("trial ")]) == 6


def test_a_pool_that_stops_on_its_timeout_says_so_and_succeeds(python: str, run_env: dict[str, str], tmp_path: Path) -> None:
    """The workers stopped on their own deadlines; the runner, asking without one, found neither
    budget nor target reached and reported "0 of 2 workers died ()", exit 1, with no export."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("max_epochs: 2", "max_epochs: 1"))
    url = f"sqlite:///{tmp_path / 't.db'}"
    out, err = finish(start(python, run_env, "--config", str(config), "--storage", url, "--trials", "500", "--workers", "2",
                            "--timeout", "1", "--target-accuracy", "none"))
    assert "stopped: timeout of 1 s reached" in out and "died" not in err, (out, err)
    study = optuna.load_study(study_name="mnist", storage=reader_storage(url))
    assert len([t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) < 500
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


@pytest.mark.postgres
def test_two_machines_one_with_two_workers_share_one_postgres_study(
    python: str, run_env: dict[str, str], tmp_path: Path, postgres_url: str, unique_name: str
) -> None:
    """Two machines' runs on one study: one with a pool of 2 workers, one training in its own
    process (both ways a machine joins a study). 2 x 2 workers cost this test a fourth training
    process (about 7 s of CPU to import Lightning) and checked nothing more; 4 x 4 = 16 workers
    were run once by hand (deploy/README.md)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("max_epochs: 2", "max_epochs: 1"))
    args = ("--config", str(config), "--storage", postgres_url, "--study-name", unique_name, "--trials", "6", "--target-accuracy", "none")
    first, second = start(python, run_env, *args, "--workers", "2"), start(python, run_env, *args)  # two machines' worth
    (out1, _), (out2, _) = finish(first), finish(second)
    study = optuna.load_study(study_name=unique_name, storage=reader_storage(postgres_url))
    assert_budget_exact(study, 6)
    ran = [line for line in (out1 + out2).splitlines() if line.startswith("trial ")]
    assert len(ran) >= 6  # each process reports every finished trial it sees, its own and the other's
    # one baseline, enqueued once however many processes opened the new study (the old check,
    # "trial 0 is linear", held with a second baseline enqueued too)
    baselines = [t.number for t in study.trials if record.MAX_EPOCHS in t.user_attrs and record.PROMOTED_FROM not in t.user_attrs]
    assert baselines == [0] and study.trials[0].params["classifier"] == "linear", baselines


# Each process opens every URL it is sent, as soon as it reads it: the processes are released
# together on each fresh file, so they race to create its tables and switch it to WAL.
OPEN_EACH_URL = """
import sys
from search.storage import open_study_storage
print("ready", flush=True)
for line in sys.stdin:
    open_study_storage(line.strip(), heartbeat_seconds=5, grace_seconds=20)
    print("opened", flush=True)
"""


def test_workers_starting_together_on_a_new_sqlite_file_all_open_it(python: str, run_env: dict[str, str], tmp_path: Path) -> None:
    processes = [
        subprocess.Popen([python, "-c", OPEN_EACH_URL], env=run_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        for round_ in range(10):  # without the retries about one round in three failed
            url = f"sqlite:///{tmp_path / f'fresh-{round_}.db'}\n"
            for process in processes:
                assert process.stdin is not None
                process.stdin.write(url)
                process.stdin.flush()
            for process in processes:
                assert process.stdout is not None
                assert process.stdout.readline() == "opened\n", process.communicate()[1]
            study = optuna.create_study(storage=writer_storage(url.strip()))
            assert study.trials == []  # the schema is complete and usable
    finally:
        for process in processes:
            process.kill()


# ---------------------------------------------------------------- workers and signals

SLOW_TRIALS = TINY.replace("max_epochs: 2", "max_epochs: 50").replace("train_size: 600", "train_size: 3000")


def children(pid: int) -> set[int]:
    """The live child processes of `pid`, from /proc (no psutil needed on Linux)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def workers_of(pid: int) -> set[int]:
    """The runner's spawned workers among its children (its multiprocessing resource tracker is one too)."""
    found = set()
    for child in children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll until `condition()` holds; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def start_workers(python: str, env: dict[str, str], tmp_path: Path, workers: int = 2, trials: int = 20) -> tuple[subprocess.Popen[str], str]:
    """A run with `workers` spawned workers and long trials, in its own session (as a terminal's job)."""
    config = tmp_path / "slow.yaml"
    config.write_text(SLOW_TRIALS)
    url = f"sqlite:///{tmp_path / 'w.db'}"
    args = [python, "-m", "search.run", "--no-export", "--config", str(config), "--storage", url, "--trials", str(trials),
            "--workers", str(workers), "--target-accuracy", "none"]
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    return process, url


def trial_states(url: str) -> list[TrialState]:
    """The run's trials' states so far (none while its study or tables are not there yet)."""
    if not Path(url.removeprefix("sqlite:///")).exists():
        return []
    try:
        study = optuna.load_study(study_name="mnist", storage=reader_storage(url))
    except Exception:  # noqa: BLE001 - the study or its tables are not there yet
        return []
    return [t.state for t in study.get_trials(deepcopy=False)]


def running_trials(url: str) -> int:
    return trial_states(url).count(TrialState.RUNNING)


def trials_started(url: str) -> int:
    return sum(state != TrialState.WAITING for state in trial_states(url))


def test_killing_the_runner_ends_its_workers(python: str, run_env: dict[str, str], tmp_path: Path) -> None:
    process, url = start_workers(python, run_env, tmp_path)
    try:
        wait_until(lambda: running_trials(url) >= 2, "both workers run a trial")
        workers = children(process.pid)
        assert len(workers) >= 2
        process.kill()  # kill -9: no handler of the runner's runs
        process.wait()
        wait_until(lambda: not any(alive(pid) for pid in workers), "every worker has ended")
    finally:
        process.kill()
        for pid in children(process.pid):
            os.kill(pid, signal.SIGKILL)


def test_when_every_worker_dies_the_run_fails(python: str, run_env: dict[str, str], tmp_path: Path) -> None:
    """Killed as soon as both exist: the runner judges its workers by their exit codes, whatever
    they were doing (a kill mid-trial and its resume are tests/test_crash.py's). Waiting for their
    trials cost this test two imports of Lightning (about 15 s of CPU) and checked nothing more."""
    process, _ = start_workers(python, run_env, tmp_path)
    try:
        wait_until(lambda: len(workers_of(process.pid)) >= 2, "both workers exist", timeout=240)
        for pid in workers_of(process.pid):
            os.kill(pid, signal.SIGKILL)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1, err
    assert "workers died" in err and "Resume with: python -m search.run" in err and "Traceback" not in err
    assert "all workers finished" not in out + err


def test_when_every_worker_dies_running_the_last_trials_of_the_budget_the_run_fails(
    python: str, run_env: dict[str, str], tmp_path: Path
) -> None:
    """The budget counts running trials, so with the dead workers' trials filling the rest of it
    the run said "stopped: budget of 2 finished trials spent" and exited 0 with trials unfinished
    (a Kubernetes Job counted it complete)."""
    process, url = start_workers(python, run_env, tmp_path, trials=2)
    try:
        wait_until(lambda: len(workers_of(process.pid)) >= 2 and trials_started(url) >= 2 and running_trials(url) >= 1,
                   "both of the budget's trials started, one at least still running", timeout=240)
        for pid in workers_of(process.pid):
            os.kill(pid, signal.SIGKILL)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1, (out, err)
    assert "2 of 2 workers died" in err and "Resume with: python -m search.run" in err and "budget of 2" not in out, (out, err)


def test_ctrl_c_while_workers_start_is_one_clean_stop(python: str, run_env: dict[str, str], tmp_path: Path) -> None:
    """A terminal's Ctrl-C goes to the whole process group: sent as soon as the first worker
    process exists, it lands while the workers' interpreters are still starting."""
    process, url = start_workers(python, run_env, tmp_path)
    try:
        wait_until(lambda: bool(children(process.pid)), "a worker process exists", timeout=240)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    study = optuna.load_study(study_name="mnist", storage=reader_storage(url))
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) < 20  # it stopped, it did not run the budget


def test_second_ctrl_c_ends_runner_and_workers(python: str, run_env: dict[str, str], tmp_path: Path) -> None:
    """Two Ctrl-C, the second after the runner has acted on the first: it has relayed a stop
    request that each starting worker holds (signals blocked until its handler is in place, as
    one mid-trial holds it until its next batch); the second ends runner and workers at once.

    Waiting for the relay makes the second signal a second one: sent back to back, both could
    land before the runner's handler ran, count as one, and end the run by the clean stop. It
    also spares the wait for both workers' trials (two imports of Lightning, about 15 s of CPU)."""
    process, _ = start_workers(python, run_env, tmp_path)
    try:
        wait_until(lambda: len(workers_of(process.pid)) >= 2 and not signal_bits(process.pid, "SigBlk", signal.SIGINT),
                   "both workers exist and the runner takes signals again", timeout=240)
        workers = workers_of(process.pid)
        process.send_signal(signal.SIGINT)
        wait_until(lambda: all(signal_bits(pid, "SigPnd", signal.SIGTERM) or signal_bits(pid, "ShdPnd", signal.SIGTERM)
                               or own_group(pid) for pid in workers), "the runner relayed the first stop request")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
        wait_until(lambda: not any(alive(pid) for pid in workers), "every worker has ended")
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGINT
    assert "stopped on request" not in err and "Traceback" not in err, err  # ended at once, not by the clean stop


def signal_bits(pid: int, field: str, signum: int) -> bool:
    """Whether `signum` is set in /proc/PID/status's `field` (SigBlk: blocked, SigPnd/ShdPnd: pending)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return False
    mask = next((int(line.split()[1], 16) for line in lines if line.startswith(field + ":")), 0)
    return bool(mask & (1 << (signum - 1)))


def own_group(pid: int) -> bool:
    """A worker that leads its own process group has reached `worker_main`: its handler takes a
    relayed request at once, so no pending bit will show it."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return True


# Each process opens the study named by every line it is sent and asks for one trial at once:
# released together on a fresh study, they race its creation.
OPEN_AND_ASK = """
import sys
from search.settings_file import load_settings
from search.storage import open_study_storage
from search.space import suggest_params
from search.study import open_study
print("ready", flush=True)
for line in sys.stdin:
    url, name = line.split()
    settings = load_settings(None, {"study": {"name": name, "storage": url}})
    study = open_study(settings, open_study_storage(url, heartbeat_seconds=5, grace_seconds=20)).study
    trial = study.ask()
    suggest_params(trial, settings.space)
    study.tell(trial, 0.5)
    print("asked", flush=True)
"""


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_baseline_is_trial_0_however_many_processes_race_to_create_the_study(
    python: str, run_env: dict[str, str], tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    processes = [
        subprocess.Popen([python, "-c", OPEN_AND_ASK], env=run_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        for round_ in range(6):
            if backend == "sqlite":
                url = f"sqlite:///{tmp_path / f'race-{round_}.db'}"
                writer_storage(url)  # the tables exist: the race is the study's creation
            else:
                url = request.getfixturevalue("postgres_url")
            name = f"race-{uuid.uuid4().hex[:8]}"
            for process in processes:
                assert process.stdin is not None
                process.stdin.write(f"{url} {name}\n")
                process.stdin.flush()
            for process in processes:
                assert process.stdout is not None
                assert process.stdout.readline() == "asked\n", process.communicate()[1]
            trials = optuna.load_study(study_name=name, storage=reader_storage(url)).trials
            assert len(trials) == 4
            assert trials[0].params["classifier"] == "linear" and trials[0].user_attrs.get("max_epochs") is not None, round_
            assert sum(record.MAX_EPOCHS in t.user_attrs for t in trials) == 1  # one baseline, asked once
    finally:
        for process in processes:
            process.kill()


def test_checking_the_export_folder_imports_neither_lightning_nor_matplotlib(python: str, run_env: dict[str, str], tmp_path: Path) -> None:
    """The runner checks its export folder before any trial trains; a pool's runner doing it by
    importing the exporter loaded Lightning and matplotlib (about 4 s of CPU) beside its starting
    workers. The folder exists, so the study database is read too (for whose export it may hold)."""
    script = (
        "import sys\n"
        "from search.paths import exports_dir\n"
        "from search.run import check_export_target\n"
        "from search.settings import Settings\n"
        "(exports_dir() / 'mnist').mkdir(parents=True)\n"
        f"check_export_target(Settings(), 'sqlite:///{tmp_path}/study.db')\n"
        "print(sorted({'lightning', 'matplotlib'} & set(sys.modules)))\n"
    )
    done = subprocess.run([python, "-c", script], env=run_env, capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_a_database_failure_in_the_runners_report_leaves_the_workers_running() -> None:
    """The runner's poll of what its workers finished raised on a locked or dropped database, and
    the pool's clean-up then killed both healthy workers mid-trial (their trials left running)."""
    import sqlalchemy.exc

    from search.trial_loop import _tolerant

    def locked() -> None:
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("database is locked"))

    _tolerant(locked)  # the workers tell it, each in one line; the report catches up later

    def bug() -> None:
        raise ValueError("a bug is still a bug")

    with pytest.raises(ValueError, match="still a bug"):
        _tolerant(bug)
