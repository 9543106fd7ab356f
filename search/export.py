"""python -m search.export: write the best model of a study and what a person needs to judge it.

One folder per study (default: exports/<study> under the runtime folder). Its file names are a
contract: model.safetensors, model.ckpt, model.json, model.onnx, confusion_matrix.png/.csv,
weight_tiles.png, weight_snapshots.png, learning_curves.png, comparison.png, samples.png, the
three study plots, metrics.json and report.html. The folder is built in a temporary sibling and
renamed into place, so a failed export never leaves half a folder behind. The pictures and the
model are also linked to the best trial in the study's artifact store for optuna-dashboard.

Weights come from the artifact the objective stored for the trial; a trial without readable
weights is retrained from its recorded hyperparameters and seed, and the export says whether the
retrained model reproduces the recorded validation accuracy.
"""

# (The docstring is the --help text.) This module loads or retrains the models, computes the
# metrics, draws the figures and runs the export; the model files come from search.model_export,
# report.html from search.report and the artifact links from search.trial_artifacts.

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.artifacts import download_artifact
from optuna.artifacts._protocol import ArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from lightning_modules.classifiers import HyperParams
from lightning_modules.data import DataSplit, load_data, resolve_data_source, split_data
from lightning_modules.errors import UserInputError
from lightning_modules.training import Evaluation, evaluate, fit
from search import figures
from search.cli import OneLineParser
from search.config import Settings
from search.model_export import ExportError, write_model_files
from search.model_export import (
    export_onnx as export_onnx,  # re-exported: tests/test_predict.py imports it from here
)
from search.model_files import ModelFile, ModelFileError, load_model_file
from search.objective import MODEL_ARTIFACT_ATTR, trial_seeds
from search.report import render_report, reproduce_command
from search.storage import (
    build_artifact_store,
    build_storage,
    exports_dir,
    load_existing_study,
    redact,
)
from search.study import best_trials, study_status
from search.trial_artifacts import ARTIFACT_MIMETYPES, attach_artifacts

SETTINGS_ATTR = "settings"
STUDY_PLOTS = ("optimization_history.png", "param_importances.png", "intermediate_values.png")
FIGURES = (
    "confusion_matrix.png", "weight_tiles.png", "weight_snapshots.png", "learning_curves.png",
    "comparison.png", "samples.png", *STUDY_PLOTS,
)
FILES = (
    "model.safetensors", "model.ckpt", "model.json", "model.onnx", "confusion_matrix.csv",
    *FIGURES, "metrics.json", "report.html",
)


@dataclass
class TrainedTrial:
    """A finished trial's model, loaded from its stored weights or retrained from its seeds."""

    trial: FrozenTrial
    model_file: ModelFile
    retrained: bool
    evaluation: Evaluation
    note: str = ""  # why it was retrained, and whether that reproduced the trial
    retrained_val_accuracy: float | None = None

    @property
    def reproduced(self) -> bool | None:
        """None when the stored weights were used; else whether retraining matched the trial."""
        if not self.retrained or self.retrained_val_accuracy is None or self.trial.value is None:
            return None
        return math.isclose(self.retrained_val_accuracy, self.trial.value, abs_tol=1e-6)

    @property
    def test_accuracy(self) -> float:
        """Exactly the confusion matrix's diagonal over its total, so the two always agree."""
        counts = self.evaluation.confusion
        return float(counts.trace()) / max(1, int(counts.sum()))


# ---------------------------------------------------------------- study, data and models


def study_settings(study: optuna.Study) -> Settings:
    """The settings a study was run with, as the runner recorded them."""
    raw = study.user_attrs.get(SETTINGS_ATTR)
    try:
        return Settings.model_validate(raw) if raw else Settings()
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ExportError(
            f"study {study.study_name!r} records settings this version cannot read ({where}: {first['msg']})"
        ) from None


def load_split(settings: Settings) -> DataSplit:
    source = resolve_data_source(settings.data.source, settings.data.data_dir)
    arrays = load_data(source, verify=settings.data.verify_checksums)
    return split_data(arrays, settings.data.val_size, settings.data.train_size, settings.data.split_seed)


