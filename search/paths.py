"""Where run state lives on disk, and how a study name becomes a folder name.

Everything sits under the runtime folder (`storage/`, or $MNIST_SEARCH_HOME): the default
SQLite database, the artifact store, per-trial checkpoints and exports. A study name reaches
the disk only through `study_dir_name`, which makes it safe and unique.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import unicodedata
from pathlib import Path

from lightning_modules.errors import UserInputError, check_path_length, expand_home, has_control_character

HOME_ENV = "MNIST_SEARCH_HOME"
DB_NAME = "mnist-search.db"
DEFAULT_HOME = "storage"  # relative: the repository's git-ignored storage/ when run from its root
DEFAULT_DB = f"{DEFAULT_HOME}/{DB_NAME}, or ${HOME_ENV}/{DB_NAME}"  # as help texts say where the default database is
_UNSAFE = re.compile(r"[^\w.-]+")  # \w is Unicode-aware: letters of any script are kept
MAX_DIR_NAME = 80
MAX_DIR_BYTES = 160  # UTF-8 bytes before the hash: with it and a resume uid, well under NAME_MAX (255)
HASH_CHARS = 8
_HASHED = re.compile(rf"-[0-9a-f]{{{HASH_CHARS}}}$")  # what study_dir_name appends


def runtime_dir() -> Path:
    """The folder for the default database, artifacts, checkpoints and exports (git-ignored `storage/`)."""
    home = os.environ.get(HOME_ENV) or DEFAULT_HOME  # set but empty: unset, not the current folder
    check_home_text(home)
    check_path_length(home, HOME_ENV)
    folder = expand_home(home, HOME_ENV).resolve()
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    if not blocker.is_dir():  # every command then said "no study database ... start a search first"
        named = f"{HOME_ENV}={home}" if os.environ.get(HOME_ENV) else "the default run-state folder storage"
        what = "a file" if blocker.is_file() else "a device, pipe or socket"
        raise UserInputError(f"{named} is not a folder ({blocker} is {what}); move it aside or point {HOME_ENV} at a folder")
    return folder


def check_home_text(home: str) -> None:
    """UserInputError for a $MNIST_SEARCH_HOME no one means as a folder: blank (" " made a folder
    named " " in the current one) or holding a control character (a line break split the
    'created study ... in ...' line, and every later line that names the folder)."""
    if not home.strip():
        raise UserInputError(f"{HOME_ENV}={home!r} is blank; unset it (the run state then goes to storage/) or point it at a folder")
    if has_control_character(home):
        raise UserInputError(f"{HOME_ENV}={home[:120]!r} holds a control character (a line break, ...); point it at a folder named without one")


def nearest_existing(path: Path) -> Path:
    """`path`, or the nearest folder above it that exists (a link counts, dangling or not): what a
    command that makes the missing folders on the way must be able to write in."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def default_storage_url() -> str:
    return f"sqlite:///{runtime_dir() / DB_NAME}"


def artifact_dir() -> Path:
    return runtime_dir() / "artifacts"


def exports_dir() -> Path:
    return runtime_dir() / "exports"


def checkpoints_dir() -> Path:
    """Per-epoch checkpoints of running trials, kept until the trial finishes (for resume)."""
    return runtime_dir() / "checkpoints"


def check_run_folders(folders: list[Path]) -> None:
    """UserInputError if one of the folders a run writes in under the runtime folder is a file
    (or anything but a folder), or it (or the folder it would be made in) cannot be written: found
    before the study is made, where it was a traceback after, or a study created and left with
    its seed recorded by a run that could not keep its first checkpoint (a read-only mount). A
    folder still to be made is tried (`_can_make_folder_in`): `os.access` says yes to root
    everywhere, /proc included, where the mkdir then failed after the study was created."""
    tried: set[Path] = set()
    for folder in folders:
        if os.path.lexists(folder) and not folder.is_dir():
            raise UserInputError(f"{folder} is not a folder, and the run keeps its {folder.name} there; move it aside, or point {HOME_ENV} elsewhere")
        target = nearest_existing(folder)
        if not target.is_dir():
            continue  # a file on the way: the runtime folder's own check names it
        problem = None if os.access(target, os.W_OK | os.X_OK) else f"{target} cannot be written (read-only, or not yours)"
        if problem is None and target != folder and target not in tried:
            tried.add(target)
            problem = _can_make_folder_in(target)
        if problem is not None:
            raise UserInputError(
                f"{problem}, and the run keeps its {folder.name} {'there' if target == folder else 'under it'}; "
                f"point {HOME_ENV} at a folder you can write"
            )


def _can_make_folder_in(folder: Path) -> str | None:
    """None if a folder can be made in `folder` (one is made under a name of this process's own
    and removed at once, so nothing is left), else why not."""
    probe = folder / f".mnist-search-probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        probe.mkdir()
    except OSError as error:
        return f"no folder can be made in {folder} ({error.strerror or type(error).__name__})"
    with contextlib.suppress(OSError):  # made, so removable: a failure here is no reason to stop the run
        probe.rmdir()
    return None


def study_dir_name(study_name: str) -> str:
    """A folder name for a study: safe (no separators, no leading dot, bounded length) and unique.

    A name that is already safe is used as it is; any other gets a short hash of the full name,
    so "a b" and "a_b" never share a folder and "../x" stays inside its parent. A safe name that
    already ends like a hash ("a_b-c8687a08") is hashed too, or it could be another name's folder.
    """
    normal = unicodedata.normalize("NFC", study_name)
    safe = _UNSAFE.sub("_", normal).strip("._")[:MAX_DIR_NAME]
    while len(safe.encode("utf-8")) > MAX_DIR_BYTES:  # 80 four-byte letters would pass NAME_MAX
        safe = safe[:-1]
    safe = safe.rstrip("._") or "study"
    if safe == study_name and not _HASHED.search(safe):
        return safe
    return f"{safe}-{hashlib.sha256(study_name.encode('utf-8', 'surrogatepass')).hexdigest()[:HASH_CHARS]}"


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` (resolved) lies in or is `folder` (resolved)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents
