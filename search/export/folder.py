"""The export folder: built in a temporary sibling and swapped into place, replacing only an export.

A target folder is replaced only when everything in it is a file an export writes; anything
else (a database, the artifact store, a user's files) makes the export refuse, so no export
ever deletes what it did not create.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path

from search.export.errors import ExportError

MARKER = ".mnist-search-export"  # written into every export folder


def check_target(out_dir: Path, export_files: Collection[str]) -> None:
    """Refuse a target that is not a folder of a previous export (or absent, or empty)."""
    if out_dir.is_symlink():
        raise ExportError(f"{out_dir} is a symbolic link; pass --out a real folder")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder; choose another --out")
    allowed = set(export_files) | {MARKER}
    foreign = sorted(entry.name for entry in out_dir.iterdir() if entry.name not in allowed or not entry.is_file() or entry.is_symlink())
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ExportError(
            f"{out_dir} holds files an export did not write ({shown}); nothing was changed: choose another --out"
        )


def staging_dir(out_dir: Path) -> Path:
    """A private temporary folder next to the target, on the same file system."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    except OSError as error:
        raise ExportError(f"cannot create the export folder under {out_dir.parent} ({error.strerror})") from None


def share(folder: Path, study_name: str) -> None:
    """Mark the folder as an export and open it to the umask: mkdtemp makes a private (0700)
    folder and safetensors private files; an export is for sharing."""
    (folder / MARKER).write_text(f"mnist-search export of study {study_name!r}\n", encoding="utf-8")
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def replace_dir(staging: Path, out_dir: Path, export_files: Collection[str]) -> None:
    """Move the finished folder into place; a previous export is swapped out, then deleted."""
    check_target(out_dir, export_files)  # again: the folder may have changed while we worked
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