def default_export_dir(study_name: str) -> Path:
    """exports/<study>, with characters that are unsafe in a folder name replaced by '_'."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", study_name).strip("._") or "study"
    return exports_dir() / safe


def _training_seed(trial: FrozenTrial, settings: Settings) -> int:
    return trial_seeds(trial, settings, sampler_seed=0).training  # type: ignore[arg-type]  # reads only number and user_attrs


def _trial_epochs(trial: FrozenTrial, settings: Settings) -> int:
    return int(trial.user_attrs.get("epochs_run") or settings.training.max_epochs)


def _trial_hyperparams(trial: FrozenTrial) -> HyperParams:
    raw = trial.user_attrs.get("hyperparams")
    if not raw:
        raise ExportError(f"trial {trial.number} has no recorded hyperparameters and no stored weights; it cannot be rebuilt")
    return HyperParams.from_dict(raw)


def _download_model(store: ArtifactStore, artifact_id: str) -> ModelFile:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact_id)
        return load_model_file(path)


def retrain_trial(trial: FrozenTrial, split: DataSplit, settings: Settings) -> tuple[ModelFile, float]:
    """The trial's model trained again: same hyperparameters, seed, data split and epochs."""
    hp = _trial_hyperparams(trial)
    result = fit(
        hp, split, seed=_training_seed(trial, settings), max_epochs=_trial_epochs(trial, settings),
        snapshot_steps=settings.training.snapshot_steps,
    )
    return ModelFile(result.model, hp, result.snapshots, {}), float(result.metrics.get("val/acc", float("nan")))


def retrain_note(trial_number: int, reason: str, recorded: float | None, retrained: float) -> str:
    """The report's sentence on a retrained model: why, and whether it matched the trial."""
    if recorded is not None and math.isclose(retrained, recorded, abs_tol=1e-6):
        outcome = f"reproduces the recorded validation accuracy {recorded:.4f}"
    else:
        shown = "nothing" if recorded is None else f"{recorded:.4f}"
        outcome = f"reaches validation accuracy {retrained:.4f}, which DIFFERS from the recorded {shown}"
    return f"Trial {trial_number} was retrained: {reason}. The retrained model {outcome}."


def _with_recorded_history(model_file: ModelFile, trial: FrozenTrial) -> ModelFile:
    """The trial's own per-epoch record goes with its model (stored weights carry none, and a
    retrained run's history is a second run): the curves and model.ckpt show what the search saw."""
    model_file.model.history = list(trial.user_attrs.get("history") or model_file.model.history)
    return model_file


def load_trial_model(trial: FrozenTrial, artifact_store: ArtifactStore, split: DataSplit, settings: Settings) -> TrainedTrial:
    """Stored weights when they are readable, else retrain and check against the recorded value."""
    artifact_id = trial.user_attrs.get(MODEL_ARTIFACT_ATTR)
    reason = "no weights were stored for this trial"
    if artifact_id:
        try:
            model_file = _with_recorded_history(_download_model(artifact_store, str(artifact_id)), trial)
        except (ArtifactNotFound, ModelFileError, OSError) as error:
            reason = f"its stored weights ({artifact_id}) could not be read: {str(error).splitlines()[0]}"
        else:
            return TrainedTrial(trial, model_file, False, evaluate(model_file.model, split.x_test, split.y_test))
    model_file, val_accuracy = retrain_trial(trial, split, settings)
    model_file = _with_recorded_history(model_file, trial)
    model_file.model.eval()
    return TrainedTrial(
        trial, model_file, True, evaluate(model_file.model, split.x_test, split.y_test),
        note=retrain_note(trial.number, reason, trial.value, val_accuracy), retrained_val_accuracy=val_accuracy,
    )


def _finite(value: Any) -> Any:
    """JSON has no NaN: missing numbers become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def summarise(trained: TrainedTrial) -> dict[str, Any]:
    """One model's entry in metrics.json."""
    trial = trained.trial
    return {
        "trial": trial.number,
        "classifier": trained.model_file.hp.classifier,
        "params": trial.params,
        "hyperparams": trained.model_file.hp.to_dict(),
        "val_accuracy": trial.value,
        "test_accuracy": trained.test_accuracy,
        "test_log_loss": _finite(trained.evaluation.log_loss),
        "test_size": trained.evaluation.n_samples,
        "param_count": trained.model_file.model.parameter_count(),
        "train_seconds": trial.user_attrs.get("train_seconds"),
        "epochs": trial.user_attrs.get("epochs_run"),
        "seeds": {k: trial.user_attrs.get(f"seed_{k}") for k in ("training", "split", "sampler")},
        "weights": "retrained" if trained.retrained else "stored",
        "retrained_val_accuracy": _finite(trained.retrained_val_accuracy),
        "reproduced": trained.reproduced,
        "note": trained.note,
    }


