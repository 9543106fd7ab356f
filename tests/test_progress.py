"""The per-trial lines a person watches: one column for `val_acc=`, and failures that say what retries them.

Trials are real Optuna trials: parameters come from `space.suggest_params` over the widest space
the settings accept, retries from `resume.requeue` and Optuna's own heartbeat retry callback.
"""

from __future__ import annotations

import copy
import io

import optuna
import pytest
from optuna.trial import TrialState
from pydantic import ValidationError

from lightning_modules.hyperparams import OPTIMIZERS
from search import record
from search.progress import (
    MAX_BATCH_SIZE,
    MAX_HIDDEN_LAYERS,
    MAX_UNITS,
    PARAMS_WIDTH,
    TrialReporter,
    describe_params,
    trial_line,
)
from search.resume import RetryDeadTrials, requeue
from search.settings_space import FloatRange, IntRange, SpaceConfig
from search.space import suggest_params

# The widest space a settings file may ask for: the progress module's ceilings, accepted here.
WIDEST = SpaceConfig(
    hidden_layers=IntRange(low=1, high=MAX_HIDDEN_LAYERS),
    units=IntRange(low=1, high=MAX_UNITS, log=True),
    optimizer=list(OPTIMIZERS),
    learning_rate=FloatRange(low=1e-6, high=10.0, log=True),
    batch_size=[32, 128, 256, MAX_BATCH_SIZE],
)


def dnn(*units: int, optimizer: str = "adam", batch_size: int = 128, learning_rate: float = 1e-3) -> dict[str, object]:
    layers = {f"units_l{i + 1}": u for i, u in enumerate(units)}
    return {
        "classifier": "dnn", "hidden_layers": len(units), **layers, "dropout": 0.25,
        "optimizer": optimizer, "learning_rate": learning_rate, "weight_decay": 1e-6, "batch_size": batch_size,
    }


LINEAR = {"classifier": "linear", "optimizer": "adam", "learning_rate": 3e-3, "weight_decay": 1e-6, "batch_size": 128}
PARAM_SETS = [
    LINEAR,
    dnn(64, optimizer="sgd"),
    dnn(512, 128),
    dnn(1024, 1024, 1024, 1024, optimizer="adamw", batch_size=256, learning_rate=1e-2),  # 57 characters: overflowed 56
    dnn(8192, 8192, 8192, optimizer="adamw", learning_rate=10.0),
    dnn(MAX_UNITS, MAX_UNITS, MAX_UNITS, MAX_UNITS, optimizer="adamw", batch_size=MAX_BATCH_SIZE, learning_rate=1e-2),
]


def quiet_study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize")


def run_trial(study: optuna.Study, params: dict[str, object], state: TrialState = TrialState.COMPLETE) -> optuna.Trial:
    """A trial whose parameters the real search space suggested (enqueued, so they are the given ones)."""
    study.enqueue_trial(params)
    trial = study.ask()
    suggest_params(trial, WIDEST)
    record.record_epochs(trial, [{"epoch": 0, "val/acc": 0.9519}])
    if state == TrialState.COMPLETE:
        study.tell(trial, 0.9519)
    return trial


def test_val_acc_stands_in_one_column_for_one_to_four_hidden_layers() -> None:
    study = quiet_study()
    for params in PARAM_SETS:
        run_trial(study, params)
    failed = study.ask()  # failed before sampling: no parameters at all
    study.tell(failed, state=TrialState.FAIL)
    trials = study.get_trials()
    assert [t.params for t in trials[:-1]] == PARAM_SETS  # the space suggested exactly these
    lines = [trial_line(t, trials, done, 100) for done, t in enumerate(trials, start=1)]
    columns = {line.index(" val_acc=") if " val_acc=" in line else line.index(" no epoch finished") for line in lines}
    assert len(columns) == 1, "\n".join(lines)
    for trial, line in zip(trials, lines, strict=True):
        assert describe_params(trial.params) in line  # padded, never cut
    widest = describe_params(trials[len(PARAM_SETS) - 1].params)
    assert widest == "dnn 8192-8192-8192-8192 drop=0.25 adamw lr=1.0e-02 bs=65536"
    assert len(widest) == PARAMS_WIDTH  # the column is no wider than the widest net needs


def test_trial_numbers_past_999_keep_the_column_when_the_budget_has_more_digits() -> None:
    study = quiet_study()
    run_trial(study, dnn(64))
    small = study.get_trials()[0]
    large = copy.deepcopy(small)
    large.number = 1234  # a long study's trial, without running 1,234 of them
    budget = 100_000
    first, later = trial_line(small, None, 1, budget), trial_line(large, None, 1500, budget)
    assert first.index(" val_acc=") == later.index(" val_acc=")
    assert first.startswith("trial      0 [     1/100000] ") and later.startswith("trial   1234 [  1500/100000] ")


