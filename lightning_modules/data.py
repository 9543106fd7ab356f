"""MNIST-format data: find it, read it (IDX or CSV), check it, split it, batch it.

Everything is held as in-memory tensors: the whole of MNIST is 55 MB as uint8, so reading
it once and slicing pre-shuffled tensors per batch is far faster than a DataLoader that
collates sample by sample.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import math
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lightning_modules.errors import DataError

IMAGE_SIDE = 28
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
N_CLASSES = 10
ROLES = ("train_images", "train_labels", "test_images", "test_labels")
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
CSV_COLUMNS = 1 + N_PIXELS  # the label, then the pixels
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset in the MNIST IDX layout, with the checksums of its decompressed files."""

    name: str
    files: Mapping[str, str]  # role -> file name without .gz
    md5: Mapping[str, str]  # file name -> MD5 of the decompressed bytes
    mirrors: tuple[str, ...]
    system_dirs: tuple[Path, ...] = ()


_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

MNIST = DatasetSpec(
    name="mnist",
    files=_IDX_FILES,
    md5={
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    files=_IDX_FILES,
    md5={
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}
MIRRORS_ENV = "MNIST_SEARCH_MIRRORS"  # comma-separated base URLs that replace the public mirrors
DATA_DIR_ENV = "MNIST_DATA_DIR"


@dataclass(frozen=True)
class MnistArrays:
    """Raw images (uint8, N x 28 x 28) and labels (int64) as they are on disk."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if len(images) != len(labels):
                raise DataError(
                    f"{self.source}: {len(images)} {split} images but {len(labels)} {split} "
                    "labels; the image and label files must come from the same dataset"
                )
            if len(images) == 0:
                raise DataError(f"{self.source}: the {split} set is empty")


# ---------------------------------------------------------------- readers


def _gunzip(raw: bytes) -> bytes:
    """Decompress gzip bytes (anything else passes through); ValueError naming the damage."""
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise ValueError(f"corrupt or truncated gzip data ({error})") from None


def _read_raw(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    if not raw:
        raise DataError(f"{path}: the file is empty")
    return raw


def read_file_bytes(path: Path) -> bytes:
    """The decompressed content of an IDX file, gzip or raw."""
    try:
        return _gunzip(_read_raw(path))
    except ValueError as error:
        raise DataError(f"{path}: {error}; replace it with a good copy") from None


def parse_idx(content: bytes, path: Path, expected_magic: int) -> np.ndarray:
    """Parse IDX bytes (ubyte images or labels) into an array, checking magic and shape."""
    if len(content) < 8:
        raise DataError(f"{path}: too short to be an IDX file ({len(content)} bytes)")
    magic = int.from_bytes(content[:4], "big")
    if magic != expected_magic:
        kind = "images" if expected_magic == IDX_IMAGES_MAGIC else "labels"
        raise DataError(
            f"{path}: wrong IDX magic number 0x{magic:08x} for {kind} "
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
    if len(content) != expected:
        raise DataError(
            f"{path}: the header promises shape {dims} ({expected} bytes) but the file has "
            f"{len(content)} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


def _check_labels(labels: np.ndarray, path: Path) -> None:
    bad = np.flatnonzero(labels >= N_CLASSES)
    if bad.size:
        raise DataError(f"{path}: label {labels[bad[0]]} at row {bad[0]} is outside 0-9")


# Structure is checked before the checksum: "wrong magic number" or "truncated" says more
# than "checksum mismatch", which is left for damage that keeps the file well-formed.


def read_idx_images(path: Path, md5: str | None = None) -> np.ndarray:
    content = read_file_bytes(path)
    images = parse_idx(content, path, IDX_IMAGES_MAGIC)
    verify_md5(content, md5, path)
    return images


def read_idx_labels(path: Path, md5: str | None = None) -> np.ndarray:
    content = read_file_bytes(path)
    labels = parse_idx(content, path, IDX_LABELS_MAGIC)
    verify_md5(content, md5, path)
    _check_labels(labels, path)
    return labels


def _md5_mismatch(content: bytes, expected: str) -> str | None:
    actual = hashlib.md5(content, usedforsecurity=False).hexdigest()
    if actual == expected:
        return None
    return f"checksum mismatch (MD5 of the decompressed content is {actual}, expected {expected})"


def verify_md5(content: bytes, expected: str | None, path: Path | str) -> None:
    """Refuse content whose MD5 differs from the published one (checks decompressed bytes)."""
    problem = None if expected is None else _md5_mismatch(content, expected)
    if problem:
        raise DataError(f"{path}: {problem}; the file is corrupt or from another dataset: replace it")


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the tutorial's CSV: label in column 0, 784 pixels 0-255 after it, header optional.

    Messages number rows as the file's lines (a header is row 1) and columns from 0 (the label).
    Blank lines are skipped. A first line whose label cell is not a number is the header.
    """
    import pandas as pd  # pandas costs ~0.3 s to import; only CSV users pay it

    raw = _read_raw(path)
    lines = raw.split(b"\n")
    first_cell = lines[0].split(b",", 1)[0].strip().strip(b'"').decode("utf-8", "replace").lstrip("\ufeff")
    has_header = bool(lines[0].strip()) and not _is_number(first_cell)
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
            text = cell(row, col)
            problem = "the cell is empty" if not text else f"{text!r} is not a whole number"
            raise DataError(f"{path}: row {row_numbers[row]}, column {col}: {problem}")
    labels, pixels = values[:, 0], values[:, 1:]
    bad = np.flatnonzero((labels < 0) | (labels >= N_CLASSES))
    if bad.size:
        raise DataError(
            f"{path}: row {row_numbers[bad[0]]}, column 0: label {cell(bad[0], 0)} is outside 0-9"
        )
    bad = np.argwhere((pixels < 0) | (pixels > 255))
    if bad.size:
        row, col = bad[0]
        raise DataError(
            f"{path}: row {row_numbers[row]}, column {col + 1}: pixel {cell(row, col + 1)} "
            "is outside 0-255"
        )
    return pixels.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE), labels.astype(np.int64)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_csv(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, path: Path) -> None:
    """Write rows in the tutorial's CSV layout (no header), e.g. for tests and predict."""
    rows = np.column_stack([np.asarray(labels).reshape(-1), np.asarray(images).reshape(-1, N_PIXELS)])
    np.savetxt(path, rows, fmt="%d", delimiter=",")


# ---------------------------------------------------------------- finding the files


@dataclass(frozen=True)
class DataSource:
    """Where the data comes from: an IDX directory (with its dataset's checksums) or a CSV file."""

    kind: str  # "idx" or "csv"
    path: Path
    spec: DatasetSpec | None  # checksums to verify; None for CSV
    download: bool = False  # fetch missing IDX files into `path` (the cache) first

    def describe(self) -> str:
        return f"{self.spec.name if self.spec else 'csv'} at {self.path}"


def default_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mnist-search"))


def _idx_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def _has_all_files(directory: Path, spec: DatasetSpec) -> bool:
    return all(_idx_file(directory, name) for name in spec.files.values())


def resolve_data_source(
    data: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
) -> DataSource:
    """Pick the data: --data (dir, CSV or name), then --data-dir, MNIST_DATA_DIR, the cache."""
    env = os.environ if env is None else env
    spec = MNIST
    if data:
        if data.lower() in DATASETS:
            spec = DATASETS[data.lower()]
        else:
            path = Path(data).expanduser()
            if path.suffix.lower() == ".csv" or path.is_file():
                if not path.is_file():
                    raise DataError(f"{path}: file not found")
                return DataSource("csv", path, None)
            if path.is_dir():
                return DataSource("idx", path, MNIST)
            raise DataError(
                f"--data {data!r}: no such file or directory, and not a dataset name "
                f"({', '.join(DATASETS)})"
            )
    if data_dir:
        return DataSource("idx", Path(data_dir).expanduser(), spec)
    candidates: list[Path] = []
    if env.get(DATA_DIR_ENV) and spec is MNIST:
        return DataSource("idx", Path(env[DATA_DIR_ENV]).expanduser(), spec)
    candidates.extend(spec.system_dirs)
    for directory in candidates:
        if _has_all_files(directory, spec):
            return DataSource("idx", directory, spec)
    cache = (cache_dir or default_cache_dir()) / spec.name
    return DataSource("idx", cache, spec, download=not _has_all_files(cache, spec))


# ---------------------------------------------------------------- download


def mirrors_for(spec: DatasetSpec, env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The base URLs to download `spec` from: MNIST_SEARCH_MIRRORS if set, else the public ones."""
    env = os.environ if env is None else env
    override = [url.strip() for url in env.get(MIRRORS_ENV, "").split(",") if url.strip()]
    if override:
        return tuple(url if url.endswith("/") else url + "/" for url in override)
    return spec.mirrors


def _fetch_verified(url: str, target: Path, md5: str, timeout: float) -> None:
    """Download url into target atomically: a temp file, checked, then renamed into place.

    Raises DataError with a short reason (no path) when the transfer is cut short or the
    content is not the published one; nothing is left behind but a complete, verified file.
    """
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            announced = response.headers.get("Content-Length")
            received = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                received += len(chunk)
        # http.client ends a body cut short as if it were complete: compare with the header.
        if announced and announced.isdigit() and received < int(announced):
            raise DataError(f"the connection closed after {received} of {announced} bytes")
        try:
            content = _gunzip(tmp.read_bytes())
        except ValueError as error:
            raise DataError(str(error)) from None
        problem = _md5_mismatch(content, md5)
        if problem:
            raise DataError(problem)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _download_problem(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


def download_dataset(
    spec: DatasetSpec, directory: Path, mirrors: tuple[str, ...], timeout: float = 30.0
) -> None:
    """Fetch the missing files of `spec` into `directory`, trying each mirror in turn.

    `timeout` bounds each connection attempt and each read, so a silent server cannot hang us.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot create the data folder {directory} ({error.strerror}); point --data-dir or "
            f"{DATA_DIR_ENV} at a folder holding the four IDX files"
        ) from None
    for name in spec.files.values():
        if _idx_file(directory, name):
            continue
        problems: list[str] = []
        for base in mirrors:
            url = f"{base}{name}.gz"
            try:
                _fetch_verified(url, directory / f"{name}.gz", spec.md5[name], timeout)
                break
            except (OSError, http.client.HTTPException, DataError, ValueError) as error:
                problems.append(f"{url}: {_download_problem(error)}")
        else:
            raise DataError(
                f"{spec.name}: {name}.gz is not in {directory} and could not be downloaded "
                f"({'; '.join(problems) or 'no mirrors given'}); without network access, point "
                f"--data-dir or {DATA_DIR_ENV} at a folder holding the four IDX files"
            )


# ---------------------------------------------------------------- loading


def load_idx_dir(directory: Path, spec: DatasetSpec | None, verify: bool = True) -> MnistArrays:
    """Read the four IDX files of a dataset directory, verifying checksums unless told not to."""
    if not directory.is_dir():
        problem = "is a file, not a directory" if directory.exists() else "does not exist"
        raise DataError(
            f"data directory {directory} {problem}; point --data-dir or {DATA_DIR_ENV} "
            "at a folder holding the four MNIST IDX files"
        )
    spec = spec or MNIST
    arrays = {}
    for role, name in spec.files.items():
        path = _idx_file(directory, name)
        if path is None:
            raise DataError(
                f"{directory}: missing {name}.gz (or {name}); a data directory needs the four "
                "files train-images, train-labels, t10k-images and t10k-labels"
            )
        md5 = spec.md5[name] if verify else None
        reader = read_idx_images if role.endswith("images") else read_idx_labels
        arrays[role] = torch.from_numpy(reader(path, md5).copy())
    return MnistArrays(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].long(),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].long(),
        source=f"{spec.name} ({directory})",
    )


