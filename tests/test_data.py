"""The MNIST data layer on the real files: readers, checks, source resolution, split, batches.

Broken inputs are made from real MNIST bytes in tmp_path (a flipped byte, a rewritten header,
a cut-off gzip), never mocked. Only a few tests read all 70,000 images; they share the
session's `mnist_arrays`.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import data_error
from lightning_modules.data.arrays import MnistArrays, load_data, load_idx_dir
from lightning_modules.data.batches import TensorBatches
from lightning_modules.data.datamodule import MNISTDataModule
from lightning_modules.data.datasets import DATASETS, MNIST
from lightning_modules.data.format import MAX_CSV_LINE_BYTES, N_CLASSES, N_PIXELS
from lightning_modules.data.readers import read_csv, read_idx_images, read_idx_labels, write_csv
from lightning_modules.data.sources import resolve_data_source
from lightning_modules.data.split import split_data, stratified_split, to_features
from lightning_modules.errors import DataError, UserInputError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # published
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


# ---------------------------------------------------------------- helpers


def idx_content(mnist_dir: Path, name: str) -> bytes:
    """The decompressed bytes of one of the shared IDX files."""
    return gzip.decompress((mnist_dir / f"{name}.gz").read_bytes())


def with_header_field(content: bytes, index: int, value: int) -> bytes:
    """IDX bytes with 4-byte header field `index` replaced (0: magic, 1: count, 2: rows, 3: columns)."""
    return content[: 4 * index] + value.to_bytes(4, "big") + content[4 * index + 4 :]


def with_byte(content: bytes, offset: int, value: int) -> bytes:
    return content[:offset] + bytes([value]) + content[offset + 1 :]


def dataset_dir(root: Path, mnist_dir: Path, raw: Mapping[str, bytes] = {}) -> Path:
    """A data directory linking the shared .gz files, except those given as raw IDX content."""
    root.mkdir(parents=True)
    for name in MNIST.files.values():
        if name in raw:
            (root / name).write_bytes(raw[name])
        else:
            (root / f"{name}.gz").symlink_to(mnist_dir / f"{name}.gz")
    return root


def row_keys(x: torch.Tensor) -> list[bytes]:
    """Each feature row (floats in [0, 1]) back to its exact uint8 bytes, to identify it."""
    pixels = (x * 255).round().to(torch.uint8).numpy()
    return [row.tobytes() for row in pixels]


def class_counts(labels: torch.Tensor) -> torch.Tensor:
    return torch.bincount(labels, minlength=N_CLASSES)


def assert_proportional(part: torch.Tensor, whole: torch.Tensor) -> None:
    """Each class count of `part` is within one row of its exact share of `whole`."""
    exact = class_counts(whole).double() * len(part) / len(whole)
    assert torch.all((class_counts(part).double() - exact).abs() < 1), (class_counts(part), exact)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """These tensor ops are memory-bound: on a busy 2-core machine a second thread only waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def train_index(mnist_arrays: MnistArrays) -> dict[bytes, int]:
    """Training image bytes -> row index; MNIST's 60,000 training images are all distinct."""
    keys = [row.tobytes() for row in mnist_arrays.train_images.reshape(-1, N_PIXELS).numpy()]
    index = {key: i for i, key in enumerate(keys)}
    assert len(index) == len(keys)
    return index


def source_rows(x: torch.Tensor, train_index: dict[bytes, int]) -> torch.Tensor:
    return torch.tensor([train_index[key] for key in row_keys(x)])


def labelled_rows(images: torch.Tensor, labels: torch.Tensor) -> list[bytes]:
    """Label + image bytes per row, sorted: equal lists mean the same rows in any order."""
    return sorted(bytes([int(label)]) + image.numpy().tobytes() for image, label in zip(images, labels))


def traced_peak(call: Callable[[], object]) -> int:
    """The most memory Python and numpy held at once during `call`, in bytes, over what they held
    before it: a deterministic measure of what the call cost, unlike its time."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def first_rows(arrays: MnistArrays, n_train: int) -> MnistArrays:
    return MnistArrays(
        arrays.train_images[:n_train], arrays.train_labels[:n_train],
        arrays.test_images, arrays.test_labels, f"{arrays.source}[:{n_train}]",
    )


# ---------------------------------------------------------------- IDX files


def test_data_error_is_a_user_input_error() -> None:
    assert issubclass(DataError, UserInputError)


def test_full_mnist_has_the_published_shapes_dtypes_and_classes(mnist_arrays: MnistArrays) -> None:
    assert mnist_arrays.train_images.shape == (60_000, 28, 28)
    assert mnist_arrays.test_images.shape == (10_000, 28, 28)
    assert mnist_arrays.train_images.dtype == mnist_arrays.test_images.dtype == torch.uint8
    assert mnist_arrays.train_labels.shape == (60_000,)
    assert mnist_arrays.test_labels.shape == (10_000,)
    assert mnist_arrays.train_labels.dtype == mnist_arrays.test_labels.dtype == torch.int64
    assert class_counts(mnist_arrays.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert int(mnist_arrays.test_labels.min()) == 0 and int(mnist_arrays.test_labels.max()) == 9
    assert int(mnist_arrays.train_images.max()) == 255


def test_raw_idx_files_load_like_the_gzip_ones(
    tmp_path: Path, mnist_dir: Path, mnist_arrays: MnistArrays
) -> None:
    raw = {name: idx_content(mnist_dir, name) for name in MNIST.files.values()}
    directory = dataset_dir(tmp_path / "raw", mnist_dir, raw)
    assert not list(directory.glob("*.gz"))
    loaded = load_idx_dir(directory, MNIST)  # checksums verified on the raw files too
    for role in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(loaded, role), getattr(mnist_arrays, role)), role


def test_missing_directory(tmp_path: Path) -> None:
    data_error(
        lambda: load_idx_dir(tmp_path / "absent", MNIST),
        str(tmp_path / "absent"), "does not exist", "--data-dir", "MNIST_DATA_DIR",
    )


def test_missing_file_in_a_data_directory(tmp_path: Path, mnist_dir: Path) -> None:
    directory = dataset_dir(tmp_path / "data", mnist_dir)
    (directory / f"{TRAIN_IMAGES}.gz").unlink()
    data_error(lambda: load_idx_dir(directory, MNIST), str(directory), "missing", TRAIN_IMAGES)


def test_missing_file(tmp_path: Path) -> None:
    data_error(lambda: read_idx_labels(tmp_path / "nothing.gz"), "nothing.gz", "not found")


def test_truncated_gzip(tmp_path: Path, mnist_dir: Path) -> None:
    path = tmp_path / f"{TEST_LABELS}.gz"
    path.write_bytes((mnist_dir / f"{TEST_LABELS}.gz").read_bytes()[:2000])
    data_error(lambda: read_idx_labels(path, MNIST.md5[TEST_LABELS]), str(path), "truncated", "gzip")


def test_corrupt_gzip(tmp_path: Path, mnist_dir: Path) -> None:
    compressed = (mnist_dir / f"{TEST_LABELS}.gz").read_bytes()
    middle = len(compressed) // 2
    path = tmp_path / f"{TEST_LABELS}.gz"
    path.write_bytes(with_byte(compressed, middle, compressed[middle] ^ 0xFF))
    data_error(lambda: read_idx_labels(path, MNIST.md5[TEST_LABELS]), str(path), "corrupt", "gzip")


def test_wrong_magic_number_is_named_before_the_checksum(tmp_path: Path, mnist_dir: Path) -> None:
    """Labels where the images belong: the message says which kind of file was expected."""
    directory = dataset_dir(tmp_path / "data", mnist_dir, {TRAIN_IMAGES: idx_content(mnist_dir, TRAIN_LABELS)})
    data_error(
        lambda: load_idx_dir(directory, MNIST),
        TRAIN_IMAGES, "wrong IDX magic number", "0x00000801", "images", "0x00000803",
    )


def test_wrong_image_shape(tmp_path: Path, mnist_dir: Path) -> None:
    path = tmp_path / TEST_IMAGES
    path.write_bytes(with_header_field(idx_content(mnist_dir, TEST_IMAGES), 2, 27))
    data_error(lambda: read_idx_images(path, MNIST.md5[TEST_IMAGES]), str(path), "27x28", "expected 28x28")


def test_truncated_raw_idx_file(tmp_path: Path, mnist_dir: Path) -> None:
    path = tmp_path / TEST_LABELS
    path.write_bytes(idx_content(mnist_dir, TEST_LABELS)[:-100])
    data_error(lambda: read_idx_labels(path, MNIST.md5[TEST_LABELS]), str(path), "truncated", "10008")


def test_images_and_labels_of_different_lengths(tmp_path: Path, mnist_dir: Path) -> None:
    """The test labels where the training labels belong, checksums off: the counts disagree."""
    directory = dataset_dir(tmp_path / "data", mnist_dir, {TRAIN_LABELS: idx_content(mnist_dir, TEST_LABELS)})
    data_error(
        lambda: load_idx_dir(directory, MNIST, verify=False),
        "60000 train images", "10000 train labels",
    )


def test_checksum_mismatch_on_one_flipped_byte(tmp_path: Path, mnist_dir: Path) -> None:
    content = idx_content(mnist_dir, TEST_IMAGES)
    centre_of_first_image = 16 + 14 * 28 + 14
    path = tmp_path / TEST_IMAGES
    path.write_bytes(with_byte(content, centre_of_first_image, content[centre_of_first_image] ^ 0xFF))
    data_error(
        lambda: read_idx_images(path, MNIST.md5[TEST_IMAGES]),
        str(path), "checksum mismatch", MNIST.md5[TEST_IMAGES],
    )
    unverified = read_idx_images(path)  # well-formed: only the checksum can tell
    original = np.frombuffer(content, np.uint8, offset=16).reshape(-1, 28, 28)
    assert np.count_nonzero(unverified != original) == 1


def test_idx_label_outside_0_to_9(tmp_path: Path, mnist_dir: Path) -> None:
    path = tmp_path / TEST_LABELS
    path.write_bytes(with_byte(idx_content(mnist_dir, TEST_LABELS), 8 + 5, 12))
    data_error(lambda: read_idx_labels(path), str(path), "label 12", "row 5", "0-9")


def test_empty_idx_file(tmp_path: Path) -> None:
    path = tmp_path / TEST_LABELS
    path.write_bytes(b"")
    data_error(lambda: read_idx_labels(path), str(path), "empty")


# ---------------------------------------------------------------- CSV files


HEADER = ["label", *(f"pixel{i}" for i in range(N_PIXELS))]


@pytest.fixture
def csv_rows(tmp_path: Path, mnist_arrays: MnistArrays) -> list[list[str]]:
    """The cells of five real MNIST rows as write_csv writes them."""
    path = tmp_path / "five.csv"
    write_csv(mnist_arrays.train_images[:5], mnist_arrays.train_labels[:5], path)
    return [line.split(",") for line in path.read_text().splitlines()]


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("".join(",".join(row) + "\n" for row in rows))
    return path


def put(rows: list[list[str]], line: int, column: int, value: str) -> list[list[str]]:
    """Set one cell; `line` is the file's line number (1-based), `column` counts from 0."""
    rows[line - 1][column] = value
    return rows


def test_csv_round_trip_equals_the_idx_data(tmp_path: Path, mnist_arrays: MnistArrays) -> None:
    images, labels = mnist_arrays.train_images[:300], mnist_arrays.train_labels[:300]
    write_csv(images, labels, tmp_path / "digits.csv")
    read_images, read_labels = read_csv(tmp_path / "digits.csv")
    assert read_images.dtype == np.uint8 and read_labels.dtype == np.int64
    assert np.array_equal(read_images, images.numpy())
    assert np.array_equal(read_labels, labels.numpy())


def test_csv_header_row_is_skipped(tmp_path: Path, csv_rows: list[list[str]], mnist_arrays: MnistArrays) -> None:
    images, labels = read_csv(write_rows(tmp_path / "with-header.csv", [HEADER, *csv_rows]))
    assert np.array_equal(images, mnist_arrays.train_images[:5].numpy())
    assert np.array_equal(labels, mnist_arrays.train_labels[:5].numpy())


@pytest.mark.parametrize("label", ["label", "class-label", "label0", "label (0-9)"])
def test_a_header_of_numbered_columns_is_skipped(
    label: str, tmp_path: Path, csv_rows: list[list[str]], mnist_arrays: MnistArrays
) -> None:
    """What pandas writes for a frame with columns ["label", 0, ..., 783]: every pixel name a number."""
    images, labels = read_csv(write_rows(tmp_path / "numbered.csv", [[label, *map(str, range(N_PIXELS))], *csv_rows]))
    assert np.array_equal(images, mnist_arrays.train_images[:5].numpy())
    assert np.array_equal(labels, mnist_arrays.train_labels[:5].numpy())


def test_a_quoted_header_after_a_byte_order_mark_is_skipped(tmp_path: Path, csv_rows: list[list[str]], mnist_arrays: MnistArrays) -> None:
    """pandas' to_csv(encoding="utf-8-sig", quoting=QUOTE_ALL): the mark comes before the quote."""
    path = tmp_path / "excel.csv"
    lines = [",".join(f'"{cell}"' for cell in row) for row in [HEADER, *csv_rows]]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())
    images, labels = read_csv(path)
    assert np.array_equal(images, mnist_arrays.train_images[:5].numpy())
    assert np.array_equal(labels, mnist_arrays.train_labels[:5].numpy())


def test_a_csv_with_one_digit_or_too_few_rows_is_refused_as_training_data(tmp_path: Path, mnist_arrays: MnistArrays) -> None:
    """200 rows all labelled 3 trained to val_acc=1.0 and met the target on nothing learned."""
    threes = mnist_arrays.train_labels == 3
    path = tmp_path / "threes.csv"
    write_csv(mnist_arrays.train_images[threes][:200], mnist_arrays.train_labels[threes][:200], path)
    data_error(lambda: load_data(resolve_data_source(str(path), env={}, cache_dir=tmp_path)), str(path), "every row is labelled 3", "two digits")
    assert len(read_csv(path)[1]) == 200  # the same rows are fine to predict on
    write_csv(mnist_arrays.train_images[:2], mnist_arrays.train_labels[:2], path)
    data_error(lambda: load_data(resolve_data_source(str(path), env={}, cache_dir=tmp_path)), str(path), "only 2 rows", "at least 3")


def test_csv_data_source_loads_with_a_stratified_test_set(tmp_path: Path, mnist_arrays: MnistArrays) -> None:
    path = tmp_path / "digits.csv"
    write_csv(mnist_arrays.train_images[:700], mnist_arrays.train_labels[:700], path)
    source = resolve_data_source(str(path), env={}, cache_dir=tmp_path / "cache")
    assert (source.kind, source.path) == ("csv", path)
    arrays = load_data(source)
    assert (len(arrays.train_labels), len(arrays.test_labels)) == (600, 100)
    both = torch.cat([arrays.train_labels, arrays.test_labels])
    assert_proportional(arrays.test_labels, both)
    assert labelled_rows(torch.cat([arrays.train_images, arrays.test_images]), both) == labelled_rows(
        mnist_arrays.train_images[:700], mnist_arrays.train_labels[:700]
    )


