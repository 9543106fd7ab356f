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

from __future__ import annotations

import argparse
import base64
import hashlib
import html
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import optuna
import torch
from optuna.artifacts import download_artifact, get_all_artifact_meta, upload_artifact
from optuna.artifacts._protocol import ArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError
from torch import nn

from lightning_modules.classifiers import Classifier, HyperParams
from lightning_modules.data import IMAGE_SIDE, N_CLASSES, N_PIXELS, DataSplit, load_data, resolve_data_source, split_data
from lightning_modules.errors import UserInputError
from lightning_modules.training import Evaluation, build_trainer, evaluate, fit
from search import figures
from search.config import Settings
from search.model_files import FORMAT, ModelFile, ModelFileError, load_model_file, save_model_file
from search.objective import MODEL_ARTIFACT_ATTR
from search.storage import build_artifact_store, build_storage, exports_dir, load_existing_study, redact
from search.study import best_trials

SETTINGS_ATTR = "settings"
ONNX_INPUT = "pixels"
ONNX_OUTPUTS = ("logits", "probabilities")
ONNX_OPSET = 17
# A prediction may differ between PyTorch and ONNX Runtime only where the top two probabilities
# are closer than this (float rounding on a near tie); anywhere else it is a broken export.
ONNX_TIE = 1e-4
ONNX_PROB_TOLERANCE = 1e-4
STUDY_PLOTS = ("optimization_history.png", "param_importances.png", "intermediate_values.png")
FIGURES = (
    "confusion_matrix.png", "weight_tiles.png", "weight_snapshots.png", "learning_curves.png",
    "comparison.png", "samples.png", *STUDY_PLOTS,
)
FILES = (
    "model.safetensors", "model.ckpt", "model.json", "model.onnx", "confusion_matrix.csv",
    *FIGURES, "metrics.json", "report.html",
)
# What optuna-dashboard shows on the best trial: the pictures and the model in usable forms.
# Not the .ckpt: it duplicates the safetensors weights in a format that can carry pickles.
ARTIFACT_MIMETYPES = {
    ".png": "image/png", ".onnx": "application/octet-stream", ".safetensors": "application/octet-stream",
    ".json": "application/json", ".csv": "text/csv", ".html": "text/html",
}


class ExportError(UserInputError):
    """A study that cannot be exported as asked."""


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
    return int(trial.user_attrs.get("seed_training", settings.study.seed + trial.number))


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
    epochs = int(trial.user_attrs.get("epochs_run") or settings.training.max_epochs)
    result = fit(hp, split, seed=_training_seed(trial, settings), max_epochs=epochs, snapshot_steps=settings.training.snapshot_steps)
    return ModelFile(result.model, hp, result.snapshots, {}), float(result.metrics.get("val/acc", float("nan")))


def retrain_note(trial_number: int, reason: str, recorded: float | None, retrained: float) -> str:
    """The report's sentence on a retrained model: why, and whether it matched the trial."""
    if recorded is not None and math.isclose(retrained, recorded, abs_tol=1e-6):
        outcome = f"reproduces the recorded validation accuracy {recorded:.4f}"
    else:
        shown = "nothing" if recorded is None else f"{recorded:.4f}"
        outcome = f"reaches validation accuracy {retrained:.4f}, which DIFFERS from the recorded {shown}"
    return f"Trial {trial_number} was retrained: {reason}. The retrained model {outcome}."


def load_trial_model(trial: FrozenTrial, artifact_store: ArtifactStore, split: DataSplit, settings: Settings) -> TrainedTrial:
    """Stored weights when they are readable, else retrain and check against the recorded value."""
    artifact_id = trial.user_attrs.get(MODEL_ARTIFACT_ATTR)
    reason = "no weights were stored for this trial"
    if artifact_id:
        try:
            model_file = _download_model(artifact_store, str(artifact_id))
        except (ArtifactNotFound, ModelFileError, OSError) as error:
            reason = f"its stored weights ({artifact_id}) could not be read: {str(error).splitlines()[0]}"
        else:
            return TrainedTrial(trial, model_file, False, evaluate(model_file.model, split.x_test, split.y_test))
    model_file, val_accuracy = retrain_trial(trial, split, settings)
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


