"""Lightning callbacks that connect one trial's training to its study: record, stop at the target."""

from __future__ import annotations

import lightning.pytorch as pl
import optuna

from search import record
from search.stopping import trial_at_target


class EpochRecorder(pl.Callback):
    """Writes the history to the trial after every validation, so pruned trials keep theirs."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        record.record_epochs(self.trial, list(pl_module.history))


class StopAtStudyTarget(pl.Callback):
    """Ends this trial's training once any worker's trial has reached the study's target."""

    def __init__(self, study: optuna.Study, target: float | None) -> None:
        self.study, self.target = study, target

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trial_at_target(self.study, self.target) is not None:
            trainer.should_stop = True
