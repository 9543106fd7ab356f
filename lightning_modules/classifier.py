"""The Lightning module: one `Classifier(hp)` wraps the plain network with steps, metrics and optimizer.

Metrics are updated in the steps and logged once per epoch: per-step `self.log` calls would cost
more than the matrix multiplies of a small MLP. Each epoch's values are rounded to
`METRIC_DECIMALS` here, the one place they are computed, and logged as float64, so the history,
the value a pruning callback reports and the trial's value are the same number (0.9519, not
float32's 0.9519000053405762).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from lightning_modules.data.format import N_CLASSES, N_PIXELS
from lightning_modules.hyperparams import HyperParams
from lightning_modules.metric_names import (
    EPOCH,
    METRIC_DECIMALS,
    MONITOR,
    STEP,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_ACC,
    TRAIN_LOSS,
    VAL_LOSS,
)
from lightning_modules.network import build_network

SGD_MOMENTUM = 0.9  # without it SGD needs far more epochs than the search gives a trial
TORCH_RNG, CUDA_RNG = "torch_rng_state", "cuda_rng_state"  # the random state a trial's checkpoint carries
TRAINED_SECONDS = "trained_seconds"  # a checkpoint's training time so far, carried across resumes
RNG_KEYS = (TORCH_RNG, CUDA_RNG)


class BatchMean(Metric):
    """The mean of per-batch mean losses weighted by batch size: MeanMetric(value, weight)'s
    arithmetic, bit for bit, without its per-update NaN check, whose `nans.any()` reads a GPU
    tensor on the host at every step and so stalls the GPU's queue once per batch (its
    `nan_strategy="disable"` would drop the weights). A NaN loss stays NaN in the epoch's mean,
    where MeanMetric dropped the batch: a diverged epoch shows as one."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.total: torch.Tensor
        self.weight: torch.Tensor

    def update(self, value: torch.Tensor, weight: int) -> None:
        self.total += value * weight
        self.weight += weight

    def compute(self) -> torch.Tensor:
        return self.total / self.weight


def _epoch_value(metric: BatchMean | MulticlassAccuracy) -> float:
    """The stage's value, rounded to `METRIC_DECIMALS` (NaN if the stage saw no batch).

    Accuracy is divided from its integer counts in float64, not read from torchmetrics' float32
    quotient, which is off by up to 3e-8: enough to turn 3287/3429 (0.95858851) into 0.958588,
    where the value must be correct/total rounded, 0.958589, whatever the validation size.
    """
    if not metric.update_count:
        return float("nan")
    if isinstance(metric, MulticlassAccuracy):  # micro average, top-1: tp + fn counts every row once
        correct, total = int(metric.tp.sum()), int((metric.tp + metric.fn).sum())
        return round(correct / total, METRIC_DECIMALS) if total else float("nan")
    return round(float(metric.compute()), METRIC_DECIMALS)


def _compute_and_reset(metric: BatchMean | MulticlassAccuracy) -> float:
    """The epoch's rounded value, then a clean slate for the next."""
    value = _epoch_value(metric)
    metric.reset()
    return value


