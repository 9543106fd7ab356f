"""The export of a study: the best model and what a person needs to judge it, in one folder.

One folder per study (default: exports/<study folder> under the runtime folder); the file names
(`FILES`) are a contract. The folder is built in a temporary sibling and swapped into place
(search/export/folder.py), so a failed export never leaves half a folder behind, and an export
only replaces an earlier export of the same study (the folder's marker names it) of a trial the
study ranks no higher (`swap_rule`). The pictures and the model are also linked to the best
trial in the artifact store for optuna-dashboard. The export loads the data the study recorded
(or the data options given), and refuses data other than the study's own.
"""

from __future__ import annotations

import math
import shlex
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from lightning_modules.data.split import DataSplit
from search import record
from search.artifact_stores import open_store, recorded_location
from search.data import DataIdentity, check_data, data_identity, load_split
from search.export import figures, plots
from search.export.artifacts import ARTIFACT_MIMETYPES, attach_artifacts
from search.export.errors import ExportError, ExportInterrupted, ExportSuperseded
from search.export.files import FILES, export_identity, exported_metrics
from search.export.folder import replace_dir, share, staging_dir
from search.export.metrics import DataRecord, ExportMetrics, ModelMetrics, OnnxCheckRecord, Seeds, TrialCounts
from search.export.model_formats import write_model_files
from search.export.report import render_report
from search.export.reproduce import reproduce_command
from search.export.study_plots import draw_study_plots
from search.export.target import check_completed, check_made_here, checked_target
from search.export.trained import TrainedTrial, load_trial_model
from search.failures import storage_failure
from search.optuna_compat import ArtifactStore, storage_url
from search.redaction import clip, redact
from search.settings import Settings
from search.study import best_trials, study_status
from search.study_identity import require_same_data


@dataclass(frozen=True)
class ExportResult:
    metrics: ExportMetrics
    export_dir: str
    seconds: float
    artifacts: dict[str, str]  # file name -> artifact id
    linked_to: str

    @property
    def test_accuracy(self) -> float:
        return self.metrics.test_accuracy


def _finite(value: Any) -> Any:
    """JSON has no NaN: missing numbers become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _model_fields(trained: TrainedTrial) -> dict[str, Any]:
    """One model's entry in metrics.json."""
    trial = trained.trial
    seeds = record.read_seeds(trial)
    return {
        "classifier": trained.model_file.hp.classifier,
        "params": trial.params,
        "hyperparams": trained.model_file.hp.to_dict(),
        "val_accuracy": _finite(trained.val_accuracy),
        "trial_value": trial.value,
        "test_accuracy": trained.test_accuracy,
        "test_log_loss": _finite(trained.evaluation.log_loss),
        "test_size": trained.evaluation.n_samples,
        "param_count": trained.model_file.model.parameter_count(),
        "train_seconds": record.read(trial, record.TRAIN_SECONDS),
        "epochs": record.epochs_run(trial),
        "seeds": Seeds(training=seeds.training if seeds else None, split=seeds.split if seeds else None, sampler=seeds.sampler if seeds else None),
        "promoted_from": record.promoted_from(trial),
        "weights": "retrained" if trained.retrained else "stored",
        "retrained_val_accuracy": _finite(trained.retrained_val_accuracy),
        "reproduced": trained.reproduced,
        "note": trained.note,
    }


def model_metrics(trained: TrainedTrial | None) -> ModelMetrics | None:
    return None if trained is None else ModelMetrics(trial=trained.trial.number, **_model_fields(trained))


def _summary(trained: TrainedTrial | None, name: str) -> plots.ModelSummary | None:
    if trained is None:
        return None
    m = ModelMetrics(trial=trained.trial.number, **_model_fields(trained))
    return plots.ModelSummary(
        f"{name} (trial {m.trial})", m.trial, float(m.val_accuracy or 0.0), m.test_accuracy,
        float(trained.evaluation.log_loss), m.param_count, m.train_seconds, m.epochs, trained.evaluation.confusion.numpy(),
    )


def write_confusion_csv(counts: np.ndarray, path: Path) -> Path:
    """Counts with a header row of predicted digits and a first column of true digits."""
    lines = ["true\\predicted," + ",".join(str(d) for d in range(len(counts)))]
    lines += [f"{row}," + ",".join(str(int(v)) for v in counts[row]) for row in range(len(counts))]
    path.write_text("\n".join(lines) + "\n")
    return path