def model_summary(trained: TrainedTrial | None, name: str) -> figures.ModelSummary | None:
    if trained is None:
        return None
    s = summarise(trained)
    return figures.ModelSummary(
        f"{name} (trial {s['trial']})", s["trial"], float(trained.trial.value or 0.0), s["test_accuracy"],
        float(trained.evaluation.log_loss), s["param_count"], s["train_seconds"], s["epochs"],
        trained.evaluation.confusion.numpy(),
    )


# ---------------------------------------------------------------- metrics files


def write_confusion_csv(counts: np.ndarray, path: Path) -> Path:
    """Counts with a header row of predicted digits and a first column of true digits."""
    lines = ["true\\predicted," + ",".join(str(d) for d in range(len(counts)))]
    lines += [f"{row}," + ",".join(str(int(v)) for v in counts[row]) for row in range(len(counts))]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- figures


def draw_model_figures(best: TrainedTrial, trained: dict[str, TrainedTrial], split: DataSplit, folder: Path) -> None:
    """Every figure about the models: confusion, tiles, snapshots, curves, comparison, samples."""
    hp = best.model_file.hp
    linear = hp.classifier == "linear"
    who = f"trial {best.trial.number}, {'linear' if linear else 'DNN ' + '-'.join(map(str, hp.hidden_units))}"
    counts = best.evaluation.confusion.numpy()
    figures.confusion_png(counts, folder / "confusion_matrix.png", f"Best model ({who}): test accuracy {best.test_accuracy:.4f} on {int(counts.sum()):,} images")
    weights = best.model_file.model.first_layer.weight.detach().numpy()
    kind = "class templates (784 -> 10 weights)" if linear else f"first hidden layer, {len(weights)} units"
    figures.weight_tiles_png(weights, folder / "weight_tiles.png", f"Best model ({who}): {kind}", class_templates=linear)
    snapshots = {step: w.numpy() for step, w in best.model_file.snapshots.items()}
    figures.weight_snapshots_png(snapshots, folder / "weight_snapshots.png", f"First-layer weights during training ({who})", class_templates=linear)
    figures.learning_curves_png(best.model_file.model.history, folder / "learning_curves.png", f"Learning curves of the best model ({who})")
    figures.comparison_png(model_summary(trained.get("linear"), "linear"), model_summary(trained.get("dnn"), "DNN"), folder / "comparison.png")
    figures.samples_png(split.x_train[:9].numpy(), split.y_train[:9].tolist(), folder / "samples.png", "The first nine training images and their labels")


