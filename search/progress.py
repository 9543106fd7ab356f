"""What a person watching a run sees: one line per finished trial, piped or not, and a progress bar.

Each line carries the count of finished trials against the budget, so progress shows in a log
file too; the bar is drawn only on a terminal. A failed trial's line says why it failed and
which trial retries it.
"""

from __future__ import annotations

import sys
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from lightning_modules.hyperparams import OPTIMIZERS
from search import record
from search.resume import retry_of
from search.space import CLASSIFIER_PARAM
from search.stopping import FINISHED

# The ceilings search/settings.py puts on the space (SpaceConfig refuses more; tests/test_progress.py
# keeps the two in step): the parameter column is as wide as the widest net they allow, so
# `val_acc=` stands in one column whether a trial has one hidden layer or four.
MAX_HIDDEN_LAYERS = 4
MAX_UNITS = 8192
MAX_BATCH_SIZE = 65536
NUMBER_WIDTH = 3  # trial numbers below 1000 align without a budget to size them by
NO_EPOCH_WIDTH = len("val_acc=0.0000 epochs=0")  # "failed" in the column of a trial that reached an epoch


def describe_params(params: dict[str, object]) -> str:
    """Key parameters in a short, stable order: 'dnn 512-128 drop=0.21 adam lr=1.2e-03 bs=128'."""
    if not params:
        return "(no parameters: failed before sampling)"
    parts = [str(params.get(CLASSIFIER_PARAM, "?"))]
    layers = int(params.get("hidden_layers", 0) or 0)  # type: ignore[call-overload]
    if layers:
        parts.append("-".join(str(params.get(f"units_l{i + 1}")) for i in range(layers)))
        parts.append(f"drop={float(params.get('dropout', 0.0)):.2f}")  # type: ignore[arg-type]
    parts.append(str(params.get("optimizer", "?")))
    parts.append(f"lr={float(params.get('learning_rate', float('nan'))):.1e}")  # type: ignore[arg-type]
    parts.append(f"bs={params.get('batch_size', '?')}")
    return " ".join(parts)


def _widest_params() -> dict[str, object]:
    """The longest description the settings allow: a DNN at every ceiling. The rate prints as 7
    characters from 1e-99 up to the settings' 10, dropout (below 1) as 4; a rate under 1e-99
    would only push its own line's tail one column right."""
    units = {f"units_l{i + 1}": MAX_UNITS for i in range(MAX_HIDDEN_LAYERS)}
    return {
        CLASSIFIER_PARAM: "dnn", "hidden_layers": MAX_HIDDEN_LAYERS, **units, "dropout": 0.5,
        "optimizer": max(OPTIMIZERS, key=len), "learning_rate": 1e-2, "batch_size": MAX_BATCH_SIZE,
    }


PARAMS_WIDTH = len(describe_params(_widest_params()))  # "dnn 8192-8192-8192-8192 drop=0.50 adamw lr=1.0e-02 bs=65536"


def failure_note(trial: FrozenTrial, trials: list[FrozenTrial]) -> str:
    """Why a trial failed, in plain words, and which trial retries it (or that none does).

    Three things retry a trial: a stop request, a full or read-only disk or a failing database (each marks why, in
    record.DIED), and Optuna's heartbeat check, which finds a dead worker's trial; a failure
    without a retry may also be an error the objective raised, so its note does not claim the
    heartbeat.
    """
    retry = retry_of(trials, trial)
    died = trial.user_attrs.get(record.DIED)
    if died == record.INTERRUPTED:
        cause = "interrupted by a stop request"
    elif died == record.DISK_ERROR:
        cause = "stopped by a full or read-only disk"
    elif died == record.STORAGE_ERROR:
        cause = "stopped by a failure of the study's database"
    elif retry is not None:
        cause = "found dead (its worker stopped sending heartbeats)" + ("" if trial.params else " before it trained")
    elif not trial.params:
        cause = "failed before training"
    else:
        cause = "ended without a result (its worker died or raised an error)"
    then = f"retried as trial {retry.number}" if retry is not None else "not retried"
    return f"{cause}; {then}"


