"""python -m search.export --reproduce N: any trial, re-run from what the study recorded.

Real studies on 600 MNIST rows, run in-process as a user runs them: a trial that stopped early at
the target accuracy, and a trial that was interrupted after its first epoch, re-queued and resumed
by the next run. Each reproduces epoch by epoch; a record that does not describe the run is caught.
"""

from __future__ import annotations

import json
import re
import shlex
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import search.progress  # noqa: F401 - see the note below
from helpers import load, reader_storage, writer_storage
from search import record
from search.data import check_data
from search.export.__main__ import main as export_main
from search.export.target import default_export_dir
from search.optuna_compat import finished_trial_writable
from search.run import main as run_main
from search.run import parse_settings
from search.study import WorkerInterrupted
from search.trial_loop import run_trials, start_run
from search.workers import StopRequest

pytestmark = pytest.mark.slow  # trains models end to end: the full suite runs it, the fast subset does not

# search.progress.TrialReporter's `out` defaults to the sys.stdout of the moment the module was
# first imported. Imported lazily by the first in-process run, that is one test's capsys stream,
# closed when the test ends, and the next in-process run fails writing its trial line to it.
# Importing it here, at collection, binds it to pytest's session-long capture instead.

# 600 training and 200 validation rows, three epochs at most, no pruning: a trial is ~1 s.
CONFIG = """
data: {val_size: 200, train_size: 600}
training: {max_epochs: 3, snapshot_steps: [5]}
pruner: {name: none}
space: {batch_size: [64], hidden_layers: {low: 1, high: 1}, units: {low: 16, high: 32}}
baseline: {batch_size: 64, max_epochs: 3}
"""
ROW = re.compile(r"^\s+(\d+)\s+(\S+)\s+(\S+)$")


def run_args(tmp_path: Path, *extra: str) -> list[str]:
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    return ["--config", str(config), "--storage", f"sqlite:///{tmp_path / 'study.db'}", *extra]


