"""Stop rules as queries on a study: the budget of finished trials, the target accuracy, the timeout.

They read the storage, not process state, so every worker of a study (on any machine) sees the
same answer. Training's own early stop at the target is `fit(target_accuracy=...)`; the
callback that ends a trial when another worker reached the target is `StopAtStudyTarget`
(search/trial_callbacks.py); both use `trial_at_target` and the value it compares.
"""

from __future__ import annotations

import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from search import record
from search.settings import StudyConfig

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SurplusTrial(Exception):
    """A trial that started after the budget was spent or the target reached: it steps aside."""


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def remaining_budget(study: optuna.Study, budget: int) -> int:
    """Trials still to start: the budget counts finished trials, and running ones will finish."""
    used = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    return budget - len(used)


def over_budget(study: optuna.Study, budget: int, retry: bool = False) -> bool:
    """Asked by a trial that just started: are more trials finished or running than the budget?

    Two workers that both saw one slot left both start a trial; the one whose check sees the
    other's trial steps aside, so the budget holds exactly without a lock (if both see each
    other, both step aside and the loop tries again). A retry of a dead or interrupted trial
    (`retry`) has the slot before a freshly sampled trial: it yields only to finished trials and
    to other running retries, so the last slot never drops a queued retry. A fresh trial counts
    the retries waiting in the queue too: a dead worker's trial is failed first and its retry
    queued after (Optuna's `fail_stale_trials`), so a fresh trial sampled in between took the
    freed slot, the retry took it again, and a study of 8 ended with 9 finished trials when
    another machine died (over a network's latency, 3 times in 4; 0 in 4 since). This narrows
    the race to a fresh trial whose check falls between that failure and that queueing, a few
    database round trips, and does not close it: the study may then end one trial over.
    """
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING, TrialState.WAITING))
    used = [t for t in trials if t.state != TrialState.WAITING]
    if not retry:
        return len(used) + sum(t.state == TrialState.WAITING and record.retried_from(t) is not None for t in trials) > budget
    if len(used) <= budget:
        return False
    return sum(t.state in FINISHED or record.retried_from(t) is not None for t in used) > budget


def waits_for_running(study: optuna.Study, budget: int) -> bool:
    """Whether a run whose budget is spent waits for running trials (to retry one whose worker
    died): only while finished trials alone fall short of it; past that, they are another run's."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return bool(running) and len(finished_trials(study)) < budget


def trial_at_target(study: optuna.Study, target: float | None) -> FrozenTrial | None:
    """The first completed (not pruned) trial whose value reaches the target, if any."""
    if target is None:
        return None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.value is not None and trial.value >= target:
            return trial
    return None


def stop_reason(study: optuna.Study, config: StudyConfig, deadline: float | None = None) -> str | None:
    """Why no further trial should start, or None to go on."""
    if (hit := trial_at_target(study, config.target_accuracy)) is not None:
        return f"target reached by trial {hit.number} ({hit.value:.4f} >= {config.target_accuracy})"
    if remaining_budget(study, config.trials) <= 0:
        return f"budget of {config.trials} finished trials spent"
    if deadline is not None and time.monotonic() >= deadline:
        return f"timeout of {config.timeout:g} s reached"
    return None


def next_step(study: optuna.Study, config: StudyConfig, deadline: float | None) -> tuple[str | None, bool, bool]:
    """The dead trials failed (retried); then whether a stop rule holds, whether this worker waits
    for running trials, and whether any runs: every read of the loop but the trial's, in one step."""
    optuna.storages.fail_stale_trials(study)
    reason = stop_reason(study, config, deadline)
    if reason is None:
        return None, False, True
    running = bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return reason, reason.startswith("budget") and waits_for_running(study, config.trials), running