@pytest.mark.parametrize(
    "beyond",
    [
        {"hidden_layers": IntRange(low=1, high=MAX_HIDDEN_LAYERS + 1)},
        {"units": IntRange(low=1, high=MAX_UNITS + 1)},
        {"batch_size": [MAX_BATCH_SIZE + 1]},
        {"learning_rate": FloatRange(low=1e-3, high=11.0)},  # 10 is the rate's ceiling: 7 characters
    ],
    ids=["layers", "units", "batch", "learning_rate"],
)
def test_the_settings_refuse_anything_wider_than_the_column(beyond: dict[str, object]) -> None:
    """The width comes from the settings' ceilings; if settings.py raises one, this fails first."""
    with pytest.raises(ValidationError):
        SpaceConfig(**beyond)  # type: ignore[arg-type]


def test_an_interrupted_trial_says_so_and_names_its_retry() -> None:
    study = quiet_study()
    trial = run_trial(study, dnn(256, 64), state=TrialState.RUNNING)
    requeue(trial)  # what the objective does on a stop request
    study.tell(trial, state=TrialState.FAIL)
    trials = study.get_trials()
    retry = next(t for t in trials if t.state == TrialState.WAITING)
    line = trial_line(trials[trial.number], trials, 1, 10)
    assert line.endswith(f" failed: interrupted by a stop request; retried as trial {retry.number}")
    assert "val_acc=0.9519 epochs=1" in line  # the history the attempt reached


def test_a_dead_workers_trial_is_printed_once_its_retry_is_known_and_names_it() -> None:
    study = quiet_study()
    out = io.StringIO()
    reporter = TrialReporter(study, budget=10, out=out)
    trial = run_trial(study, dnn(128), state=TrialState.RUNNING)
    study.tell(trial, state=TrialState.FAIL)  # the heartbeat check fails it ...
    reporter.update(study)
    assert out.getvalue() == ""  # ... and queues its retry a moment later: wait for it
    RetryDeadTrials()(study, study.get_trials()[trial.number])
    retry = study.get_trials()[-1]
    reporter.update(study)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"trial {trial.number:>3} ")
    assert lines[0].endswith(f" failed: found dead (its worker stopped sending heartbeats); retried as trial {retry.number}")
    reporter.close(study)
    assert len(out.getvalue().splitlines()) == 1  # printed once


def test_failures_without_a_retry_say_so_without_guessing_the_heartbeat() -> None:
    study = quiet_study()
    errored = run_trial(study, LINEAR, state=TrialState.RUNNING)
    study.tell(errored, state=TrialState.FAIL)  # e.g. the objective raised
    unsampled = study.ask()
    study.tell(unsampled, state=TrialState.FAIL)
    trials = study.get_trials()
    assert trial_line(trials[0], trials).endswith(" failed: ended without a result (its worker died or raised an error); not retried")
    line = trial_line(trials[1], trials)
    assert "(no parameters: failed before sampling)" in line and line.endswith(" no epoch finished       failed: failed before training; not retried")
    assert "nan" not in line and line.index("failed:") == trial_line(trials[0], trials).index("failed:")  # one column
    RetryDeadTrials()(study, trials[1])  # a run killed as its trial began
    trials = study.get_trials()
    assert trial_line(trials[1], trials).endswith(" failed: found dead (its worker stopped sending heartbeats) before it trained; retried as trial 2")


def test_a_net_pruned_untrained_for_its_cost_shows_no_value() -> None:
    """`val_acc=nan epochs=0 pruned` read like a result; the column says no epoch finished, the
    note why, and `val_acc=` keeps its place on the trained trials' lines."""
    study = quiet_study()
    trained = run_trial(study, dnn(512, 128))
    study.enqueue_trial(dnn(8192, 8192, 8192))
    trial = study.ask()
    suggest_params(trial, WIDEST)
    record.write(trial, record.OVER_COST, 3.25)  # what search/cost.py records before it prunes
    study.tell(trial, state=TrialState.PRUNED)
    trials = study.get_trials()
    line = trial_line(trials[trial.number], trials, 2, 10)
    assert "nan" not in line and "epochs=0" not in line
    assert "no epoch finished" in line and "pruned" in line and "(not trained: 3.25x the median DNN's multiply-adds)" in line
    shown = trial_line(trials[trained.number], trials, 1, 10)
    assert line.index("no epoch finished") == shown.index("val_acc=")
