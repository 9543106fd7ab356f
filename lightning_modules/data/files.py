"""The check every data file passes before it is opened: a regular file (never a folder, device,
pipe or socket, which would block or never end) under a byte cap.

Shared by the IDX and CSV readers (moved out of readers.py so the CSV reader has a module of its
own); torch- and numpy-free.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

from lightning_modules.errors import DataError

# An error quotes at most this many characters of a file's content (a cell, a line): a cell of
# 3,000,000 letters gave a 3 MB error line.
SHOWN_CHARACTERS = 40


def regular_file_size(
    path: Path, limit: int, what: str = "a data file", fix: str = "", error: type[Exception] = DataError,
    show: Callable[[Path], str] = str, unreadable: Callable[[Path, OSError], Exception] | None = None,
) -> int:
    """The size of `path`, which must be a regular file (not a folder, device, pipe or socket)
    of at most `limit` bytes, judged from its stat before it is opened; each refusal is one line
    naming `what` was expected, as `error`, the path as `show` writes it (predict bounds it)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{show(path)}: file not found") from None
    except OSError as problem:  # a folder on the way that this user may not enter
        raise (unreadable(path, problem) if unreadable else error(f"{show(path)}: cannot read ({problem.strerror})")) from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{show(path)}: is a folder, not {what}")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{show(path)}: not a regular file (a device, pipe or socket); pass {what}")
    if info.st_size > limit:
        raise error(f"{show(path)}: {info.st_size:,} bytes is more than the {limit:,} {what} may have" + (f"; {fix}" if fix else ""))
    return info.st_size


def non_empty_file(path: Path, limit: int) -> int:
    """The size of `path`, which must be a non-empty regular data file of at most `limit` bytes."""
    size = regular_file_size(path, limit)
    if size == 0:
        raise DataError(f"{path}: the file is empty")
    return size


def clipped(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """`text` cut to `limit` characters ("..." marking the cut), for quoting a file in an error."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
