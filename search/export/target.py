"""The checks before any export work: the folder an export writes (a run's, before any trial
trains: one holding a user's files, or another study's export, was found only after the whole
search), and the study it reads (one this tool can export, found only after the data had loaded).

Light (no torch, Lightning or matplotlib): the runner checks it beside workers still starting, and
`python -m search.export` answers a bad --out or study before it imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from lightning_modules.errors import UserInputError, check_path_length, has_control_character
from search import record
from search.export.errors import ExportError
from search.export.files import FILES, export_identity
from search.export.folder import ExportIdentity, check_target, read_marker
from search.paths import exports_dir, inside, study_dir_name
from search.settings import Settings
from search.space import CLASSIFIER_PARAM

NOT_OURS = "nothing was written: export a study python -m search.run made"


def default_export_dir(study_name: str) -> Path:
    """exports/<study folder>: the study's name made safe and unique (search/paths.py)."""
    return exports_dir() / study_dir_name(study_name)


def check_made_here(study: Any) -> None:
    """Refuse a study this tool did not make, before anything reads a trial's value or the data.

    One objective: a study of several has no single value per trial (Optuna raised a RuntimeError,
    shown as a traceback). Made by mnist-search: some finished trial has the classifier parameter,
    which every trial of a search has (search/space.py: sampled, baseline, first DNN, warm start
    and promotion alike). Not the recorded settings: a study run before they were recorded has none
    and exports with the defaults (record.study_settings), while a foreign study's best was
    reported as "trial 0 has no recorded hyperparameters; it never started training", after the
    full data had loaded. A study with no finished trial yet is judged by `check_completed`."""
    name = study.study_name
    if len(study.directions) != 1:
        raise ExportError(f"study {name!r} has {len(study.directions)} objectives, so it is not a mnist-search study "
                          f"(one objective: validation accuracy); {NOT_OURS}")
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    if finished and not any(CLASSIFIER_PARAM in trial.params for trial in finished):
        settings = "" if study.user_attrs.get(record.SETTINGS) else ", and it records no mnist-search settings"
        raise ExportError(f"study {name!r} was not made by mnist-search (none of its {len(finished)} finished trials has the "
                          f"{CLASSIFIER_PARAM!r} parameter every trial of a search has{settings}); {NOT_OURS}")


def check_completed(study: Any) -> None:
    """A study with nothing to export, said from one read of the study: it was said only after
    torch was imported and the full data set loaded."""
    if not any(t.value is not None for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))):
        raise ExportError(f"study {study.study_name!r} has no completed trial yet; run python -m search.run first")


def check_outside_exports(out_dir: Path) -> None:
    """Refuse a folder inside an export folder (one whose marker this tool wrote, any study's).

    An export replaces its folder whole and refuses one holding what it did not write: --out
    exports/a/sub was accepted, and the next export of `a` then refused its own folder as holding
    "files an export did not write (sub)". A folder that would hold an export folder needs no check
    here: `check_target` accepts only a missing, empty or export folder, and an export holds no folder."""
    for parent in out_dir.parents:
        try:
            held = read_marker(parent)
        except ExportError:  # no marker (or not one of ours): not an export folder
            continue
        raise ExportError(f"{out_dir} lies inside {parent}, the export of {held.describe()}, which each export of it replaces "
                          "whole; nothing was changed: pass --out a folder outside every export folder")


def checked_target(study: Any, out_dir: Path | str | None) -> Path:
    """The export folder, absolute ("." has no name to stage a sibling beside), once it is known
    to be one an export may write (`check_target`): before anything else is opened or written."""
    if out_dir is not None:
        check_path_length(out_dir, "--out")
        if has_control_character(str(out_dir)):  # the "exported ... ->" line split in two
            raise ExportError(f"--out {str(out_dir)!r:.80} holds a control character (a line break, ...); name a folder without one")
    target = Path(os.path.abspath(out_dir)) if out_dir is not None else default_export_dir(study.study_name)
    check_outside_exports(target)
    check_target(target, FILES, export_identity(study))
    return target


def check_export_target(settings: Settings, url: str, study: Any = None) -> None:
    """Before the study is opened (`study` None): what the folder holds, and that an export there
    is of the study this run resumes, read from `url` without creating anything (a new study's
    folder holding another database's study of that name was refused only once the study had
    been made). Once the study is opened: that an export there is its own."""
    if not settings.export:
        return
    from search.studies import recorded_attrs

    name, store = settings.study.name, settings.study.artifact_store
    target = default_export_dir(name)
    if store is not None and "://" not in store and inside(Path(store), target):  # found by the export, after the search
        raise UserInputError(f"--artifact-store {store} lies in {target}, the folder this run exports to and replaces whole; "
                             "pass another --artifact-store, or --no-export")
    attrs = recorded_attrs(url, name) if study is None and target.is_dir() else None
    new = study is None and attrs is None
    uid = None if attrs is None or attrs.get(record.UID) in (None, "") else str(attrs[record.UID])
    identity = export_identity(study) if study is not None else ExportIdentity(name, uid)
    try:
        check_outside_exports(target)
        check_target(target, FILES, identity)
    except ExportError as error:
        problem = str(error).rpartition("; ")[0] or str(error)  # the export's own fix names its --out
        if new and "holds the export of" in problem:
            problem += ", a study this database does not hold yet"
        kept = "nothing was changed" if study is None else "the study is saved and no trial has run"
        raise UserInputError(f"{problem}; {kept}: move it aside, or pass --no-export or another --study-name") from None