def snapshot_note(requested: list[int], taken: list[int]) -> str:
    """Which requested snapshot steps lay beyond the run (the last row is always the end)."""
    beyond = [step for step in requested if step not in taken]
    if not beyond:
        return ""
    last = max(taken) if taken else 0
    many = len(beyond) > 1
    return f"step{'s' if many else ''} {', '.join(map(str, beyond))} {'were' if many else 'was'} asked for, but the run ended at step {last}"


def _who(trained: TrainedTrial) -> str:
    hp = trained.model_file.hp
    return f"trial {trained.trial.number}, {'linear' if hp.classifier == 'linear' else 'DNN ' + '-'.join(map(str, hp.hidden_units))}"


def draw_model_figures(best: TrainedTrial, trained: dict[str, TrainedTrial], split: DataSplit, folder: Path, note: str) -> None:
    """Every figure about the models: confusion, tiles, snapshots, curves, comparison, samples."""
    linear = best.model_file.hp.classifier == "linear"
    who = _who(best)
    counts = best.evaluation.confusion.numpy()
    figures.confusion_png(counts, folder / "confusion_matrix.png", f"Best model ({who}): test accuracy {best.test_accuracy:.4f} on {int(counts.sum()):,} images")
    weights = best.model_file.model.first_layer.weight.detach().numpy()
    kind = "class templates (784 -> 10 weights)" if linear else f"first hidden layer, {len(weights)} units"
    figures.weight_tiles_png(weights, folder / "weight_tiles.png", f"Best model ({who}): {kind}", class_templates=linear)
    snapshots = {step: w.numpy() for step, w in best.model_file.snapshots.items()}
    figures.weight_snapshots_png(snapshots, folder / "weight_snapshots.png", f"First-layer weights during training ({who})", class_templates=linear, note=note)
    curves = [(f"best {name} ({_who(t)})", t.model_file.model.history) for name, t in (("linear", trained.get("linear")), ("DNN", trained.get("dnn"))) if t]
    plots.learning_curves_png(curves, folder / "learning_curves.png")
    plots.comparison_png(_summary(trained.get("linear"), "linear"), _summary(trained.get("dnn"), "DNN"), folder / "comparison.png")
    images = split.sample_images if split.sample_images is not None else split.x_train[:9]
    labels = split.sample_labels if split.sample_labels is not None else split.y_train[:9]
    plots.samples_png(images.numpy(), labels.tolist(), folder / "samples.png", "The first nine images of the data as given, and their labels")


def _trial_counts(study: optuna.Study) -> TrialCounts:
    status = study_status(study)
    return TrialCounts(complete=status.complete, pruned=status.pruned, failed=status.failed, total=len(study.get_trials(deepcopy=False)))


def _load_models(study: optuna.Study, store: ArtifactStore, split: DataSplit, settings: Settings) -> dict[str, TrainedTrial]:
    best = best_trials(study)  # one at least: checked before the data loaded (check_completed)
    unique = {trial.number: trial for trial in best.values()}  # the best is often its classifier's best too
    by_number = {number: load_trial_model(trial, store, split, settings) for number, trial in unique.items()}
    return {key: by_number[trial.number] for key, trial in best.items()}


def swap_rule(study: optuna.Study, trial: optuna.trial.FrozenTrial, out_dir: Path) -> Callable[[Path, bool], None]:
    """`replace_dir`'s `keep`: an export of `trial` replaces the study's export only where the study, as it
    stands at the swap, ranks `trial` (as it picks its best) as high as the folder's trial: an export that
    ends late never replaces a better one written meanwhile, nor one of the same trial that went in at
    the same moment (`raced`); a re-export of the same trial replaces it, as before."""
    def keep(folder: Path, raced: bool) -> None:
        metrics = exported_metrics(folder)  # one unreadable, or naming no trial the study completed (an older version's), is replaced
        if metrics is None:
            return
        number = metrics.get("best_trial")
        done = {t.number: t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if t.value is not None}
        held, ours, rank = done.get(number) if type(number) is int else None, done.get(trial.number, trial), lambda t: (t.value, -t.number)
        if held is None or rank(held) < rank(ours) or (held.number == ours.number and not raced):
            return
        what = f"trial {held.number} (val_acc {held.value:.4f})"
        if raced:
            mine = "this export of the same trial" if held.number == ours.number else f"this export of trial {ours.number}"
            raise ExportSuperseded(f"another export of this study replaced {out_dir} at the same moment, with {what}; it was left as is, "
                              f"and {mine} was not swapped in")
        best = "the study's best now" if held is max(done.values(), key=rank) else f"which the study ranks above trial {ours.number}"
        raise ExportSuperseded(f"{out_dir} already holds the export of {what}, {best}; this export of trial {ours.number} "
                          f"(val_acc {ours.value:.4f}) was not swapped in, and nothing was changed")
    return keep


def export_study(
    study: optuna.Study,
    out_dir: Path | None = None,
    *,
    artifact_store: ArtifactStore | None = None,
    split: DataSplit | None = None,
    identity: DataIdentity | None = None,
    settings: Settings | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> ExportResult:
    """Write the export folder atomically and link its files to the best trial.

    `split` and `identity` come from the runner (the data it trained on); without them the
    export loads the data `settings` (default: the study's recorded settings) describe, and
    checks it is the study's own. `stop_requested` (the runner's stop event) is asked between
    steps: a Ctrl-C during the export ends it there (ExportInterrupted), before the swap.
    """

    def step() -> None:
        if stop_requested():
            raise ExportInterrupted

    start = time.perf_counter()
    check_made_here(study)  # before any trial's value is read
    out_dir = checked_target(study, out_dir)
    check_completed(study)  # before the data loads: there may be nothing to export
    owner = export_identity(study)
    settings = settings or record.study_settings(study)
    source = check_data(settings.data)
    if split is None:
        split = load_split(settings.data, source)
        identity = data_identity(split, source)
    if identity is not None:
        require_same_data(study, identity, doer="export")
    store = artifact_store if artifact_store is not None else open_store(recorded_location(study))
    step()
    trained = _load_models(study, store, split, settings)
    step()
    top = trained["best"]
    with torch.inference_mode():
        probabilities = torch.softmax(top.model_file.model(split.x_test), dim=1)
    staging = staging_dir(out_dir, FILES, owner)
    with ExitStack() as held:  # the artifact files, open from before the swap until they are linked
        try:
            onnx_check = write_model_files(top, study.study_name, staging, split.x_test, probabilities)
            write_confusion_csv(top.evaluation.confusion.numpy(), staging / "confusion_matrix.csv")
            note = snapshot_note(list(settings.training.snapshot_steps), sorted(top.model_file.snapshots))
            step()
            draw_model_figures(top, trained, split, staging, note)
            step()
            notes = draw_study_plots(study, staging)
            url = storage_url(study)
            metrics = ExportMetrics(
                study=study.study_name, best_trial=top.trial.number, **_model_fields(top),
                best_linear=model_metrics(trained.get("linear")), best_dnn=model_metrics(trained.get("dnn")),
                snapshot_steps=sorted(top.model_file.snapshots), snapshot_note=note,
                trials=_trial_counts(study),
                onnx_check=OnnxCheckRecord(**onnx_check.as_dict()),
                data=DataRecord(
                    description=identity.source if identity else (settings.data.source or "MNIST"),
                    train_rows=len(split.y_train), val_rows=len(split.y_val), test_rows=len(split.y_test),
                    split_seed=split.split_seed, sha256=identity.sha256 if identity else None,
                ),
                study_plot_notes=notes, storage=redact(url) if url else "in-memory storage",
                reproduce_command=reproduce_command(study, top.trial.number, url, source.path if settings.data.source is None else None),
                predict_command=f"python -m search.predict --model {shlex.quote(str(out_dir))} digit.png",
                files=list(FILES),
            )
            (staging / "metrics.json").write_text(metrics.to_json())
            (staging / "report.html").write_text(render_report(metrics, staging), encoding="utf-8")
            missing = [name for name in FILES if not (staging / name).is_file()]
            if missing:  # a bug, not bad input: fail loudly rather than ship an incomplete export
                raise RuntimeError(f"export is missing {missing}")
            step()
            share(staging, owner)
            # opened before the swap: what is linked is this export's, whatever the folder holds a moment after
            built = {name: held.enter_context((staging / name).open("rb")) for name in FILES if Path(name).suffix in ARTIFACT_MIMETYPES}
            replace_dir(staging, out_dir, FILES, owner, swap_rule(study, top.trial, out_dir))
        except OSError as error:
            raise ExportError(f"cannot write the export to {out_dir} ({error})") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        try:  # linked once the folder is in place: a target refused at the swap leaves store and trial as they were
            linked_to, artifact_ids = attach_artifacts(study, top.trial, built, store)
        except Exception as error:  # noqa: BLE001 - any store or database failure: the export itself is done
            cause = storage_failure(error) or error  # the database's own words, not Optuna's wrapper's ("invalid data in the commit")
            reason = clip((str(getattr(cause, "orig", None) or cause).strip().splitlines() or [type(cause).__name__])[0], 200)
            raise ExportError(f"the export is in {out_dir}, but linking its files to trial {top.trial.number} "
                              f"in the artifact store failed ({reason}); export again to link them") from None
    return ExportResult(metrics, str(out_dir), time.perf_counter() - start, artifact_ids, linked_to)
