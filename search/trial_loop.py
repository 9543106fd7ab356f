"""One search run's processes: open the study on its data, then run trials in this process or in
K spawned workers until a stop rule holds.

The runner (search/run.py) checks every input first and then calls `start_run`; the data split
is read before the storage is opened, so bad data creates no database.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from lightning_modules.data.datasets import DATASETS
from lightning_modules.data.sources import DataSource
from lightning_modules.data.split import DataSplit
from lightning_modules.device import CUDA_VISIBLE_DEVICES, Device, configure_torch, physical_ids, worker_visible_devices
from lightning_modules.errors import UserInputError, error_line
from search import record
from search.artifact_stores import location_for_run, open_store
from search.data import DataIdentity, check_split_sizes, data_identity, load_split
from search.failures import EXIT_STORAGE_FAILED, describe_storage_failure, quiet_storage_failures_in_threads, storage_failure
from search.paths import checkpoints_dir
from search.promotion import queue_owed_promotions
from search.redaction import message_secrets, redact
from search.settings import Settings
from search.stopping import FINISHED, stop_reason, waits_for_running
from search.storage import open_study_storage, storage_guard
from search.studies import quiet_optuna
from search.study import (
    TrialCallback,
    WorkerInterrupted,
    open_study,
    run_worker,
    study_status,
)
from search.study_identity import require_same_data, require_same_settings
from search.warm_start import WarmStart
from search.workers import StopRequest, WorkerPool


def stored_settings(settings: Settings, url: str, source: DataSource) -> dict[str, Any]:
    """The settings as the study records them: the storage URL with its secrets masked, and the
    data as an absolute path when it was found through the environment or a relative path, so
    `python -m search.export` finds it from any folder and shell."""
    raw = settings.model_dump(mode="json")
    raw["study"]["storage"] = redact(url)
    for section, key in (("study", "artifact_store"), ("warm_start", "storage")):
        if raw[section][key] is not None:
            raw[section][key] = redact(raw[section][key])
    data = raw["data"]
    if source.kind == "csv" or (data["source"] and data["source"].lower() not in DATASETS and source.path.is_dir()):
        data["source"] = str(source.path.resolve())  # a name stays a name: fashion-mnist's folder read later was checked as MNIST's
    elif not source.download:
        data["data_dir"] = str(source.path.resolve())
    return raw


@dataclass(frozen=True)
class StartedRun:
    study: optuna.Study
    created: bool
    split: DataSplit
    identity: DataIdentity
    first_line: str
    nothing_to_do: str | None  # why no new trial will start (now or at all), with what to do about it


def _storage(settings: Settings, url: str) -> optuna.storages.RDBStorage:
    from search.resume import RetryDeadTrials

    study = settings.study
    return open_study_storage(url, heartbeat_seconds=study.heartbeat_seconds, grace_seconds=study.stale_after_seconds, on_stale=RetryDeadTrials())


def _nothing_to_do(study: optuna.Study, settings: Settings) -> str | None:
    reason = stop_reason(study, settings.study)
    if reason is None:
        return None
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    if reason.startswith("budget") and waits_for_running(study, settings.study.trials):  # run_worker waits: "nothing to run" was untrue
        return (
            f"the budget of {settings.study.trials} trials is taken by finished trials and {running} marked running "
            "(another worker's, or a run's that stopped): waiting for them; one whose worker is gone is retried here "
            f"once it has been silent {settings.study.stale_after_seconds} s"
        )
    if reason.startswith("target"):
        hint = "to search on, raise --target-accuracy or pass --target-accuracy none"
    else:  # the budget counts finished trials: a study may hold more than this run's --trials
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        hint = f"to search on, pass a --trials larger than {max(finished, settings.study.trials)}"
    return f"nothing to run: {reason}; {hint}"


def device_words(device: Device, settings: Settings) -> str:
    """Where the run trains, for its first line: "on cuda:0 (NVIDIA H200), 4 per GPU", "on the CPU (2 threads per worker)"."""
    if device.kind == "cpu":
        return f"on the {device.description}"
    shared = f", up to {settings.training.workers_per_device} per GPU" if settings.study.workers > 1 else ""
    return f"on {device.description}{shared}"


def start_run(
    settings: Settings, url: str, source: DataSource, device: Device | None = None, warm: WarmStart | None = None,
    entering_study: Callable[[], None] = lambda: None,
) -> StartedRun:
    """Load the data, open (or create) the study on it, record what it runs with; `device` is
    the one search.run resolved and checked (None: the CPU), `warm` the warm start it read.
    `entering_study` runs once the data is loaded, before the study is touched: search.run's
    raises KeyboardInterrupt there if a stop came (a Ctrl-C at start-up created the study)."""
    device = device or Device("cpu", (), "CPU")
    split = load_split(settings.data, source)
    check_split_sizes(split)  # a run's only: an export rebuilds whatever split its study had
    entering_study()
    identity = data_identity(split, source)

    stored = stored_settings(settings, url, source)

    def require_same(study: optuna.Study) -> None:
        require_same_data(study, identity, stored)
        require_same_settings(study, stored)
        open_store(location_for_run(study, settings.study.artifact_store), create=False)  # reached before this run writes: S3
        # without credentials was found by each worker, after the study's settings were rewritten

    created_with = {record.DATA: identity.as_dict(), record.SETTINGS: stored}  # before the uid: a racing run checks them
    opened = open_study(settings, _storage(settings, url), on_existing=require_same, warm=warm, created_with=created_with)
    study = opened.study
    location = location_for_run(study, settings.study.artifact_store)
    if record.DATA not in study.user_attrs:  # a study from before identities were recorded
        study.set_user_attr(record.DATA, identity.as_dict())
    previous, notes = study.user_attrs.get(record.SETTINGS), []
    if not opened.created and isinstance(previous, dict) and isinstance(previous.get("warm_start"), dict):
        stored = {**stored, "warm_start": previous["warm_start"]}  # a warm start runs at creation: a resume's --warm-start-trials never did
        ran = previous["warm_start"].get("trials")
        if settings.warm_start.study is not None and ran != settings.warm_start.trials:
            notes.append(f"the warm start ran once, when the study was created, with {ran} set(s); this run's count ({settings.warm_start.trials}) is unused")
    study.set_user_attr(record.SETTINGS, stored)  # this run's budget, target, workers: what the export reports
    owed = [] if opened.created else queue_owed_promotions(study, settings.study, settings.training)
    pruner, last = settings.pruner, settings.training.max_epochs - 1
    if pruner.name in ("successive_halving", "hyperband") and pruner.min_resource == last:  # a study made so resumes (no refusal)
        notes.append(f"{pruner.name} never prunes here: its first rung is the last epoch (index {last}), which is only reported; "
                     f"a new study with --max-epochs {last + 2} or more would prune")
    notes += [f"trial {n} is trained longer first: the promotion it earned had no room in the run that finished it" for n in owed]
    status = study_status(study)
    target = settings.study.target_accuracy
    data = settings.data
    first_line = (
        f"{'created' if opened.created else 'resumed'} study {study.study_name!r} in {redact(url)}: "
        f"{status.finished} finished trials ({status.complete} complete, {status.pruned} pruned), "
        f"budget {settings.study.trials}, target {target if target is not None else 'none'}; "
        f"data {identity.source}: {identity.sizes()} (validation {data.val_fraction:g} of the training rows, "
        f"at most {data.val_size:,}); {settings.study.workers} worker(s) {device_words(device, settings)}"
        + (f"; artifacts in {location}" if location.shared else "")
        + "".join(f"\nnote: {note}" for note in notes)
    )
    return StartedRun(study, opened.created, split, identity, first_line, _nothing_to_do(study, settings))


def configure_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_trials(
    settings: Settings, url: str, stop: StopRequest, callbacks: Sequence[TrialCallback] = (), split: DataSplit | None = None,
    device: str = "cpu", deadline: float | None = None,
) -> str:
    """This process's trials until a stop rule holds, on `device` ("cpu", "cuda:N"); returns why it stopped.
    `deadline` (time.monotonic) is the run's --timeout, the same for every worker of a pool.

    The split moves to the device here, once for every trial of this process. Lightning is
    imported here, where trials train, so a runner that only spawns workers never imports it."""
    from search.objective import make_objective

    if split is None:
        split = load_split(settings.data)
    else:
        configure_torch(1)
    split = split.to(device)
    study = open_study(settings, _storage(settings, url)).study
    store = open_store(location_for_run(study, settings.study.artifact_store))
    objective = make_objective(settings, split, store, checkpoints_dir(), stop.event, device)
    still_there = storage_guard(url)
    try:
        return run_worker(study, objective, settings, callbacks, stop_event=stop.event, storage_check=still_there, deadline=deadline)
    except Exception as error:
        if storage_failure(error) is not None:  # a file deleted under the run reads as an empty one ("no such table: trials")
            still_there()  # that, not the error it caused, is what to say
        raise


def worker_process(
    stop: StopRequest, settings_json: dict[str, Any], url: str, threads: int, device: str, deadline: float | None, index: int,
) -> None:
    """Body of a spawned worker: its own storage connection, data split and trials. A GPU worker
    sees one GPU (its CUDA_VISIBLE_DEVICES, set by the pool), so `device` is "cuda:0" there."""
    settings = Settings.model_validate(settings_json)
    configure_worker(threads)
    quiet_optuna()
    quiet_storage_failures_in_threads()
    try:
        run_trials(settings, url, stop, device=device, deadline=deadline)
    except WorkerInterrupted:
        sys.exit(stop.exit_code)
    except UserInputError as error:  # the database file replaced under the run (storage_guard): one line, not a traceback
        print(f"error: worker {index}: {error_line(str(error))}", file=sys.stderr, flush=True)
        sys.exit(EXIT_STORAGE_FAILED)
    except Exception as error:  # a full disk or a failed database: one line, as the runner says it, not a traceback
        cause = storage_failure(error)
        if cause is None:
            raise
        print(f"error: worker {index}: {describe_storage_failure(cause, message_secrets(url))}", file=sys.stderr, flush=True)
        sys.exit(EXIT_STORAGE_FAILED)


def worker_environments(settings: Settings, device: Device) -> list[dict[str, str]]:
    """Per worker, the environment it starts with: on GPUs, its one GPU round-robin; on the CPU, nothing."""
    if device.kind == "cpu":
        return [{} for _ in range(settings.study.workers)]
    ids = worker_visible_devices(settings.study.workers, physical_ids(device.indices), settings.training.workers_per_device)
    return [{CUDA_VISIBLE_DEVICES: gpu} for gpu in ids]


def _tolerant(poll: Callable[[], None]) -> None:
    """The runner's report of what its workers finished: a database that fails under it (locked
    past its timeout, a dropped connection) is the workers' to tell, each in one line; aborting
    here killed healthy workers mid-trial. The report catches up once the database answers."""
    try:
        poll()
    except Exception as error:
        if storage_failure(error) is None:
            raise


def run_worker_pool(
    settings: Settings, url: str, stop: StopRequest, study: optuna.Study, on_poll: Any, device: Device | None = None,
    deadline: float | None = None,
) -> list[int]:
    """K spawned workers share the study; this process reports what they finish and relays signals.
    No more are started than the budget has trials left to start (one at least: it waits for
    running trials, whose retries it runs): each spent seconds importing torch to find nothing
    to do, beside the ones training. The threads per worker stay those of the K asked for."""
    device = device or Device("cpu", (), "CPU")
    threads = configure_torch(settings.study.workers)
    left = settings.study.trials - len(study.get_trials(deepcopy=False, states=FINISHED))  # running ones may be dead: retried here
    if max(1, left) < settings.study.workers:
        if left > 0:  # none: "nothing to run" was said, and the one worker waits for the running trials
            print(f"note: starting {left} of the {settings.study.workers} workers: the budget has {left} trial(s) left to finish", flush=True)
        settings = settings.model_copy(update={"study": settings.study.model_copy(update={"workers": max(1, left)})})
    worker_device = "cuda:0" if device.kind == "cuda" else "cpu"
    pool = WorkerPool(
        worker_process, (settings.model_dump(mode="json"), url, threads, worker_device, deadline), settings.study.workers, stop,
        worker_environments(settings, device),
    )
    still_there = storage_guard(url)  # the runner's own connection reads a deleted file on: its workers' check is not its
    codes = pool.run(lambda: _tolerant(on_poll))
    if stop.event.is_set():
        raise WorkerInterrupted
    still_there()
    return codes
