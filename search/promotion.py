"""Multi-fidelity by promotion: a trial that becomes its classifier's best at the study's epoch
budget is trained once more, from scratch, with a longer budget (`training.promote_factor` times
`training.max_epochs`).

Why: at 8 epochs every net of the space plateaus at 0.983-0.985 validation accuracy
(docs/BENCHMARKS.md section 6); the same net trained longer gains more than further search, but
a longer budget for every trial halves the number of nets tried. Promoting only new bests keeps
the cheap exploration and spends long runs where they pay, as successive halving's top rung does.

A promotion is an ordinary trial of the study (the same parameters, `max_epochs` and
`promoted_from` user attributes), so it is resumed, retried, counted in the budget, shown in the
dashboard and exported like any other. It is not pruned: its early epochs, at a learning rate
annealed over the longer budget, do not compare with the base-budget trials' epochs. Only
base-budget trials compete for promotion, so a promotion is earned against like-for-like
results, once per trial.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search import record
from search.pruning import CLASSIFIER_PARAM
from search.settings import StudyConfig
from search.stopping import stop_reason


def at_base_budget(trial: FrozenTrial) -> bool:
    """Trained with the study's epoch budget: not enqueued with its own (the baseline, a promotion)."""
    return record.MAX_EPOCHS not in trial.user_attrs


def promotion_attrs(trials: Sequence[FrozenTrial], finished: FrozenTrial, promote_epochs: int | None) -> dict[str, Any] | None:
    """The user attributes of the trial that promotes `finished`, or None where it earns none.

    `finished` earns one if it completed at the base budget with a higher value than every other
    completed base-budget trial of its classifier (the lowest number wins a tie, as in the export),
    and no trial promotes it yet.
    """
    if promote_epochs is None or finished.state != TrialState.COMPLETE or finished.value is None or not at_base_budget(finished):
        return None
    classifier = finished.params.get(CLASSIFIER_PARAM)
    for other in trials:
        if record.promoted_from(other) == finished.number:
            return None
        if (
            other.number != finished.number and other.state == TrialState.COMPLETE and other.value is not None
            and at_base_budget(other) and other.params.get(CLASSIFIER_PARAM) == classifier
            and (other.value > finished.value or (other.value == finished.value and other.number < finished.number))
        ):
            return None
    return {record.MAX_EPOCHS: promote_epochs, record.PROMOTED_FROM: finished.number}


class Promoter:
    """A study callback: queue the promotion a finished trial earned, unless a stop rule holds
    (after the target or with the budget spent it would only wait in the queue)."""

    def __init__(self, config: StudyConfig, promote_epochs: int | None) -> None:
        self.config, self.promote_epochs = config, promote_epochs

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.promote_epochs is None or trial.state != TrialState.COMPLETE or stop_reason(study, self.config) is not None:
            return
        attrs = promotion_attrs(study.get_trials(deepcopy=False), trial, self.promote_epochs)
        if attrs is not None:
            study.enqueue_trial(trial.params, user_attrs=attrs)


__all__ = ["Promoter", "at_base_budget", "promotion_attrs"]
