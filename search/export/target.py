"""The folder a run will export to, checked before any trial trains: one holding a user's files,
or another study's export, was found only after the whole search.

Light (no torch, Lightning or matplotlib): the runner checks it beside workers still starting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_modules.errors import UserInputError
from search import record
from search.export.errors import ExportError
from search.export.files import FILES, export_identity
from search.export.folder import ExportIdentity, check_target
from search.paths import exports_dir, inside, study_dir_name
from search.settings import Settings


def check_export_target(settings: Settings, url: str, study: Any = None) -> None:
    """Before the study is opened (`study` None): what the folder holds, and that an export there
    is of the study this run resumes, read from `url` without creating anything (a new study's
    folder holding another database's study of that name was refused only once the study had
    been made). Once the study is opened: that an export there is its own."""
    if not settings.export:
        return
    from search.studies import recorded_attrs

    name, store = settings.study.name, settings.study.artifact_store
    target = exports_dir() / study_dir_name(name)
    if store is not None and "://" not in store and inside(Path(store), target):  # found by the export, after the search
        raise UserInputError(f"--artifact-store {store} lies in {target}, the folder this run exports to and replaces whole; "
                             "pass another --artifact-store, or --no-export")
    attrs = recorded_attrs(url, name) if study is None and target.is_dir() else None
    new = study is None and attrs is None
    uid = None if attrs is None or attrs.get(record.UID) in (None, "") else str(attrs[record.UID])
    identity = export_identity(study) if study is not None else ExportIdentity(name, uid)
    try:
        check_target(target, FILES, identity)
    except ExportError as error:
        problem = str(error).rpartition("; ")[0] or str(error)  # the export's own fix names its --out
        if new and "holds the export of" in problem:
            problem += ", a study this database does not hold yet"
        kept = "nothing was changed" if study is None else "the study is saved and no trial has run"
        raise UserInputError(f"{problem}; {kept}: move it aside, or pass --no-export or another --study-name") from None
