"""Re-run any trial from what the study recorded, and say whether it gives the recorded values.

`python -m search.export --reproduce N` is the recipe the export writes: the trial's
hyperparameters, training seed, data split and the exact `fit` arguments it ran with (its
epoch budget, which sets the cosine schedule, and the target that may have ended it early),
stopped after as many epochs as the trial ran (a pruned trial, or one stopped because another
worker reached the target). The export also uses it to rebuild a model whose weights are gone.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import optuna
from optuna.trial import FrozenTrial

from lightning_modules.data.split import DataSplit
from lightning_modules.device import MAX_TORCH_THREADS
from lightning_modules.hyperparams import HyperParams
from lightning_modules.metric_names import HISTORY_KEYS, MONITOR
from lightning_modules.training import FitResult, fit
from search import record
from search.export.errors import ExportError
from search.redaction import redact
from search.sampling import OFFSET, trial_seed
from search.settings import Settings
from search.storage_url import sqlite_path

MATCH_TOLERANCE = 5e-7  # half the sixth decimal (METRIC_DECIMALS): distinct recorded values differ, float noise does not


class StopAfterEpochs(pl.Callback):
    """End training after `epochs` epochs without changing `max_epochs` (and so the schedule)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and len(getattr(pl_module, "history", [])) >= self.epochs:
            trainer.should_stop = True


def trial_hyperparams(trial: FrozenTrial) -> HyperParams:
    raw = record.read(trial, record.HYPERPARAMS)
    if not raw:
        raise ExportError(f"trial {trial.number} has no recorded hyperparameters; it never started training and cannot be rebuilt")
    return HyperParams.from_dict(raw)


def training_seed(trial: FrozenTrial, settings: Settings) -> int:
    seeds = record.read_seeds(trial)
    # trials without recorded seeds predate both the record and the independent scheme
    return seeds.training if seeds is not None else trial_seed(settings.study.seed, trial.number, OFFSET)


def fit_arguments(trial: FrozenTrial, settings: Settings) -> dict[str, object]:
    """The recorded `fit` arguments; for trials recorded before they were, the settings' values."""
    recorded = record.read(trial, record.FIT)
    if recorded:
        return dict(recorded)
    return {
        "max_epochs": int(trial.user_attrs.get(record.MAX_EPOCHS, settings.training.max_epochs)),
        "target_accuracy": settings.study.target_accuracy,
        "snapshot_steps": list(settings.training.snapshot_steps),
    }


def recorded_threads(trial: FrozenTrial) -> tuple[int | None, str]:
    """The torch thread count to refit with (None: this process's), and a line on what of the
    trial's placement a refit here cannot repeat ("" when nothing): CPU sums depend on the
    thread count, so a trial run with one thread per worker DIFFERED when refitted with two."""
    where = record.read(trial, record.TRAINED_ON)
    if not isinstance(where, dict):
        return None, f"trial {trial.number} recorded no thread count (older study): its values depend on it, this refit uses this process's"
    if where.get("device") == "cuda":
        gpu = str(where.get("gpu", "a GPU"))[:80]
        return None, f"trial {trial.number} trained on {gpu} and is refitted on this CPU, whose arithmetic differs: expect small differences"
    threads = where.get("threads")
    if type(threads) is not int or not 1 <= threads <= MAX_TORCH_THREADS:
        return None, f"trial {trial.number} records no usable thread count ({str(threads)[:20]}); this refit uses this process's"
    return threads, ""


def refit(trial: FrozenTrial, split: DataSplit, settings: Settings) -> FitResult:
    """Train the trial's model again, exactly as the trial did, with the thread count it had."""
    import torch

    arguments = fit_arguments(trial, settings)
    epochs = record.epochs_run(trial) or int(arguments["max_epochs"])  # type: ignore[call-overload]
    threads, before = recorded_threads(trial)[0], torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return fit(
            trial_hyperparams(trial), split, seed=training_seed(trial, settings), callbacks=[StopAfterEpochs(epochs)],
            **arguments,  # type: ignore[arg-type]
        )
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Reproduction:
    trial: int
    recorded: list[float]  # validation accuracy per epoch, as the study recorded it
    reproduced: list[float]
    recorded_history: list[dict[str, float]] = field(default_factory=list)  # every metric per epoch
    reproduced_history: list[dict[str, float]] = field(default_factory=list)
    note: str = ""  # what of the trial's placement this refit could not repeat

    def first_difference(self) -> str | None:
        """The first other metric that differs: on 2,000 validation rows accuracy moves in steps of
        0.0005, and a refit with other losses passed as "every epoch matches"."""
        for epoch, (old, new) in enumerate(zip(self.recorded_history, self.reproduced_history, strict=False)):
            for key in (k for k in HISTORY_KEYS if k in old and k in new):
                if not math.isclose(float(old[key]), float(new[key]), abs_tol=MATCH_TOLERANCE):
                    return f"{key} at epoch {epoch} ({float(old[key]):.6f} recorded, {float(new[key]):.6f} reproduced)"
        return None

    @property
    def matches(self) -> bool:
        return len(self.recorded) == len(self.reproduced) and self.first_difference() is None and all(
            math.isclose(a, b, abs_tol=MATCH_TOLERANCE) for a, b in zip(self.recorded, self.reproduced, strict=True)
        )

    def lines(self) -> list[str]:
        out = [f"trial {self.trial}: epoch  recorded   reproduced"]
        for epoch in range(max(len(self.recorded), len(self.reproduced))):
            rec = f"{self.recorded[epoch]:.6f}" if epoch < len(self.recorded) else "-"
            rep = f"{self.reproduced[epoch]:.6f}" if epoch < len(self.reproduced) else "-"
            out.append(f"          {epoch:>5}  {rec:>9}  {rep:>11}")
        other = self.first_difference()
        every = ", losses included" if self.recorded_history else ""  # a trial recorded before its history: accuracy only
        verdict = f"reproduced: every epoch matches{every}" if self.matches else "DIFFERS from the recorded values"
        return [*out, *([self.note] if self.note else []), f"trial {self.trial} {verdict}" + (f": {other}" if other else "")]


def reproduce(trial: FrozenTrial, split: DataSplit, settings: Settings) -> Reproduction:
    """Refit the trial and compare every recorded metric, epoch by epoch, with the refit's."""
    return compare(trial, refit(trial, split, settings))


def compare(trial: FrozenTrial, result: FitResult) -> Reproduction:
    """A refit of `trial` against what the trial recorded: one verdict for --reproduce and for an
    export that had to retrain (which once checked the last validation accuracy only)."""
    recorded = [float(trial.intermediate_values[step]) for step in sorted(trial.intermediate_values)]
    reproduced = [float(row[MONITOR]) for row in result.history]
    return Reproduction(trial.number, recorded, reproduced, record.history(trial), list(result.history), recorded_threads(trial)[1])


def reproduce_command(study: optuna.Study, trial_number: int, storage_url: str | None, data_dir: Path | None = None) -> str:
    """The shell command that reproduces a trial (the storage's password masked); `data_dir`
    names the IDX folder when the study found it through the environment."""
    parts = ["python", "-m", "search.export", "--reproduce", str(trial_number), f"--study-name={study.study_name}"]  # = : a name may start with -
    if storage_url:
        path = sqlite_path(storage_url)  # a relative file worked only from the folder the run started in
        parts += ["--storage", f"sqlite:///{path.absolute()}" if path is not None and not path.is_absolute() else redact(storage_url)]
    if data_dir is not None:
        parts += ["--data-dir", str(data_dir)]
    return " ".join(shlex.quote(p) for p in parts)
