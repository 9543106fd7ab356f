"""The finished trials an export shows, as models: loaded from their stored weights, or retrained
exactly (search/export/reproduce.py) when the weights are gone, with a note on whether the
retrained model reproduces the trial."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from lightning_modules.data.split import DataSplit
from lightning_modules.hyperparams import HyperParams
from lightning_modules.metric_names import MONITOR
from lightning_modules.model_file import ModelFile, ModelFileError, load_model_file
from lightning_modules.training import Evaluation, evaluate
from search import record
from search.export.reproduce import MATCH_TOLERANCE, compare, refit
from search.optuna_compat import ArtifactStore
from search.settings import FULL_PRECISION, Settings


@dataclass
class TrainedTrial:
    """A finished trial's model, loaded from its stored weights or retrained from its seeds."""

    trial: FrozenTrial
    model_file: ModelFile
    retrained: bool
    evaluation: Evaluation
    note: str = ""  # why it was retrained, and whether that reproduced the trial
    retrained_val_accuracy: float | None = None
    matched: bool | None = None  # a retrained model's: whether every recorded metric came out again
    float32_val_accuracy: float | None = None  # a trial validated in bf16: the float32 weights' own

    @property
    def reproduced(self) -> bool | None:
        """None when the stored weights were used; else whether retraining matched the trial."""
        return self.matched if self.retrained else None

    @property
    def val_accuracy(self) -> float | None:
        """The exported weights' own validation accuracy, in float32: the trial's value, unless
        the trial was validated in bf16 or its model had to be retrained (model.json gave the
        trial's 0.86 beside a test accuracy of weights that score 0.865)."""
        if self.float32_val_accuracy is not None:
            return self.float32_val_accuracy
        return self.retrained_val_accuracy if self.retrained else self.trial.value

    @property
    def test_accuracy(self) -> float:
        """Exactly the confusion matrix's diagonal over its total, so the two always agree."""
        counts = self.evaluation.confusion
        return float(counts.trace()) / max(1, int(counts.sum()))


def _download_model(store: ArtifactStore, artifact_id: str) -> ModelFile:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact_id)
        try:
            return load_model_file(path)
        except ModelFileError as error:  # its message named this temporary copy, gone by the time it is read
            raise ModelFileError(str(error).replace(f"{path}: ", "")) from None


def retrain_note(trial_number: int, reason: str, recorded: float | None, retrained: float, difference: str | None = None) -> str:
    """The report's sentence on a retrained model: why, and whether it matched the trial
    (`difference`: the first other recorded metric that did not, as --reproduce names it)."""
    if recorded is not None and math.isclose(retrained, recorded, abs_tol=MATCH_TOLERANCE):
        outcome = f"reproduces the recorded validation accuracy {recorded:.4f}"
        if difference:
            outcome += f" but DIFFERS in {difference}"
    else:
        shown = "nothing" if recorded is None else f"{recorded:.4f}"
        outcome = f"reaches validation accuracy {retrained:.4f}, which DIFFERS from the recorded {shown}"
    return f"Trial {trial_number} was retrained: {reason}. The retrained model {outcome}."


def _with_recorded_history(model_file: ModelFile, trial: FrozenTrial) -> ModelFile:
    """The trial's own per-epoch record goes with its model (stored weights carry none, and a
    retrained run's history is a second run): the curves and model.ckpt show what the search saw."""
    model_file.model.history = record.history(trial) or list(model_file.model.history)
    return model_file


def _not_the_trials(model_file: ModelFile, trial: FrozenTrial) -> str | None:
    """Why stored weights are not this trial's model, or None: another network than the trial's
    recorded hyperparameters, or another trial's number in the file. A swapped file was exported
    as the trial's, a linear model reported under a DNN trial's number and parameters."""
    recorded = record.read(trial, record.HYPERPARAMS)
    if recorded and HyperParams.from_dict(recorded) != model_file.hp:
        return f"another model's ({model_file.hp.classifier}, hidden units {list(model_file.hp.hidden_units)}) than the trial's"
    number = model_file.metadata.get(record.MODEL_TRIAL)
    if number is not None and number != str(trial.number):
        return f"trial {number[:12]}'s"
    return None


def reduced_precision(trial: FrozenTrial) -> str | None:
    """The precision a trial trained and was validated in, when not float32 (bf16-mixed autocast)."""
    precision = (record.read(trial, record.FIT) or {}).get("precision", FULL_PRECISION)
    return None if precision == FULL_PRECISION else str(precision)


def precision_note(trial: FrozenTrial, precision: str, exported: float) -> str:
    """What the exported float32 model scores on the validation rows its trial measured in
    `precision`. The report gave the search's value as the exported model's (0.8448 where the
    float32 weights score 0.8451)."""
    return (
        f"Trial {trial.number} trained and was validated in {precision}, which measured validation accuracy "
        f"{trial.value if trial.value is not None else float('nan'):.4f}; the exported float32 model scores {exported:.4f} "
        "on the same rows, and its test accuracy is measured in float32."
    )


def load_trial_model(trial: FrozenTrial, artifact_store: ArtifactStore, split: DataSplit, settings: Settings) -> TrainedTrial:
    """Stored weights when they are readable, else retrain and check against the recorded value."""
    loaded = _load_trial_model(trial, artifact_store, split, settings)
    precision = reduced_precision(trial)
    if precision is not None:
        loaded.float32_val_accuracy = evaluate(loaded.model_file.model, split.x_val, split.y_val).accuracy
        loaded.note = f"{loaded.note} {precision_note(trial, precision, loaded.float32_val_accuracy)}".strip()
    return loaded


def _load_trial_model(trial: FrozenTrial, artifact_store: ArtifactStore, split: DataSplit, settings: Settings) -> TrainedTrial:
    artifact_id = record.read(trial, record.MODEL_ARTIFACT)
    reason = "no weights were stored for this trial"
    if artifact_id:
        try:
            model_file = _with_recorded_history(_download_model(artifact_store, str(artifact_id)), trial)
        except (ArtifactNotFound, ModelFileError, OSError) as error:
            reason = f"its stored weights ({artifact_id}) could not be read: {str(error).splitlines()[0]}"
        else:
            mismatch = _not_the_trials(model_file, trial)
            if mismatch is None:
                return TrainedTrial(trial, model_file, False, evaluate(model_file.model, split.x_test, split.y_test))
            reason = f"its stored weights ({artifact_id}) are {mismatch}"
    result = refit(trial, split, settings)
    check = compare(trial, result)  # before the recorded history replaces the refit's
    val_accuracy = float(result.metrics.get(MONITOR, float("nan")))
    model_file = _with_recorded_history(ModelFile(result.model, result.model.hp, result.snapshots, {}), trial)
    model_file.model.eval()
    return TrainedTrial(
        trial, model_file, True, evaluate(model_file.model, split.x_test, split.y_test),
        note=retrain_note(trial.number, reason, trial.value, val_accuracy, check.first_difference()),
        retrained_val_accuracy=val_accuracy, matched=check.matches,
    )
