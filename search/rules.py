"""Stop rules as queries on a study: the budget of finished trials and the target accuracy.

They read the storage, not process state, so every worker of a study sees the same answer.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def remaining_budget(study: optuna.Study, budget: int) -> int:
    """Trials still to start: the budget counts finished trials, and running ones will finish."""
    used = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    return budget - len(used)


def over_budget(study: optuna.Study, budget: int) -> bool:
    """Asked by a trial that just started: are more trials finished or running than the budget?

    Two workers that both saw one slot left both start a trial; the one whose check sees the
    other's trial steps aside, so the budget holds exactly without a lock (if both see each
    other, both step aside and the loop tries again).
    """
    return len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))) > budget


def trial_at_target(study: optuna.Study, target: float | None) -> FrozenTrial | None:
    """The first completed (not pruned) trial whose value reaches the target, if any."""
    if target is None:
        return None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.value is not None and trial.value >= target:
            return trial
    return None