def _as_logged(metrics: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Float64 tensors: Lightning turns a logged Python float into float32, and callbacks that read
    `trainer.callback_metrics` (Optuna's pruning callback reports them) would see 0.9519000053405762."""
    return {name: torch.tensor(value, dtype=torch.float64) for name, value in metrics.items()}


def optimizer_kernel(optimizer: str, device_type: str) -> dict[str, bool]:
    """How the update runs: Adam/AdamW fused into one kernel on CUDA (the step is otherwise a
    string of small launches per tensor); foreach elsewhere. On the CPU, foreach gives bitwise the
    same weights as the default per-tensor loop, while torch 2.13's fused CPU Adam does not
    (about 3e-8 apart after 300 steps), so CPU results stay what they were."""
    if device_type == "cuda" and optimizer in ("adam", "adamw"):
        return {"fused": True}
    return {"foreach": True}


KERNEL_FLAGS = ("fused", "foreach")  # torch's names for how an optimizer's update runs


def match_optimizer_kernel(checkpoint: dict[str, Any], optimizer: str, device_type: str) -> None:
    """Give a checkpoint's optimizer the kernel of the device it resumes on, in place.

    `Optimizer.load_state_dict` keeps the saved groups' flags: a trial checkpointed on a GPU
    (fused Adam) and retried on a CPU would go on with fused CPU Adam, whose sums differ from
    foreach's, and a CPU checkpoint resumed on a GPU would lose the fused kernel."""
    kernel = optimizer_kernel(optimizer, device_type)
    for state in checkpoint.get("optimizer_states", []):
        for group in state.get("param_groups", []):
            for flag in KERNEL_FLAGS:
                group[flag] = kernel.get(flag)  # None, as a new optimizer leaves the other flag


def build_optimizer(hp: HyperParams, parameters: Any, device_type: str = "cpu") -> torch.optim.Optimizer:
    """The searched optimizer with the searched learning rate and weight decay, on `device_type`'s kernel."""
    kernel = optimizer_kernel(hp.optimizer, device_type)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=hp.learning_rate, momentum=SGD_MOMENTUM, weight_decay=hp.weight_decay, **kernel)
    optimizer_cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
    return optimizer_cls(parameters, lr=hp.learning_rate, weight_decay=hp.weight_decay, **kernel)


class Classifier(pl.LightningModule):
    """Steps, metrics, per-epoch history and optimizer around `build_network(hp)`.

    `Classifier(hp)`; checkpoints store `hp` as a plain dict, so `load_from_checkpoint` rebuilds
    the model with `weights_only=True`. Checkpoints written before `hp` existed stored the seven
    values flat; they still load.
    """

    def __init__(self, hp: HyperParams | Mapping[str, Any] | None = None, **flat: Any) -> None:
        super().__init__()
        values = hp if hp is not None else flat
        self.hp = values if isinstance(values, HyperParams) else HyperParams.from_dict(values)
        self.save_hyperparameters({"hp": self.hp.to_dict()})
        self.net = build_network(N_PIXELS, self.hp.hidden_units, N_CLASSES, self.hp.dropout)
        self.train_loss, self.val_loss, self.test_loss = BatchMean(), BatchMean(), BatchMean()
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(N_CLASSES, average="micro", validate_args=False) for _ in range(3)
        )
        self.test_confusion = MulticlassConfusionMatrix(N_CLASSES, validate_args=False)
        self.history: list[dict[str, float]] = []  # one row per epoch, filled during fit
        # Training time of the epochs this model holds: what a resumed fit's checkpoint had, plus
        # this fit's from `fit_started` (set by `training.fit`); a retried trial's epochs before
        # its resume count too, so its recorded training time is that of all its epochs.
        self.seconds_before = 0.0
        self.fit_started: float | None = None

    @property
    def first_layer(self) -> nn.Linear:
        """The layer drawn as 28x28 tiles: first hidden layer, or the class templates."""
        return self.net[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], loss_metric: BatchMean, acc: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)  # mean log loss of the softmax probabilities
        loss_metric.update(loss.detach(), weight=len(y))
        acc.update(logits.detach(), y)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, self.train_loss, self.train_acc)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, self.val_loss, self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.test_loss.update(F.cross_entropy(logits, y), weight=len(y))
        self.test_acc.update(logits, y)
        self.test_confusion.update(logits, y)

    def on_validation_epoch_end(self) -> None:
        # One history row per epoch, built here rather than at train-epoch end: a pruning
        # callback stops training right after validation, and its epoch must still be recorded.
        if self.trainer.sanity_checking:
            self.val_loss.reset()
            self.val_acc.reset()
            return
        row = {
            EPOCH: self.current_epoch,
            STEP: self.global_step,
            TRAIN_LOSS: _compute_and_reset(self.train_loss),  # the epoch's mean over its batches
            TRAIN_ACC: _compute_and_reset(self.train_acc),
            VAL_LOSS: _compute_and_reset(self.val_loss),  # after the epoch's last step
            MONITOR: _compute_and_reset(self.val_acc),
        }
        self.history.append(row)
        self.log_dict(_as_logged({k: v for k, v in row.items() if "/" in k}))

    def on_test_epoch_end(self) -> None:
        # no reset: `training.evaluate` reads the confusion matrix after the test loop
        self.log_dict(_as_logged({TEST_LOSS: _epoch_value(self.test_loss), TEST_ACC: _epoch_value(self.test_acc)}))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # History and the RNG (dropout) travel with the weights: a resumed run then continues
        # exactly as the uninterrupted one would have.
        checkpoint["history"] = list(self.history)
        checkpoint[TRAINED_SECONDS] = self.trained_seconds()
        checkpoint[TORCH_RNG] = torch.get_rng_state()
        if self.device.type == "cuda":  # dropout on a GPU draws from that GPU's generator
            checkpoint[CUDA_RNG] = (torch.cuda.get_rng_state(self.device).cpu(), self.device.index or 0)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before it moves the model and builds the optimizer: the device
        # to restore into is the trainer's, not the one the checkpoint was written on.
        target = self._trainer.strategy.root_device if self._trainer is not None else self.device
        self.history = list(checkpoint.get("history", []))
        self.seconds_before = float(checkpoint.get(TRAINED_SECONDS, 0.0))
        if TORCH_RNG in checkpoint:
            torch.set_rng_state(checkpoint[TORCH_RNG])
        if CUDA_RNG in checkpoint and target.type == "cuda":
            # A worker sees its one GPU as cuda:0 whichever GPU wrote the checkpoint (saved on
            # cuda:1, it would be set_rng_state(..., 1): an IndexError there)
            state, _written_on = checkpoint[CUDA_RNG]
            torch.cuda.set_rng_state(state.cpu(), target)
        match_optimizer_kernel(checkpoint, self.hp.optimizer, target.type)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.hp, self.parameters(), self.device.type)  # Lightning has moved the model by now
        # The learning rate falls along a cosine to zero over the fit's epochs: at the same
        # epoch budget the final model is better (docs/BENCHMARKS.md, search quality), and every
        # trial with the same epoch budget follows the same schedule, so the pruner compares
        # like with like. Checkpoints carry the schedule's position, so a resumed fit goes on.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(self.trainer.max_epochs or 1)))
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def trained_seconds(self) -> float:
        """Seconds of training behind the epochs this model holds, its resumed-from checkpoint's included."""
        return self.seconds_before + (time.perf_counter() - self.fit_started if self.fit_started is not None else 0.0)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.net.parameters())