def load_csv_file(path: Path, test_fraction: float = 1 / 7, seed: int = 0) -> MnistArrays:
    """A CSV has no separate test set: hold out a stratified, seeded fraction as the test set."""
    images, labels = read_csv(path)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    n_test = max(1, round(len(labels) * test_fraction))
    if len(labels) - n_test < 2:
        raise DataError(f"{path}: only {len(labels)} rows; need at least 3 to split off a test set")
    test_idx, train_idx = stratified_split(labels_t, n_test, seed)
    return MnistArrays(
        images_t[train_idx], labels_t[train_idx], images_t[test_idx], labels_t[test_idx], str(path)
    )


def load_data(source: DataSource, verify: bool = True) -> MnistArrays:
    """Read a resolved source into memory, downloading first if the source asks for it."""
    if source.kind == "csv":
        return load_csv_file(source.path)
    if source.download:
        assert source.spec is not None
        download_dataset(source.spec, source.path, mirrors_for(source.spec))
    return load_idx_dir(source.path, source.spec, verify=verify)


# ---------------------------------------------------------------- splitting


def stratified_split(labels: torch.Tensor, n_select: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of indices into (n_select chosen, the rest), keeping class proportions.

    Each class contributes its share of n_select rounded by the largest-remainder method, so
    every class count is within one row of its exact proportion and the total is exact.
    """
    n = len(labels)
    if not 0 <= n_select <= n:
        raise ValueError(f"cannot select {n_select} of {n} rows")
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    order = perm[torch.argsort(labels[perm], stable=True)]  # shuffled within each class
    counts = torch.bincount(labels, minlength=N_CLASSES).double()
    quota = counts * n_select / n
    take = quota.floor().long()
    remainder = n_select - int(take.sum())
    if remainder > 0:  # largest remainder method: exact total, proportions kept
        take[torch.argsort(quota - take, descending=True, stable=True)[:remainder]] += 1
    starts = torch.cumsum(counts.long(), 0) - counts.long()
    chosen = torch.zeros(n, dtype=torch.bool)
    for cls in range(N_CLASSES):
        chosen[order[starts[cls] : starts[cls] + take[cls]]] = True
    return torch.sort(torch.nonzero(chosen).flatten()).values, torch.sort(torch.nonzero(~chosen).flatten()).values


@dataclass(frozen=True)
class DataSplit:
    """Float pixels in [0, 1] (N x 784) and labels, split once and shared by every trial."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    split_seed: int


def to_features(images: torch.Tensor) -> torch.Tensor:
    """uint8 28x28 images -> float32 rows of 784 pixels scaled to [0, 1] (the model's input).

    Always a new tensor: the caller's images are never modified.
    """
    return images.reshape(len(images), N_PIXELS).to(torch.float32, copy=True).div_(255.0)


def split_data(
    arrays: MnistArrays, val_size: int = 10_000, train_size: int | None = None, seed: int = 0
) -> DataSplit:
    """Stratified seeded train/val split of the training set; the test set stays apart."""
    n = len(arrays.train_labels)
    if not 0 < val_size < n:
        raise DataError(
            f"val_size {val_size} must be between 1 and {n - 1} (the training set has {n} rows)"
        )
    val_idx, train_idx = stratified_split(arrays.train_labels, val_size, seed)
    if train_size is not None:
        if not 0 < train_size <= len(train_idx):
            raise DataError(
                f"train_size {train_size} is larger than the {len(train_idx)} training rows left "
                f"after the {val_size}-row validation split; lower --train-size or data.val_size"
                if train_size > 0
                else f"train_size must be positive, got {train_size}"
            )
        keep, _ = stratified_split(arrays.train_labels[train_idx], train_size, seed + 1)
        train_idx = train_idx[keep]
    return DataSplit(
        x_train=to_features(arrays.train_images[train_idx]),
        y_train=arrays.train_labels[train_idx].contiguous(),
        x_val=to_features(arrays.train_images[val_idx]),
        y_val=arrays.train_labels[val_idx].contiguous(),
        x_test=to_features(arrays.test_images),
        y_test=arrays.test_labels.contiguous(),
        split_seed=seed,
    )


# ---------------------------------------------------------------- batching


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator that depends on the pair (seed, epoch).

    Not on seed + epoch: trials with seeds s and s + 1 would then see the same shuffles, one
    epoch apart.
    """
    state = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class TensorBatches:
    """Batches sliced from (optionally) pre-shuffled tensors: no per-sample collation.

    Epoch e is shuffled by a generator seeded from (seed, e) alone, so setting `epoch = e`
    on a fresh instance (a run restarted at epoch e) gives the same batches.
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        self.x, self.y, self.batch_size, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.x, self.y
        if self.shuffle:
            perm = torch.randperm(len(y), generator=_epoch_generator(self.seed, self.epoch))
            x, y = x[perm], y[perm]
            self.epoch += 1
        for start in range(0, len(y), self.batch_size):
            yield x[start : start + self.batch_size], y[start : start + self.batch_size]
