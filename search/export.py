"""python -m search.export: write the best model of a study and what a person needs to judge it.

This first version writes the model and metrics.json; figures, ONNX and the report follow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import download_artifact
from optuna.artifacts._protocol import ArtifactStore
from optuna.trial import FrozenTrial

from lightning_modules.classifiers import Classifier, HyperParams
from lightning_modules.data import DataSplit, load_data, resolve_data_source, split_data
from lightning_modules.errors import UserInputError
from lightning_modules.training import Evaluation, evaluate, fit
from search.config import Settings
from search.model_files import ModelFile, load_model_file
from search.objective import MODEL_ARTIFACT_ATTR
from search.study import best_trials
from search.storage import build_artifact_store, build_storage, exports_dir, load_existing_study, redact

SETTINGS_ATTR = "settings"


class ExportError(UserInputError):
    """A study that cannot be exported as asked."""


@dataclass
class TrainedTrial:
    """A finished trial's model, loaded from its stored weights or retrained from its seeds."""

    trial: FrozenTrial
    model_file: ModelFile
    retrained: bool
    evaluation: Evaluation


def study_settings(study: optuna.Study) -> Settings:
    """The settings a study was run with, as the runner recorded them."""
    raw = study.user_attrs.get(SETTINGS_ATTR)
    return Settings.model_validate(raw) if raw else Settings()


def load_split(settings: Settings) -> DataSplit:
    source = resolve_data_source(settings.data.source, settings.data.data_dir)
    arrays = load_data(source, verify=settings.data.verify_checksums)
    return split_data(arrays, settings.data.val_size, settings.data.train_size, settings.data.split_seed)


def load_trial_model(trial: FrozenTrial, study: optuna.Study, artifact_store: ArtifactStore, split: DataSplit, settings: Settings) -> TrainedTrial:
    """Stored weights when there are any, else retrain with the trial's recorded params and seed."""
    artifact_id = trial.user_attrs.get(MODEL_ARTIFACT_ATTR)
    model_file: ModelFile | None = None
    if artifact_id:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.safetensors"
            try:
                download_artifact(artifact_store=artifact_store, file_path=str(path), artifact_id=artifact_id)
                model_file = load_model_file(path)
            except Exception:  # noqa: BLE001 - a missing or damaged artifact falls back to retraining
                model_file = None
    retrained = model_file is None
    if model_file is None:
        hp = HyperParams.from_dict(trial.user_attrs["hyperparams"])
        epochs = int(trial.user_attrs.get("epochs_run", settings.training.max_epochs))
        result = fit(
            hp, split, seed=int(trial.user_attrs["seed_training"]), max_epochs=epochs,
            snapshot_steps=settings.training.snapshot_steps,
        )
        model_file = ModelFile(result.model, hp, result.snapshots, {})
    model_file.model.eval()
    return TrainedTrial(trial, model_file, retrained, evaluate(model_file.model, split.x_test, split.y_test))


def _summary(trained: TrainedTrial) -> dict[str, Any]:
    trial = trained.trial
    return {
        "trial": trial.number,
        "classifier": trial.params.get("classifier"),
        "params": trial.params,
        "val_accuracy": trial.value,
        "test_accuracy": trained.evaluation.accuracy,
        "test_log_loss": trained.evaluation.log_loss,
        "param_count": trained.model_file.model.parameter_count(),
        "train_seconds": trial.user_attrs.get("train_seconds"),
        "epochs": trial.user_attrs.get("epochs_run"),
        "retrained": trained.retrained,
    }


def export_study(
    study: optuna.Study,
    out_dir: Path | None = None,
    *,
    force: bool = False,
    artifact_store: ArtifactStore | None = None,
    split: DataSplit | None = None,
) -> dict[str, Any]:
    """Write the export folder atomically (temp folder, then rename); returns metrics.json's content."""
    out_dir = out_dir or exports_dir() / study.study_name
    if out_dir.exists() and not force:
        raise ExportError(f"export folder {out_dir} already exists; pass --force to replace it or --out to choose another")
    best = best_trials(study)
    if "best" not in best:
        raise ExportError(f"study {study.study_name!r} has no completed trial yet; run python -m search.run first")
    settings = study_settings(study)
    split = split or load_split(settings)
    store = artifact_store or build_artifact_store()
    trained = {key: load_trial_model(trial, study, store, split, settings) for key, trial in best.items()}
    top = trained["best"]
    metrics = {
        "study": study.study_name,
        "best_trial": top.trial.number,
        **{k: v for k, v in _summary(top).items() if k != "trial"},
        "best_linear": _summary(trained["linear"]) if "linear" in trained else None,
        "best_dnn": _summary(trained["dnn"]) if "dnn" in trained else None,
        "test_size": top.evaluation.n_samples,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    metrics["export_dir"] = str(out_dir)
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m search.export", description=__doc__)
    parser.add_argument("--study-name", default="mnist", help="study to export (default: mnist)")
    parser.add_argument("--storage", default=None, help="storage URL (default: the SQLite file under storage/)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: storage/exports/<study>)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        storage = build_storage(args.storage, heartbeat=False)
        study = load_existing_study(args.study_name, storage)
        metrics = export_study(study, args.out, force=args.force)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"exported trial {metrics['best_trial']} of study {metrics['study']!r} from {redact(args.storage or 'default storage')}: "
        f"val_acc={metrics['val_accuracy']:.4f} test_acc={metrics['test_accuracy']:.4f} -> {metrics['export_dir']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
