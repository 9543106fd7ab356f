"""Kill the runner at chosen moments with real signals; the study must lose no finished trial.

Moments are found by polling the storage (e.g. "trial 1 has reported epoch 0"), never by
sleeping a guessed time. Trials are tiny so each kill-and-resume cycle takes seconds.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from helpers import reader_storage, run_main
from preloaded import SearchProcess
from search.storage import StorageError

pytestmark = pytest.mark.slow

# Small data but epochs long enough (~0.3 s) to land a signal mid-trial; no pruning so every
# trial runs all its epochs; fast heartbeats so a killed trial is found stale within seconds.
CONFIG = """
study: {heartbeat_seconds: 1, stale_after_seconds: 3, target_accuracy: null}
data: {val_size: 500, train_size: 3000}
training: {max_epochs: 4, snapshot_steps: [5]}
pruner: {name: none}
space: {batch_size: [32], units: {low: 128, high: 256}}
baseline: {batch_size: 32}
"""


@pytest.fixture
def setup(tmp_path: Path, run_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> Callable[..., SearchProcess]:
    config = tmp_path / "crash.yaml"
    config.write_text(CONFIG)
    url = f"sqlite:///{tmp_path / 'crash.db'}"

    def argv(*extra: str, trials: int = 2) -> list[str]:
        return ["--config", str(config), "--storage", url, "--trials", str(trials), "--no-export", *extra]

    def start(*extra: str, trials: int = 2) -> SearchProcess:
        """The run a test kills or signals: a real process (forked with torch and Lightning imported)."""
        return SearchProcess(argv(*extra, trials=trials), run_env, tmp_path / "run")

    def resume(*extra: str, trials: int = 2) -> tuple[int, str, str]:
        """The run after it: the same command in this process (nothing kills it)."""
        done = run_main(argv(*extra, trials=trials), capsys)
        return done.returncode, done.stdout, done.stderr

    start.url = url  # type: ignore[attr-defined]
    start.resume = resume  # type: ignore[attr-defined]
    return start


def load(storage: str | optuna.storages.BaseStorage) -> optuna.Study:
    """The run's study, from its URL or from a storage object already open on it."""
    if isinstance(storage, str):
        storage = reader_storage(storage)
    return optuna.load_study(study_name="mnist", storage=storage)


def wait_for(url: str, condition: Callable[[list[FrozenTrial]], bool], process: SearchProcess, timeout: float = 120) -> None:
    """Poll the storage until `condition(trials)` holds; fail if the run ends first.

    One storage object for all polls: opening a new one costs ~35 ms (several times that on a
    loaded machine), long enough for a short last epoch to end before the kill lands.
    """
    deadline = time.monotonic() + timeout
    storage = None
    while time.monotonic() < deadline:
        if storage is None and Path(url.removeprefix("sqlite:///")).exists():
            try:
                storage = reader_storage(url)
            except StorageError:
                pass  # the file exists, its tables not yet
        if storage is not None:
            try:
                if condition(load(storage).trials):
                    return
            except KeyError:
                pass  # the study is not created yet
        assert process.poll() is None, f"the run ended before the moment came: {process.communicate()}"
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the moment to kill")


def reported(number: int, epochs: int) -> Callable[[list[FrozenTrial]], bool]:
    return lambda trials: len(trials) > number and len(trials[number].intermediate_values) >= epochs


def running(number: int) -> Callable[[list[FrozenTrial]], bool]:
    return lambda trials: len(trials) > number and trials[number].state == TrialState.RUNNING


def finish(process: SearchProcess, timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return process.returncode, out, err


def assert_accounted(study: optuna.Study, budget: int) -> None:
    trials = study.trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == budget
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # every failed attempt was retried by exactly one finished trial
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    retried = [t.system_attrs.get("failed_trial") for t in finished if "failed_trial" in t.system_attrs]
    assert sorted(failed) == sorted(retried)
    for trial in finished:  # intermediate values continue without a gap
        assert sorted(trial.intermediate_values) == list(range(len(trial.intermediate_values)))


# Trial 1 trains this many epochs in the signal test: the signal must land before its last one
# ends, and on a loaded machine the poll that sees epoch 2 can lag two ~0.3 s epochs (the run then
# finished its budget and exited 0 before the signal came).
SIGNAL_EPOCHS = 10


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_requeues_the_trial_and_resume_continues_from_its_epoch(setup: Callable[..., SearchProcess], signum: int) -> None:
    epochs = ("--max-epochs", str(SIGNAL_EPOCHS))
    process = setup(*epochs)
    wait_for(setup.url, reported(1, 2), process)  # trial 1 has finished two epochs
    process.send_signal(signum)
    code, _, err = finish(process)
    assert code == 128 + signum
    assert "Resume with: python -m search.run" in err and "Traceback" not in err
    trials = load(setup.url).trials
    assert trials[1].state == TrialState.FAIL
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == trials[1].params
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    if signum == signal.SIGTERM:
        return  # one handler for both signals: the resume below is the same after either

    code, out, err = setup.resume(*epochs)
    assert code == 0, err
    study = load(setup.url)
    assert_accounted(study, 2)  # the baseline and the retry of trial 1
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 1)
    assert retry.user_attrs["resumed_from_epoch"] >= 2
    assert retry.user_attrs["seed_training"] == trials[1].user_attrs["seed_training"]
    assert len(retry.intermediate_values) == SIGNAL_EPOCHS
    for epoch in range(2):  # the replayed epochs are the interrupted attempt's own values
        assert retry.intermediate_values[epoch] == trials[1].intermediate_values[epoch]


