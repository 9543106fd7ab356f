"""The export folder: built in a temporary sibling and swapped into place, replacing only an export.

A target folder is replaced only when it is this study's earlier export: it holds the marker
file (`MARKER`) naming the same study, and nothing but files an export writes. A folder without
the marker (a user's own files, even ones named like an export's), another study's export, or
anything else (a database, the artifact store) makes the export refuse, so no export ever
deletes what it did not create or what another study exported. A missing or empty folder is fine.

The marker is one JSON object: the study's name and, when the study has one, its uid (the
random id `search/record.py` sets at creation), so two studies that share a name in different
storages do not replace each other's exports.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from search.export.errors import ExportError
from search.paths import nearest_existing

MARKER = ".mnist-search-export"  # written into every export folder
MARKER_KIND = "mnist-search export"
MAX_MARKER_BYTES = 64 * 1024  # a study name is at most 512 characters; the marker is a few hundred bytes
_LEGACY_PREFIX = "mnist-search export of study "  # the marker before it named the uid: text, name only


@dataclass(frozen=True)
class ExportIdentity:
    """Which study an export folder belongs to: its name, and its uid when it has one."""

    study: str
    uid: str | None = None

    def marker_text(self) -> str:
        return json.dumps({"kind": MARKER_KIND, "study": self.study, "uid": self.uid}, ensure_ascii=False) + "\n"

    def describe(self) -> str:
        """One line, whatever the name and uid hold (repr escapes line breaks)."""
        name = self.study if len(self.study) <= 80 else self.study[:77] + "..."
        uid = self.uid if self.uid is None or (self.uid.isprintable() and len(self.uid) <= 64) else repr(self.uid[:61])
        return f"study {name!r}" + (f" (uid {uid})" if uid else "")

    def same_study(self, other: ExportIdentity) -> bool:
        """`other` (the study exporting now) is the study that wrote this marker.

        Names must match. Uids must match when the marker has one; a marker without a uid
        (written before markers named uids, or for a study without one) is matched by name,
        since a study from before uids gets its uid later (search/study.py).
        """
        return self.study == other.study and (self.uid is None or self.uid == other.uid)


def _parse_marker(text: str) -> ExportIdentity | None:
    """The identity a marker names, or None when it is not a marker this version wrote."""
    if text.startswith(_LEGACY_PREFIX):  # "mnist-search export of study 'name'\n"
        try:
            name = ast.literal_eval(text[len(_LEGACY_PREFIX):].strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
        return ExportIdentity(name) if isinstance(name, str) else None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("kind") != MARKER_KIND or not isinstance(data.get("study"), str):
        return None
    uid = data.get("uid")
    if uid is not None and not isinstance(uid, str):
        return None
    return ExportIdentity(data["study"], uid or None)


def read_marker(folder: Path, shown: Path | None = None) -> ExportIdentity:
    """The identity in `folder`'s marker; ExportError if it is missing, too large or unreadable."""
    shown = shown or folder
    path = folder / MARKER
    fix = "nothing was changed: choose another --out"
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MARKER_BYTES:
            raise ExportError(f"{shown}/{MARKER} is not an export marker (not a small regular file); {fix}")
        with path.open("rb") as handle:
            raw = handle.read(MAX_MARKER_BYTES + 1)
    except FileNotFoundError:
        raise ExportError(f"{shown}/{MARKER} is missing; {fix}") from None
    except OSError as error:
        raise ExportError(f"cannot read {shown}/{MARKER} ({error.strerror}); {fix}") from None
    identity = _parse_marker(raw.decode("utf-8", "replace")) if len(raw) <= MAX_MARKER_BYTES else None
    if identity is None:
        raise ExportError(f"{shown}/{MARKER} is not a marker mnist-search wrote; {fix}")
    return identity


def _shown(names: list[str], more: str = "") -> str:
    """The first few names on one line (one with a line break quoted); `more`: of names unread."""
    first = [name if name.isprintable() else repr(name) for name in names[:3]]
    rest = f" {more}" if more else "" if len(names) <= 3 else f" and {len(names) - 3} more"
    return ", ".join(first) + rest


