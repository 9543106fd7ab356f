"""The Lightning data module: a prebuilt DataSplit served as sliced tensor batches.

Kept apart from the readers so reading and checking data never pays Lightning's import time.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from lightning_modules.data.batches import TensorBatches
from lightning_modules.data.split import DataSplit


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

    def state_dict(self) -> dict[str, Any]:
        """Epochs shuffled so far: a resumed run then draws the batches the uninterrupted run would."""
        return {"train_epoch": self.train_batches.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_batches.epoch = int(state_dict.get("train_epoch", 0))
