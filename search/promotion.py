"""Multi-fidelity by promotion: a trial that becomes its classifier's best at the study's epoch
budget is trained once more, from scratch, with a longer budget (`training.promote_factor` times
`training.max_epochs`).

Why: at 8 epochs every net of the space plateaus at 0.983-0.985 validation accuracy
(docs/BENCHMARKS.md section 6); the same net trained longer gains more than further search, but
a longer budget for every trial halves the number of nets tried. Promoting only new bests keeps
the cheap exploration and spends long runs where they pay, as successive halving's top rung does.

A promotion is an ordinary trial of the study (the same parameters, `max_epochs` and
`promoted_from` user attributes), so it is resumed, retried, counted in the budget, shown in the
dashboard and exported like any other. It is not pruned, and the median pruner leaves it out of
the trials it compares with (search/pruning.py): its epochs, at a learning rate annealed over the
longer budget, do not compare with the base-budget trials' ones. Only base-budget trials compete
for promotion, so a promotion is earned against like-for-like results, once per trial. The TPE
sampler does see a promotion, as one more observation of a winner's parameters: it samples
nearer the winners, which is what the extra epochs bought.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search import record
from search.optuna_compat import study_storage
from search.settings import StudyConfig, TrainingConfig
from search.space import CLASSIFIER_PARAM
from search.stopping import remaining_budget, stop_reason


def at_base_budget(trial: FrozenTrial, base_epochs: int) -> bool:
    """Trained with the study's epoch budget as it is now: not enqueued with its own (the baseline,
    a promotion), nor run earlier with another `max_epochs`."""
    fit = record.read(trial, record.FIT) or {}  # none recorded: an objective of its own (tests, tools)
    return record.MAX_EPOCHS not in trial.user_attrs and fit.get("max_epochs", base_epochs) == base_epochs


def promotion_attrs(trials: Sequence[FrozenTrial], finished: FrozenTrial, base_epochs: int, promote_epochs: int | None) -> dict[str, Any] | None:
    """The user attributes of the trial that promotes `finished`, or None where it earns none.

    `finished` earns one if it completed at the base budget with a higher value than every other
    completed base-budget trial of its classifier (the lowest number wins a tie, as in the export),
    and no trial promotes it yet (one dropped as surplus, queued when a stop rule came, does not).
    """
    if (
        promote_epochs is None or finished.state != TrialState.COMPLETE or finished.value is None
        or not at_base_budget(finished, base_epochs)
    ):
        return None
    classifier = finished.params.get(CLASSIFIER_PARAM)
    for other in trials:
        if record.promoted_from(other) == finished.number and not record.is_surplus(other):
            return None
        if (
            other.number != finished.number and _competes(other, base_epochs) and other.params.get(CLASSIFIER_PARAM) == classifier
            and _ranks_above(other, finished)
        ):
            return None
    return {record.MAX_EPOCHS: promote_epochs, record.PROMOTED_FROM: finished.number}


def _competes(trial: FrozenTrial, base_epochs: int) -> bool:
    """Completed with a value at the base budget: a rival for promotion, or a candidate."""
    return trial.state == TrialState.COMPLETE and trial.value is not None and at_base_budget(trial, base_epochs)


def _ranks_above(other: FrozenTrial, trial: FrozenTrial) -> bool:
    """A higher value, or the same from a lower number (as the export breaks a tie)."""
    return other.value > trial.value or (other.value == trial.value and other.number < trial.number)  # type: ignore[operator]


def _best_per_classifier(trials: Sequence[FrozenTrial], base_epochs: int) -> list[FrozenTrial]:
    """The one trial per classifier that can earn a promotion now: its best at the base budget."""
    best: dict[object, FrozenTrial] = {}
    for trial in (t for t in trials if _competes(t, base_epochs)):
        classifier = trial.params.get(CLASSIFIER_PARAM)
        if classifier not in best or _ranks_above(trial, best[classifier]):
            best[classifier] = trial
    return sorted(best.values(), key=lambda t: t.number)


def room_for_one_more(study: optuna.Study, config: StudyConfig, deadline: float | None) -> bool:
    """No stop rule holds and the budget has a slot for another queued trial: otherwise a
    promotion would only wait in the queue after the run (the target reached, the timeout, the
    budget spent by trials already queued, e.g. another worker's promotion)."""
    if stop_reason(study, config, deadline) is not None:
        return False
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    return remaining_budget(study, config.trials) - waiting > 0


class Promoter:
    """A study callback: queue the promotion a finished trial earned, while there is room for it."""

    def __init__(self, config: StudyConfig, training: TrainingConfig, deadline: float | None = None) -> None:
        self.config, self.base_epochs, self.promote_epochs, self.deadline = config, training.max_epochs, training.promote_epochs, deadline

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.promote_epochs is None or trial.state != TrialState.COMPLETE:
            return
        attrs = promotion_attrs(study.get_trials(deepcopy=False), trial, self.base_epochs, self.promote_epochs)
        if attrs is not None and room_for_one_more(study, self.config, self.deadline):
            study.enqueue_trial(trial.params, user_attrs=attrs)


def queue_owed_promotions(study: optuna.Study, config: StudyConfig, training: TrainingConfig) -> list[int]:
    """Queue, at the start of a run and before it samples, the promotions finished trials earned
    but never got, as a run that had room for them would have (their run's budget was spent, its
    --timeout or target came, or the promotion was dropped as surplus): a study run in pieces
    (`--trials 4`, then `--trials 6`) lost the promotion for good and, from there on, ran other
    trials than one run of the same budget. Returns the numbers of the trials promoted."""
    if training.promote_epochs is None:
        return []
    trials, promoted = study.get_trials(deepcopy=False), []
    for trial in _best_per_classifier(trials, training.max_epochs):  # only a best earns one: checking every trial took O(n^2)
        attrs = promotion_attrs(trials, trial, training.max_epochs, training.promote_epochs)
        if attrs is None or not room_for_one_more(study, config, None):
            continue
        study.enqueue_trial(trial.params, user_attrs=attrs)
        promoted.append(trial.number)
        trials = study.get_trials(deepcopy=False)
        for twin in _later_twins(trials, trial.number):  # two machines started at once both queued it: one stays
            _drop_as_surplus(study, twin)
    return promoted


def _later_twins(trials: Sequence[FrozenTrial], number: int) -> list[FrozenTrial]:
    """The queued promotions of trial `number` but the first: read after queueing one, so of two
    runs that queue it at the same moment each sees the other's (whichever reads later drops it)."""
    queued = [t for t in trials if t.state == TrialState.WAITING and record.promoted_from(t) == number]
    return sorted(queued, key=lambda t: t.number)[1:]


def _drop_as_surplus(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Fail a queued trial as surplus, claimed first as a worker pops a queued trial: one another
    worker took is its to run (False)."""
    storage = study_storage(study)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), trial.number)
    try:
        if not storage.set_trial_state_values(trial_id, TrialState.RUNNING):
            return False
        storage.set_trial_user_attr(trial_id, record.SURPLUS, True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # another worker took it and it stepped aside already
    return True


def drop_queued_promotions(study: optuna.Study) -> int:
    """Fail, as surplus, the promotions still queued once a study-wide stop rule holds and nothing
    runs: several workers can each queue one in the same moment, or just before another's trial
    reaches the target, and a queued promotion would otherwise wait after the run and be the first
    trial of a later one, whatever its settings. A promotion that steps aside is dropped the same
    way (it is an extra, not a trial owed like a retry). Returns how many were dropped."""
    queued = [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if record.promoted_from(t) is not None]
    return sum(_drop_as_surplus(study, trial) for trial in queued)


__all__ = ["Promoter", "at_base_budget", "drop_queued_promotions", "promotion_attrs", "queue_owed_promotions", "room_for_one_more"]
