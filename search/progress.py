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

from search import record
from search.resume import retry_of
from search.stopping import FINISHED

PARAMS_WIDTH = 56  # "dnn 1024-1024-1024-1024 drop=0.50 adamw lr=1.0e-02 bs=256": the widest


def describe_params(params: dict[str, object]) -> str:
    """Key parameters in a short, stable order: 'dnn 512-128 drop=0.21 adam lr=1.2e-03 bs=128'."""
    if not params:
        return "(no parameters: failed before sampling)"
    parts = [str(params.get("classifier", "?"))]
    layers = int(params.get("hidden_layers", 0) or 0)  # type: ignore[call-overload]
    if layers:
        parts.append("-".join(str(params.get(f"units_l{i + 1}")) for i in range(layers)))
        parts.append(f"drop={float(params.get('dropout', 0.0)):.2f}")  # type: ignore[arg-type]
    parts.append(str(params.get("optimizer", "?")))
    parts.append(f"lr={float(params.get('learning_rate', float('nan'))):.1e}")  # type: ignore[arg-type]
    parts.append(f"bs={params.get('batch_size', '?')}")
    return " ".join(parts)


def failure_note(trial: FrozenTrial, trials: list[FrozenTrial]) -> str:
    """Why a trial failed, in words, and what became of it."""
    retry = retry_of(trials, trial)
    if trial.user_attrs.get(record.DIED) == "interrupted":
        cause = "interrupted by a stop request"
    elif trial.params:
        cause = "its worker died (no heartbeat)"
    else:
        cause = "failed before training"
    then = f"retried as trial {retry.number}" if retry is not None else "not retried"
    return f"{cause}; {then}"


def trial_line(trial: FrozenTrial, trials: list[FrozenTrial] | None = None, done: int | None = None, budget: int | None = None) -> str:
    """'trial  12 [ 13/100] dnn 512-128 ... val_acc=0.9712 epochs=3 complete 8.1s'."""
    count = f" [{done:>{len(str(budget))}}/{budget}]" if done is not None and budget is not None else ""
    head = f"trial {trial.number:>3}{count} {describe_params(trial.params):<{PARAMS_WIDTH}}"
    epochs = record.epochs_run(trial)
    if trial.state == TrialState.FAIL:
        return f"{head} val_acc={record.last_value(trial):.4f} epochs={epochs} failed: {failure_note(trial, trials or [])}"
    seconds = trial.duration.total_seconds() if trial.duration else float("nan")
    resumed = record.read(trial, record.RESUMED_FROM_EPOCH)
    tail = f" (resumed after epoch {resumed})" if resumed else ""
    return f"{head} val_acc={record.last_value(trial):.4f} epochs={epochs} {trial.state.name.lower():<8} {seconds:5.1f}s{tail}"


class TrialReporter:
    """Prints each finished trial once, whichever process ran it, and advances the bar.

    A failed trial is printed once its retry is visible, or one update later: Optuna fails a
    dead worker's trial and queues its retry in two steps, and the line should name the retry.
    """

    def __init__(self, study: optuna.Study, budget: int, out: TextIO = sys.stdout) -> None:
        self.out = out
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
