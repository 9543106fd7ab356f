"""The reference search for time_to_target: written the way optuna-examples'
pytorch_lightning_simple.py does it, on our MNIST split and with our stop at the target.

What it keeps from the example: a `torch.utils.data.DataLoader` (per-sample indexing and
default collation) over the data, batch 128, 10 epochs per trial, an MLP of 1-3 layers of
4-128 units (log) with dropout 0.2-0.5, log-softmax + NLL loss, Adam at its default learning
rate, validation accuracy logged with `self.log`, `PyTorchLightningPruningCallback` and a
`MedianPruner`, an in-memory study. What it changes, all in its favour or for a fair
comparison: the data is read from the same IDX files into a `TensorDataset` of float pixels
(no torchvision, no PIL `ToTensor` per sample), the full 10,000-row validation split
(the example scores 10% of it) so "0.95" means the same as for us, no progress bar, no logger,
a seeded TPE sampler, and a study callback that stops at the first completed trial >= target.

Prints one JSON line per finished trial and one when the target is reached (wall-clock
`time.time()` stamps), so the caller can compare with its own process-start time. With
`--test-accuracy` (benchmarks/anytime.py), each completed trial's model is also scored on the
test set and the line carries `test` and the seconds that took (`eval_seconds`), which the caller
takes off the clock: the example itself never looks at the test set.

    python -m benchmarks.reference_search [--target 0.95] [--train-size N] [--epochs 10] [--seed 0]
    python -m benchmarks.reference_search --target none --timeout 900 --test-accuracy    # as anytime runs it
"""

from __future__ import annotations

import time

PROCESS_START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path

import lightning.pytorch as pl  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from optuna_integration import PyTorchLightningPruningCallback  # noqa: E402
from torch import nn, optim  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from benchmarks._common import MAX_TRAIN_ROWS, cli, data_dir, integer, load_mnist_split, number, parser  # noqa: E402
from search.settings import MAX_SEED

BATCHSIZE = 128
CLASSES = 10
MNIST_TRAIN_ROWS = 60_000  # train and validation rows both come from MNIST's training set
MAX_TRIALS = 100_000  # benchmarks/anytime.py asks for this many: its deadline ends the search
MAX_EPOCHS = 100
MAX_TIMEOUT = 86_400.0  # seconds: a day
_accuracy = number(0, 1, low_open=True)


def target(text: str) -> float | None:
    """An argparse type: an accuracy in (0, 1], or none (off, null) for no stop at a target: the
    anytime benchmark spends its whole budget."""
    return None if text.lower() in ("none", "off", "null") else _accuracy(text)


class Net(nn.Module):
    def __init__(self, dropout: float, output_dims: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        input_dim = 28 * 28
        for output_dim in output_dims:
            layers += [nn.Linear(input_dim, output_dim), nn.ReLU(), nn.Dropout(dropout)]
            input_dim = output_dim
        layers.append(nn.Linear(input_dim, CLASSES))
        self.layers = nn.Sequential(*layers)

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.layers(data), dim=1)


class LightningNet(pl.LightningModule):
    def __init__(self, dropout: float, output_dims: list[int]) -> None:
        super().__init__()
        self.model = Net(dropout, output_dims)

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        return self.model(data.view(-1, 28 * 28))

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        data, target = batch
        return F.nll_loss(self(data), target)

    def validation_step(self, batch, batch_idx) -> None:  # noqa: ANN001
        data, target = batch
        pred = self(data).argmax(dim=1, keepdim=True)
        accuracy = pred.eq(target.view_as(pred)).float().mean()
        self.log("val_acc", accuracy)

    def configure_optimizers(self) -> optim.Optimizer:
        return optim.Adam(self.model.parameters())


class MNISTDataModule(pl.LightningDataModule):
    def __init__(self, split, batch_size: int) -> None:  # noqa: ANN001
        super().__init__()
        self.train = TensorDataset(split.x_train, split.y_train)
        self.val = TensorDataset(split.x_val, split.y_val)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size, shuffle=False)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    flags = parser(__doc__)
    flags.add_argument("--target", type=target, default=0.95, help="stop at the first completed trial at or above it; none: never")
    flags.add_argument("--epochs", type=integer(1, MAX_EPOCHS), default=10)
    flags.add_argument("--trials", type=integer(1, MAX_TRIALS), default=100)
    flags.add_argument("--train-size", type=integer(1, MAX_TRAIN_ROWS), default=None)
    flags.add_argument("--val-size", type=integer(1, MNIST_TRAIN_ROWS - 1), default=10_000)
    flags.add_argument("--timeout", type=number(0, MAX_TIMEOUT, low_open=True), default=600, help="seconds after which no new trial starts")
    flags.add_argument("--data-dir", default=data_dir())
    flags.add_argument("--seed", type=integer(0, MAX_SEED), default=0, help="the sampler's seed and torch's")
    flags.add_argument("--test-accuracy", action="store_true", help="score each completed trial on the test set")
    args = flags.parse_args(argv)
    if args.train_size is not None and args.train_size + args.val_size > MNIST_TRAIN_ROWS:
        flags.error(f"--train-size {args.train_size} and --val-size {args.val_size} add up to more than MNIST's {MNIST_TRAIN_ROWS:,} training rows")
    if not Path(args.data_dir).is_dir():
        flags.error(f"--data-dir {args.data_dir[:200]!r} is not a directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.manual_seed(args.seed)
    split = load_mnist_split(args.train_size, args.val_size, args.data_dir)
    print(json.dumps({"event": "data", "t": time.time(), "process_start": PROCESS_START}), flush=True)

    def objective(trial: optuna.Trial) -> float:
        n_layers = trial.suggest_int("n_layers", 1, 3)
        dropout = trial.suggest_float("dropout", 0.2, 0.5)
        output_dims = [trial.suggest_int(f"n_units_l{i}", 4, 128, log=True) for i in range(n_layers)]
        model = LightningNet(dropout, output_dims)
        datamodule = MNISTDataModule(split, BATCHSIZE)
        trainer = pl.Trainer(
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            max_epochs=args.epochs, accelerator="cpu", devices=1,
            callbacks=[PyTorchLightningPruningCallback(trial, monitor="val_acc")],
        )
        trainer.fit(model, datamodule=datamodule)
        if args.test_accuracy:
            started = time.time()
            model.eval()
            with torch.inference_mode():
                correct = (model(split.x_test).argmax(dim=1) == split.y_test).sum().item()
            trial.set_user_attr("test", correct / len(split.y_test))
            trial.set_user_attr("eval_seconds", time.time() - started)
        return trainer.callback_metrics["val_acc"].item()

    def stop_at_target(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        print(json.dumps({"event": "trial", "number": trial.number, "state": trial.state.name, "value": trial.value,
                          "t": time.time(), "seconds": (trial.datetime_complete - trial.datetime_start).total_seconds(), **trial.user_attrs}), flush=True)
        if trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None and args.target is not None and trial.value >= args.target:
            print(json.dumps({"event": "target", "number": trial.number, "value": trial.value, "t": time.time()}), flush=True)
            study.stop()

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed), pruner=optuna.pruners.MedianPruner())
    study.optimize(objective, n_trials=args.trials, timeout=args.timeout, callbacks=[stop_at_target])
    return 0


if __name__ == "__main__":
    cli(main)
