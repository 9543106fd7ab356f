"""The trial objective: parameters -> model -> fit with pruning -> recorded metrics and weights.

Data is split once per worker and shared by every trial; a trial only wraps the tensors with
its own batch size, so per-trial set-up costs milliseconds.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import optuna
from optuna.artifacts import upload_artifact
from optuna.artifacts._protocol import ArtifactStore
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback

from lightning_modules.callbacks import EpochCheckpoint, StopOnRequest, TrainingInterrupted
from lightning_modules.classifiers import MONITOR
from lightning_modules.data import DataSplit
from lightning_modules.training import fit, read_checkpoint_history
from search.config import Settings
from search.model_files import save_model_file
from search.rules import over_budget, trial_at_target
from search.space import suggest_params

MODEL_ARTIFACT_ATTR = "model_artifact_id"
SURPLUS_ATTR = "surplus"
MAX_EPOCHS_ATTR = "max_epochs"  # set on an enqueued trial (the baseline) to train it for fewer epochs


class SurplusTrial(Exception):
    """A trial that started after the budget was spent or the target reached: it steps aside."""


class EpochRecorder(pl.Callback):
    """Writes the history to the trial after every validation, so pruned trials keep theirs."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.trial.set_user_attr("history", pl_module.history)
        self.trial.set_user_attr("epochs_run", len(pl_module.history))


class StopAtStudyTarget(pl.Callback):
    """Ends this trial's training once any worker's trial has reached the study's target."""

    def __init__(self, study: optuna.Study, target: float | None) -> None:
        self.study, self.target = study, target

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trial_at_target(self.study, self.target) is not None:
            trainer.should_stop = True


@dataclass(frozen=True)
class TrialSeeds:
    sampler: int
    training: int
    split: int


def trial_seeds(trial: optuna.Trial, settings: Settings, sampler_seed: int) -> TrialSeeds:
    """A retried trial keeps the seeds of the attempt it replaces (copied user attrs)."""
    training = trial.user_attrs.get("seed_training", settings.study.seed + trial.number)
    sampler = trial.user_attrs.get("seed_sampler", sampler_seed)
    return TrialSeeds(int(sampler), int(training), settings.data.split_seed)


def _best_value_of(study: optuna.Study, classifier: str) -> float:
    values = [
        t.value
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and t.params.get("classifier") == classifier
    ]
    return max(values, default=float("-inf"))


def requeue(trial: optuna.Trial) -> None:
    """Queue a copy of an interrupted trial (same params and seeds) so the next worker resumes it."""
    trial.study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k != "history"},
            system_attrs={"failed_trial": trial.number},
        )
    )


def resume_point(trial: optuna.Trial, checkpoint: Path) -> Path | None:
    """The checkpoint of an earlier attempt of this trial, replayed into the trial's reports."""
    if not checkpoint.is_file():
        return None
    try:
        history = read_checkpoint_history(checkpoint)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint only costs the epochs it held
        checkpoint.unlink(missing_ok=True)
        return None
    for row in history:
        trial.report(row[MONITOR], step=int(row["epoch"]))
    trial.set_user_attr("history", history)
    trial.set_user_attr("resumed_from_epoch", len(history))
    return checkpoint


def make_objective(
    settings: Settings,
    split: DataSplit,
    artifact_store: ArtifactStore,
    sampler_seed: int = 0,
    checkpoint_dir: Path | None = None,
    stop_event: threading.Event | None = None,
) -> Callable[[optuna.Trial], float]:
    """The function Optuna calls per trial; closes over data shared by all of a worker's trials.

    Each epoch leaves a checkpoint in `checkpoint_dir`, keyed by the trial's first attempt, so
    a retried trial (after a kill or Ctrl-C) continues from its last finished epoch.
    """
    target = settings.study.target_accuracy
    stop_event = stop_event or threading.Event()

    def objective(trial: optuna.Trial) -> float:
        if over_budget(trial.study, settings.study.trials) or trial_at_target(trial.study, target):
            trial.set_user_attr(SURPLUS_ATTR, True)
            raise SurplusTrial(f"trial {trial.number} started after the study's stop rule held")
        hp = suggest_params(trial, settings.space)
        seeds = trial_seeds(trial, settings, sampler_seed)
        key = int(trial.user_attrs.get("checkpoint_key", trial.number))
        for name, value in (
            ("seed_sampler", seeds.sampler), ("seed_training", seeds.training), ("seed_split", seeds.split),
            ("checkpoint_key", key), ("hyperparams", hp.to_dict()),
        ):
            trial.set_user_attr(name, value)
        checkpoint = (checkpoint_dir or Path(tempfile.gettempdir())) / trial.study.study_name / f"trial-{key}.ckpt"
        callbacks = [
            EpochRecorder(trial),
            PyTorchLightningPruningCallback(trial, monitor=MONITOR),
            StopAtStudyTarget(trial.study, target),
            EpochCheckpoint(checkpoint),
            StopOnRequest(stop_event),
        ]
        try:
            result = fit(
                hp,
                split,
                seed=seeds.training,
                max_epochs=int(trial.user_attrs.get(MAX_EPOCHS_ATTR, settings.training.max_epochs)),
                callbacks=callbacks,
                snapshot_steps=settings.training.snapshot_steps,
                target_accuracy=target,
                resume_from=resume_point(trial, checkpoint),
            )
        except TrainingInterrupted:
            requeue(trial)
            raise
        except optuna.TrialPruned:
            checkpoint.unlink(missing_ok=True)
            raise
        value = result.metrics[MONITOR]
        trial.set_user_attr("train_seconds", round(result.seconds, 3))
        trial.set_user_attr("param_count", result.model.parameter_count())
        if value > _best_value_of(trial.study, hp.classifier):
            # Keep weights only for a new best of its classifier: bounded disk, and the export
            # (best overall, best linear, best DNN) never has to retrain.
            with tempfile.TemporaryDirectory() as tmp:
                path = save_model_file(result.model, Path(tmp) / f"trial-{trial.number}.safetensors", result.snapshots)
                artifact_id = upload_artifact(
                    artifact_store=artifact_store, file_path=str(path), study_or_trial=trial,
                    mimetype="application/octet-stream",
                )
            trial.set_user_attr(MODEL_ARTIFACT_ATTR, artifact_id)
        checkpoint.unlink(missing_ok=True)
        return value

    return objective
