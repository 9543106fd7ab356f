"""Bytes on disk -> numpy arrays: IDX files (gzip or raw), checked; the CSV reader is `csv_rows`.

Every reader bounds its input before the work it would cost: an IDX file is decompressed only
as far as its header says it reaches (and never past `MAX_IDX_BYTES`, nor, where the caller knows
the published file's size, past that). Structure is checked before the checksum: "wrong magic
number" or "truncated" says more than "checksum mismatch", which is left for damage that keeps
the file well-formed. Torch-free, so predict and the early data checks stay light.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from lightning_modules.data.csv_rows import read_csv, write_csv  # re-exported (__all__): readers was their home
from lightning_modules.data.files import non_empty_file
from lightning_modules.data.format import GZIP_MAGIC, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, IMAGE_SIDE, MAX_IDX_BYTES, N_CLASSES
from lightning_modules.errors import DataError

_GZIP_ERRORS = (EOFError, OSError, zlib.error)


class ChecksumMismatch(DataError):
    """A well-formed file that is not the published one; `digest` is its MD5, so a caller can name
    the data set that publishes it without reading (and inflating) the file a second time."""

    def __init__(self, message: str, digest: str) -> None:
        super().__init__(message)
        self.digest = digest


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    try:
        return stream.read(n)
    except _GZIP_ERRORS as error:
        raise ValueError(f"corrupt or truncated gzip data ({error})") from None


def _kind(expected_magic: int) -> str:
    return "images" if expected_magic == IDX_IMAGES_MAGIC else "labels"


def _read_idx_content(path: Path, expected_magic: int, limit: int, size: int | None) -> tuple[bytes, bool]:
    """The IDX bytes the header announces, and whether the file holds more after them. The header
    is checked (`_check_promise`) before the body is read: a gzip inflates only as far as it says."""
    non_empty_file(path, limit)
    with path.open("rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=raw) if compressed else raw  # type: ignore[assignment]
        head = _read_exactly(stream, 4)
        if len(head) == 4 and int.from_bytes(head, "big") == expected_magic:
            n_dims = head[3]
            head += _read_exactly(stream, 4 * n_dims)
            dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
            total = len(head)  # a header cut short: parse_idx says so
            if len(head) == 4 + 4 * n_dims:
                total += math.prod(dims)
                _check_promise(path, dims, total, limit, size)
            body = _read_exactly(stream, total - len(head))
            return head + body, bool(_read_exactly(stream, 1))
        return head + _read_exactly(stream, 16), False  # parse_idx names what is wrong


def _check_promise(path: Path, dims: tuple[int, ...], total: int, limit: int, size: int | None) -> None:
    """Refuse a header whose shape is wrong, or whose size is not the published file's `size`
    (when the caller knows it) or over `limit`: a gzip bomb is refused at its 16th byte."""
    _check_image_side(path, dims)
    if size is not None and total != size:
        raise DataError(
            f"{path}: the IDX header promises shape {dims} ({total:,} bytes), not the published file's {size:,} bytes; "
            "the file is corrupt or from another dataset: replace it"
        )
    if total > limit:
        raise DataError(f"{path}: the IDX header promises shape {dims} ({total:,} bytes), more than the {limit:,} a data file may have")


def _check_image_side(path: Path, dims: tuple[int, ...]) -> None:
    if len(dims) == 3 and dims[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")


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
    _check_image_side(path, dims)
    expected = header + math.prod(dims)
    if len(content) != expected or trailing:
        held = "more than that" if trailing else f"{len(content)} bytes"
        raise DataError(
            f"{path}: the header promises shape {dims} ({expected} bytes) but the file has "
            f"{held}; the file is truncated or corrupt"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


def _read_idx(path: Path, expected_magic: int, md5: str | None, limit: int, size: int | None) -> np.ndarray:
    try:
        content, trailing = _read_idx_content(path, expected_magic, limit, size)
    except ValueError as error:
        raise DataError(f"{path}: {error}; replace it with a good copy") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    array = parse_idx(content, path, expected_magic, trailing)
    verify_md5(content, md5, path)
    return array


def read_idx_images(path: Path, md5: str | None = None, limit: int = MAX_IDX_BYTES, size: int | None = None) -> np.ndarray:
    """N x 28 x 28 uint8 images from an IDX file (gzip or raw), checked against `md5` if given;
    `size`, the published file's decompressed size if known, bounds what is inflated to it."""
    return _read_idx(path, IDX_IMAGES_MAGIC, md5, limit, size)


def read_idx_labels(path: Path, md5: str | None = None, limit: int = MAX_IDX_BYTES, size: int | None = None) -> np.ndarray:
    """N uint8 labels 0-9 from an IDX file (gzip or raw), checked against `md5` (and `size`) if given."""
    labels = _read_idx(path, IDX_LABELS_MAGIC, md5, limit, size)
    bad = np.flatnonzero(labels >= N_CLASSES)
    if bad.size:
        raise DataError(f"{path}: label {labels[bad[0]]} at row {bad[0]} is outside 0-9")
    return labels


def _md5(content: bytes) -> str:
    return hashlib.md5(content, usedforsecurity=False).hexdigest()


def _mismatch(actual: str, expected: str) -> str:
    return f"checksum mismatch (MD5 of the decompressed content is {actual}, expected {expected})"


def md5_mismatch(content: bytes, expected: str) -> str | None:
    """Why `content` is not the published file, or None when its MD5 matches."""
    actual = _md5(content)
    return None if actual == expected else _mismatch(actual, expected)


def verify_md5(content: bytes, expected: str | None, path: Path | str) -> None:
    """Refuse content whose MD5 differs from the published one (checks decompressed bytes), with
    a `ChecksumMismatch` that carries the MD5 it has."""
    if expected is None:
        return
    actual = _md5(content)
    if actual != expected:
        raise ChecksumMismatch(f"{path}: {_mismatch(actual, expected)}; the file is corrupt or from another dataset: replace it", actual)


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


__all__ = [
    "ChecksumMismatch",
    "gunzip_bounded",
    "md5_mismatch",
    "parse_idx",
    "read_csv",
    "read_idx_images",
    "read_idx_labels",
    "verify_md5",
    "write_csv",
]
