"""A pruner that judges a trial only against trials of its own classifier.

A linear model never reaches a DNN's validation accuracy, so a median taken over both stops
nearly every linear trial after an epoch or two and the baseline family is never tuned.
Optuna's pruners read the study through `get_trials` and `direction`; handing them a view
that lists one classifier's trials keeps their own logic unchanged.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any, cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from search import record
from search.space import CLASSIFIER_PARAM


class _ClassifierTrials:
    """The study as a pruner sees it: every attribute is the study's, the trials are one classifier's,
    promotions left out (their epochs run on another schedule: search/promotion.py)."""

    def __init__(self, study: optuna.Study, classifier: object) -> None:
        self._study = study
        self._classifier = classifier

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if t.params.get(CLASSIFIER_PARAM) == self._classifier and record.promoted_from(t) is None]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class SameClassifierPruner(optuna.pruners.BasePruner):
    """Delegate to `pruner`, comparing a trial with finished trials of the same classifier only."""

    def __init__(self, pruner: optuna.pruners.BasePruner) -> None:
        self.pruner = pruner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if CLASSIFIER_PARAM not in trial.params:
            return self.pruner.prune(study, trial)
        view = _ClassifierTrials(study, trial.params[CLASSIFIER_PARAM])
        return self.pruner.prune(cast(optuna.Study, view), trial)


__all__ = ["SameClassifierPruner"]
