"""Lightning callbacks that connect one trial's training to its study: record, stop at the target."""

from __future__ import annotations

import lightning.pytorch as pl
import optuna
from optuna_integration import PyTorchLightningPruningCallback

from lightning_modules.metric_names import MONITOR
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


class ReportEpochs(pl.Callback):
    """Reports each epoch's validation accuracy to the trial as the pruning callback does (step =
    epoch), but never asks the pruner: for a promotion (search/promotion.py), whose curve the
    dashboard, the note and `--reproduce` read like any other trial's."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        score = trainer.callback_metrics.get(MONITOR)
        if not trainer.sanity_checking and score is not None:
            self.trial.report(float(score), step=pl_module.current_epoch)


class PruneBeforeTheLastEpoch(PyTorchLightningPruningCallback):
    """Optuna's pruning callback until the last epoch, which it only reports: a trial pruned there
    had trained in full, saved nothing, and dropped out of the best, the promotions and the target
    (a median pruner with --max-epochs 1 pruned fully trained trials)."""

    def __init__(self, trial: optuna.Trial) -> None:
        super().__init__(trial, monitor=MONITOR)
        self.report_only = ReportEpochs(trial)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.max_epochs is not None and pl_module.current_epoch >= trainer.max_epochs - 1:
            self.report_only.on_validation_end(trainer, pl_module)
        else:
            super().on_validation_end(trainer, pl_module)


class StopAtStudyTarget(pl.Callback):
    """Ends this trial's training once any worker's trial has reached the study's target."""

    def __init__(self, study: optuna.Study, target: float | None) -> None:
        self.study, self.target = study, target

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trial_at_target(self.study, self.target) is not None:
            trainer.should_stop = True
