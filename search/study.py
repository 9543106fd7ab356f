"""Open or resume a study with its sampler and pruner, and run one worker until a stop rule holds.

A worker runs one trial per `optimize` call and re-reads the stop rules from the storage
between trials, so the budget and the target hold across processes and across restarts.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_modules.errors import UserInputError
from search import record
from search.artifact_stores import parse_location
from search.failures import reconnect_pause
from search.optuna_compat import forget_broken_session, study_storage, trial_state
from search.promotion import Promoter, drop_queued_promotions
from search.pruning import SameClassifierPruner
from search.resume import new_study_uid
from search.sampling import INDEPENDENT, build_sampler, seed_scheme, warm_scheme
from search.settings import PrunerConfig, Settings
from search.space import CLASSIFIER_PARAM, baseline_params, first_dnn_params
from search.stopping import SurplusTrial, next_step
from search.warm_start import WarmStart, enqueue_warm_start, require_same_warm_start

GC_EVERY_TRIALS = 10  # a full collection costs ~0.3 s; every trial would double tiny trials' time
TrialCallback = Callable[[optuna.Study, FrozenTrial], None]


def build_pruner(config: PrunerConfig, max_epochs: int) -> optuna.pruners.BasePruner:
    """Hyperband's brackets are its own split of the trials; the median and successive halving
    compare a trial with its own classifier's trials (search/pruning.py)."""
    if config.name == "none":
        return optuna.pruners.NopPruner()
    if config.name == "successive_halving":
        return SameClassifierPruner(
            optuna.pruners.SuccessiveHalvingPruner(min_resource=config.min_resource, reduction_factor=config.reduction_factor)
        )
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


def _nothing_ran(study: optuna.Study) -> bool:
    """Only queued trials, if any: a study being set up (or whose creator died doing so)."""
    return all(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))


def _wait_for_uid(study: optuna.Study, seconds: float) -> None:
    """Wait until the process that created the study a moment ago has set it up (its uid is set
    last, after the baseline is queued and its settings, data and artifact store recorded), so no
    other process asks for a trial before the baseline is trial 0, or checks itself against the
    study before those are recorded. A creator silent for `seconds` (the time after which a
    silent worker counts as dead) is taken as dead, and the study as this run's to set up."""
    deadline = time.monotonic() + seconds
    while record.UID not in study.user_attrs and time.monotonic() < deadline:
        if not _nothing_ran(study):
            break  # trials ran: an old study, not one being set up
        time.sleep(0.05)


def _still_creating(study: optuna.Study, seconds: float) -> None:
    """The creator's check before each write of its set-up: a run that waited `seconds` for the
    uid took the study over (this one stalled: a paused terminal, a slow database); writing on
    would mix this run's baseline and settings into that run's study."""
    if record.UID in study.user_attrs:
        raise UserInputError(
            f"study {study.study_name!r} was taken over by another run while this one was creating it (this one "
            f"stalled for over {seconds:g} s); run the command again to resume it"
        )


def open_study(
    settings: Settings, storage: optuna.storages.BaseStorage, on_existing: Callable[[optuna.Study], None] = lambda study: None,
    warm: WarmStart | None = None, created_with: Mapping[str, Any] | None = None,
) -> OpenedStudy:
    """Create the study (with its uid and the baseline enqueued) or resume it; never a duplicate.

    `on_existing` checks a study that already exists before anything is written to it. `warm`
    (read by search/warm_start.py) is enqueued after the baseline in a new study, in place of
    the first DNN when it holds a DNN; an existing study must have been created with it.
    `created_with` are user attributes a new study gets before its uid, so a run that opens it
    a moment later (and waits for the uid) checks itself against them.
    """
    pruner = build_pruner(settings.pruner, settings.training.max_epochs)
    sampler = build_sampler(settings.sampler, settings.study.seed)
    name = settings.study.name
    created = False
    try:
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner, sampler=sampler)
    except KeyError:
        try:  # only the process whose create succeeds enqueues the baseline, even when workers race
            study = optuna.create_study(study_name=name, storage=storage, pruner=pruner, sampler=sampler, direction="maximize")
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage, pruner=pruner, sampler=sampler)
    wait = settings.study.stale_after_seconds
    if not created:
        _wait_for_uid(study, wait)
        created = record.UID not in study.user_attrs and _nothing_ran(study)  # its creator died setting it up
    if created:
        _set_up(study, settings, wait, warm, created_with)
    else:
        on_existing(study)
        require_same_warm_start(study, warm)
        if record.UID not in study.user_attrs:  # a study from before uids existed (it has trials that ran)
            study.set_user_attr(record.UID, new_study_uid())
    sampler.scheme = seed_scheme(study)  # a warm-started study's is its own
    return OpenedStudy(study, created)


def _set_up(
    study: optuna.Study, settings: Settings, wait: float, warm: WarmStart | None, created_with: Mapping[str, Any] | None,
) -> None:
    """A new study's first trials and records, the uid last (it says "ready"). Also run by a
    process that takes over a study whose creator died (or stalled `wait` s) setting it up:
    what the creator queued already is not queued twice (`skip_if_exists`)."""
    study.set_metric_names([record.OBJECTIVE_NAME])
    study.set_user_attr(record.SEED_SCHEME, INDEPENDENT if warm is None else warm_scheme(f"{warm.storage}/{warm.study}"))
    _still_creating(study, wait)
    if settings.baseline.enabled:
        study.enqueue_trial(
            baseline_params(settings.baseline),
            user_attrs={record.MAX_EPOCHS: min(settings.baseline.max_epochs, settings.training.max_epochs)},
            skip_if_exists=True,
        )
    if warm is not None:
        enqueue_warm_start(study, warm)
    first_dnn = first_dnn_params(settings.first_dnn)
    if first_dnn is not None and not (warm is not None and warm.has_dnn):
        study.enqueue_trial(first_dnn, skip_if_exists=True)
    if settings.study.artifact_store is not None:
        study.set_user_attr(record.ARTIFACT_STORE, str(parse_location(settings.study.artifact_store)))
    _still_creating(study, wait)
    for key, value in (created_with or {}).items():
        study.set_user_attr(key, value)
    study.set_user_attr(record.UID, new_study_uid())


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


