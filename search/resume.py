"""Resume bookkeeping in one place: where a trial's checkpoint lives, how a retry finds it, and
how an interrupted trial is queued again.

A trial's checkpoint is keyed by its first attempt's number (`record.CHECKPOINT_KEY`) inside a
folder named by the study's name and uid, so every retry of it (after Ctrl-C, a kill, or a
dead machine's heartbeat going stale) resumes the same file, and a new study that reuses the
name of a deleted one never picks up the old one's files. Each epoch's checkpoint is written to
a local working file and then copied to the study's artifact store under the same name
(`TrialCheckpoint`): the store's copy is the one a retry on any machine resumes.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
import uuid
from pathlib import Path

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from lightning_modules.metric_names import EPOCH, MONITOR
from search import record
from search.optuna_compat import ArtifactStore, retry_attrs
from search.paths import study_dir_name

CHECKPOINTS = "checkpoints"  # the store's folder (or key prefix) for running trials' checkpoints
COPY_CHUNK = 1 << 20


def new_study_uid() -> str:
    return uuid.uuid4().hex[:12]


def _checkpoint_name(study: optuna.Study, key: int) -> tuple[str, str]:
    uid = study.user_attrs.get(record.UID, "")
    return study_dir_name(study.study_name) + (f"-{uid}" if uid else ""), f"trial-{key}.ckpt"


def checkpoint_path(checkpoint_dir: Path, study: optuna.Study, key: int) -> Path:
    """The local per-epoch checkpoint of trial `key` (its first attempt) of `study`."""
    folder, name = _checkpoint_name(study, key)
    return checkpoint_dir / folder / name


def checkpoint_artifact_id(study: optuna.Study, key: int) -> str:
    """The same checkpoint's id in the artifact store: checkpoints/<study folder>-<uid>/trial-<key>.ckpt."""
    folder, name = _checkpoint_name(study, key)
    return f"{CHECKPOINTS}/{folder}/{name}"


class TrialCheckpoint:
    """One trial's checkpoint: a local working file, shared through the artifact store.

    `upload` (EpochCheckpoint's hook) overwrites the store's copy after every epoch, so the store
    keeps only the latest; `fetch` brings it back for a retry, on any machine; `close` removes
    both once the trial is finished, or keeps them for the retry of an interrupted one.
    """

    def __init__(self, path: Path, store: ArtifactStore, artifact_id: str) -> None:
        self.path = path
        self.store = store
        self.artifact_id = artifact_id
        self.upload_seconds = 0.0
        self.in_store = False  # whether this attempt uploaded or fetched a copy

    def upload(self, saved: Path) -> None:
        start = time.perf_counter()
        with saved.open("rb") as content:
            self.store.write(self.artifact_id, content)
        self.upload_seconds += time.perf_counter() - start
        self.in_store = True

    def fetch(self) -> bool:
        """Replace the local file with the store's copy; False (the local file untouched) when the store has none."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.download")
        try:
            with self.store.open_reader(self.artifact_id) as reader, tmp.open("wb") as out:
                shutil.copyfileobj(reader, out, COPY_CHUNK)
            os.replace(tmp, self.path)
        except ArtifactNotFound:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        self.in_store = True
        return True

    def close(self, trial: optuna.Trial, *, keep: bool) -> None:
        """Record what the uploads cost; remove the checkpoint unless a retry will resume it."""
        record.write(trial, record.CHECKPOINT_SECONDS, round(self.upload_seconds, 4))
        if keep:
            return
        self.path.unlink(missing_ok=True)
        if self.in_store:
            try:
                self.store.remove(self.artifact_id)
            except ArtifactNotFound:
                pass


def clear_local_checkpoints(study: optuna.Study, checkpoint_dir: Path) -> int:
    """Remove this machine's working checkpoints of trials no attempt is left to resume (none of
    them running or queued), and the study's folder once empty; returns how many went.

    A trial that died here and was retried on another machine left its file here for good, and
    every study left its folder. Only working copies go: a retry fetches the artifact store's."""
    folder = checkpoint_path(checkpoint_dir, study, 0).parent
    if not folder.is_dir():
        return 0
    live = {int(record.read(t, record.CHECKPOINT_KEY, t.number)) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))}
    removed = 0
    for path in folder.glob("trial-*.ckpt"):
        key = path.name.removeprefix("trial-").removesuffix(".ckpt")
        if key.isascii() and key.isdigit() and int(key) not in live:
            path.unlink(missing_ok=True)
            removed += 1
    try:
        folder.rmdir()  # only when empty: a live trial's file, or a download under way, keeps it
    except OSError:
        pass
    return removed