CSV_PROBLEMS = {
    "row too short": (lambda rows: [*rows[:2], rows[2][:700], *rows[3:]], ["row 3", "700 columns", "785"]),
    "row too long": (lambda rows: [rows[0], [*rows[1], "0"], *rows[2:]], ["row 2", "786 columns", "785"]),
    "no label column": (lambda rows: [row[1:] for row in rows], ["row 1", "784 columns", "785"]),
    "text in the first row": (  # not to be taken for a header
        lambda rows: put(rows, 1, 5, "abc"), ["row 1", "column 5", "'abc'", "not a whole number"],
    ),
    "text": (lambda rows: put(rows, 4, 300, "x7"), ["row 4", "column 300", "'x7'", "not a whole number"]),
    "fraction": (lambda rows: put(rows, 2, 17, "1.5"), ["row 2", "column 17", "'1.5'", "not a whole number"]),
    "empty cell": (lambda rows: put(rows, 5, 9, ""), ["row 5", "column 9", "empty"]),
    "pixel 256": (lambda rows: put(rows, 2, 784, "256"), ["row 2", "column 784", "pixel 256", "0-255"]),
    "pixel -3": (lambda rows: put(rows, 3, 1, "-3"), ["row 3", "column 1", "pixel -3", "0-255"]),
    "label 10": (lambda rows: put(rows, 3, 0, "10"), ["row 3", "column 0", "label 10", "0-9"]),
    "label -1": (lambda rows: put(rows, 1, 0, "-1"), ["row 1", "column 0", "label -1", "0-9"]),
    "rows counted with the header": (
        lambda rows: [HEADER, *put(rows, 2, 0, "12")], ["row 3", "column 0", "label 12", "0-9"],
    ),
    "rows counted with blank lines": (
        lambda rows: [rows[0], [""], [""], *put(rows, 2, 40, "300")[1:]], ["row 4", "column 40", "pixel 300"],
    ),
    "quote marks joining rows": (
        lambda rows: put(put(rows, 2, 9, '"5'), 4, 9, '5"'), ["not a valid CSV file", "row 2", "unbalanced quote mark"],
    ),
    # pandas named this "row 3" (its own count from 0, of the rows left once the header and blank lines were gone)
    "a stray quote named by its file line": (
        lambda rows: [HEADER, rows[0], [""], *put(rows, 4, 9, '"0')[1:]], ["row 6", "unbalanced quote mark", "whole cell"],
    ),
    # one cell for pandas, two for the count of commas: the row came out a cell short, and "empty"
    "a comma between quote marks": (lambda rows: put(put(rows, 3, 9, '"0'), 3, 10, '0"'), ["row 3", "a comma between quote marks"]),
    # pandas ends a row at a lone \r: the extra row was blamed on "unbalanced quote marks"
    "a carriage return inside a row": (lambda rows: put(rows, 4, 100, "0\r"), ["row 4", "carriage return", "line ends"]),
    "header only": (lambda rows: [HEADER], ["no data rows"]),
    # a typo in the first row's label was taken for a header, and the row dropped without a word
    "typo in the first label": (lambda rows: put(rows, 1, 0, "3a"), ["row 1", "column 0", "'3a'", "not a whole number"]),
    "empty first label": (lambda rows: put(rows, 1, 0, ""), ["row 1", "column 0", "empty"]),
}


@pytest.mark.parametrize("mutate, words", list(CSV_PROBLEMS.values()), ids=list(CSV_PROBLEMS))
def test_bad_csv(
    tmp_path: Path, csv_rows: list[list[str]], mutate: Callable[[list[list[str]]], list[list[str]]], words: list[str]
) -> None:
    path = write_rows(tmp_path / "bad.csv", mutate(csv_rows))
    data_error(lambda: read_csv(path), str(path), *words)


@pytest.mark.parametrize(
    "column, value, words",
    [
        (300, "x" * 5_000, ["column 300", "'xxxxxxxx", "...' is not a whole number"]),
        (0, "0" * 5_000 + "12", ["column 0", "label 0000000", "... is outside 0-9"]),
        (7, "9" * 400, ["column 7", "pixel 9999999", "... is outside 0-255"]),  # too large for a float: not "not a whole number"
    ],
    ids=["text", "label", "huge-pixel"],
)
def test_an_error_quotes_at_most_a_few_dozen_characters_of_a_cell(
    tmp_path: Path, csv_rows: list[list[str]], column: int, value: str, words: list[str]
) -> None:
    """A cell of 3,000,000 letters gave a 3 MB error line."""
    path = write_rows(tmp_path / "long-cell.csv", put(csv_rows, 3, column, value))
    message = data_error(lambda: read_csv(path), str(path), "row 3", *words)
    assert len(message) < len(str(path)) + 100, message


def test_a_csv_of_blank_lines_has_no_data_rows_and_is_never_held_whole(tmp_path: Path) -> None:
    """20 MB of blank lines: the reader split the whole file into lines first (~12 bytes of memory
    per byte of file, 26 GB at the size cap) and then called the file "empty"."""
    path = tmp_path / "blank.csv"
    path.write_bytes(b"\n \t\r\n" * 4_000_000)
    peak = traced_peak(lambda: data_error(lambda: read_csv(path), str(path), "has no data rows, only blank lines"))
    assert peak < 4_000_000, f"{peak:,} bytes to skip 20 MB of blank lines"


@pytest.mark.parametrize("filler", [b"1", b" "], ids=["text", "spaces"])
def test_a_line_too_long_for_a_row_is_refused_before_it_is_kept(tmp_path: Path, csv_rows: list[list[str]], filler: bytes) -> None:
    """A row of 785 numbers takes at most ~3 KB: an 8 MB line is refused, naming it, as soon as
    the reader is past the cap, and not read whole (blank or not: the cap is on every line)."""
    path = write_rows(tmp_path / "long-line.csv", csv_rows[:1])
    with path.open("ab") as out:
        out.write(filler * 8_000_000 + b"\n")
    peak = traced_peak(lambda: data_error(lambda: read_csv(path), str(path), "row 2 is longer than", f"{MAX_CSV_LINE_BYTES:,} bytes"))
    assert peak < 4_000_000, f"{peak:,} bytes to refuse an 8 MB line"


