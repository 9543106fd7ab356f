"""A resolved source -> the data set in memory: train and test images and labels as tensors.

A CSV has no test set of its own, so a stratified, seeded seventh of its rows becomes one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lightning_modules.data.datasets import DATASETS, MNIST, DatasetSpec
from lightning_modules.data.download import download_dataset, mirrors_for
from lightning_modules.data.format import N_PIXELS
from lightning_modules.data.readers import ChecksumMismatch, read_csv, read_idx_images, read_idx_labels
from lightning_modules.data.sources import DataSource, idx_files
from lightning_modules.data.split import stratified_split
from lightning_modules.errors import DataError

CSV_TEST_FRACTION = 1 / 7  # MNIST's own share: 10,000 of 70,000
# The decompressed size of each published file, MNIST's and Fashion-MNIST's alike (60,000 training
# and 10,000 test rows of 28x28): a file whose header promises another is refused before it is
# inflated. A gzip of 533 KB that promised 700,000 images took 1.35 GB and 8 s to be refused.
PUBLISHED_BYTES = {
    "train-images-idx3-ubyte": 16 + 60_000 * N_PIXELS,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * N_PIXELS,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}


@dataclass(frozen=True)
class MnistArrays:
    """Raw images (uint8, N x 28 x 28) and labels (int64) as they are on disk.

    `first_images`/`first_labels` are the first rows of the file as given (before any split),
    for the export's sample picture.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str
    first_images: torch.Tensor | None = None
    first_labels: torch.Tensor | None = None

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
        if self.first_images is None:
            object.__setattr__(self, "first_images", self.train_images[:9])
            object.__setattr__(self, "first_labels", self.train_labels[:9])


def load_idx_dir(directory: Path, spec: DatasetSpec | None, verify: bool = True) -> MnistArrays:
    """Read the four IDX files of a dataset directory, verifying checksums (and the published
    sizes, before inflating) unless told not to; each file is read once."""
    spec = spec or MNIST
    arrays = {}
    for role, path in idx_files(directory, spec).items():
        name = spec.files[role]
        md5, size = (spec.md5[name], PUBLISHED_BYTES.get(name)) if verify else (None, None)
        reader = read_idx_images if role.endswith("images") else read_idx_labels
        try:
            arrays[role] = torch.from_numpy(reader(path, md5, size=size).copy())
        except ChecksumMismatch as mismatch:
            other = _published_by(mismatch.digest, name, spec)
            if other is None:
                raise
            raise DataError(  # "replace it", the fix for a corrupt file, was the wrong advice here
                f"{path} is {other.name}'s {spec.files[role]} file, not {spec.name}'s; pass --data {other.name} to train on "
                f"{other.name}, or put {spec.name}'s files in {directory}"
            ) from None
    return MnistArrays(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].long(),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].long(),
        source=f"{spec.name} ({directory})",
    )


def _published_by(digest: str, name: str, asked: DatasetSpec) -> DatasetSpec | None:
    """The other dataset whose published `name` file has the MD5 `digest`, if any."""
    return next((spec for spec in DATASETS.values() if spec is not asked and spec.md5.get(name) == digest), None)


def load_csv_file(path: Path, test_fraction: float = CSV_TEST_FRACTION, seed: int = 0) -> MnistArrays:
    """A CSV has no separate test set: hold out a stratified, seeded fraction as the test set."""
    images, labels = read_csv(path)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    n_test = max(1, round(len(labels) * test_fraction))
    if len(labels) - n_test < 2:
        raise DataError(f"{path}: only {len(labels)} rows; need at least 3 to split off a test set")
    digits = np.unique(labels)
    if len(digits) < 2:  # every model scores 1.0 on it: the search would stop at its target on nothing learned
        raise DataError(f"{path}: every row is labelled {digits[0]}; a classifier needs rows of at least two digits")
    test_idx, train_idx = stratified_split(labels_t, n_test, seed)
    return MnistArrays(
        images_t[train_idx], labels_t[train_idx], images_t[test_idx], labels_t[test_idx], str(path),
        first_images=images_t[:9], first_labels=labels_t[:9],
    )


def load_data(source: DataSource, verify: bool = True) -> MnistArrays:
    """Read a resolved source into memory, downloading first if the source asks for it."""
    if source.kind == "csv":
        return load_csv_file(source.path)
    if source.download:
        assert source.spec is not None
        download_dataset(source.spec, source.path, mirrors_for(source.spec))
    return load_idx_dir(source.path, source.spec, verify=verify)
