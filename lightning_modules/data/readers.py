"""Bytes on disk -> numpy arrays: IDX files (gzip or raw) and the tutorial's CSV, checked.

Every reader bounds its input before the work it would cost: an IDX file is decompressed only
as far as its header says it reaches (and never past `MAX_IDX_BYTES`), a CSV must be a regular
file under `MAX_CSV_BYTES`. Structure is checked before the checksum: "wrong magic number" or
"truncated" says more than "checksum mismatch", which is left for damage that keeps the file
well-formed. Torch-free, so predict and the early data checks stay light.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import stat
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from lightning_modules.data.format import (
    CSV_COLUMNS,
    GZIP_MAGIC,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    IMAGE_SIDE,
    MAX_CSV_BYTES,
    MAX_IDX_BYTES,
    N_CLASSES,
    N_PIXELS,
)
from lightning_modules.errors import DataError

_GZIP_ERRORS = (EOFError, OSError, zlib.error)


def regular_file_size(path: Path, limit: int, what: str = "a data file", fix: str = "", error: type[Exception] = DataError) -> int:
    """The size of `path`, which must be a regular file (not a folder, device, pipe or socket)
    of at most `limit` bytes; each refusal is one line naming `what` was expected, as `error`."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as problem:
        raise error(f"{path}: cannot read ({problem.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{path}: is a folder, not {what}")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: not a regular file (a device, pipe or socket); pass {what}")
    if info.st_size > limit:
        raise error(f"{path}: {info.st_size:,} bytes is more than the {limit:,} {what} may have" + (f"; {fix}" if fix else ""))
    return info.st_size


def _regular_file(path: Path, limit: int) -> int:
    """The size of `path`, which must be a non-empty regular data file of at most `limit` bytes."""
    size = regular_file_size(path, limit)
    if size == 0:
        raise DataError(f"{path}: the file is empty")
    return size


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    try:
        return stream.read(n)
    except _GZIP_ERRORS as error:
        raise ValueError(f"corrupt or truncated gzip data ({error})") from None


def _kind(expected_magic: int) -> str:
    return "images" if expected_magic == IDX_IMAGES_MAGIC else "labels"


def _read_idx_content(path: Path, expected_magic: int, limit: int) -> tuple[bytes, bool]:
    """The IDX bytes the header announces, and whether the file holds more after them."""
    _regular_file(path, limit)
    with path.open("rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=raw) if compressed else raw  # type: ignore[assignment]
        head = _read_exactly(stream, 4)
        if len(head) == 4 and int.from_bytes(head, "big") == expected_magic:
            n_dims = head[3]
            head += _read_exactly(stream, 4 * n_dims)
            dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims)]
            total = len(head) + math.prod(dims) if len(head) == 4 + 4 * n_dims else len(head)
            if total > limit:
                raise DataError(
                    f"{path}: the IDX header promises shape {tuple(dims)} ({total:,} bytes), more than the "
                    f"{limit:,} a data file may have"
                )
            body = _read_exactly(stream, total - len(head))
            return head + body, bool(_read_exactly(stream, 1))
        return head + _read_exactly(stream, 16), False  # parse_idx names what is wrong


