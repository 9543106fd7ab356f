"""The two searched models: a linear (softmax) baseline and an MLP, as thin Lightning modules.

The networks are plain `nn.Module`s built from plain numbers; one shared base class owns the
steps, metrics and optimizers. Metrics are updated in the steps and logged once per epoch:
per-step `self.log` calls would cost more than the matrix multiplies of a small MLP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from lightning_modules.data import N_CLASSES, N_PIXELS

MONITOR = "val/acc"  # the one value the search optimises, prunes on and stops at
CLASSIFIERS = ("linear", "dnn")
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class HyperParams:
    """Everything that defines one trial's model and training, as plain values."""

    classifier: str = "dnn"
    hidden_units: tuple[int, ...] = (512, 256)
    dropout: float = 0.2
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 128

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.classifier == "linear" and (self.hidden_units or self.dropout):
            object.__setattr__(self, "hidden_units", ())
            object.__setattr__(self, "dropout", 0.0)
        object.__setattr__(self, "hidden_units", tuple(int(u) for u in self.hidden_units))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["hidden_units"] = list(self.hidden_units)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HyperParams:
        return cls(**{**values, "hidden_units": tuple(values.get("hidden_units", ()))})


def _compute_and_reset(metric: MeanMetric | MulticlassAccuracy) -> float:
    """The epoch's value (NaN if the stage saw no batch), then a clean slate for the next."""
    value = float(metric.compute()) if metric.update_count else float("nan")
    metric.reset()
    return value


def build_network(hidden_units: tuple[int, ...], dropout: float) -> nn.Sequential:
    """784 -> hidden... -> 10 logits; ReLU and dropout after each hidden layer."""
    layers: list[nn.Module] = []
    width = N_PIXELS
    for units in hidden_units:
        layers += [nn.Linear(width, units), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = units
    layers.append(nn.Linear(width, N_CLASSES))
    return nn.Sequential(*layers)


def build_optimizer(hp: HyperParams, parameters: Any) -> torch.optim.Optimizer:
    """The searched optimizer; SGD gets momentum 0.9, without which it needs far more epochs."""
    if hp.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=hp.learning_rate, momentum=0.9, weight_decay=hp.weight_decay)
    optimizer_cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
    return optimizer_cls(parameters, lr=hp.learning_rate, weight_decay=hp.weight_decay)


class Classifier(pl.LightningModule):
    """Shared steps, metrics, history and optimizers for both classifiers."""

    def __init__(
        self,
        classifier: str = "dnn",
        hidden_units: tuple[int, ...] | list[int] = (512, 256),
        dropout: float = 0.2,
        learning_rate: float = 1e-3,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        batch_size: int = 128,
    ) -> None:
        super().__init__()
        self.hp = HyperParams(
            classifier, tuple(hidden_units), dropout, learning_rate, optimizer, weight_decay, batch_size
        )
        self.save_hyperparameters(self.hp.to_dict())
        self.net = build_network(self.hp.hidden_units, self.hp.dropout)
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(N_CLASSES, average="micro", validate_args=False) for _ in range(3)
        )
        self.test_confusion = MulticlassConfusionMatrix(N_CLASSES, validate_args=False)
        self.history: list[dict[str, float]] = []  # one row per epoch, filled during fit

    @property
    def first_layer(self) -> nn.Linear:
        """The layer drawn as 28x28 tiles: first hidden layer, or the class templates."""
        return self.net[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], loss_metric: MeanMetric, acc: MulticlassAccuracy) -> torch.Tensor:
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
            "epoch": self.current_epoch,
            "step": self.global_step,
            "train/loss": _compute_and_reset(self.train_loss),
            "train/acc": _compute_and_reset(self.train_acc),
            "val/loss": _compute_and_reset(self.val_loss),
            "val/acc": _compute_and_reset(self.val_acc),
        }
        self.history.append(row)
        self.log_dict({k: v for k, v in row.items() if "/" in k})

    def on_test_epoch_end(self) -> None:
        self.log_dict({"test/loss": float(self.test_loss.compute()), "test/acc": float(self.test_acc.compute())})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # History and the RNG (dropout) travel with the weights: a resumed run then continues
        # exactly as the uninterrupted one would have.
        checkpoint["history"] = list(self.history)
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("history", []))
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.hp, self.parameters())
        # The learning rate falls along a cosine to zero over the fit's epochs: at the same
        # epoch budget the final model is better (docs/BENCHMARKS.md, search quality), and every
        # trial with the same epoch budget follows the same schedule, so the pruner compares
        # like with like. Checkpoints carry the schedule's position, so a resumed fit goes on.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(self.trainer.max_epochs or 1)))
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.net.parameters())


class LinearClassifier(Classifier):
    """784 -> 10 softmax regression: the tutorial's baseline."""

    def __init__(self, learning_rate: float = 1e-2, optimizer: str = "sgd", weight_decay: float = 0.0, batch_size: int = 128, **_: Any) -> None:
        super().__init__("linear", (), 0.0, learning_rate, optimizer, weight_decay, batch_size)


class DNNClassifier(Classifier):
    """784 -> h1 -> ... -> hk -> 10 MLP with ReLU and dropout."""

    def __init__(
        self,
        hidden_units: tuple[int, ...] | list[int] = (512, 256),
        dropout: float = 0.2,
        learning_rate: float = 1e-3,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        batch_size: int = 128,
        **_: Any,
    ) -> None:
        super().__init__("dnn", hidden_units, dropout, learning_rate, optimizer, weight_decay, batch_size)


def build_classifier(hp: HyperParams) -> Classifier:
    """The Lightning module for a set of hyperparameters."""
    if hp.classifier == "linear":
        return LinearClassifier(hp.learning_rate, hp.optimizer, hp.weight_decay, hp.batch_size)
    return DNNClassifier(hp.hidden_units, hp.dropout, hp.learning_rate, hp.optimizer, hp.weight_decay, hp.batch_size)
