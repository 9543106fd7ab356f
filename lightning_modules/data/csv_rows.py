"""The tutorial's CSV (label in column 0, 784 pixels 0-255 after it, header optional) -> arrays.

Read as a stream, so memory follows the rows kept, not the file: a chunk of bytes at a time, blank
lines counted and dropped without being stored, every line refused past `MAX_CSV_LINE_BYTES` and
the rows past a cap, both before they are parsed; rows are parsed `_BATCH_ROWS` at a time into
uint8. A file of 100 MB of blank lines once took 1.2 GB (the whole file split into lines first).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from lightning_modules.data.files import clipped, non_empty_file
from lightning_modules.data.format import CSV_CELL_BYTES, CSV_COLUMNS, IMAGE_SIDE, MAX_CSV_BYTES, MAX_CSV_LINE_BYTES, MAX_ROWS, N_CLASSES, N_PIXELS
from lightning_modules.errors import DataError, one_line

if TYPE_CHECKING:
    import pandas as pd

_CHUNK_BYTES = 256 * 1024  # one read; finding its lines costs at most ~30 bytes per line of it
_BATCH_ROWS = 1_000  # rows parsed at once: ~6 MB of int64 cells, however many rows the file has
_NEWLINE = ord("\n")
_INK = np.ones(256, dtype=bool)  # bytes that make a line more than blank (bytes.strip's whitespace is not)
_INK[list(b" \t\n\r\x0b\x0c")] = False


def read_csv(path: Path, limit: int = MAX_CSV_BYTES, max_rows: int = MAX_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Read the tutorial's CSV: label in column 0, 784 pixels 0-255 after it, header optional.

    Messages number rows as the file's lines (a header is row 1) and columns from 0 (the label).
    Blank lines are skipped. The first line is a header when it reads as one (`_is_header`). More
    than `max_rows` data rows are refused when the one past them is reached.
    """
    non_empty_file(path, limit)
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    try:
        with path.open("rb") as handle:
            for lines, numbers in _row_batches(handle, path, max_rows):
                batch_images, batch_labels = _parse_rows(path, lines, numbers)
                images.append(batch_images)
                labels.append(batch_labels)
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    return np.concatenate(images), np.concatenate(labels)


def _row_batches(handle: BinaryIO, path: Path, max_rows: int) -> Iterator[tuple[list[bytes], list[int]]]:
    """The data rows, `_BATCH_ROWS` at a time with their file line numbers, each checked for its
    column count and quote marks; a header on line 1 is dropped. Refused past `max_rows`, before
    the rows after it are read."""
    lines: list[bytes] = []
    numbers: list[int] = []
    n_rows, has_header = 0, False
    for number, line in _content_lines(handle, path):
        _check_row(path, number, line)
        if number == 1 and _is_header(line):
            has_header = True
            continue
        n_rows += 1
        if n_rows > max_rows:
            raise DataError(f"{path}: more than {max_rows:,} data rows (MNIST has 70,000); keep at most {max_rows:,}")
        lines.append(line)
        numbers.append(number)
        if len(lines) == _BATCH_ROWS:
            yield lines, numbers
            lines, numbers = [], []
    if lines:
        yield lines, numbers
    elif not n_rows:
        raise DataError(f"{path}: no data rows after the header" if has_header else f"{path}: the file has no data rows, only blank lines")


def _content_lines(handle: BinaryIO, path: Path) -> Iterator[tuple[int, bytes]]:
    """Each line with something on it (not only whitespace), with its 1-based line number."""
    before = 0  # lines before `buffer`
    tail = b""  # the line the last chunk ended inside
    while chunk := handle.read(_CHUNK_BYTES):
        buffer = tail + chunk
        end = buffer.rfind(b"\n") + 1
        yield from _complete_lines(buffer, end, before, path)
        before += buffer.count(b"\n", 0, end)
        tail = buffer[end:]
        if len(tail) > MAX_CSV_LINE_BYTES:
            raise _too_long(path, before + 1)
    if tail.strip():
        yield before + 1, tail


def _complete_lines(buffer: bytes, end: int, before: int, path: Path) -> Iterator[tuple[int, bytes]]:
    """The lines of `buffer[:end]` (whole lines, each ending in a line break) that are not blank,
    found with whole-array operations: a blank line costs no Python object."""
    data = np.frombuffer(buffer, dtype=np.uint8, count=end)
    newline = data == _NEWLINE
    if buffer.isspace() and _surely_short(newline):  # all blank, as in a file of blank lines
        return
    ends = np.flatnonzero(newline)
    if not ends.size:
        return
    lengths = np.concatenate((ends[:1], np.diff(ends) - 1))
    too_long = np.flatnonzero(lengths > MAX_CSV_LINE_BYTES)
    if too_long.size:
        raise _too_long(path, before + int(too_long[0]) + 1)
    starts = ends - lengths
    inked = np.logical_or.reduceat(_INK[data], starts)  # every segment holds at least its line break
    for index in np.flatnonzero(inked).tolist():
        yield before + index + 1, buffer[starts[index] : ends[index]]


def _surely_short(newline: np.ndarray) -> bool:
    """True when no line can be longer than the cap: each whole block of a third of it holds a
    line break (a longer line would hold one such block whole). Cheaper than each line's length."""
    block = MAX_CSV_LINE_BYTES // 3 + 1
    n_blocks = len(newline) // block
    return bool(newline[: n_blocks * block].reshape(n_blocks, block).any(axis=1).all())