def checkpoint_key(trial: optuna.Trial) -> int:
    """The first attempt's number, carried by every retry (copied attributes)."""
    return int(record.read(trial, record.CHECKPOINT_KEY, trial.number))


def resume_point(trial: optuna.Trial, checkpoint: Path, hyperparams: dict[str, object]) -> Path | None:
    """The checkpoint of an earlier attempt of this trial, replayed into the trial's reports.

    A checkpoint that cannot be read, or that was written for other hyperparameters, is not
    resumed (and not deleted: it may not be ours); the trial starts from epoch 0.
    """
    from lightning_modules.training import read_checkpoint_summary

    if not checkpoint.is_file():
        return None
    try:
        summary = read_checkpoint_summary(checkpoint)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint only costs the epochs it held
        return None
    if summary.hyperparams != hyperparams:
        return None
    for row in summary.history:
        trial.report(row[MONITOR], step=int(row[EPOCH]))
    record.record_epochs(trial, summary.history)
    record.write(trial, record.RESUMED_FROM_EPOCH, len(summary.history))
    return checkpoint


def queued_retries(study: optuna.Study) -> list[int]:
    """The attempts whose retries wait in the queue (each resumes from its checkpoint if the search goes on)."""
    waiting = (record.retried_from(t) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    return [number for number in waiting if number is not None]


MAX_DEATHS = 3  # times a dead worker's trial is retried before it stays failed


class RetryDeadTrials(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker died (its heartbeat went stale), after each of the
    trial's first MAX_DEATHS deaths; a further death leaves it failed. Optuna's own limit counts
    every earlier attempt (`record.earlier_attempts`), where `requeue` puts the stop requests too: three Ctrl-C's
    and one kill -9 left a trial failed for good, its checkpoint orphaned, though it had died once."""

    def __init__(self, max_deaths: int = MAX_DEATHS) -> None:
        super().__init__(max_retry=None)
        self.max_deaths = max_deaths

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        deaths = int(trial.system_attrs.get(record.DEATHS, 0)) + 1
        if deaths > self.max_deaths:
            return
        counted = copy.copy(trial)  # the retry carries the count in the attributes Optuna copies to it
        counted.system_attrs = {**trial.system_attrs, record.DEATHS: deaths}
        super().__call__(study, counted)


def requeue(trial: optuna.Trial, died: str = record.INTERRUPTED) -> None:
    """Queue a copy of an interrupted trial (same params, seeds and checkpoint key) for the next
    worker; `died` says why this attempt ended (record.DIED).

    The copy carries Optuna's retry link, as `RetryFailedTrialCallback` writes it for a dead
    worker's trial, so both kinds of retry read the same way.
    """
    system = {k: v for k, v in record.read_all_system(trial).items() if k not in (record.HISTORY, record.CHECKPOINT_SECONDS)}
    system = retry_attrs(system, trial.number)
    trial.study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k not in (record.HISTORY, record.RESUMED_FROM_EPOCH)},
            system_attrs=system,
        )
    )
    record.write(trial, record.DIED, died)


def retry_of(trials: list[FrozenTrial], failed: FrozenTrial) -> FrozenTrial | None:
    """The trial that retries `failed`, if one was queued."""
    for trial in trials:
        if record.retried_from(trial) == failed.number:
            return trial
    return None


def duplicate_attempt(trials: list[FrozenTrial], trial: FrozenTrial | optuna.Trial) -> FrozenTrial | None:
    """Another attempt at the same first trial that finished, or runs with a lower number: an
    attempt handed back on a full disk whose worker could not then mark it failed is retried
    twice, by its hand-back and by the heartbeat check, and both copies (or their own retries)
    would train. Attempts are matched by the first attempt's number, which every retry carries."""
    origin = record.first_attempt(trial)
    if origin is None:
        return None
    for other in trials:
        if other.number == trial.number or record.first_attempt(other) != origin:
            continue
        if other.state in (TrialState.COMPLETE, TrialState.PRUNED) or (other.state == TrialState.RUNNING and other.number < trial.number):
            return other
    return None


def return_to_queue(trial: optuna.Trial) -> None:
    """Put a retry that stepped aside (another trial held the last slot) back in the queue, with
    everything it carries (its fixed parameters, seeds, checkpoint key and retry link), so the
    attempt it retries is still run."""
    trial.study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,  # a queued retry carries its parameters already (see requeue)
            distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k != record.SURPLUS},
            system_attrs=record.read_all_system(trial),
        )
    )