def _check_contents(folder: Path, export_files: Collection[str], identity: ExportIdentity | None, shown: Path, *, marked: bool = True) -> None:
    """`folder` (shown to the user as `shown`) is empty, or `identity`'s export (any study's when
    None) and nothing else; unless `marked`, a folder of export files without the marker (an
    export being built) passes."""
    allowed = set(export_files) | {MARKER}
    limit = len(allowed) + 2  # an export holds at most len(allowed) entries: a folder of millions is not listed in full
    try:
        entries = list(itertools.islice(folder.iterdir(), limit + 1))
    except OSError as error:
        raise ExportError(f"cannot list {shown} ({error.strerror}); choose another --out") from None
    if not entries:
        return
    unlisted, entries = len(entries) > limit, entries[:limit]  # an entry left unread: foreign for sure once every allowed name is read
    foreign = sorted(entry.name for entry in entries if entry.name not in allowed or not entry.is_file() or entry.is_symlink())
    if foreign:
        more = "" if not unlisted else "and more" if allowed <= {entry.name for entry in entries} else "and perhaps more"
        raise ExportError(f"{shown} holds files an export did not write ({_shown(foreign, more)}); "
                          "nothing was changed: choose another --out")
    if not any(entry.name == MARKER for entry in entries):
        if not marked:
            return
        names = sorted(entry.name for entry in entries)
        raise ExportError(f"{shown} holds {_shown(names)} but no {MARKER} marker, so it is not an export folder; "
                          "nothing was changed: choose another --out (a new or empty folder)")
    held = read_marker(folder, shown)
    if identity is not None and not held.same_study(identity):
        raise ExportError(f"{shown} holds the export of {held.describe()}, not of {identity.describe()}; "
                          "nothing was changed: choose another --out")


def check_target(out_dir: Path, export_files: Collection[str], identity: ExportIdentity | None) -> None:
    """Refuse a target that is not absent, empty, or `identity`'s own previous export (with
    `identity` None, any study's: a run's check before its study exists)."""
    if out_dir.is_symlink():
        raise ExportError(f"{out_dir} is a symbolic link; pass --out a real folder")
    _check_writable_parent(out_dir)
    if not out_dir.exists():
        return
    if _holds_the_current_folder(out_dir):
        raise ExportError(f"{out_dir} is the current folder or holds it, and an export replaces its folder whole: pass --out a new folder, e.g. {out_dir / 'export'}")
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder; choose another --out")
    _check_contents(out_dir, export_files, identity, out_dir)


def _check_writable_parent(out_dir: Path) -> None:
    """The export makes the missing folders on the way to `out_dir` and its staging folder beside
    it, so the nearest folder on that way that exists must be one this process can write in:
    checked before the work, which otherwise failed only at the end (a file where a folder
    should be: "File exists", after seconds of training and drawing)."""
    folder = nearest_existing(out_dir.parent)
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder, so the export cannot be made in {out_dir}; choose another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"{folder} is not writable here (read-only or another user's), so the export cannot be made in "
                          f"{out_dir}; choose another --out")


def _holds_the_current_folder(folder: Path) -> bool:
    """Swapping it would leave the shell that ran the export in a deleted folder."""
    try:
        return Path.cwd().resolve().is_relative_to(folder.resolve())
    except OSError:  # the current folder is gone already
        return False


def _pid_space() -> str:
    """This machine's boot and this process's pid namespace, hashed: two containers (or cloned
    machines) with one host name share an export folder without reading each other's pids as
    their own. "" where Linux's /proc does not say (then nothing is swept)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        space = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return hashlib.sha256(f"{boot}:{space}".encode()).hexdigest()[:8]


def _owner() -> str:
    """This process, as an export's temporary folders name it: `host.space-pid`."""
    return f"{socket.gethostname()}.{_pid_space()}-{os.getpid()}"


