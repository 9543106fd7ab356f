"""Training as a function: hyperparameters + data + seed in, a trained model and its metrics out.

The trial objective, the export (to retrain a trial) and the tests all call `fit`; Optuna stays
outside: the objective passes its pruning and recording callbacks in.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_modules.callbacks import WeightSnapshots
from lightning_modules.classifier import Classifier
from lightning_modules.data.batches import TensorBatches
from lightning_modules.data.datamodule import MNISTDataModule
from lightning_modules.data.split import DataSplit
from lightning_modules.errors import TrainingInterrupted
from lightning_modules.hyperparams import HyperParams
from lightning_modules.metric_names import MONITOR, TEST_ACC, TEST_LOSS

_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_fabric", "lightning.pytorch.utilities.rank_zero")


def quiet_lightning() -> None:
    """Lightning's banners and tips are noise for a service that trains hundreds of models."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance.*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


@dataclass
class FitResult:
    """A trained model, its per-epoch history and the first-layer snapshots taken on the way."""

    model: Classifier
    history: list[dict[str, float]]
    snapshots: dict[int, torch.Tensor]
    seconds: float  # training time of the epochs the model holds, a resumed fit's earlier ones included
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(self.history)


def lightning_device(device: str) -> tuple[str, int | list[int]]:
    """"cpu" or "cuda:N" -> Lightning's (accelerator, devices): one process trains on one device."""
    if device == "cpu":
        return "cpu", 1
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index.isascii() and index.isdigit()):
        raise ValueError(f"device must be 'cpu' or 'cuda:N', got {device!r}")
    return "gpu", [int(index)]


# cuBLAS reads its workspace setting when a process first uses it; this one makes its sums
# repeatable (NVIDIA's cuBLAS reproducibility notes), as torch's deterministic mode asks
CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def prepare_device(device: str) -> None:
    """Float32 matmul precision for the device this process trains or evaluates on next.

    On a GPU, TF32 tensor cores: several times faster for these MLPs, at about 10 bits of
    mantissa in the products (results differ from the CPU's anyway). The setting is process-wide
    and in torch 2.13 also reaches the CPU's oneDNN matmuls, so CPU work after GPU work (a
    1-worker GPU run's export) sets full float32 back. A GPU also gets cuBLAS's repeatable
    workspace before its first matmul (`build_trainer` turns on deterministic algorithms there).
    Only the legacy setter is used: mixing it with torch's per-backend `fp32_precision` makes
    `get_float32_matmul_precision`, which Lightning calls on CUDA, raise."""
    wanted = "highest" if device == "cpu" else "high"
    if torch.get_float32_matmul_precision() != wanted:
        torch.set_float32_matmul_precision(wanted)
    if device != "cpu":
        os.environ.setdefault(*CUBLAS_WORKSPACE)


