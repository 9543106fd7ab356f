"""Link an export's files to the best trial in the artifact store: one link per file name.

A re-export writes each file's new content into the artifact it linked before, so after any
number of re-runs the dashboard shows each picture once; a file never linked is written under an
id drawn from the study's uid, the trial and the file name, so two machines exporting at once
write one artifact and one link. Where a race of older versions left two links for one name,
both are given the new content: none shows a stale copy. An earlier export's links on a trial
the study now ranks lower stay (its files, not this export's to delete) and are marked superseded.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import optuna
from optuna.artifacts import get_all_artifact_meta
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from search.optuna_compat import ArtifactStore, finished_trial_writable, link_artifact, study_storage
from search.record import EXPORT_SUPERSEDED

# What optuna-dashboard shows on the best trial: the pictures and the model in usable forms.
# Not the .ckpt: it duplicates the safetensors weights in a format that can carry pickles.
ARTIFACT_MIMETYPES = {
    ".png": "image/png", ".onnx": "application/octet-stream", ".safetensors": "application/octet-stream",
    ".json": "application/json", ".csv": "text/csv", ".html": "text/html",
}


def content_digest(data: bytes, suffix: str) -> str:
    """SHA-256 of a file's content; for safetensors, with its JSON header's keys sorted
    (the writer orders the metadata at random, so equal models would look different)."""
    if suffix == ".safetensors" and len(data) >= 8:
        size = int.from_bytes(data[:8], "little")
        try:
            header = json.loads(data[8 : 8 + size])
        except ValueError:
            return hashlib.sha256(data).hexdigest()
        data = json.dumps(header, sort_keys=True).encode() + data[8 + size :]
    return hashlib.sha256(data).hexdigest()


def _stored_digest(store: ArtifactStore, artifact_id: str, suffix: str) -> str | None:
    try:
        with store.open_reader(artifact_id) as reader:
            return content_digest(reader.read(), suffix)
    except (ArtifactNotFound, OSError):
        return None


def attach_artifacts(
    study: optuna.Study, trial: FrozenTrial, files: Mapping[str, BinaryIO] | Sequence[Path], store: ArtifactStore
) -> tuple[str, dict[str, str]]:
    """Link files to `trial` (else to the study): replace the content of a file name linked before,
    upload a new one otherwise. `files`: {file name: an open file}, or paths; each is read when its
    turn comes, so one file at a time is in memory (the exporter opens its own before it swaps
    them into place, where another export's may stand a moment later). Returns (what the files
    are linked to, {file name: artifact id})."""
    backend = study_storage(study)  # the cache may hold a stale copy of the finished trial
    if not isinstance(backend, RDBStorage):  # other storages replay the log and drop such links
        target: optuna.Study | FrozenTrial = study
        linked_to, storage = f"study {study.study_name!r}", backend
    else:
        target, linked_to, storage = trial, f"trial {trial.number}", backend
    linked: dict[str, list[str]] = {}
    for meta in get_all_artifact_meta(target, storage=storage):
        linked.setdefault(meta.filename, []).append(meta.artifact_id)
    ids: dict[str, str] = {}
    with finished_trial_writable(backend) if target is trial else nullcontext():
        for name, source in files.items() if isinstance(files, Mapping) else ((path.name, path) for path in files):
            data = source.read_bytes() if isinstance(source, Path) else source.read()
            suffix = Path(name).suffix
            owned = linked.get(name) or [export_artifact_id(study, None if target is study else trial, name)]
            for artifact_id in owned:  # the content first, then the link: a link never names a missing artifact
                if _stored_digest(store, artifact_id, suffix) != content_digest(data, suffix):
                    store.write(artifact_id, io.BytesIO(data))
            if name not in linked:
                link_artifact(storage, target, owned[0], name, ARTIFACT_MIMETYPES.get(suffix, "application/octet-stream"))
            ids[name] = owned[0]
        if target is trial:
            mark_superseded(study, trial, backend)
    return linked_to, ids


def mark_superseded(study: optuna.Study, exported: FrozenTrial, backend: BaseStorage) -> None:
    """Mark the trials an earlier export linked its files to that rank below `exported` (as the
    study picks its best): the dashboard showed each one's "Best model of study ..." report and
    pictures with nothing saying a better trial had been exported since. Their links and files
    stay: they are that export's, and no export deletes what it did not create.

    Only trials that were the study's best when they finished are looked at (an export's trial
    was the best when exported, so the best of every trial finished before it): a few link
    reads, not one per trial. Called with the finished trials made writable."""
    def rank(t: FrozenTrial) -> tuple[float, int]:
        return float(t.value), -t.number  # type: ignore[arg-type]

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    done.sort(key=lambda t: (t.datetime_complete or datetime.min, t.number))
    leaders: list[FrozenTrial] = []
    best: FrozenTrial | None = None  # the best so far, in the order the trials finished
    for t in done:
        if best is None or rank(t) > rank(best):
            best = t
            leaders += [t] if rank(t) < rank(exported) else []
    text = f"by trial {exported.number} (val_acc {exported.value:.4f}), exported since: this trial's linked files are an export made when it was the best"
    study_id = backend.get_study_id_from_name(study.study_name) if leaders else None
    for t in leaders:
        if t.user_attrs.get(EXPORT_SUPERSEDED) != text and any(m.filename == "metrics.json" for m in get_all_artifact_meta(t, storage=backend)):
            backend.set_trial_user_attr(backend.get_trial_id_from_study_id_trial_number(study_id, t.number), EXPORT_SUPERSEDED, text)


def export_artifact_id(study: optuna.Study, trial: FrozenTrial | None, filename: str) -> str:
    """The artifact id of an export file never linked before: the same on every machine (the study's
    uid, the trial, the file name), so exports racing on one study write one artifact."""
    from search import record

    owner = study.user_attrs.get(record.UID) or study.study_name  # a study made before uids: its name
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"mnist-search:{owner}/{'study' if trial is None else trial.number}/{filename}"))
