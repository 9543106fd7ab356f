"""The data set in memory -> a seeded, stratified train/validation split as model-ready tensors."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lightning_modules.data.format import N_CLASSES, N_PIXELS
from lightning_modules.errors import DataError

if TYPE_CHECKING:
    from lightning_modules.data.arrays import MnistArrays


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


def validation_rows(n_rows: int, fraction: float, cap: int) -> int:
    """How many of `n_rows` training rows to hold out: a fraction, at most `cap`, at least 1.

    A fixed count would take half of a small file; MNIST's 60,000 rows at 0.2 hit the 10,000 cap.
    """
    return max(1, min(cap, round(n_rows * fraction)))


@dataclass(frozen=True)
class DataSplit:
    """Float pixels in [0, 1] (N x 784) and labels, split once and shared by every trial.

    `sample_images`/`sample_labels` are the first nine rows of the data as given, for the
    export's picture of what the model learns from.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    split_seed: int
    sample_images: torch.Tensor | None = None
    sample_labels: torch.Tensor | None = None

    def fingerprint(self) -> str:
        """SHA-256 over every row and label the split uses, in order: one data set, one value."""
        digest = hashlib.sha256()
        for tensor in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    def to(self, device: str) -> DataSplit:
        """The same rows on `device` ("cpu", "cuda:0"), copied once per worker: batches are then
        slices on the device, with no host-to-device copy per batch. The sample images stay put."""
        rows = [t.to(device) for t in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test)]
        if all(r is t for r, t in zip(rows, (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test))):
            return self
        return dataclasses.replace(
            self, x_train=rows[0], y_train=rows[1], x_val=rows[2], y_val=rows[3], x_test=rows[4], y_test=rows[5]
        )


def to_features(images: torch.Tensor) -> torch.Tensor:
    """uint8 28x28 images -> float32 rows of 784 pixels scaled to [0, 1] (the model's input).

    Always a new tensor: the caller's images are never modified.
    """
    return images.reshape(len(images), N_PIXELS).to(torch.float32, copy=True).div_(255.0)


def split_data(arrays: MnistArrays, val_size: int, train_size: int | None = None, seed: int = 0) -> DataSplit:
    """Stratified seeded train/val split of the training set; the test set stays apart."""
    n = len(arrays.train_labels)
    if not 0 < val_size < n:
        raise DataError(f"val_size {val_size} must be between 1 and {n - 1} (the training set has {n} rows)")
    val_idx, train_idx = stratified_split(arrays.train_labels, val_size, seed)
    if train_size is not None:
        if not 0 < train_size <= len(train_idx):
            raise DataError(
                f"train_size {train_size} is larger than the {len(train_idx)} training rows left "
                f"after the {val_size}-row validation split; lower --train-size, --val-size or --val-fraction"
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
        sample_images=None if arrays.first_images is None else to_features(arrays.first_images),
        sample_labels=arrays.first_labels,
    )
