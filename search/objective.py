"""The trial objective: parameters -> model -> fit with pruning -> recorded metrics and weights.

Data is split once per worker and shared by every trial; a trial only wraps the tensors with
its own batch size, so per-trial set-up costs milliseconds. Seeds, resume bookkeeping and the
model upload sit behind named helpers, so the main path reads like optuna-examples' objective.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState

from lightning_modules.callbacks import EpochCheckpoint, StopOnRequest
from lightning_modules.data.split import DataSplit
from lightning_modules.device import placement
from lightning_modules.errors import TrainingInterrupted
from lightning_modules.metric_names import MONITOR
from lightning_modules.model_file import save_model_file
from lightning_modules.training import FitResult, fit
from search import record
from search.cost import prune_if_over_cost
from search.failures import disk_failure, storage_failure
from search.optuna_compat import ArtifactStore
from search.resume import (
    TrialCheckpoint,
    checkpoint_artifact_id,
    checkpoint_key,
    checkpoint_path,
    duplicate_attempt,
    requeue,
    resume_point,
    return_to_queue,
)
from search.sampling import seed_scheme, trial_seed
from search.settings import FULL_PRECISION, Settings
from search.space import CLASSIFIER_PARAM, suggest_params
from search.stopping import SurplusTrial, over_budget, trial_at_target
from search.trial_callbacks import EpochRecorder, PruneBeforeTheLastEpoch, ReportEpochs, StopAtStudyTarget


def trial_seeds(trial: optuna.Trial, settings: Settings) -> record.TrialSeeds:
    """Trial n samples with and trains with one seed drawn from (study seed, n) by the study's
    scheme; a retried trial keeps the seeds of the attempt it replaces (copied attributes)."""
    recorded = record.read_seeds(trial)
    if recorded is not None:
        return recorded
    seed = trial_seed(settings.study.seed, trial.number, seed_scheme(trial.study))
    return record.TrialSeeds(seed, seed, settings.data.split_seed)


def fit_arguments(trial: optuna.Trial, settings: Settings) -> dict[str, object]:
    """What `fit` is called with besides the hyperparameters, data, seed and device; recorded on the
    trial so that `python -m search.export --reproduce N` repeats it exactly. The precision is
    recorded only when it is not the default, so default trials keep the record they always had."""
    arguments: dict[str, object] = {
        "max_epochs": int(trial.user_attrs.get(record.MAX_EPOCHS, settings.training.max_epochs)),
        "target_accuracy": settings.study.target_accuracy,
        "snapshot_steps": list(settings.training.snapshot_steps),
    }
    if settings.training.precision != FULL_PRECISION:
        arguments["precision"] = settings.training.precision
    return arguments


def _best_value_of(study: optuna.Study, classifier: str) -> float:
    values = [
        t.value
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and t.params.get(CLASSIFIER_PARAM) == classifier
    ]
    return max(values, default=float("-inf"))


def _keep_model_if_best(trial: optuna.Trial, result: FitResult, classifier: str, store: ArtifactStore) -> None:
    """Keep weights only for a new best of its classifier: bounded disk, and the export (best
    overall, best linear, best DNN) never has to retrain."""
    if result.metrics[MONITOR] <= _best_value_of(trial.study, classifier):
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model_file(
            result.model, Path(tmp) / f"trial-{trial.number}.safetensors", result.snapshots, extra={record.MODEL_TRIAL: str(trial.number)},
        )
        artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype="application/octet-stream")
    record.write(trial, record.MODEL_ARTIFACT, artifact_id)


def _trial_checkpoint(trial: optuna.Trial, key: int, checkpoint_dir: Path, store: ArtifactStore, retry: bool) -> TrialCheckpoint:
    """The trial's checkpoint; a retry first fetches the one its earlier attempt left in the store."""
    checkpoint = TrialCheckpoint(checkpoint_path(checkpoint_dir, trial.study, key), store, checkpoint_artifact_id(trial.study, key))
    if retry:
        checkpoint.fetch()
    return checkpoint