def _too_long(path: Path, number: int) -> DataError:
    return DataError(
        f"{path}: row {number} is longer than {MAX_CSV_LINE_BYTES:,} bytes, over {CSV_CELL_BYTES} a cell for its "
        f"{CSV_COLUMNS} cells; is this the tutorial's CSV (label, then 784 pixels 0-255)?"
    )


def _check_row(path: Path, number: int, line: bytes) -> None:
    """Refuse a row that pandas would not read as the one row of `CSV_COLUMNS` cells it looks like
    (it would join it to the rows after it, or split it, and name the place by its own count)."""
    n_columns = line.count(b",") + 1
    if n_columns != CSV_COLUMNS:
        raise DataError(
            f"{path}: row {number} has {n_columns} column{'s' * (n_columns != 1)}, expected "
            f"{CSV_COLUMNS} (label in column 0, then 784 pixels)"
        )
    if b"\r" in line[:-1]:  # pandas ends a row there
        raise DataError(f"{path}: row {number} has a carriage return (\\r) before its end; save the file with \\n or \\r\\n line ends")
    problem = _quote_problem(line)
    if problem:
        raise DataError(f"{path}: not a valid CSV file: row {number} has {problem}; put quote marks only around a whole cell, or none")


def _quote_problem(line: bytes) -> str:
    """What is wrong with the quote marks of `line`, or "": an odd number leaves a quoted cell open
    into the next rows; a comma between a pair is inside one cell for pandas, two for the count."""
    if b'"' not in line:
        return ""
    pieces = line.split(b'"')  # the odd pieces are between a pair
    if len(pieces) % 2 == 0:
        return "an unbalanced quote mark"
    return "a comma between quote marks" if b"," in b"".join(pieces[1::2]) else ""


def _parse_rows(path: Path, lines: list[bytes], numbers: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One batch of rows -> uint8 images and int64 labels, each bad cell named by row and column."""

    def cell(row: int, col: int) -> str:  # as the file has it, cut short for an error
        return clipped(lines[row].split(b",")[col].strip().decode("utf-8", "replace"))

    values = _whole_numbers(path, _frame(path, lines, numbers), numbers, cell)
    labels, pixels = values[:, 0], values[:, 1:]
    bad = np.flatnonzero((labels < 0) | (labels >= N_CLASSES))
    if bad.size:
        raise DataError(f"{path}: row {numbers[bad[0]]}, column 0: label {one_line(cell(bad[0], 0))} is outside 0-9")
    bad = np.argwhere((pixels < 0) | (pixels > 255))
    if bad.size:
        row, col = bad[0]
        raise DataError(f"{path}: row {numbers[row]}, column {col + 1}: pixel {one_line(cell(row, col + 1))} is outside 0-255")
    return pixels.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE), labels.astype(np.int64)


def _frame(path: Path, lines: list[bytes], numbers: list[int]) -> pd.DataFrame:
    """The rows as pandas reads them: `len(lines)` rows of `CSV_COLUMNS` cells."""
    import pandas as pd  # pandas costs ~0.3 s to import; only CSV users pay it

    try:
        frame = pd.read_csv(io.BytesIO(b"\n".join(lines)), header=None)
    except pd.errors.ParserError:  # not seen: `_check_row` leaves pandas nothing to refuse
        frame = None
    except UnicodeDecodeError:
        raise DataError(f"{path}: row {_first_undecodable(lines, numbers)} is not UTF-8 text; save the file as UTF-8") from None
    if frame is None or frame.shape != (len(lines), CSV_COLUMNS):  # not seen either
        raise DataError(
            f"{path}: not a valid CSV file (rows {numbers[0]} to {numbers[-1]} do not read as {len(lines)} rows of {CSV_COLUMNS} cells); "
            "check its quote marks and line ends"
        )
    return frame


def _whole_numbers(path: Path, frame: pd.DataFrame, numbers: list[int], cell: Callable[[int, int], str]) -> np.ndarray:
    """The cells as int64, or float64 holding only whole numbers; a cell that is not one is named."""
    import pandas as pd

    if all(dtype.kind in "iu" for dtype in frame.dtypes):  # the usual case: all whole numbers
        return frame.to_numpy(np.int64)
    text = frame.select_dtypes(exclude="number")  # columns with cells that are not numbers
    if len(text.columns):  # astype(str) first, or a column of True/False would pass as 1/0
        frame[text.columns] = text.astype(str).apply(pd.to_numeric, errors="coerce")
    values = frame.to_numpy(np.float64)
    # Infinite is a number too large for a float ("1e400", 400 digits): out of range, for the caller.
    bad = np.argwhere(np.isnan(values) | (np.isfinite(values) & (values != np.round(values))))
    if bad.size:
        row, col = bad[0]
        text_cell = cell(row, col)
        problem = "the cell is empty" if not text_cell else f"{text_cell!r} is not a whole number"
        raise DataError(f"{path}: row {numbers[row]}, column {col}: {problem}")
    return values


def _first_undecodable(lines: list[bytes], numbers: list[int]) -> int:
    """The file line of the first row that is not UTF-8 (pandas names only a byte offset)."""
    for line, number in zip(lines, numbers):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return number
    return numbers[0]


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
