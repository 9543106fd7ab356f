"""Every use of Optuna's private API, in one place; tests/test_optuna_compat.py pins each one.

Each helper says why the public API is not enough. When an Optuna upgrade breaks one, its
test fails by name, and this file is the only one to change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    # 1. The artifact store's type: Optuna exports the stores but not the Protocol they share.
    from optuna.artifacts._protocol import ArtifactStore as ArtifactStore  # noqa: PLC0414
else:
    from optuna.artifacts._protocol import ArtifactStore  # noqa: F401 - re-exported


def study_storage(study: optuna.Study) -> BaseStorage:
    """2. The storage a study object writes through (`Study._storage`; Study exposes no getter).

    For an RDB storage, Optuna wraps it in a cache; this unwraps it, because the cache can hold
    a stale copy of a finished trial and the artifact links must go to the database itself.
    """
    storage = study._storage
    return getattr(storage, "_backend", storage)


def storage_url(study: optuna.Study) -> str | None:
    """The URL of the study's RDB storage, if it has one (for the export's record, redacted there)."""
    backend = study_storage(study)
    return str(backend.url) if isinstance(backend, RDBStorage) else None


@contextmanager
def finished_trial_writable(storage: RDBStorage) -> Iterator[None]:
    """3. Let this storage object add system attributes to a finished trial, for this block only.

    Optuna refuses any attribute on a finished trial (`check_trial_is_updatable`), yet the best
    trial is only known once the study ends; an artifact link is metadata about the trial, not a
    change to its result. The patch is on this one object and undone on exit.
    """
    storage.check_trial_is_updatable = lambda trial_id, trial_state: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del storage.check_trial_is_updatable


def trial_system_attrs(trial: optuna.Trial | FrozenTrial) -> dict[str, Any]:
    """5. A trial's system attributes; a running `Trial` exposes none (read via `Trial._trial_id`).

    The trial record keeps machine-only values (the per-epoch history, the hyperparameters as a
    dict, the checkpoint key) there: optuna-dashboard shows every user attribute in the trial
    table, and a one-line history made that page thousands of pixels wide.
    """
    if isinstance(trial, FrozenTrial):
        return trial.system_attrs
    return trial.storage.get_trial(trial._trial_id).system_attrs


def set_trial_system_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    """6. Write a system attribute of a running trial (`Trial.set_system_attr` was removed in
    Optuna 5; the storage method is public, the trial's id is not)."""
    trial.storage.set_trial_system_attr(trial._trial_id, key, value)


def enqueued(trial: optuna.Trial | FrozenTrial) -> bool:
    """7. Whether the trial's parameters were fixed by `Study.enqueue_trial` (the baseline, the
    first DNN, a warm start, a promotion) rather than chosen by the sampler: Optuna
    keeps them in the undocumented system attribute `fixed_params` and has no public test."""
    return "fixed_params" in trial_system_attrs(trial)


def trial_state(trial: optuna.Trial) -> TrialState:
    """8. A running `Trial`'s state as stored now (read via `Trial._trial_id`): another worker's
    heartbeat check may have failed it, and queued its retry, while this worker was paused."""
    return trial.storage.get_trial(trial._trial_id).state


def link_artifact(storage: BaseStorage, target: optuna.Study | FrozenTrial, artifact_id: str, filename: str, mimetype: str) -> None:
    """9. Link an artifact already in the store, under an id the caller chose, to a study or trial.

    `upload_artifact` draws a random id, so two machines exporting one study at once each linked
    every file, and the dashboard listed each twice (a later re-export refreshed one copy only).
    A link is the system attribute `artifacts:<id>` holding `ArtifactMeta` as JSON, which is what
    `get_all_artifact_meta` reads; one id per file gives one link however many write it.
    """
    import json
    import mimetypes
    from dataclasses import asdict

    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX, ArtifactMeta

    meta = ArtifactMeta(artifact_id=artifact_id, filename=filename, mimetype=mimetype, encoding=mimetypes.guess_type(filename)[1])
    key, value = ARTIFACTS_ATTR_PREFIX + artifact_id, json.dumps(asdict(meta))
    if isinstance(target, FrozenTrial):
        storage.set_trial_system_attr(target._trial_id, key, value)
    else:
        storage.set_study_system_attr(target._study_id, key, value)


class SilentTrialAwareStorage(RDBStorage):
    """4. RDBStorage whose stale check (the private `_get_stale_trial_ids`, which
    `optuna.storages.fail_stale_trials` calls) also catches RUNNING trials that never wrote a
    heartbeat, read through the private `optuna.storages._rdb.models`; and whose heartbeat
    survives a database error (`record_heartbeat`, public, overridden).

    Optuna only fails trials whose last heartbeat is old; a worker that died (or whose disk
    filled) before its first heartbeat would leave its trial RUNNING forever, and a resumed
    study would wait for it.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        """A beat the database refused (a dropped connection, a server restart, a full disk) is
        skipped: Optuna's heartbeat thread has no handler, so one passing error ended it for the
        rest of the trial, which other workers then failed as stale and retried while it still
        trained. Beats that keep failing leave the trial stale, as a dead worker's would be."""
        from optuna.exceptions import StorageInternalError
        from sqlalchemy.exc import SQLAlchemyError

        try:
            super().record_heartbeat(trial_id)
        except (StorageInternalError, SQLAlchemyError):
            forget_broken_session(self)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        from optuna.storages._rdb import models

        stale = super()._get_stale_trial_ids(study_id)
        grace = timedelta(seconds=self.grace_period or 2 * (self.heartbeat_interval or 1))
        now = datetime.now()
        with self.scoped_session() as session:
            running = session.query(models.TrialModel).filter(
                models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING
            )
            for trial in running:
                silent = not trial.heartbeats
                if silent and trial.datetime_start is not None and now - trial.datetime_start > grace:
                    stale.append(trial.trial_id)
        return sorted(set(stale))


def retry_attrs(system_attrs: Mapping[str, Any], of: int) -> dict[str, Any]:
    """11. The system attributes of a retry of attempt `of`, given that attempt's own: the retry
    link `RetryHeartbeatStaleTrialCallback` writes for a dead worker's trial, under Optuna's
    undocumented keys: `failed_trial`, the first attempt's number (a retry of a retry keeps it),
    and `retry_history`, every earlier attempt's number, oldest first. Optuna writes the link only
    inside the callback, which queues the retry itself with every attribute of the trial; a stop
    request's retry (`resume.requeue`) leaves some out, and carries the same link so that both
    kinds of retry read alike (`retry_link`)."""
    retry = {"failed_trial": of, "retry_history": [], **system_attrs}
    retry["retry_history"] = [*(retry["retry_history"] or []), of]  # a new list: the attempt's own stays as it was
    return retry


def retry_link(trial: optuna.Trial | FrozenTrial) -> tuple[int | None, list[int]]:
    """11. The first attempt a trial retries (None for a first attempt) and every earlier attempt,
    oldest first ([] for a first attempt), read by the callback's own readers
    (`retried_trial_number`, `retry_history`: experimental, their notes silenced by
    `studies.quiet_optuna`), which take a FrozenTrial; a running `Trial`'s is read via
    `Trial._trial_id`, as in 5."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    frozen = trial if isinstance(trial, FrozenTrial) else trial.storage.get_trial(trial._trial_id)
    first = Retry.retried_trial_number(frozen)
    return (None if first is None else int(first)), [int(number) for number in Retry.retry_history(frozen) or []]


def forget_broken_session(storage: BaseStorage) -> None:
    """10. Drop this thread's database session (`RDBStorage.scoped_session`, an attribute Optuna
    says is not for users): when the server dropped the connection mid-transaction and Optuna's
    rollback failed too, every later call in the thread raised "Can't reconnect until invalid
    transaction is rolled back", so a worker (or its heartbeat) never recovered once the server
    was back. The next call opens a new session, and a new connection."""
    if isinstance(storage, RDBStorage):
        with contextlib.suppress(Exception):  # closing a session whose connection is gone may fail too: it is dropped anyway
            storage.scoped_session.remove()


__all__ = [
    "ArtifactStore", "SilentTrialAwareStorage", "enqueued", "finished_trial_writable", "forget_broken_session", "link_artifact", "retry_attrs",
    "retry_link", "set_trial_system_attr", "storage_url", "study_storage", "trial_state", "trial_system_attrs",
]