# ---------------------------------------------------------------- model files


class _OnnxHead(nn.Module):
    """The network plus softmax: ONNX users get probabilities without re-implementing it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(pixels)
        return logits, torch.softmax(logits, dim=1)


def preprocessing() -> dict[str, Any]:
    """What the model expects: the same for the ONNX graph, the checkpoint and the safetensors."""
    return {
        "input_name": ONNX_INPUT,
        "input_shape": [None, N_PIXELS],
        "dtype": "float32",
        "image_shape": [IMAGE_SIDE, IMAGE_SIDE],
        "layout": "28x28 image flattened row by row",
        "scaling": "pixel / 255 (uint8 0-255 -> float 0-1)",
        "range": [0.0, 1.0],
        "normalisation": "none beyond the scaling",
        "polarity": "white digit (1.0) on black background (0.0), as in MNIST",
        "outputs": {name: [None, N_CLASSES] for name in ONNX_OUTPUTS},
        "classes": list(range(N_CLASSES)),
    }


def export_onnx(model: Classifier, path: Path, metadata: dict[str, str]) -> Path:
    """Float32 (N, 784) pixels in [0, 1] -> logits and probabilities, any batch size.

    Uses the TorchScript-based exporter (dynamo=False): torch 2.13's default dynamo exporter
    needs the onnxscript package and takes ~9 s for an MLP, against ~0.5 s here; the result
    is checked against the PyTorch model in ONNX Runtime before it is kept.
    """
    import onnx

    head = _OnnxHead(model.net).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            head, (torch.zeros(1, N_PIXELS),), str(path), dynamo=False, input_names=[ONNX_INPUT],
            output_names=list(ONNX_OUTPUTS), opset_version=ONNX_OPSET,
            dynamic_axes={name: {0: "batch"} for name in (ONNX_INPUT, *ONNX_OUTPUTS)},
        )
    proto = onnx.load(str(path))
    proto.doc_string = "mnist-search digit classifier: float32 pixels in [0,1], shape (N, 784), white on black"
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return path


@dataclass(frozen=True)
class OnnxCheck:
    rows: int
    max_probability_diff: float
    disagreements: int  # predictions that differ away from a near tie


def check_onnx(path: Path, x: torch.Tensor, probabilities: torch.Tensor) -> OnnxCheck:
    """Run the ONNX file in ONNX Runtime on `x` and compare with PyTorch's probabilities."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    _, onnx_probs = session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x.numpy().astype(np.float32, copy=False)})
    reference = probabilities.numpy()
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > ONNX_TIE
    differ = onnx_probs.argmax(axis=1) != reference.argmax(axis=1)
    return OnnxCheck(len(x), float(np.abs(onnx_probs - reference).max(initial=0.0)), int((differ & clear).sum()))


def save_checkpoint(model: Classifier, path: Path) -> Path:
    """A Lightning checkpoint (weights + hyperparameters) that `load_from_checkpoint` rebuilds.

    weights_only: no optimizer or loop state, and nothing that needs unpickling code to load
    (torch.load(path, weights_only=True) reads it).
    """
    trainer = build_trainer(1)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path, weights_only=True)
    return path


def model_json(best: TrainedTrial, study_name: str, onnx_check: OnnxCheck) -> dict[str, Any]:
    """model.json: everything needed to use the model without the study."""
    hp = best.model_file.hp
    return {
        "format": FORMAT,
        "study": study_name,
        "trial": best.trial.number,
        "classifier": hp.classifier,
        "hyperparams": hp.to_dict(),
        "architecture": " -> ".join([str(N_PIXELS), *(f"{u} ReLU" for u in hp.hidden_units), str(N_CLASSES)]),
        "param_count": best.model_file.model.parameter_count(),
        "val_accuracy": best.trial.value,
        "test_accuracy": best.test_accuracy,
        "preprocessing": preprocessing(),
        "files": {"weights": "model.safetensors", "checkpoint": "model.ckpt", "onnx": "model.onnx"},
        "lightning_module": f"{Classifier.__module__}.{Classifier.__qualname__}",
        "onnx_check": {"rows": onnx_check.rows, "max_probability_diff": onnx_check.max_probability_diff, "disagreements": onnx_check.disagreements},
        "versions": {"torch": torch.__version__, "lightning": lightning.__version__, "optuna": optuna.__version__},
    }