def build_trainer(
    max_epochs: int, callbacks: Sequence[pl.Callback] = (), device: str = "cpu", precision: str = "32-true", **overrides: object
) -> pl.Trainer:
    """A quiet one-device trainer: no logger, no progress bar, no checkpoint files, no sanity check.

    On a GPU, deterministic algorithms (warn-only: an op torch has no deterministic kernel for
    warns rather than failing the trial), so the same seed on the same GPU model and software
    gives the same trials; `bash benchmarks/gpu_check.sh` measures what it costs and whether two
    fits agree. On the CPU they are off (set back after a GPU fit in this process): these ops are
    deterministic there already, and the mode would fill every new tensor with NaN first."""
    quiet_lightning()
    accelerator, devices = lightning_device(device)
    settings: dict[str, object] = dict(
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        deterministic="warn" if accelerator == "gpu" else False,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
    )
    settings.update(overrides)
    return pl.Trainer(**settings)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Lightning turns a SIGTERM that lands between two batches into SystemExit(0), which would
    end the process as if the search had succeeded; it is a stop request like Ctrl-C."""
    try:
        yield
    except SIGTERMException:
        raise TrainingInterrupted("SIGTERM received") from None


def fit(
    hp: HyperParams,
    split: DataSplit,
    *,
    seed: int,
    max_epochs: int,
    callbacks: Iterable[pl.Callback] = (),
    snapshot_steps: Iterable[int] = (),
    target_accuracy: float | None = None,
    resume_from: Path | None = None,
    device: str = "cpu",
    precision: str = "32-true",
    **trainer_overrides: object,
) -> FitResult:
    """Train one model from scratch; the same seed gives the same metrics on the same CPU.

    `device` is "cpu" or "cuda:N"; the split is moved there once (a no-op when the worker has
    already moved it) and batches are sliced there. The model comes back on the CPU in float32
    whatever it trained on, so everything that saves or exports it stays CPU-loadable.

    With `target_accuracy`, training ends after the first epoch whose validation accuracy
    reaches it: more epochs would only delay the study's stop at target. With `resume_from`
    (a checkpoint of an interrupted run with the same arguments), training continues after
    the checkpoint's last epoch and ends with the metrics the uninterrupted run would have.
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    prepare_device(device)
    model = Classifier(hp)
    datamodule = MNISTDataModule(split.to(device), hp.batch_size, shuffle_seed=seed)
    snapshots = WeightSnapshots(snapshot_steps)
    all_callbacks: list[pl.Callback] = [snapshots, *callbacks]
    if target_accuracy is not None:
        all_callbacks.append(
            EarlyStopping(
                MONITOR, mode="max", stopping_threshold=target_accuracy, patience=max_epochs + 1,
                check_on_train_epoch_end=False, verbose=False,
            )
        )
    trainer = build_trainer(max_epochs, all_callbacks, device, precision, **trainer_overrides)
    model.fit_started = time.perf_counter()
    with sigterm_as_interrupt():
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    seconds = model.trained_seconds()  # a resumed fit's earlier epochs included
    model.seconds_before, model.fit_started = seconds, None
    model = model.to(device="cpu", dtype=torch.float32)  # the one place a trained model leaves its device
    metrics = dict(model.history[-1]) if model.history else {}
    return FitResult(model, list(model.history), dict(snapshots.snapshots), seconds, metrics)


@dataclass(frozen=True)
class CheckpointSummary:
    """What a per-epoch checkpoint says about its run: the history so far and the hyperparameters."""

    history: list[dict[str, float]]
    hyperparams: dict[str, object]


def read_checkpoint_summary(path: Path) -> CheckpointSummary:
    """The history and hyperparameters stored in one of our checkpoints (loaded without unpickling code)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hyper = checkpoint.get("hyper_parameters", {})
    return CheckpointSummary(list(checkpoint.get("history", [])), dict(hyper.get("hp", hyper)))


@dataclass(frozen=True)
class Evaluation:
    """Held-out metrics: accuracy, mean log loss and the 10x10 confusion matrix (counts)."""

    accuracy: float
    log_loss: float
    confusion: torch.Tensor  # rows: true class, columns: predicted class

    @property
    def n_samples(self) -> int:
        return int(self.confusion.sum())


def evaluate(model: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096, device: str = "cpu") -> Evaluation:
    """Score a model on held-out rows through its own test step (the same metric code as training),
    on `device` ("cpu" or "cuda:N"); the rows are moved there once and the model comes back on the CPU."""
    prepare_device(device)
    trainer = build_trainer(1, device=device)
    model.test_loss.reset()
    model.test_acc.reset()
    model.test_confusion.reset()
    with sigterm_as_interrupt():
        trainer.test(model, dataloaders=TensorBatches(x.to(device), y.to(device), batch_size), verbose=False)
    model.to(device="cpu", dtype=torch.float32)  # Lightning's teardown does this today; exports rely on it
    confusion = model.test_confusion.compute().clone().cpu()
    logged = trainer.callback_metrics  # rounded from exact counts, as every other metric (classifier.py)
    return Evaluation(float(logged[TEST_ACC]), float(logged[TEST_LOSS]), confusion)