def _gone(pid: int) -> bool:
    """No process of ours has this pid; ours is gone too (a leftover named by our pid was left by
    an earlier process that had it: a container's exports all run as pid 1)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except OSError as error:  # PermissionError: alive, another user's
        return isinstance(error, ProcessLookupError)
    return False


def sweep_leftovers(out_dir: Path, export_files: Collection[str], identity: ExportIdentity) -> None:
    """Clear what an export killed on this machine left beside `out_dir` (kill -9 leaves each for good):
    its staging folder, when it holds only files an export writes, and the previous export it had
    moved aside, which goes back in place when nothing took its place (or is removed when something
    did). Only leftovers named by this host and pid namespace and by a process that is gone;
    anything else stays (a Kubernetes job's next pod, another machine, a live export)."""
    space = _pid_space()
    if not space:
        return
    here, name = re.escape(f"{socket.gethostname()}.{space}"), re.escape(out_dir.name)
    partial, aside = re.compile(rf"\.{name}\.{here}-(\d+)\.\w+\.partial"), re.compile(rf"\.{name}\.old-{here}-(\d+)\.\w+")
    try:
        entries = [e for e in out_dir.parent.iterdir() if e.name.startswith(f".{out_dir.name}.")]
    except OSError:
        return
    for entry in entries:
        found = partial.fullmatch(entry.name) or aside.fullmatch(entry.name)
        if found is None or entry.is_symlink() or not entry.is_dir() or not _gone(int(found[1])):
            continue
        try:
            # only export files, and a marker, if any, of this study: not a user's folder or another study's export
            _check_contents(entry, export_files, identity, entry, marked=found.re is aside)
            if found.re is aside and not out_dir.exists():
                os.replace(entry, out_dir)
                continue
        except (OSError, ExportError):
            continue
        shutil.rmtree(entry, ignore_errors=True)


def staging_dir(out_dir: Path, export_files: Collection[str], identity: ExportIdentity) -> Path:
    """A private temporary folder next to the target, on the same file system, named for this
    host and process (after clearing what a killed export left there)."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(out_dir, export_files, identity)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{_owner()}.", suffix=".partial", dir=out_dir.parent))
    except OSError as error:
        raise ExportError(f"cannot create the export folder under {out_dir.parent} ({error.strerror})") from None


def share(folder: Path, identity: ExportIdentity) -> None:
    """Mark the folder as `identity`'s export and open it to the umask: mkdtemp makes a private
    (0700) folder and safetensors private files; an export is for sharing."""
    (folder / MARKER).write_text(identity.marker_text(), encoding="utf-8")
    umask = os.umask(0o077)  # read by setting it: for that instant the strictest, not 0 (another thread's file was world-writable)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def replace_dir(staging: Path, out_dir: Path, export_files: Collection[str], identity: ExportIdentity,
                keep: Callable[[Path, bool], None] = lambda folder, raced: None) -> None:
    """Move the finished folder into place; the study's previous export is swapped out, then deleted.

    The target is checked again (it may have changed while the export worked), and once more after
    it is moved aside, so what is deleted is exactly what was checked. `keep(folder, raced)` raises
    ExportSuperseded where the export there must stay (exporter.py: a better trial's); `raced` once another
    export went in at the moment this one did (what this one had moved aside, replaced, is deleted).
    """
    raced = False
    for _ in range(3):  # swapped in again only when `keep` lets this export replace the racer's
        check_target(out_dir, export_files, identity)
        old = out_dir.with_name(f".{out_dir.name}.old-{_owner()}.{uuid.uuid4().hex[:8]}") if out_dir.exists() else None
        if old is not None:
            keep(out_dir, raced)
            try:
                os.replace(out_dir, old)
            except FileNotFoundError:  # another export moved it aside at this moment
                raced = True
                continue
            try:
                _check_contents(old, export_files, identity, out_dir)
                keep(old, raced)
            except BaseException:  # refused, or the study's database failed: put back as it was
                os.replace(old, out_dir)
                raise
        try:
            os.replace(staging, out_dir)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):  # not another export in place
                if old is not None:
                    os.replace(old, out_dir)
                raise
            raced = True  # another export went in at this moment, and replaced what `old` holds
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        if not staging.exists():
            return
    raise ExportError(f"other exports of this study kept replacing {out_dir} at the moment this one did; the last one was left as is")
