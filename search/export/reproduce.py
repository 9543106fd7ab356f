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
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import optuna
from optuna.trial import FrozenTrial

from lightning_modules.data.split import DataSplit
from lightning_modules.hyperparams import HyperParams
from lightning_modules.metric_names import MONITOR
from lightning_modules.training import FitResult, fit
from search import record
from search.export.errors import ExportError
from search.redaction import redact
from search.sampling import OFFSET, trial_seed
from search.settings import Settings

MATCH_TOLERANCE = 1e-6


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


def refit(trial: FrozenTrial, split: DataSplit, settings: Settings) -> FitResult:
    """Train the trial's model again, exactly as the trial did."""
    arguments = fit_arguments(trial, settings)
    epochs = record.epochs_run(trial) or int(arguments["max_epochs"])  # type: ignore[call-overload]
    return fit(
        trial_hyperparams(trial), split, seed=training_seed(trial, settings), callbacks=[StopAfterEpochs(epochs)],
        **arguments,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class Reproduction:
    trial: int
    recorded: list[float]  # validation accuracy per epoch, as the study recorded it
    reproduced: list[float]

    @property
    def matches(self) -> bool:
        return len(self.recorded) == len(self.reproduced) and all(
            math.isclose(a, b, abs_tol=MATCH_TOLERANCE) for a, b in zip(self.recorded, self.reproduced, strict=True)
        )

    def lines(self) -> list[str]:
        out = [f"trial {self.trial}: epoch  recorded   reproduced"]
        for epoch in range(max(len(self.recorded), len(self.reproduced))):
            rec = f"{self.recorded[epoch]:.6f}" if epoch < len(self.recorded) else "-"
            rep = f"{self.reproduced[epoch]:.6f}" if epoch < len(self.reproduced) else "-"
            out.append(f"          {epoch:>5}  {rec:>9}  {rep:>11}")
        verdict = "reproduced: every epoch matches" if self.matches else "DIFFERS from the recorded values"
        return [*out, f"trial {self.trial} {verdict}"]


def reproduce(trial: FrozenTrial, split: DataSplit, settings: Settings) -> Reproduction:
    """Refit the trial and compare its per-epoch validation accuracy with the recorded one."""
    result = refit(trial, split, settings)
    recorded = [float(trial.intermediate_values[step]) for step in sorted(trial.intermediate_values)]
    return Reproduction(trial.number, recorded, [float(row[MONITOR]) for row in result.history])


def reproduce_command(study: optuna.Study, trial_number: int, storage_url: str | None, data_dir: Path | None = None) -> str:
    """The shell command that reproduces a trial (the storage's password masked); `data_dir`
    names the IDX folder when the study found it through the environment."""
    parts = ["python", "-m", "search.export", "--reproduce", str(trial_number), f"--study-name={study.study_name}"]  # = : a name may start with -
    if storage_url:
        parts += ["--storage", redact(storage_url)]
    if data_dir is not None:
        parts += ["--data-dir", str(data_dir)]
    return " ".join(shlex.quote(p) for p in parts)