def hand_back(trial: optuna.Trial, checkpoint: TrialCheckpoint | None, cause: BaseException) -> None:
    """Queue a retry of a trial a full or read-only disk, or a failing database, stopped, keeping
    its checkpoint: the trial was not at fault (a database locked for 80 s failed a fully trained
    trial, and no resume retried it). Each step may hit the same failure: then the trial stays
    running, and the heartbeat check retries it on the next run; the failure is what the run
    reports either way."""
    with contextlib.suppress(Exception):
        if checkpoint is not None:
            checkpoint.close(trial, keep=True)
    with contextlib.suppress(Exception):
        requeue(trial, died=record.DISK_ERROR if disk_failure(cause) else record.STORAGE_ERROR)


def make_objective(
    settings: Settings,
    split: DataSplit,
    artifact_store: ArtifactStore,
    checkpoint_dir: Path,
    stop_event: threading.Event | None = None,
    device: str = "cpu",
) -> Callable[[optuna.Trial], float]:
    """The function Optuna calls per trial; closes over data shared by all of a worker's trials
    (already on `device`, "cpu" or "cuda:N", where every trial trains).

    Each epoch leaves a checkpoint in `checkpoint_dir` and a copy in the artifact store
    (search/resume.py), so a retried trial (after a kill or Ctrl-C, on this machine or another
    one sharing the store) continues from its last finished epoch.
    """
    target = settings.study.target_accuracy
    stop_event = stop_event or threading.Event()

    def objective(trial: optuna.Trial) -> float:
        retry = record.retried_from(trial) is not None
        if retry and (twin := duplicate_attempt(trial.study.get_trials(deepcopy=False), trial)) is not None:
            trial.set_user_attr(record.SURPLUS, True)  # a second copy of one retry: never trained, never requeued
            raise SurplusTrial(f"trial {trial.number} retries what trial {twin.number} already runs or ran")
        at_target = trial_at_target(trial.study, target) is not None
        if at_target or over_budget(trial.study, settings.study.trials, retry=retry):
            trial.set_user_attr(record.SURPLUS, True)
            if retry and not at_target:
                return_to_queue(trial)
            raise SurplusTrial(f"trial {trial.number} started after the study's stop rule held")
        hp = suggest_params(trial, settings.space)
        prune_if_over_cost(trial, settings.space.max_cost_ratio)
        seeds, key, arguments = trial_seeds(trial, settings), checkpoint_key(trial), fit_arguments(trial, settings)
        record.record_start(trial, seeds, key, hp.to_dict(), arguments, placement(device))
        checkpoint: TrialCheckpoint | None = None
        try:  # from the checkpoint's fetch to the best weights' upload: a full disk anywhere hands the trial back
            checkpoint = _trial_checkpoint(trial, key, checkpoint_dir, artifact_store, retry)
            promoted = record.promoted_from(trial) is not None  # never pruned: its epochs do not compare (search/promotion.py)
            callbacks = [
                EpochRecorder(trial),
                ReportEpochs(trial) if promoted else PruneBeforeTheLastEpoch(trial),
                StopAtStudyTarget(trial.study, target),
                EpochCheckpoint(checkpoint.path, on_saved=checkpoint.upload),
                StopOnRequest(stop_event),
            ]
            try:
                resume_from = resume_point(trial, checkpoint.path, hp.to_dict())
                result = fit(hp, split, seed=seeds.training, callbacks=callbacks, resume_from=resume_from, device=device, **arguments)  # type: ignore[arg-type]
            except TrainingInterrupted:
                checkpoint.close(trial, keep=True)
                requeue(trial)
                raise
            except optuna.TrialPruned:
                checkpoint.close(trial, keep=False)
                raise
            record.record_result(trial, result.seconds, result.model.parameter_count())
            _keep_model_if_best(trial, result, hp.classifier, artifact_store)
            checkpoint.close(trial, keep=False)
        except Exception as error:
            cause = storage_failure(error)
            if cause is None:
                raise
            hand_back(trial, checkpoint, cause)  # a full disk or a failing database is fixed and resumed
            raise
        return result.metrics[MONITOR]

    return objective
