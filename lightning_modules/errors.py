"""The project's exceptions, free of heavy imports: the user-facing family (the CLI prints them
as one line, exit 2) and the stop of a training run, which a runner that never trains (a worker
pool's parent) catches without importing Lightning."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

NAME_MAX = 255  # bytes in one folder or file name (Linux's file systems)
PATH_MAX = 4096  # bytes in a whole path, its end included


class UserInputError(Exception):
    """Bad input a user can fix; the message names the problem and the fix in one line."""


class DataError(UserInputError):
    """Data files that are missing, corrupt, or not what they claim to be."""


def check_path_length(path: str | os.PathLike[str], what: str) -> None:
    """UserInputError if `path` cannot name a file here: a folder or file name over NAME_MAX bytes,
    or the whole over PATH_MAX. Checked where a path comes in, before anything is made on the way
    to it: creating its parents left folders behind and then died with an ENAMETOOLONG traceback."""
    raw = os.fsencode(path)
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if longest > NAME_MAX:
        why = f"holds a name of {longest} bytes (at most {NAME_MAX} per folder or file name)"
    elif len(raw) >= PATH_MAX:
        why = f"is {len(raw)} bytes long (at most {PATH_MAX - 1})"
    else:
        return
    raise UserInputError(f"{what} {os.fsdecode(raw)[:60]!r}... {why}; pass a shorter path")


def expand_home(path: str | os.PathLike[str], what: str) -> Path:
    """`path` with a leading ~ or ~user made the home folder; UserInputError for a user this
    machine does not know (Path.expanduser raised a RuntimeError traceback for `~nouser/x`)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise UserInputError(f"{what} {os.fsdecode(path)[:60]!r}: no such user's home folder here; write the path out in full") from None


def has_control_character(text: str) -> bool:
    """A line break, NUL or other control character (Unicode Cc): refused where a path or URL
    comes in, since printed it splits the line that names it (and libpq cut a password at a NUL)."""
    return any(unicodedata.category(c) == "Cc" for c in text)


def one_line(text: str) -> str:
    """`text` with its line breaks and other control characters escaped (a file named "a\nb" is
    shown as a\nb), so an error that quotes a user's name stays the one line it promises."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


MAX_ERROR_CHARS = 1000  # a command's error line; past it, the text is cut and its length told


def error_line(text: str) -> str:
    """`text` as one line (`one_line`) of at most MAX_ERROR_CHARS characters, then its length: an
    error that quotes a value (a 100,000-character path, a 3 MB CSV cell) printed it whole. Any
    secret must be masked before: a cut can split one."""
    shown = one_line(text[: MAX_ERROR_CHARS + 1])
    if len(shown) <= MAX_ERROR_CHARS:
        return shown
    return f"{shown[:MAX_ERROR_CHARS]}... (cut: {len(text):,} characters in all)"


class TrainingInterrupted(Exception):
    """Training stopped between two batches because the process was asked to stop."""