def write_model_files(best: TrainedTrial, study_name: str, folder: Path, x_test: torch.Tensor, probabilities: torch.Tensor) -> OnnxCheck:
    """model.safetensors, model.ckpt, model.onnx (checked in ONNX Runtime) and model.json."""
    model = best.model_file.model
    extra = {"study": study_name, "trial": str(best.trial.number), "preprocessing": json.dumps(preprocessing())}
    save_model_file(model, folder / "model.safetensors", extra=extra)
    model.history = list(best.trial.user_attrs.get("history") or model.history)
    save_checkpoint(model, folder / "model.ckpt")
    export_onnx(model, folder / "model.onnx", {"study": study_name, "trial": str(best.trial.number)})
    check = check_onnx(folder / "model.onnx", x_test, probabilities)
    if check.disagreements or check.max_probability_diff > ONNX_PROB_TOLERANCE:
        raise ExportError(
            f"the ONNX model disagrees with the trained model on {check.disagreements} of {check.rows} test images "
            f"(largest probability difference {check.max_probability_diff:.2g}); nothing was exported"
        )
    (folder / "model.json").write_text(json.dumps(model_json(best, study_name, check), indent=2) + "\n")
    return check


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
    history = best.trial.user_attrs.get("history") or best.model_file.model.history
    figures.learning_curves_png(history, folder / "learning_curves.png", f"Learning curves of the best model ({who})")
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


# ---------------------------------------------------------------- report


def _call_arguments(values: dict[str, Any]) -> str:
    """`k=v, ...` with double-quoted strings, so the whole command fits in shell single quotes."""
    def literal(value: Any) -> str:
        return json.dumps(value) if isinstance(value, str) else repr(value)

    return ", ".join(f"{key}={literal(value)}" for key, value in values.items())


def reproduce_command(trial: FrozenTrial, settings: Settings) -> str:
    """A shell command that retrains the trial exactly and prints its validation accuracy."""
    hp = _trial_hyperparams(trial)
    data = settings.data.model_dump(mode="json")
    epochs = int(trial.user_attrs.get("epochs_run") or settings.training.max_epochs)
    code = "\n".join([
        "from lightning_modules.classifiers import HyperParams",
        "from lightning_modules.training import fit",
        "from search.config import DataConfig, Settings",
        "from search.export import load_split",
        f"split = load_split(Settings(data=DataConfig({_call_arguments(data)})))",
        f"hp = HyperParams({_call_arguments(hp.to_dict())})",
        f"result = fit(hp, split, seed={_training_seed(trial, settings)}, max_epochs={epochs}, "
        f"snapshot_steps={list(settings.training.snapshot_steps)!r})",
        f'print("val/acc", result.metrics["val/acc"], "recorded", {trial.value!r})',
    ])
    env = ""
    if not data.get("source") and not data.get("data_dir") and os.environ.get("MNIST_DATA_DIR"):
        env = f"MNIST_DATA_DIR={shlex.quote(os.environ['MNIST_DATA_DIR'])} "
    return f"{env}python -c {shlex.quote(code)}"