@pytest.mark.parametrize(
    ("moment", "min_resumed_epoch"),
    # epoch k's checkpoint is written just after its report, so "k+1 epochs reported"
    # guarantees at least k+1 epochs are on disk... minus the one that may be in flight
    # (a kill between the two, "mid_trial", resumes the same way: dropped to keep the suite short)
    [("before_first_report", None), ("last_epoch", 2)],
)
def test_kill_9_then_resume_retries_from_the_last_epoch(setup: Callable[..., SearchProcess], moment: str, min_resumed_epoch: int | None) -> None:
    process = setup()
    condition = {"before_first_report": running(1), "last_epoch": reported(1, 3)}[moment]
    wait_for(setup.url, condition, process)
    process.kill()  # SIGKILL
    process.wait(timeout=30)
    killed = load(setup.url).trials[1]
    assert killed.state == TrialState.RUNNING  # what Optuna alone leaves behind

    code, out, err = setup.resume()  # waits for the heartbeat to call trial 1 stale, then retries it
    assert code == 0, err
    study = load(setup.url)
    story = [(t.number, t.state.name, len(t.intermediate_values), t.system_attrs.get("failed_trial"), t.user_attrs.get("resumed_from_epoch")) for t in study.trials]
    assert study.trials[1].state == TrialState.FAIL, story
    assert_accounted(study, 2)  # the baseline and the retry of trial 1
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 1)
    # every parameter the killed attempt had drawn is kept (a kill during sampling leaves only some)
    assert killed.params.items() <= retry.params.items()
    resumed = retry.user_attrs.get("resumed_from_epoch")
    if min_resumed_epoch is None:
        assert resumed in (None, 0, 1), story
    else:
        assert resumed is not None and resumed >= min_resumed_epoch, (story, len(killed.intermediate_values), out)


def test_a_study_at_its_target_starts_nothing_after_a_crash(setup: Callable[..., SearchProcess]) -> None:
    """A run killed with trial 1 RUNNING after trial 0 reached the target (0.5; the baseline's
    val_acc is about 0.85 here): the resume finds the target reached and trains nothing, neither
    the dead trial's retry nor a new one."""
    process = setup()  # no target: it would go on to trial 1
    wait_for(setup.url, running(1), process)
    process.kill()  # SIGKILL
    process.wait(timeout=30)
    crashed = load(setup.url).trials
    assert crashed[0].state == TrialState.COMPLETE and crashed[0].value >= 0.5
    assert crashed[1].state == TrialState.RUNNING

    for _ in range(2):  # and again: a second resume of the finished study changes nothing either
        code, out, err = setup.resume("--target-accuracy", "0.5", trials=10)
        assert code == 0 and "target reached by trial 0" in out, err
        trials = load(setup.url).trials
        started = [t.number for t in trials if t.number > 1 and t.datetime_start is not None]
        assert not started, [(t.number, t.state.name) for t in trials]
        assert trials[0].value == crashed[0].value and trials[0].state == TrialState.COMPLETE


@pytest.mark.parametrize("workers", ["1", "2"])
def test_deleted_database_mid_run_is_a_clear_error(setup: Callable[..., SearchProcess], workers: str) -> None:
    """With workers, each printed a traceback (the check's error was not taken for a storage failure)."""
    process = setup("--workers", workers, trials=6)
    wait_for(setup.url, reported(1, 1), process)
    db = Path(setup.url.removeprefix("sqlite:///"))
    for path in db.parent.glob(db.name + "*"):
        path.unlink()
    code, out, err = finish(process)
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert all(line.startswith(("error: ", "warning: ")) for line in lines), err
    if workers == "1":
        assert len(lines) == 1
    assert "deleted" in lines[0] and str(db) in lines[0]