class WorkerInterrupted(Exception):
    """The worker was asked to stop (Ctrl-C, SIGTERM) and left the study resumable."""


class TrialTakenOver(Exception):
    """This worker's trial was failed and retried by another worker's heartbeat check."""


class TakeoverWatch:
    """The objective, noting a trial that was no longer this worker's when it ended: a worker
    paused past `study.stale_after_seconds` (SIGSTOP, a suspended laptop, a frozen VM) finds its
    trial failed by another worker's heartbeat check and retried there. Its next write to the
    trial is refused, and Optuna's tell then raises ValueError("Cannot tell a FAIL trial"),
    which ended the worker with a traceback; `run_worker` drops the result and goes on."""

    def __init__(self, objective: Callable[[optuna.Trial], float]) -> None:
        self.objective = objective
        self.taken: int | None = None  # the number of the last trial taken over

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            value = self.objective(trial)
        finally:
            with contextlib.suppress(Exception):  # an unreachable storage: the objective's own error stands
                if trial_state(trial) != TrialState.RUNNING:
                    self.taken = trial.number
        if self.taken == trial.number:  # a value Optuna cannot tell: its post-processing would fail an assert instead
            raise TrialTakenOver(f"trial {trial.number} was failed and retried elsewhere")
        return value


def _reconnect(study: optuna.Study, error: Exception, lost: int, stop_event: threading.Event | None) -> None:
    """After a lost server connection: a new session, then the pause (`reconnect_pause`)."""
    seconds = reconnect_pause(error, lost)
    forget_broken_session(study_storage(study))
    if stop_event is None:
        time.sleep(seconds)
    elif stop_event.wait(seconds):
        raise WorkerInterrupted


def run_worker(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    settings: Settings,
    callbacks: Sequence[TrialCallback] = (),
    stop_event: threading.Event | None = None,
    poll_seconds: float = 1.0,
    storage_check: Callable[[], None] = lambda: None,
    deadline: float | None = None,
) -> str:
    """Run trials until a stop rule holds; returns the reason it stopped.

    With the budget spent but trials still running elsewhere, the worker waits: if one of
    them dies, its retry is queued (heartbeat) and this worker runs it. Once finished trials
    alone fill the budget, the running ones belong to another run's larger one, which retries
    them: a `--trials 4` run beside a `--trials 100` one waited for all 100.
    """
    # Here, not at the top: opening a study (the runner before it spawns workers, export, a
    # process that only asks for trials) then never pays for importing Lightning.
    from lightning_modules.errors import TrainingInterrupted

    if deadline is None and settings.study.timeout:  # `deadline`: the run's (time.monotonic, one clock for its workers too)
        deadline = time.monotonic() + settings.study.timeout
    callbacks = [*callbacks, Promoter(settings.study, settings.training, deadline)]
    watch = TakeoverWatch(objective)
    trials_run, lost = 0, 0
    while True:
        if stop_event is not None and stop_event.is_set():
            raise WorkerInterrupted
        storage_check()
        try:
            reason, waiting, running = next_step(study, settings.study, deadline)
        except Exception as error:  # noqa: BLE001 - re-raised unless a lost server connection
            _reconnect(study, error, lost, stop_event)
            lost += 1
            continue
        if reason is None:
            watch.taken = None
            try:
                study.optimize(watch, n_trials=1, callbacks=callbacks, catch=(SurplusTrial,))
                lost = 0
            except TrainingInterrupted:
                raise WorkerInterrupted from None
            except ValueError:
                if watch.taken is None:
                    raise
                print(f"note: trial {watch.taken} was retried by another worker: this one's heartbeat went unseen for "
                      f"study.stale_after_seconds ({settings.study.stale_after_seconds} s: a pause, or a database too busy "
                      "to take it); its result here is dropped",
                      file=sys.stderr, flush=True)
            except Exception as error:  # noqa: BLE001 - re-raised unless a lost server connection
                _reconnect(study, error, lost, stop_event)
                lost += 1
            trials_run += 1
            if trials_run % GC_EVERY_TRIALS == 0:
                gc.collect()  # Trainer/module reference cycles otherwise grow RSS ~1 MB a trial
            continue
        if waiting:
            lost = 0  # a recovered connection: the next loss starts the pauses over
            time.sleep(poll_seconds)
            continue
        if not running and not reason.startswith("timeout"):  # the study is done, not just this run
            drop_queued_promotions(study)
        storage_check()  # once more: a file moved during the last trial was read as an empty new one by the report
        return reason


def best_trials(study: optuna.Study) -> dict[str, FrozenTrial]:
    """The best completed trial overall and per classifier (keys: best, linear, dnn)."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    found: dict[str, FrozenTrial] = {}
    for trial in complete:
        for key in ("best", trial.params.get(CLASSIFIER_PARAM, "")):
            if key and (key not in found or trial.value > found[key].value):  # type: ignore[operator]
                found[key] = trial
    return found