def _importance_problem(study: optuna.Study) -> str | None:
    """Why parameter importances cannot be computed, or None when they can."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return f"Parameter importances need at least 2 completed trials; this study has {len(complete)}."
    shared = set.intersection(*(set(t.params) for t in complete))
    if not any(len({repr(t.params[name]) for t in complete}) > 1 for name in shared):
        return "Parameter importances need parameters that vary between the completed trials; here none does."
    return None


def draw_study_plots(study: optuna.Study, folder: Path) -> dict[str, str]:
    """Optuna's optimization history, parameter importances and intermediate values.

    A plot that cannot be drawn (too few trials) becomes a PNG saying why, so the export always
    has the same files; returns those reasons by file name.
    """
    from optuna.visualization import matplotlib as optuna_plots

    notes: dict[str, str] = {}
    plots = (
        ("optimization_history.png", optuna_plots.plot_optimization_history, None),
        ("param_importances.png", optuna_plots.plot_param_importances, _importance_problem(study)),
        ("intermediate_values.png", optuna_plots.plot_intermediate_values, None),
    )
    for name, draw, problem in plots:
        if problem is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "experimental" and "no intermediate values" notices
                    figures.optuna_plot_png(lambda draw=draw: draw(study), folder / name)
                continue
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                problem = f"Optuna could not draw this plot: {str(error).splitlines()[0]}"
        notes[name] = problem
        figures.message_png(problem, folder / name)
    return notes


# ---------------------------------------------------------------- the export


def _trial_counts(study: optuna.Study) -> dict[str, int]:
    status = study_status(study)
    return {"complete": status.complete, "pruned": status.pruned, "failed": status.failed, "total": len(study.get_trials(deepcopy=False))}


def _share(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder and safetensors private files; an export is for sharing."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _replace_dir(staging: Path, out_dir: Path) -> None:
    """Move the finished folder into place; an old export is swapped out, then deleted."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_study(
    study: optuna.Study,
    out_dir: Path | None = None,
    *,
    force: bool = False,
    artifact_store: ArtifactStore | None = None,
    split: DataSplit | None = None,
) -> dict[str, Any]:
    """Write the export folder atomically and link its files to the best trial; returns metrics.json's content
    plus `export_dir`, `export_seconds` and `artifacts` (file name -> artifact id)."""
    start = time.perf_counter()
    out_dir = Path(out_dir) if out_dir is not None else default_export_dir(study.study_name)
    if out_dir.exists() and not force:
        raise ExportError(f"export folder {out_dir} already exists; pass --force to replace it or --out to choose another")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder; choose another --out")
    best = best_trials(study)
    if "best" not in best:
        raise ExportError(f"study {study.study_name!r} has no completed trial yet; run python -m search.run first")
    settings = study_settings(study)
    split = split if split is not None else load_split(settings)
    store = artifact_store if artifact_store is not None else build_artifact_store()
    by_number: dict[int, TrainedTrial] = {}
    trained: dict[str, TrainedTrial] = {}
    for key, trial in best.items():
        if trial.number not in by_number:
            by_number[trial.number] = load_trial_model(trial, store, split, settings)
        trained[key] = by_number[trial.number]
    top = trained["best"]
    with torch.inference_mode():
        probabilities = torch.softmax(top.model_file.model(split.x_test), dim=1)

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    except OSError as error:
        raise ExportError(f"cannot create the export folder under {out_dir.parent} ({error.strerror})") from None
    try:
        onnx_check = write_model_files(top.model_file, top.trial, top.test_accuracy, study.study_name, staging, split.x_test, probabilities)
        write_confusion_csv(top.evaluation.confusion.numpy(), staging / "confusion_matrix.csv")
        draw_model_figures(top, trained, split, staging)
        notes = draw_study_plots(study, staging)
        summary = summarise(top)
        metrics: dict[str, Any] = {
            "study": study.study_name,
            "best_trial": top.trial.number,
            **{k: v for k, v in summary.items() if k != "trial"},
            "best_linear": summarise(trained["linear"]) if "linear" in trained else None,
            "best_dnn": summarise(trained["dnn"]) if "dnn" in trained else None,
            "snapshot_steps": sorted(top.model_file.snapshots),
            "trials": _trial_counts(study),
            "onnx_check": onnx_check.as_dict(),
            "data": {
                "description": settings.data.source or "MNIST", "train_rows": len(split.y_train), "val_rows": len(split.y_val),
                "test_rows": len(split.y_test), "split_seed": split.split_seed,
            },
            "study_plot_notes": notes,
            "storage": redact(str(getattr(getattr(study._storage, "_backend", study._storage), "url", "in-memory storage"))),
            "reproduce_command": reproduce_command(
                top.model_file.hp, settings, seed=_training_seed(top.trial, settings),
                epochs=_trial_epochs(top.trial, settings), recorded=top.trial.value,
            ),
            "predict_command": f"python -m search.predict --model {shlex.quote(str(out_dir))} digit.png",
            "files": list(FILES),
        }
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        (staging / "report.html").write_text(render_report(metrics, staging, notes), encoding="utf-8")
        missing = [name for name in FILES if not (staging / name).is_file()]
        if missing:  # a bug, not bad input: fail loudly rather than ship an incomplete export
            raise RuntimeError(f"export is missing {missing}")
        uploads = [staging / name for name in FILES if (staging / name).suffix in ARTIFACT_MIMETYPES]
        linked_to, artifact_ids = attach_artifacts(study, top.trial, uploads, store)
        _share(staging)
        _replace_dir(staging, out_dir)
    except OSError as error:
        raise ExportError(f"cannot write the export to {out_dir} ({error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**metrics, "export_dir": str(out_dir), "export_seconds": time.perf_counter() - start,
            "artifacts": artifact_ids, "artifacts_linked_to": linked_to}


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m search.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    if metrics["note"]:
        print(f"note: {metrics['note']}")
    print(
        f"exported trial {metrics['best_trial']} of study {metrics['study']!r} ({metrics['classifier']}): "
        f"val_acc={metrics['val_accuracy']:.4f} test_acc={metrics['test_accuracy']:.4f} -> {metrics['export_dir']} "
        f"in {metrics['export_seconds']:.1f} s; {len(metrics['artifacts'])} files linked to {metrics['artifacts_linked_to']} "
        "in the artifact store"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