def trial_line(trial: FrozenTrial, trials: list[FrozenTrial] | None = None, done: int | None = None, budget: int | None = None) -> str:
    """'trial  12 [ 13/100] dnn 512-128 ... val_acc=0.9712 epochs=3 complete 8.1s'.

    The parameters are padded to `PARAMS_WIDTH` and the trial number to the budget's digits, so
    `val_acc=` stands in one column for every line of a run. A description is never cut.
    """
    counted = done is not None and budget is not None
    count = f" [{done:>{len(str(budget))}}/{budget}]" if counted else ""
    number_width = max(NUMBER_WIDTH, len(str(budget))) if counted else NUMBER_WIDTH
    head = f"trial {trial.number:>{number_width}}{count} {describe_params(trial.params):<{PARAMS_WIDTH}}"
    epochs = record.epochs_run(trial)
    # no epoch finished (a failure, a net pruned untrained for its cost): no value to show ("val_acc=nan epochs=0" read as a result)
    reached = f"val_acc={record.last_value(trial):.4f} epochs={epochs}" if epochs else f"{'no epoch finished':<{NO_EPOCH_WIDTH}}"
    if trial.state == TrialState.FAIL:
        return f"{head} {reached} failed: {failure_note(trial, trials or [])}"
    seconds = trial.duration.total_seconds() if trial.duration else float("nan")
    resumed, promoted = record.read(trial, record.RESUMED_FROM_EPOCH), record.promoted_from(trial)
    notes = [f"resumed after epoch {resumed}"] if resumed else []
    notes += [f"trial {promoted} trained longer"] if promoted is not None else []
    over_cost = trial.user_attrs.get(record.OVER_COST)
    notes += [f"not trained: {over_cost:g}x the median DNN's multiply-adds"] if over_cost is not None else []
    tail = f" ({'; '.join(notes)})" if notes else ""
    return f"{head} {reached} {trial.state.name.lower():<8} {seconds:5.1f}s{tail}"


class TrialReporter:
    """Prints each finished trial once, whichever process ran it, and advances the bar.

    A failed trial is printed once its retry is visible, or one update later: Optuna fails a
    dead worker's trial and queues its retry in two steps, and the line should name the retry.
    """

    def __init__(self, study: optuna.Study, budget: int, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout  # read now: a caller may have redirected it
        self.budget = budget
        trials = study.get_trials(deepcopy=False)
        self.done = sum(t.state in FINISHED for t in trials)
        self.seen = {t.number for t in trials if t.state.is_finished()}
        self.deferred: set[int] = set()
        self.bar = tqdm(
            total=budget, initial=min(self.done, budget), unit="trial", desc="study",
            file=sys.stderr, disable=None, leave=False, dynamic_ncols=True,
        )

    def update(self, study: optuna.Study, final: bool = False) -> None:
        trials = study.get_trials(deepcopy=False)
        new = [t for t in trials if t.state.is_finished() and t.number not in self.seen]
        for trial in sorted(new, key=lambda t: t.number):
            waiting_for_retry = trial.state == TrialState.FAIL and retry_of(trials, trial) is None
            if waiting_for_retry and not final and trial.number not in self.deferred:
                self.deferred.add(trial.number)
                continue
            self.seen.add(trial.number)
            if record.is_surplus(trial):
                continue  # stepped aside before training: not a trial of the search
            if trial.state in FINISHED:
                self.done += 1
                self.bar.update(1)
            self.bar.write(trial_line(trial, trials, self.done, self.budget), file=self.out)
            self.out.flush()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.update(study)

    def close(self, study: optuna.Study) -> None:
        self.update(study, final=True)
        self.bar.close()