def test_rows_past_the_cap_are_refused_before_they_are_read(tmp_path: Path, csv_rows: list[list[str]]) -> None:
    """The fifth line is not a row at all: the refusal at the fourth row means it was never looked at."""
    path = write_rows(tmp_path / "many.csv", [*csv_rows[:4], ["not a row"]])
    message = data_error(lambda: read_csv(path, max_rows=3), str(path), "more than 3 data rows", "keep at most 3")
    assert "row 5" not in message
    exactly = write_rows(tmp_path / "three.csv", csv_rows[:3])
    assert len(read_csv(exactly, max_rows=3)[1]) == 3  # the cap itself is allowed


def test_csv_memory_grows_with_the_rows_kept_not_with_their_text(tmp_path: Path, mnist_arrays: MnistArrays) -> None:
    """Each row past the first thousand costs about the 785 bytes kept of it, not its ~1.8 KB of
    text split, joined and parsed into 6 KB of int64 (58 MB more for 3,000 more rows); the
    rows come back whole and in order across the batches they are parsed in."""
    images, labels = mnist_arrays.test_images[:4_000].numpy(), mnist_arrays.test_labels[:4_000].numpy()
    small, large = tmp_path / "1000.csv", tmp_path / "4000.csv"
    write_csv(images[:1_000], labels[:1_000], small)
    write_csv(images, labels, large)
    read_csv(small)  # pandas is imported on first use: not counted below
    growth = traced_peak(lambda: read_csv(large)) - traced_peak(lambda: read_csv(small))
    assert growth < 4 * 3_000 * (1 + N_PIXELS), f"{growth:,} bytes more for 3,000 more rows"
    read_images, read_labels = read_csv(large)
    assert np.array_equal(read_images, images) and np.array_equal(read_labels, labels)


