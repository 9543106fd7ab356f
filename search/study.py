"""Open or resume a study, build its sampler and pruner, and run one worker until a stop rule.

A worker runs one trial per `optimize` call and re-reads the stop rules from the storage
between trials, so the budget and the target hold across processes and across restarts.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_modules.callbacks import TrainingInterrupted
from search.config import PrunerConfig, SamplerConfig, Settings
from search.objective import MAX_EPOCHS_ATTR, SurplusTrial
from search.pruning import SameClassifierPruner
from search.rules import finished_trials, remaining_budget, trial_at_target
from search.space import baseline_params

GC_EVERY_TRIALS = 10  # a full collection costs ~0.3 s; every trial would double tiny trials' time
TrialCallback = Callable[[optuna.Study, FrozenTrial], None]


def build_sampler(config: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    if config.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.n_startup_trials)


def build_pruner(config: PrunerConfig, max_epochs: int) -> optuna.pruners.BasePruner:
    """Hyperband's brackets are its own split of the trials; the median is per classifier."""
    if config.name == "none":
        return optuna.pruners.NopPruner()
    if config.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=config.min_resource, max_resource=max_epochs, reduction_factor=config.reduction_factor
        )
    return SameClassifierPruner(
        optuna.pruners.MedianPruner(n_startup_trials=config.n_startup_trials, n_warmup_steps=config.n_warmup_steps)
    )


@dataclass(frozen=True)
class OpenedStudy:
    study: optuna.Study
    created: bool
    sampler_seed: int


def sampler_seed(seed: int, worker_index: int, n_existing_trials: int) -> int:
    """Seed for this process's sampler: reproducible for a fresh run, and different for each
    worker and for each resume, so neither replays the random startup trials already tried."""
    return seed + 1_000_003 * worker_index + n_existing_trials


def open_study(settings: Settings, storage: optuna.storages.BaseStorage, worker_index: int = 0) -> OpenedStudy:
    """Create the study (with the baseline enqueued) or resume it; never a duplicate."""
    pruner = build_pruner(settings.pruner, settings.training.max_epochs)
    name = settings.study.name
    created = False
    try:
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    except KeyError:
        try:  # only the process whose create succeeds enqueues the baseline, even when workers race
            study = optuna.create_study(study_name=name, storage=storage, pruner=pruner, direction="maximize")
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    if created and settings.baseline.enabled:
        study.enqueue_trial(
            baseline_params(settings.baseline),
            user_attrs={MAX_EPOCHS_ATTR: min(settings.baseline.max_epochs, settings.training.max_epochs)},
            skip_if_exists=True,
        )
    seed = sampler_seed(settings.study.seed, worker_index, 0 if created else len(study.get_trials(deepcopy=False)))
    study.sampler = build_sampler(settings.sampler, seed)
    return OpenedStudy(study, created, seed)


@dataclass(frozen=True)
class StudyStatus:
    complete: int
    pruned: int
    failed: int
    running: int

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def study_status(study: optuna.Study) -> StudyStatus:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return StudyStatus(
        states.count(TrialState.COMPLETE), states.count(TrialState.PRUNED),
        states.count(TrialState.FAIL), states.count(TrialState.RUNNING),
    )


def stop_reason(study: optuna.Study, settings: Settings, deadline: float | None) -> str | None:
    """Why no further trial should start, or None to go on."""
    if (hit := trial_at_target(study, settings.study.target_accuracy)) is not None:
        return f"target reached by trial {hit.number} ({hit.value:.4f} >= {settings.study.target_accuracy})"
    if remaining_budget(study, settings.study.trials) <= 0:
        return f"budget of {settings.study.trials} finished trials spent"
    if deadline is not None and time.monotonic() >= deadline:
        return f"timeout of {settings.study.timeout:g} s reached"
    return None


class WorkerInterrupted(Exception):
    """The worker was asked to stop (Ctrl-C, SIGTERM) and left the study resumable."""


def run_worker(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    settings: Settings,
    callbacks: Sequence[TrialCallback] = (),
    stop_event: threading.Event | None = None,
    poll_seconds: float = 1.0,
    storage_check: Callable[[], None] = lambda: None,
) -> str:
    """Run trials until a stop rule holds; returns the reason it stopped.

    With the budget spent but trials still running elsewhere, the worker waits: if one of
    them dies, its retry is queued (heartbeat) and this worker runs it.
    """
    deadline = time.monotonic() + settings.study.timeout if settings.study.timeout else None
    trials_run = 0
    while True:
        if stop_event is not None and stop_event.is_set():
            raise WorkerInterrupted
        storage_check()
        optuna.storages.fail_stale_trials(study)
        reason = stop_reason(study, settings, deadline)
        if reason is None:
            try:
                study.optimize(objective, n_trials=1, callbacks=list(callbacks), catch=(SurplusTrial,))
            except TrainingInterrupted:
                raise WorkerInterrupted from None
            trials_run += 1
            if trials_run % GC_EVERY_TRIALS == 0:
                gc.collect()  # Trainer/module reference cycles otherwise grow RSS ~1 MB a trial
            continue
        if reason.startswith("budget") and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            time.sleep(poll_seconds)
            continue
        return reason


def best_trials(study: optuna.Study) -> dict[str, FrozenTrial]:
    """The best completed trial overall and per classifier (keys: best, linear, dnn)."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    found: dict[str, FrozenTrial] = {}
    for trial in complete:
        for key in ("best", trial.params.get("classifier", "")):
            if key and (key not in found or trial.value > found[key].value):  # type: ignore[operator]
                found[key] = trial
    return found


__all__ = [
    "OpenedStudy", "StudyStatus", "best_trials", "build_pruner", "build_sampler", "finished_trials",
    "open_study", "run_worker", "stop_reason", "study_status",
]
