"""MNIST-format data: find it, read it (IDX or CSV), check it, split it, batch it.

Everything is held as in-memory tensors: the whole of MNIST is 55 MB as uint8, so reading
it once and slicing pre-shuffled tensors per batch is far faster than a DataLoader that
collates sample by sample.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from lightning_modules.errors import DataError

IMAGE_SIDE = 28
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
N_CLASSES = 10
ROLES = ("train_images", "train_labels", "test_images", "test_labels")
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


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


def _decompress(raw: bytes, path: Path) -> bytes:
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise DataError(
            f"{path}: corrupt or truncated gzip file ({error}); delete it and download it again"
        ) from None


def read_file_bytes(path: Path) -> bytes:
    """The decompressed content of an IDX file, gzip or raw."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    if not raw:
        raise DataError(f"{path}: the file is empty")
    return _decompress(raw, path)


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


def read_idx_images(path: Path, md5: str | None = None) -> np.ndarray:
    content = read_file_bytes(path)
    verify_md5(content, md5, path)
    return parse_idx(content, path, IDX_IMAGES_MAGIC)


def read_idx_labels(path: Path, md5: str | None = None) -> np.ndarray:
    content = read_file_bytes(path)
    verify_md5(content, md5, path)
    labels = parse_idx(content, path, IDX_LABELS_MAGIC)
    _check_labels(labels, path)
    return labels


def verify_md5(content: bytes, expected: str | None, path: Path) -> None:
    """Refuse content whose MD5 differs from the published one (checks decompressed bytes)."""
    if expected is None:
        return
    actual = hashlib.md5(content, usedforsecurity=False).hexdigest()
    if actual != expected:
        raise DataError(
            f"{path}: checksum mismatch (MD5 of the decompressed content is {actual}, "
            f"expected {expected}); the file is corrupt or from another dataset: replace it"
        )


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the tutorial's CSV: label in column 0, 784 pixels 0-255 after it, header optional."""
    import pandas as pd  # pandas costs ~0.3 s to import; only CSV users pay it

    try:
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        first = str(error).strip().splitlines()[0]
        raise DataError(f"{path}: not a valid CSV file ({first})") from None
    if frame.shape[1] != 1 + N_PIXELS:
        raise DataError(
            f"{path}: {frame.shape[1]} columns, expected 785 (label in column 0, then 784 pixels)"
        )
    first_row_numeric = pd.to_numeric(frame.iloc[0], errors="coerce").notna().all()
    row_offset = 1  # report rows 1-based, as a spreadsheet shows them
    if not first_row_numeric:
        frame = frame.iloc[1:]
        row_offset = 2
    if frame.empty:
        raise DataError(f"{path}: no data rows after the header")
    values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.argwhere(np.isnan(values) | (values != np.round(values)))
    if bad.size:
        row, col = bad[0]
        raise DataError(
            f"{path}: row {row + row_offset}, column {col}: {frame.iat[row, col]!r} is not a whole number"
        )
    labels, pixels = values[:, 0], values[:, 1:]
    bad = np.flatnonzero((labels < 0) | (labels >= N_CLASSES))
    if bad.size:
        raise DataError(
            f"{path}: row {bad[0] + row_offset}, column 0: label {labels[bad[0]]:g} is outside 0-9"
        )
    bad = np.argwhere((pixels < 0) | (pixels > 255))
    if bad.size:
        row, col = bad[0]
        raise DataError(
            f"{path}: row {row + row_offset}, column {col + 1}: pixel {pixels[row, col]:g} "
            "is outside 0-255"
        )
    return pixels.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE), labels.astype(np.int64)


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
    env = os.environ if env is None else env
    override = env.get(MIRRORS_ENV, "").strip()
    if override:
        return tuple(url if url.endswith("/") else url + "/" for url in override.split(","))
    return spec.mirrors


def _fetch_verified(url: str, target: Path, md5: str, timeout: float) -> None:
    """Download url into target atomically: a temp file, checked, then renamed into place."""
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        verify_md5(read_file_bytes(tmp), md5, Path(url))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def download_dataset(
    spec: DatasetSpec, directory: Path, mirrors: tuple[str, ...], timeout: float = 30.0
) -> None:
    """Fetch the missing files of `spec` into `directory`, trying each mirror in turn."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in spec.files.values():
        if _idx_file(directory, name):
            continue
        errors: list[str] = []
        for base in mirrors:
            try:
                _fetch_verified(f"{base}{name}.gz", directory / f"{name}.gz", spec.md5[name], timeout)
                break
            except (urllib.error.URLError, OSError, DataError, ValueError) as error:
                reason = getattr(error, "reason", None) or error
                errors.append(f"{base}: {reason}")
        else:
            raise DataError(
                f"{spec.name} files are not in {directory} and downloading {name}.gz failed "
                f"({'; '.join(errors)}); with no network, point --data-dir or {DATA_DIR_ENV} "
                "at a folder holding the four IDX files"
            )


# ---------------------------------------------------------------- loading


def load_idx_dir(directory: Path, spec: DatasetSpec | None, verify: bool = True) -> MnistArrays:
    """Read the four IDX files of a dataset directory, verifying checksums unless told not to."""
    if not directory.is_dir():
        raise DataError(
            f"data directory {directory} does not exist; point --data-dir or {DATA_DIR_ENV} "
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
    """Seeded split of indices into (n_select chosen, the rest), keeping class proportions."""
    n = len(labels)
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
    """uint8 28x28 images -> float32 rows of 784 pixels scaled to [0, 1] (the model's input)."""
    return images.reshape(len(images), N_PIXELS).to(torch.float32).div_(255.0)


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


class TensorBatches:
    """Batches sliced from (optionally) pre-shuffled tensors: no per-sample collation.

    Epoch e is shuffled with seed + e, so a run restarted at epoch e sees the same batches.
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> None:
        self.x, self.y, self.batch_size, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.x, self.y
        if self.shuffle:
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed + self.epoch))
            x, y = x[perm], y[perm]
            self.epoch += 1
        for start in range(0, len(y), self.batch_size):
            yield x[start : start + self.batch_size], y[start : start + self.batch_size]


class MNISTDataModule(pl.LightningDataModule):
    """Serves a prebuilt DataSplit; tests inject a few hundred rows, runs the full MNIST."""

    def __init__(self, split: DataSplit, batch_size: int = 128, shuffle_seed: int = 0, eval_batch_size: int = 2048) -> None:
        super().__init__()
        self.split = split
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.train_batches = TensorBatches(split.x_train, split.y_train, batch_size, True, shuffle_seed)

    def train_dataloader(self) -> TensorBatches:
        return self.train_batches

    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(self.split.x_val, self.split.y_val, self.eval_batch_size)

    def test_dataloader(self) -> TensorBatches:
        return TensorBatches(self.split.x_test, self.split.y_test, self.eval_batch_size)