def reproduce(url: str, number: int, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = export_main(["--reproduce", str(number), "--storage", url])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out + err


def printed_table(output: str, number: int) -> list[tuple[float, float]]:
    """The (recorded, reproduced) pairs printed under 'trial N: epoch  recorded   reproduced',
    one per epoch in order."""
    lines = output.splitlines()
    start = lines.index(f"trial {number}: epoch  recorded   reproduced")
    rows = []
    for line in lines[start + 1 :]:
        match = ROW.match(line)
        if match is None:
            break
        assert int(match[1]) == len(rows)
        rows.append((float(match[2]), float(match[3])))
    return rows


def assert_reproduced(output: str, trial: optuna.trial.FrozenTrial) -> None:
    recorded = [trial.intermediate_values[epoch] for epoch in sorted(trial.intermediate_values)]
    rows = printed_table(output, trial.number)
    assert [r for r, _ in rows] == [round(value, 6) for value in recorded]
    assert [p for _, p in rows] == pytest.approx(recorded, abs=1e-6)
    assert f"trial {trial.number} reproduced: every epoch matches" in output
    assert "DIFFERS" not in output


def test_a_trial_stopped_at_the_target_reproduces_and_the_export_says_how(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The baseline reaches 0.5 after its first epoch of three: it stops there, and so does the
    study. The export's reproduce_command, run as written, repeats that trial epoch by epoch."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert run_main(run_args(tmp_path, "--trials", "3", "--target-accuracy", "0.5")) == 0, capsys.readouterr().err
    study = load(url)
    trial = study.trials[0]
    assert len(study.trials) == 1 and trial.state == TrialState.COMPLETE and trial.value >= 0.5
    fit = record.read(trial, record.FIT)
    assert fit["target_accuracy"] == 0.5 and fit["max_epochs"] == 3
    assert len(trial.intermediate_values) == record.epochs_run(trial) == 1  # stopped early, at the target

    code, output = reproduce(url, 0, capsys)
    assert code == 0, output
    assert_reproduced(output, trial)

    metrics = json.loads((default_export_dir("mnist") / "metrics.json").read_text())  # the run's own export
    command = shlex.split(metrics["reproduce_command"])
    assert command[:5] == ["python", "-m", "search.export", "--reproduce", "0"]
    assert command[5:] == ["--study-name=mnist", "--storage", url, "--data-dir", str(mnist_dir)]
    capsys.readouterr()
    assert export_main(command[3:]) == 0  # the command as written, minus the interpreter
    assert_reproduced(capsys.readouterr().out, trial)


class StopAfterFirstEpoch(threading.Event):
    """A stop request that lands once the running trial has reported its first epoch.

    `StopOnRequest` asks `is_set()` after every batch; this event answers from the storage, so the
    request comes at the first batch of epoch 1, as a Ctrl-C there would, on any machine speed.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self.storage = reader_storage(url)

    def is_set(self) -> bool:
        if not super().is_set():
            running = self.storage.get_all_trials(self.storage.get_study_id_from_name("mnist"), states=(TrialState.RUNNING,))
            if any(trial.intermediate_values for trial in running):
                self.set()
        return super().is_set()


def test_a_trial_resumed_after_an_interruption_reproduces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 0 is interrupted after epoch 0 and queued again; the next run resumes the copy
    (trial 1) from that epoch's checkpoint. Trained again from scratch, it gives every epoch's
    recorded value. A record that is not what the trial ran with is caught: exit 1, DIFFERS."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    argv = run_args(tmp_path, "--trials", "1", "--target-accuracy", "none", "--no-export")
    settings = parse_settings(argv)
    started = start_run(settings, url, check_data(settings.data))  # what search.run does before its trials
    stop = StopRequest()
    stop.event = StopAfterFirstEpoch(url)
    with pytest.raises(WorkerInterrupted):
        run_trials(settings, url, stop, split=started.split)
    trials = load(url).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert len(trials[0].intermediate_values) == 1 and trials[0].user_attrs[record.DIED] == record.INTERRUPTED

    assert run_main(argv) == 0, capsys.readouterr().err  # the resume
    trials = load(url).trials
    retry = trials[1]
    assert retry.state == TrialState.COMPLETE and record.retried_from(retry) == 0
    assert retry.user_attrs[record.RESUMED_FROM_EPOCH] == 1 and len(retry.intermediate_values) == 3
    assert retry.intermediate_values[0] == trials[0].intermediate_values[0]  # replayed, not retrained

    code, output = reproduce(url, 1, capsys)
    assert code == 0, output
    assert_reproduced(output, retry)
    code, output = reproduce(url, 0, capsys)  # the interrupted attempt itself has no result to reproduce
    assert code == 2 and "trial 0 is fail, not finished" in output

    # the record says the trial ran with a 1000-epoch budget: a nearly flat cosine schedule
    storage = writer_storage(url)
    with finished_trial_writable(storage):
        storage.set_trial_system_attr(retry._trial_id, record.FIT, {**record.read(retry, record.FIT), "max_epochs": 1000})
    code, output = reproduce(url, 1, capsys)
    assert code == 1, output
    assert "trial 1 DIFFERS from the recorded values" in output
    rows = printed_table(output, 1)
    assert len(rows) == 3 and rows[0][0] == rows[0][1]  # epoch 0 runs at the full rate under either schedule
    assert [r for r, _ in rows] == [round(retry.intermediate_values[epoch], 6) for epoch in range(3)]
    assert any(r != p for r, p in rows[1:])


def test_the_reproduce_command_names_a_study_whose_name_starts_with_a_dash() -> None:
    """`--study-name -rf` as two words: argparse took `-rf` for an option, so the command the
    report printed failed with "expected one argument"."""
    import shlex

    import optuna

    from search.export.__main__ import parse_args
    from search.export.reproduce import reproduce_command

    study = optuna.create_study(study_name="-rf")
    words = shlex.split(reproduce_command(study, 2, "sqlite:////tmp/x.db"))
    args = parse_args(words[3:])
    assert (args.study_name, args.reproduce, args.study_storage) == ("-rf", 2, "sqlite:////tmp/x.db")


def test_a_refit_uses_the_thread_count_the_trial_trained_with_and_compares_every_metric(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CPU sums depend on the thread count: a trial trained with one thread per worker DIFFERED when
    `--reproduce` ran in a shell with two. The trial records it, the refit uses it (and gives this
    process its own back). And the verdict reads every recorded metric: on a small validation set
    accuracy moves in coarse steps, and a refit with other losses passed as "every epoch matches"."""
    import torch

    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert run_main(run_args(tmp_path, "--trials", "2", "--target-accuracy", "none", "--no-export")) == 0, capsys.readouterr().err
    trial = load(url).trials[1]  # the first DNN: a hidden layer, whose sums split over threads
    assert record.read(trial, record.TRAINED_ON) == {"device": "cpu", "threads": 1}  # the suite runs with OMP_NUM_THREADS=1
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code, output = reproduce(url, 1, capsys)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert code == 0, output
    assert_reproduced(output, trial)
    assert "losses included" in output

    history = record.history(trial)
    history[1] = {**history[1], "val/loss": history[1]["val/loss"] + 0.001}  # accuracy untouched
    storage = writer_storage(url)
    with finished_trial_writable(storage):
        storage.set_trial_system_attr(trial._trial_id, record.HISTORY, history)
    code, output = reproduce(url, 1, capsys)
    assert code == 1, output
    assert re.search(r"trial 1 DIFFERS from the recorded values: val/loss at epoch 1 \(\S+ recorded, \S+ reproduced\)", output), output


def test_the_reproduce_command_names_a_relative_sqlite_file_by_its_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--storage sqlite:///rel.db` went into the report as written, and its reproduce command, run
    from anywhere but the folder the search started in, said "no study database at rel.db"."""
    import optuna

    from search.export.reproduce import reproduce_command

    monkeypatch.chdir(tmp_path)
    words = shlex.split(reproduce_command(optuna.create_study(study_name="s"), 0, "sqlite:///runs/rel.db"))
    assert words[words.index("--storage") + 1] == f"sqlite:///{tmp_path / 'runs' / 'rel.db'}"