def test_empty_csv(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    data_error(lambda: read_csv(path), str(path), "empty")


def test_missing_csv(tmp_path: Path) -> None:
    data_error(lambda: read_csv(tmp_path / "absent.csv"), "absent.csv", "not found")


# ---------------------------------------------------------------- where the data comes from


def test_data_option_wins_over_data_dir_env_and_cache(tmp_path: Path, mnist_dir: Path) -> None:
    csv = tmp_path / "digits.csv"
    csv.write_text("")
    env = {"MNIST_DATA_DIR": str(mnist_dir)}
    source = resolve_data_source(str(csv), data_dir=tmp_path, env=env, cache_dir=tmp_path / "cache")
    assert (source.kind, source.path, source.spec) == ("csv", csv, None)
    source = resolve_data_source(str(mnist_dir), data_dir=tmp_path, env=env, cache_dir=tmp_path / "cache")
    assert (source.kind, source.path, source.spec) == ("idx", mnist_dir, MNIST)


def test_data_dir_wins_over_env_and_cache(tmp_path: Path, mnist_dir: Path) -> None:
    source = resolve_data_source(
        data_dir=tmp_path / "mine", env={"MNIST_DATA_DIR": str(mnist_dir)}, cache_dir=tmp_path / "cache"
    )
    assert (source.kind, source.path, source.download) == ("idx", tmp_path / "mine", False)


def test_env_wins_over_cache(tmp_path: Path, mnist_dir: Path) -> None:
    source = resolve_data_source(env={"MNIST_DATA_DIR": str(mnist_dir)}, cache_dir=tmp_path / "cache")
    assert (source.kind, source.path, source.spec, source.download) == ("idx", mnist_dir, MNIST, False)


@pytest.mark.parametrize("env", [{}, {"MNIST_DATA_DIR": ""}], ids=["unset", "empty"])
def test_cache_is_last_and_downloads_only_when_incomplete(
    tmp_path: Path, mnist_dir: Path, env: dict[str, str]
) -> None:
    cache = tmp_path / "cache"
    source = resolve_data_source(env=env, cache_dir=cache)
    assert (source.path, source.download) == (cache / "mnist", True)
    dataset_dir(cache / "mnist", mnist_dir)
    assert resolve_data_source(env=env, cache_dir=cache).download is False


def test_data_option_names_a_missing_path(tmp_path: Path) -> None:
    data_error(
        lambda: resolve_data_source(str(tmp_path / "nowhere"), env={}), "nowhere", "no such file", "fashion-mnist"
    )
    data_error(lambda: resolve_data_source(str(tmp_path / "gone.csv"), env={}), "gone.csv", "not found")


@pytest.mark.parametrize("given", ["rows.csv", "rows"])
def test_a_missing_relative_data_path_says_where_it_was_looked_for(given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`data.source: rows.csv` in a config beside rows.csv, run from another folder, said only
    "rows.csv: file not found": a relative path is read from the current folder, and now says so."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=rf"\(a relative path is read from the current folder, {re.escape(str(tmp_path))}\)$"):
        resolve_data_source(given, env={})
    with pytest.raises(DataError) as absolute:
        resolve_data_source(str(tmp_path / given), env={})
    assert "current folder" not in str(absolute.value)


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_a_pipe_or_device_is_named_as_what_it_is_not_as_missing(tmp_path: Path, mnist_dir: Path, kind: str) -> None:
    """`--data x.csv` for a fifo or a link to /dev/zero said "file not found", and a data folder
    holding one as its training images "missing": both are there, and neither is read."""

    def make(path: Path) -> Path:
        if kind == "fifo":
            os.mkfifo(path)
        else:
            path.symlink_to("/dev/zero")
        return path

    csv = make(tmp_path / "x.csv")
    data_error(lambda: resolve_data_source(str(csv), env={}), str(csv), "not a regular file", "pass a CSV file")
    directory = dataset_dir(tmp_path / "data", mnist_dir)
    (directory / f"{TRAIN_IMAGES}.gz").unlink()
    images = make(directory / f"{TRAIN_IMAGES}.gz")
    data_error(lambda: load_idx_dir(directory, MNIST), str(images), "not a regular file")


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    source = resolve_data_source(data_dir=tmp_path / "file", env={})
    data_error(lambda: load_data(source), "is a file", "--data-dir")


def test_a_device_is_named_as_what_it_is_not_as_missing() -> None:
    """/dev/zero exists: "no such file" and "is a file" were both false about it."""
    data_error(lambda: resolve_data_source("/dev/zero", env={}), "/dev/zero", "not a regular file or a directory")
    data_error(lambda: load_data(resolve_data_source(data_dir=Path("/dev/null"), env={})), "/dev/null is not a directory")


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.fixture
def fashion_dir() -> Path:
    if not (FASHION_DIR / f"{TRAIN_IMAGES}.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    return FASHION_DIR


def test_fashion_mnist_is_found_by_name_and_loads_with_its_checksums(
    tmp_path: Path, fashion_dir: Path, mnist_dir: Path, mnist_arrays: MnistArrays
) -> None:
    # MNIST_DATA_DIR names MNIST's folder: it must not be used for Fashion-MNIST.
    source = resolve_data_source("fashion-mnist", env={"MNIST_DATA_DIR": str(mnist_dir)}, cache_dir=tmp_path)
    assert (source.path, source.spec, source.download) == (fashion_dir, DATASETS["fashion-mnist"], False)
    fashion = load_data(source)
    assert fashion.train_images.shape == (60_000, 28, 28) and fashion.test_images.shape == (10_000, 28, 28)
    assert class_counts(fashion.train_labels).tolist() == [6000] * 10
    assert not torch.equal(fashion.test_images, mnist_arrays.test_images)


def test_fashion_files_under_mnist_names_are_inflated_once(fashion_dir: Path) -> None:
    """Naming them as Fashion-MNIST's read the refused file again, inflating it into a buffer of
    the 548 MB cap: the checksum already computed names the data set. One inflation of the 47 MB
    training images, and the copy on the way, is all the refusal costs."""
    source = resolve_data_source(str(fashion_dir), env={})
    peak = traced_peak(lambda: data_error(lambda: load_data(source), "is fashion-mnist's train-images-idx3-ubyte file"))
    assert peak < 3 * (16 + 60_000 * N_PIXELS), f"{peak:,} bytes"


def test_fashion_files_fail_the_mnist_checksums_and_are_named_as_fashions(fashion_dir: Path) -> None:
    """They were refused as "corrupt or from another dataset: replace it": the MD5 is
    Fashion-MNIST's published one, so the fix is --data fashion-mnist."""
    source = resolve_data_source(str(fashion_dir), env={})  # a directory means MNIST files
    data_error(lambda: load_data(source), TRAIN_IMAGES, "is fashion-mnist's train-images-idx3-ubyte file, not mnist's",
               "pass --data fashion-mnist")


# ---------------------------------------------------------------- splitting


def test_split_partitions_the_training_rows_and_keeps_the_test_set(
    mnist_arrays: MnistArrays, train_index: dict[bytes, int]
) -> None:
    split = split_data(mnist_arrays, val_size=10_000, seed=3)
    assert (len(split.y_train), len(split.y_val), split.split_seed) == (50_000, 10_000, 3)
    assert split.x_train.dtype == torch.float32 and split.x_train.shape == (50_000, N_PIXELS)
    train_rows, val_rows = source_rows(split.x_train, train_index), source_rows(split.x_val, train_index)
    assert torch.equal(val_rows, stratified_split(mnist_arrays.train_labels, 10_000, seed=3)[0])
    assert not set(train_rows.tolist()) & set(val_rows.tolist())
    assert sorted(train_rows.tolist() + val_rows.tolist()) == list(range(60_000))
    assert torch.equal(split.y_train, mnist_arrays.train_labels[train_rows])
    assert torch.equal(split.y_val, mnist_arrays.train_labels[val_rows])
    assert_proportional(split.y_val, mnist_arrays.train_labels)
    assert_proportional(split.y_train, mnist_arrays.train_labels)
    assert torch.equal(split.x_test, to_features(mnist_arrays.test_images))
    assert torch.equal(split.y_test, mnist_arrays.test_labels)


@pytest.mark.parametrize("n_select", [1, 7, 999, 10_000, 33_333, 59_999])
def test_stratified_split_is_exact_and_proportional(mnist_arrays: MnistArrays, n_select: int) -> None:
    labels = mnist_arrays.train_labels
    chosen, rest = stratified_split(labels, n_select, seed=0)
    assert len(chosen) == n_select and len(rest) == len(labels) - n_select
    assert sorted(torch.cat([chosen, rest]).tolist()) == list(range(len(labels)))
    assert_proportional(labels[chosen], labels)
    assert_proportional(labels[rest], labels)


def test_stratified_split_depends_on_the_seed(mnist_arrays: MnistArrays) -> None:
    labels = mnist_arrays.train_labels
    first, _ = stratified_split(labels, 10_000, seed=0)
    assert torch.equal(first, stratified_split(labels, 10_000, seed=0)[0])
    other = stratified_split(labels, 10_000, seed=1)[0]
    assert len(set(first.tolist()) ^ set(other.tolist())) > 10_000  # mostly different rows


def test_split_data_is_reproducible(mnist_arrays: MnistArrays) -> None:
    arrays = first_rows(mnist_arrays, 6000)
    first, again = split_data(arrays, val_size=1000, seed=0), split_data(arrays, val_size=1000, seed=0)
    other = split_data(arrays, val_size=1000, seed=1)
    assert torch.equal(again.x_val, first.x_val) and torch.equal(again.x_train, first.x_train)
    assert torch.equal(again.y_val, first.y_val)
    assert not torch.equal(other.x_val, first.x_val)


def test_train_size_subsample_is_stratified_and_leaves_val_alone(
    mnist_arrays: MnistArrays, train_index: dict[bytes, int]
) -> None:
    labels = mnist_arrays.train_labels
    val_rows, rest = stratified_split(labels, 10_000, seed=5)
    small = split_data(mnist_arrays, val_size=10_000, train_size=5_000, seed=5)
    assert len(small.y_train) == 5_000
    assert torch.equal(source_rows(small.x_val, train_index), val_rows)  # as without train_size
    small_rows = source_rows(small.x_train, train_index)
    assert len(set(small_rows.tolist())) == 5_000
    assert not set(small_rows.tolist()) & set(val_rows.tolist())
    assert_proportional(small.y_train, labels[rest])


def test_train_size_larger_than_the_data(mnist_arrays: MnistArrays) -> None:
    data_error(
        lambda: split_data(mnist_arrays, val_size=10_000, train_size=50_001),
        "train_size 50001", "larger than the 50000", "--train-size",
    )


def test_val_size_must_leave_training_rows(mnist_arrays: MnistArrays) -> None:
    data_error(lambda: split_data(mnist_arrays, val_size=60_000), "val_size 60000", "60000 rows")


def test_to_features_scales_to_unit_range_without_touching_its_input() -> None:
    images = torch.zeros(1, 28, 28, dtype=torch.uint8)
    images[0, 0, :3] = torch.tensor([0, 51, 255])
    features = to_features(images)
    assert features.dtype == torch.float32 and features.shape == (1, N_PIXELS)
    assert torch.equal(features[0, :3], torch.tensor([0.0, 51.0, 255.0]) / 255)
    assert int(features[0, 3:].count_nonzero()) == 0
    floats = images.float()
    to_features(floats)
    assert torch.equal(floats, images.float())


# ---------------------------------------------------------------- batches


@pytest.fixture
def rows(tiny_split) -> tuple[torch.Tensor, torch.Tensor]:
    return tiny_split.x_train[:250], tiny_split.y_train[:250]


def epoch(batches: TensorBatches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(batches)


def same_batches(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(ax, bx) and torch.equal(ay, by) for (ax, ay), (bx, by) in zip(a, b)
    )


def test_unshuffled_batches_are_slices_in_order(rows) -> None:
    x, y = rows
    batches = TensorBatches(x, y, batch_size=64)
    got = epoch(batches)
    assert len(batches) == len(got) == 4
    assert [len(by) for _, by in got] == [64, 64, 64, 58]
    for i, (bx, by) in enumerate(got):
        assert bx.data_ptr() == x[64 * i].data_ptr()  # a view into x, no copy
    assert torch.equal(torch.cat([bx for bx, _ in got]), x)
    assert torch.equal(torch.cat([by for _, by in got]), y)


def test_each_epoch_is_a_new_permutation_of_the_rows(rows) -> None:
    x, y = rows
    batches = TensorBatches(x, y, batch_size=100, shuffle=True, seed=7)
    first, second = epoch(batches), epoch(batches)
    for got in (first, second):
        assert [len(by) for _, by in got] == [100, 100, 50]
        assert len({bx.untyped_storage().data_ptr() for bx, _ in got}) == 1  # slices of one shuffled copy
        gx, gy = torch.cat([bx for bx, _ in got]), torch.cat([by for _, by in got])
        assert sorted(row_keys(gx)) == sorted(row_keys(x))
        assert torch.equal(gy.sort().values, y.sort().values)
        assert dict(zip(row_keys(gx), gy.tolist())) == dict(zip(row_keys(x), y.tolist()))  # pairs kept
    assert not torch.equal(first[0][0], second[0][0])


def test_same_seed_same_batches_and_other_seed_other_batches(rows) -> None:
    x, y = rows
    runs = [[epoch(batches) for _ in range(3)] for batches in (
        TensorBatches(x, y, 100, shuffle=True, seed=7), TensorBatches(x, y, 100, shuffle=True, seed=7),
    )]
    torch.manual_seed(123)  # the global generator has no say
    other = epoch(TensorBatches(x, y, 100, shuffle=True, seed=8))
    for e in range(3):
        assert same_batches(runs[0][e], runs[1][e])
    assert not same_batches(runs[0][0], other)


def test_epoch_shuffle_depends_only_on_seed_and_epoch(rows) -> None:
    x, y = rows
    played = TensorBatches(x, y, 100, shuffle=True, seed=7)
    for _ in range(3):
        epoch(played)
    restarted = TensorBatches(x, y, 100, shuffle=True, seed=7)
    restarted.epoch = 3
    assert same_batches(epoch(played), epoch(restarted))
    # Trials seeded s and s + 1 must not share shuffles one epoch apart.
    shifted = TensorBatches(x, y, 100, shuffle=True, seed=8)
    seed_7_epoch_1 = TensorBatches(x, y, 100, shuffle=True, seed=7)
    seed_7_epoch_1.epoch = 1
    assert not same_batches(epoch(seed_7_epoch_1), epoch(shifted))


def test_data_module_serves_the_split(tiny_split) -> None:
    module = MNISTDataModule(tiny_split, batch_size=128, shuffle_seed=3, eval_batch_size=300)
    train = module.train_dataloader()
    assert train is module.train_dataloader()  # one loader, so the epoch count carries on
    assert (train.shuffle, train.seed, len(train)) == (True, 3, math.ceil(600 / 128))
    val, test = module.val_dataloader(), module.test_dataloader()
    assert not val.shuffle and not test.shuffle
    assert torch.equal(torch.cat([bx for bx, _ in val]), tiny_split.x_val)
    assert [len(by) for _, by in test] == [300, 200]


# ---------------------------------------------------------------- bounds before work


def _idx_header(n: int) -> bytes:
    return (0x00000803).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")


def test_an_idx_header_that_promises_more_than_the_cap_is_refused_before_reading_on(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_header(2_000_000) + bytes(784)))
    data_error(lambda: read_idx_images(path), "promises shape (2000000, 28, 28)", "more than")


def test_a_gzip_bomb_is_inflated_only_as_far_as_its_header_says(tmp_path: Path) -> None:
    """A small gzip that inflates to 128 MB: reading stops one byte past the 10 images its header announces."""
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(_idx_header(10) + bytes(10 * 784))
        zeros = bytes(1 << 24)
        for _ in range(8):  # 128 MB of padding: enough to be absurd, quick to write
            out.write(zeros)
    data_error(lambda: read_idx_images(path), "the file has more than that", "truncated or corrupt")


def test_a_gzip_bomb_under_a_published_name_is_refused_at_its_header(tmp_path: Path, mnist_dir: Path) -> None:
    """A 300 KB gzip whose header promises 700,000 images (the cap) under MNIST's name: it was
    inflated as far as it went (64 MB here, 548 MB in all), then again to name its data set,
    before "checksum mismatch". The published files' sizes are known: the header is refused."""
    directory = dataset_dir(tmp_path / "data", mnist_dir)
    bomb = directory / f"{TRAIN_IMAGES}.gz"
    bomb.unlink()
    with gzip.open(bomb, "wb", compresslevel=1) as out:
        out.write(_idx_header(700_000))
        zeros = bytes(1 << 24)
        for _ in range(4):  # zeros compress ~1000:1
            out.write(zeros)
    words = [str(bomb), "promises shape (700000, 28, 28)", "not the published file's 47,040,016 bytes", "replace it"]
    peak = traced_peak(lambda: data_error(lambda: load_idx_dir(directory, MNIST), *words))
    assert peak < 1_000_000, f"{peak:,} bytes to refuse a header"


def test_a_data_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("0," + ",".join(["0"] * 784) + "\n")
    data_error(lambda: read_csv(path, limit=100), "more than the 100")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_is_not_read_as_data(device: str) -> None:
    data_error(lambda: read_csv(Path(device)), device, "not a regular file")
    data_error(lambda: read_idx_images(Path(device)), device, "not a regular file")


# ---------------------------------------------------------------- validation size, sample images


@pytest.mark.parametrize(
    "n_rows, fraction, cap, expected",
    [
        (17_143, 0.2, 10_000, 3_429),  # 3,428.6 rounds to the nearest row
        (60_000, 0.2, 10_000, 10_000),  # MNIST: 12,000 would be more than the cap
        (60_000, 0.1, 10_000, 6_000),  # under the cap, the fraction alone
        (2, 0.2, 10_000, 1),  # 0.4 rows: at least one row still validates
    ],
)
def test_validation_rows_is_a_rounded_fraction_capped_and_never_zero(n_rows: int, fraction: float, cap: int, expected: int) -> None:
    from lightning_modules.data.split import validation_rows

    assert validation_rows(n_rows, fraction, cap) == expected


def test_the_sample_images_of_a_csv_are_its_first_nine_rows_as_given(tmp_path: Path) -> None:
    """The export's sample picture shows the file's first rows, not the shuffled split's."""
    from search.data import load_split
    from search.settings import DataConfig

    n_rows = 120
    labels = [(7 * i + 3) % N_CLASSES for i in range(n_rows)]  # not sorted, every class 12 times
    pixels = [[(i + 2 * p) % 256 for p in range(N_PIXELS)] for i in range(n_rows)]  # each row unique
    path = tmp_path / "digits.csv"
    path.write_text("".join(",".join(map(str, [label, *row])) + "\n" for label, row in zip(labels, pixels)))

    split = load_split(DataConfig(source=str(path)))
    assert split.sample_images is not None and split.sample_labels is not None
    assert split.sample_labels.tolist() == labels[:9]
    expected = torch.tensor(pixels[:9], dtype=torch.float32) / 255.0
    assert torch.equal(split.sample_images, expected)
    # the split's own first rows are others: the samples cannot have come from it
    assert not torch.equal(split.x_train[:9], expected)


def test_a_csv_numpy_wrote_with_its_default_format_is_read(tmp_path: Path, mnist_arrays: MnistArrays) -> None:
    """`np.savetxt(f, rows, delimiter=",")` writes "2.550000000000000000e+02" (25 bytes a cell):
    the streaming reader's line cap refused such a file, which the earlier reader read."""
    images, labels = mnist_arrays.train_images[:20].reshape(20, -1), mnist_arrays.train_labels[:20]
    path = tmp_path / "savetxt.csv"
    np.savetxt(path, np.column_stack([labels, images]).astype(np.float64), delimiter=",")
    assert len(path.read_text().splitlines()[0]) > 16 * 785  # longer than the first cap
    read_images, read_labels = read_csv(path)
    assert np.array_equal(read_labels, labels) and np.array_equal(read_images.reshape(20, -1), images)
