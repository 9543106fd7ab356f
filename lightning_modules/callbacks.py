"""Training callbacks that record what the export draws: first-layer weights over time."""

from __future__ import annotations

from collections.abc import Iterable

import lightning.pytorch as pl
import torch

DEFAULT_SNAPSHOT_STEPS = (10, 100, 1000)


class WeightSnapshots(pl.Callback):
    """Copies the first layer's weights (units x 784) after chosen optimizer steps and at the end.

    The export shows them side by side, so a user sees the tiles sharpen as training goes on.
    """

    def __init__(self, steps: Iterable[int] = DEFAULT_SNAPSHOT_STEPS) -> None:
        self.steps = frozenset(int(s) for s in steps)
        self.snapshots: dict[int, torch.Tensor] = {}

    def _take(self, pl_module: pl.LightningModule, step: int) -> None:
        self.snapshots[step] = pl_module.first_layer.weight.detach().clone()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        if trainer.global_step in self.steps and trainer.global_step not in self.snapshots:
            self._take(pl_module, trainer.global_step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take(pl_module, trainer.global_step)