def parse_idx(content: bytes, path: Path, expected_magic: int, trailing: bool = False) -> np.ndarray:
    """Parse IDX bytes (ubyte images or labels) into an array, checking magic and shape."""
    if len(content) < 8:
        raise DataError(f"{path}: too short to be an IDX file ({len(content)} bytes)")
    magic = int.from_bytes(content[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path}: wrong IDX magic number 0x{magic:08x} for {_kind(expected_magic)} "
            f"(expected 0x{expected_magic:08x}); is this the right file?"
        )
    n_dims = magic & 0xFF
    header = 4 + 4 * n_dims
    if len(content) < header:
        raise DataError(f"{path}: the IDX header is cut short ({len(content)} of {header} bytes)")
    dims = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    if n_dims == 3 and dims[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected = header + math.prod(dims)
    if len(content) != expected or trailing:
        held = "more than that" if trailing else f"{len(content)} bytes"
        raise DataError(
            f"{path}: the header promises shape {dims} ({expected} bytes) but the file has "
            f"{held}; the file is truncated or corrupt"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


def _read_idx(path: Path, expected_magic: int, md5: str | None, limit: int) -> np.ndarray:
    try:
        content, trailing = _read_idx_content(path, expected_magic, limit)
    except ValueError as error:
        raise DataError(f"{path}: {error}; replace it with a good copy") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    array = parse_idx(content, path, expected_magic, trailing)
    verify_md5(content, md5, path)
    return array


def read_idx_images(path: Path, md5: str | None = None, limit: int = MAX_IDX_BYTES) -> np.ndarray:
    """N x 28 x 28 uint8 images from an IDX file (gzip or raw), checked against `md5` if given."""
    return _read_idx(path, IDX_IMAGES_MAGIC, md5, limit)


def read_idx_labels(path: Path, md5: str | None = None, limit: int = MAX_IDX_BYTES) -> np.ndarray:
    """N uint8 labels 0-9 from an IDX file (gzip or raw), checked against `md5` if given."""
    labels = _read_idx(path, IDX_LABELS_MAGIC, md5, limit)
    bad = np.flatnonzero(labels >= N_CLASSES)
    if bad.size:
        raise DataError(f"{path}: label {labels[bad[0]]} at row {bad[0]} is outside 0-9")
    return labels


def md5_mismatch(content: bytes, expected: str) -> str | None:
    """Why `content` is not the published file, or None when its MD5 matches."""
    actual = hashlib.md5(content, usedforsecurity=False).hexdigest()
    if actual == expected:
        return None
    return f"checksum mismatch (MD5 of the decompressed content is {actual}, expected {expected})"


def verify_md5(content: bytes, expected: str | None, path: Path | str) -> None:
    """Refuse content whose MD5 differs from the published one (checks decompressed bytes)."""
    problem = None if expected is None else md5_mismatch(content, expected)
    if problem:
        raise DataError(f"{path}: {problem}; the file is corrupt or from another dataset: replace it")


def gunzip_bounded(raw: bytes, limit: int = MAX_IDX_BYTES) -> bytes:
    """Decompress gzip bytes (anything else passes through), never past `limit` bytes."""
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            content = stream.read(limit + 1)
    except _GZIP_ERRORS as error:
        raise ValueError(f"corrupt or truncated gzip data ({error})") from None
    if len(content) > limit:
        raise ValueError(f"decompresses to more than {limit:,} bytes")
    return content


# ---------------------------------------------------------------- CSV


def read_csv(path: Path, limit: int = MAX_CSV_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Read the tutorial's CSV: label in column 0, 784 pixels 0-255 after it, header optional.

    Messages number rows as the file's lines (a header is row 1) and columns from 0 (the label).
    Blank lines are skipped. The first line is a header when it reads as one (`_is_header`).
    """
    import pandas as pd  # pandas costs ~0.3 s to import; only CSV users pay it

    _regular_file(path, limit)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    lines = raw.split(b"\n")
    has_header = _is_header(lines[0])
    row_numbers: list[int] = []  # the file line (1-based) of each data row
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        n_columns = line.count(b",") + 1
        if n_columns != CSV_COLUMNS:
            raise DataError(
                f"{path}: row {number} has {n_columns} column{'s' * (n_columns != 1)}, expected "
                f"{CSV_COLUMNS} (label in column 0, then 784 pixels)"
            )
        if number > 1 or not has_header:
            row_numbers.append(number)
    if not row_numbers:
        raise DataError(f"{path}: no data rows after the header" if has_header else f"{path}: the file is empty")
    body = b"\n".join(lines[number - 1] for number in row_numbers)
    try:
        frame = pd.read_csv(io.BytesIO(body), header=None, skip_blank_lines=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        first = str(error).strip().splitlines()[0]
        raise DataError(f"{path}: not a valid CSV file ({first})") from None
    if frame.shape != (len(row_numbers), CSV_COLUMNS):  # a stray quote mark joined lines
        raise DataError(f"{path}: not a valid CSV file (unbalanced quote marks join rows together)")

    def cell(row: int, col: int) -> str:
        return lines[row_numbers[row] - 1].split(b",")[col].strip().decode("utf-8", "replace")

    if all(dtype.kind in "iu" for dtype in frame.dtypes):  # the usual case: all whole numbers
        values = frame.to_numpy(np.int64)
    else:
        text = frame.select_dtypes(exclude="number")  # columns with cells that are not numbers
        if len(text.columns):  # astype(str) first, or a column of True/False would pass as 1/0
            frame[text.columns] = text.astype(str).apply(pd.to_numeric, errors="coerce")
        values = frame.to_numpy(np.float64)
        bad = np.argwhere(~np.isfinite(values) | (values != np.round(values)))
        if bad.size:
            row, col = bad[0]
            text_cell = cell(row, col)
            problem = "the cell is empty" if not text_cell else f"{text_cell!r} is not a whole number"
            raise DataError(f"{path}: row {row_numbers[row]}, column {col}: {problem}")
    labels, pixels = values[:, 0], values[:, 1:]
    bad = np.flatnonzero((labels < 0) | (labels >= N_CLASSES))
    if bad.size:
        raise DataError(f"{path}: row {row_numbers[bad[0]]}, column 0: label {cell(bad[0], 0)} is outside 0-9")
    bad = np.argwhere((pixels < 0) | (pixels > 255))
    if bad.size:
        row, col = bad[0]
        raise DataError(f"{path}: row {row_numbers[row]}, column {col + 1}: pixel {cell(row, col + 1)} is outside 0-255")
    return pixels.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE), labels.astype(np.int64)


def _is_header(line: bytes) -> bool:
    """Column names, not a data row: a label cell that is not a number, with a pixel cell that is
    not one either ("label,pixel0,...") or a label that starts with a letter ("label,0,1,...,783",
    as pandas writes a frame with numbered columns; "class-label", "label0"). A data row with a
    typo in its label ("3a,0,0,...") or an empty one is read as data, so its error names it,
    rather than skipped as a header."""
    cells = [cell.decode("utf-8", "replace").lstrip("\ufeff").strip().strip('"').strip() for cell in line.split(b",")]
    label = cells[0]  # a byte-order mark first, then quote marks (pandas' utf-8-sig with QUOTE_ALL)
    if not label or _is_number(label):
        return False
    return label[0].isalpha() or not all(_is_number(cell) for cell in cells[1:])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_csv(images: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """Write rows in the tutorial's CSV layout (no header), e.g. for tests and predict."""
    rows = np.column_stack([np.asarray(labels).reshape(-1), np.asarray(images).reshape(-1, N_PIXELS)])
    np.savetxt(path, rows, fmt="%d", delimiter=",")
