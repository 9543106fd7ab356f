"""Training callbacks: first-layer weight snapshots, per-epoch checkpoints, and stop on signal."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_modules.errors import TrainingInterrupted


class WeightSnapshots(pl.Callback):
    """Copies the first layer's weights (units x 784) after chosen optimizer steps and at the end.

    The export shows them side by side, so a user sees the tiles sharpen as training goes on.
    Snapshots travel in checkpoints, so a resumed trial keeps the ones taken before the crash.
    """

    def __init__(self, steps: Iterable[int]) -> None:
        self.steps = frozenset(int(s) for s in steps)
        self.snapshots: dict[int, torch.Tensor] = {}

    def _take(self, pl_module: pl.LightningModule, step: int) -> None:
        self.snapshots[step] = pl_module.first_layer.weight.detach().to("cpu", torch.float32, copy=True)  # saved and drawn on the CPU

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        if trainer.global_step in self.steps and trainer.global_step not in self.snapshots:
            self._take(pl_module, trainer.global_step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take(pl_module, trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"snapshots": {str(step): weight for step, weight in self.snapshots.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.snapshots = {int(step): weight for step, weight in state_dict.get("snapshots", {}).items()}


class EpochCheckpoint(pl.Callback):
    """Saves a full checkpoint (weights, optimizer, RNG, history) after every finished epoch.

    Written to a temp file and renamed, so a kill at any moment leaves the previous epoch's
    checkpoint intact: a retried trial loses at most the epoch that was running. `on_saved`, if
    given, is called with the path after each save (the search copies it to its artifact store).
    """

    def __init__(self, path: Path, on_saved: Callable[[Path], None] | None = None) -> None:
        self.path = path
        self.on_saved = on_saved

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.should_stop:
            return  # the trial ends now; nothing will resume from here
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            trainer.save_checkpoint(tmp)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk left most of a checkpoint here, named for no later run to find
            raise
        if self.on_saved is not None:
            self.on_saved(self.path)


class StopOnRequest(pl.Callback):
    """Ends training at the next batch boundary once `event` is set (by a signal handler)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if self.event.is_set():
            raise TrainingInterrupted("stop requested")

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if self.event.is_set():
            raise TrainingInterrupted("stop requested")
