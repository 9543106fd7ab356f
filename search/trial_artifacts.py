"""Link an export's files to a finished trial in the artifact store, once per distinct content."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import optuna
from optuna.artifacts import get_all_artifact_meta, upload_artifact
from optuna.artifacts._protocol import ArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

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


@contextmanager
def _finished_trial_writable(storage: RDBStorage) -> Iterator[None]:
    """Let this storage object add system attributes to a finished trial, for this block only.

    Optuna refuses any attribute on a finished trial, yet the best trial is only known once
    the study ends; an artifact link is metadata about the trial, not a change to its result.
    """
    storage.check_trial_is_updatable = lambda trial_id, trial_state: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del storage.check_trial_is_updatable


def attach_artifacts(study: optuna.Study, trial: FrozenTrial, paths: Sequence[Path], store: ArtifactStore) -> tuple[str, dict[str, str]]:
    """Upload files to the artifact store and link them to `trial` (else to the study).

    A file whose identical content is already linked under the same name is not uploaded again,
    so re-exporting an unchanged study adds nothing to the dashboard. Returns (what the files are
    linked to, {file name: artifact id}).
    """
    backend = getattr(study._storage, "_backend", study._storage)  # the cache may hold a stale trial
    if not isinstance(backend, RDBStorage):  # other storages replay the log and drop such links
        target: optuna.Study | FrozenTrial = study
        linked_to = f"study {study.study_name!r}"
        storage = study._storage
    else:
        target, linked_to, storage = trial, f"trial {trial.number}", backend
    existing = {}
    for meta in get_all_artifact_meta(target, storage=storage):
        existing.setdefault(meta.filename, []).append(meta.artifact_id)
    ids: dict[str, str] = {}
    with _finished_trial_writable(backend) if target is trial else nullcontext():
        for path in paths:
            digest = content_digest(path.read_bytes(), path.suffix)
            same = [a for a in existing.get(path.name, []) if _stored_digest(store, a, path.suffix) == digest]
            if same:
                ids[path.name] = same[0]
                continue
            ids[path.name] = upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=target, storage=storage,
                mimetype=ARTIFACT_MIMETYPES.get(path.suffix, "application/octet-stream"),
            )
    return linked_to, ids