def _image(folder: Path, name: str, alt: str) -> str:
    data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(name)}</figcaption></figure>'


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(value: Any, kind: str = "ratio") -> str:
    """Accuracies and losses to 4 places, counts with thousands separators, seconds to 0.1."""
    if value is None:
        return "n/a"
    if kind == "count":
        return f"{int(value):,}"
    if kind == "seconds":
        return f"{float(value):.1f} s"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _comparison_table(metrics: dict[str, Any]) -> str:
    models = [(name, metrics[key]) for name, key in (("best linear", "best_linear"), ("best DNN", "best_dnn")) if metrics.get(key)]
    if not models:
        return ""
    fields = [
        ("trial", "trial", "count"), ("validation accuracy", "val_accuracy", "ratio"), ("test accuracy", "test_accuracy", "ratio"),
        ("test log loss", "test_log_loss", "ratio"), ("parameters", "param_count", "count"),
        ("training time", "train_seconds", "seconds"), ("epochs", "epochs", "count"),
    ]
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in models)
    rows = "".join(
        f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{html.escape(_fmt(m.get(key), kind))}</td>" for _, m in models) + "</tr>"
        for label, key, kind in fields
    )
    return f"<table><tr><th></th>{head}</tr>{rows}</table>"


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ddd;padding:.3em .7em;text-align:left}
th{background:#f6f6f6}figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#777;font-size:.85em}pre{background:#f6f6f6;padding:1em;overflow-x:auto;white-space:pre-wrap}
.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.6em 1em}.warn{background:#fde2e1;border-left-color:#c0392b}
"""


def render_report(metrics: dict[str, Any], folder: Path, notes: dict[str, str]) -> str:
    """report.html: one self-contained page (images inline as base64) with everything above."""
    esc = html.escape
    retrained = {}  # the best model's note first; a comparison model's too if it was retrained
    for entry in (metrics, metrics.get("best_linear"), metrics.get("best_dnn")):
        if entry and entry["note"]:
            retrained.setdefault(entry["note"], "note" if entry["reproduced"] else "note warn")
    note = "".join(f'<p class="{css}">{esc(text)}</p>' for text, css in retrained.items())
    headline = _table([
        ("study", metrics["study"]), ("best trial", metrics["best_trial"]), ("classifier", metrics["classifier"]),
        ("validation accuracy", _fmt(metrics["val_accuracy"])),
        ("test accuracy", f"{_fmt(metrics['test_accuracy'])} ({metrics['test_size']:,} test images)"),
        ("test log loss", _fmt(metrics["test_log_loss"])), ("parameters", _fmt(metrics["param_count"], "count")),
        ("epochs", _fmt(metrics["epochs"], "count")), ("training time", _fmt(metrics["train_seconds"], "seconds")),
        ("weights", metrics["weights"]),
    ])
    params = _table(sorted(metrics["params"].items()))
    status = metrics["trials"]
    study_notes = "".join(f'<p class="note">{esc(text)}</p>' for text in notes.values())
    onnx = metrics["onnx_check"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Export of study {esc(metrics['study'])}</title><style>{_STYLE}</style></head>
<body>
<h1>Best model of study “{esc(metrics['study'])}”</h1>
<p>Study stored in {esc(metrics['storage'])}.</p>
{note}
{headline}
<h2>Hyperparameters</h2>
{params}
<h2>Test set</h2>
<p>Rows: true digit; columns: predicted digit; colour: share of the true digit's images; numbers: counts
(also in <code>confusion_matrix.csv</code>). The diagonal sums to {int(round(metrics['test_accuracy'] * metrics['test_size'])):,} of {metrics['test_size']:,}.</p>
{_image(folder, 'confusion_matrix.png', 'confusion matrix')}
<h2>What the first layer learned</h2>
<p>Each tile is one unit's 784 input weights drawn as a 28x28 image (red positive, blue negative, each tile on its own scale).</p>
{_image(folder, 'weight_tiles.png', 'weight tiles')}
{_image(folder, 'weight_snapshots.png', 'weight snapshots during training')}
<h2>Learning curves</h2>
{_image(folder, 'learning_curves.png', 'learning curves')}
<h2>Linear vs DNN</h2>
{_comparison_table(metrics)}
{_image(folder, 'comparison.png', 'linear vs DNN')}
<h2>The study</h2>
<p>{status['complete']} completed, {status['pruned']} pruned, {status['failed']} failed trials.</p>
{study_notes}
{_image(folder, 'optimization_history.png', 'optimization history')}
{_image(folder, 'param_importances.png', 'parameter importances')}
{_image(folder, 'intermediate_values.png', 'intermediate values')}
<h2>Data</h2>
<p>{esc(metrics['data']['description'])}: {metrics['data']['train_rows']:,} training, {metrics['data']['val_rows']:,} validation,
{metrics['data']['test_rows']:,} test images (split seed {metrics['data']['split_seed']}).</p>
{_image(folder, 'samples.png', 'first nine images')}
<h2>Using the model</h2>
<p><code>model.onnx</code> takes float32 pixels scaled to [0, 1], shape (N, 784), white digit on black, and returns
<code>logits</code> and <code>probabilities</code>; checked against PyTorch on {onnx['rows']:,} test images
(largest probability difference {onnx['max_probability_diff']:.1e}). <code>model.safetensors</code> and <code>model.ckpt</code>
hold the same weights; <code>model.json</code> the hyperparameters and preprocessing.</p>
<pre>{esc(metrics['predict_command'])}</pre>
<h2>Reproduce the best trial</h2>
<pre>{esc(metrics['reproduce_command'])}</pre>
</body></html>
"""


# ---------------------------------------------------------------- artifacts


def content_digest(data: bytes, suffix: str) -> str:
    """SHA-256 of a file's content; for safetensors, with its JSON header's keys sorted
    (the writer orders the metadata at random, so equal models would look different)."""
    if suffix == ".safetensors" and len(data) >= 8:
        size = int.from_bytes(data[:8], "little")
        try:
            header = json.loads(data[8 : 8 + size])
        except ValueError:
            return hashlib.sha256(data).hexdigest()
        data = json.dumps(header, sort_keys=True).encode() + data[8 + size :]
    return hashlib.sha256(data).hexdigest()


def _stored_digest(store: ArtifactStore, artifact_id: str, suffix: str) -> str | None:
    try:
        with store.open_reader(artifact_id) as reader:
            return content_digest(reader.read(), suffix)
    except (ArtifactNotFound, OSError):
        return None


@contextmanager
def _finished_trial_writable(storage: RDBStorage) -> Iterator[None]:
    """Let this storage object add system attributes to a finished trial, for this block only.

    Optuna refuses any attribute on a finished trial, yet the best trial is only known once
    the study ends; an artifact link is metadata about the trial, not a change to its result.
    """
    storage.check_trial_is_updatable = lambda trial_id, trial_state: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del storage.check_trial_is_updatable


def attach_artifacts(study: optuna.Study, trial: FrozenTrial, paths: Sequence[Path], store: ArtifactStore) -> tuple[str, dict[str, str]]:
    """Upload files to the artifact store and link them to `trial` (else to the study).

    A file whose identical content is already linked under the same name is not uploaded again,
    so re-exporting an unchanged study adds nothing to the dashboard. Returns (what the files are
    linked to, {file name: artifact id}).
    """
    backend = getattr(study._storage, "_backend", study._storage)  # the cache may hold a stale trial
    if not isinstance(backend, RDBStorage):  # other storages replay the log and drop such links
        target: optuna.Study | FrozenTrial = study
        linked_to = f"study {study.study_name!r}"
        storage = study._storage
    else:
        target, linked_to, storage = trial, f"trial {trial.number}", backend
    existing = {}
    for meta in get_all_artifact_meta(target, storage=storage):
        existing.setdefault(meta.filename, []).append(meta.artifact_id)
    ids: dict[str, str] = {}
    writable = _finished_trial_writable(backend) if target is trial else _no_op()
    with writable:
        for path in paths:
            digest = content_digest(path.read_bytes(), path.suffix)
            same = [a for a in existing.get(path.name, []) if _stored_digest(store, a, path.suffix) == digest]
            if same:
                ids[path.name] = same[0]
                continue
            ids[path.name] = upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=target, storage=storage,
                mimetype=ARTIFACT_MIMETYPES.get(path.suffix, "application/octet-stream"),
            )
    return linked_to, ids


@contextmanager
def _no_op() -> Iterator[None]:
    yield


# ---------------------------------------------------------------- the export


def _trial_counts(study: optuna.Study) -> dict[str, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {
        "complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL), "total": len(states),
    }


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
        onnx_check = write_model_files(top, study.study_name, staging, split.x_test, probabilities)
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
            "onnx_check": {"rows": onnx_check.rows, "max_probability_diff": onnx_check.max_probability_diff, "disagreements": onnx_check.disagreements},
            "data": {
                "description": settings.data.source or "MNIST", "train_rows": len(split.y_train), "val_rows": len(split.y_val),
                "test_rows": len(split.y_test), "split_seed": split.split_seed,
            },
            "study_plot_notes": notes,
            "storage": redact(str(getattr(getattr(study._storage, "_backend", study._storage), "url", "in-memory storage"))),
            "reproduce_command": reproduce_command(top.trial, settings),
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
    parser = argparse.ArgumentParser(prog="python -m search.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
