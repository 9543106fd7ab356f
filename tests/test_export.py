"""search/export/: a tiny real study (SQLite in a temp folder, 600 training rows) exported.

One module-scoped study and export serve most tests: every file exists and parses, PNGs decode
at their sizes, the confusion matrix matches the accuracy, ONNX agrees with the Lightning model,
and the artifacts are listed on the best trial through Optuna's own API. The command line is
run once for success (on the full 10k test set) and once for bad input.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from helpers import reader_storage, writer_storage
from lightning_modules.classifier import Classifier
from lightning_modules.data.split import DataSplit
from lightning_modules.model_file import load_model_file
from search import record
from search.artifact_stores import build_artifact_store
from search.export import exporter, figures, plots, study_plots
from search.export.__main__ import main as export_main
from search.export.errors import ExportError
from search.export.exporter import ExportResult, export_study
from search.export.files import FIGURES, FILES, STUDY_PLOTS, export_identity
from search.export.folder import MARKER, ExportIdentity, check_target
from search.export.target import default_export_dir
from search.export.trained import retrain_note
from search.objective import make_objective
from search.optuna_compat import finished_trial_writable
from search.settings import settings_as_dict
from search.settings_file import load_settings
from search.study import best_trials, open_study, run_worker

pytestmark = pytest.mark.slow  # trains models end to end: the full suite runs it, the fast subset does not

STUDY = "tiny"
DNN_TRIAL = {
    "classifier": "dnn", "learning_rate": 3e-3, "optimizer": "adam", "weight_decay": 1e-6, "batch_size": 64,
    "hidden_layers": 1, "units_l1": 64, "dropout": 0.1,
}


@dataclass(frozen=True)
class TinyStudy:
    home: Path  # MNIST_SEARCH_HOME for subprocesses: holds artifacts/ and the database
    url: str

    def load(self) -> optuna.Study:
        """A fresh storage object, as another process (the dashboard) would see the study."""
        return optuna.load_study(study_name=STUDY, storage=reader_storage(self.url))

    @property
    def store(self) -> optuna.artifacts.FileSystemArtifactStore:
        return build_artifact_store(self.home / "artifacts")


@pytest.fixture(scope="module")
def module_env(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Iterator[Path]:
    """The runtime folder and data for the module's study: the environment every test here sees
    (the same MNIST_DATA_DIR as conftest's, so an export's reproduce command does not change)."""
    home = tmp_path_factory.mktemp("export-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MNIST_SEARCH_HOME", str(home))
        patch.setenv("MNIST_DATA_DIR", str(mnist_dir))
        yield home


@pytest.fixture(scope="module")
def tiny_study(module_env: Path, tiny_split: DataSplit) -> TinyStudy:
    """Three trials on 600 rows: the linear baseline, a 64-unit DNN, and its promotion (the same
    DNN trained 3 x 2 epochs: search/promotion.py), so the export's best is usually a promotion."""
    url = f"sqlite:///{module_env / 'study.db'}"
    settings = load_settings(None, {
        "study": {"name": STUDY, "storage": url, "trials": 3, "target_accuracy": None},
        "data": {"val_size": 200, "train_size": 600},  # what the CLI export reloads from MNIST
        "training": {"max_epochs": 2, "snapshot_steps": [2, 5]},
        "pruner": {"name": "none"},
        "space": {"hidden_layers": {"low": 1, "high": 2}, "units": {"low": 16, "high": 128, "log": True}},
    })
    study = open_study(settings, writer_storage(url)).study
    study.set_user_attr(record.SETTINGS, settings_as_dict(settings))
    study.enqueue_trial(DNN_TRIAL)
    tiny = TinyStudy(module_env, url)
    run_worker(study, make_objective(settings, tiny_split, tiny.store, module_env / "checkpoints"), settings)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3
    assert record.promoted_from(study.trials[2]) == 1 and len(study.trials[2].intermediate_values) == 6
    return tiny


@pytest.fixture(scope="module")
def export_result(tiny_study: TinyStudy, tiny_split: DataSplit) -> ExportResult:
    return export_study(tiny_study.load(), tiny_study.home / "export", artifact_store=tiny_study.store, split=tiny_split)


@pytest.fixture(scope="module")
def exported(export_result: ExportResult) -> dict:
    """metrics.json's content as the export returned it."""
    return export_result.metrics.model_dump(mode="json")


@pytest.fixture(scope="module")
def folder(export_result: ExportResult) -> Path:
    return Path(export_result.export_dir)


def read_confusion_csv(path: Path) -> np.ndarray:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][1:] == [str(d) for d in range(10)]
    assert [row[0] for row in rows[1:]] == [str(d) for d in range(10)]
    return np.array([[int(v) for v in row[1:]] for row in rows[1:]])


# ---------------------------------------------------------------- the export folder


def test_every_file_exists_and_parses(folder: Path, exported: dict, tiny_study: TinyStudy) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted([*FILES, MARKER])
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"
    metrics = json.loads((folder / "metrics.json").read_text())
    best = best_trials(tiny_study.load())
    for key in ("study", "best_trial", "classifier", "params", "val_accuracy", "test_accuracy", "test_log_loss"):
        assert metrics[key] == exported[key]
    assert metrics["study"] == STUDY and metrics["best_trial"] == best["best"].number
    assert metrics["val_accuracy"] == pytest.approx(best["best"].value)
    for key, kind in (("best_linear", "linear"), ("best_dnn", "dnn")):
        entry = metrics[key]
        assert entry["trial"] == best[kind].number and entry["classifier"] == kind
        assert {"params", "val_accuracy", "test_accuracy", "test_log_loss"} <= entry.keys()
    assert metrics["weights"] == "stored" and metrics["note"] == ""
    assert metrics["promoted_from"] == record.promoted_from(best["best"])
    assert [metrics[k]["promoted_from"] for k in ("best_linear", "best_dnn")] == [record.promoted_from(best[k]) for k in ("linear", "dnn")]

    model_json = json.loads((folder / "model.json").read_text())
    assert model_json["hyperparams"] == metrics["hyperparams"]
    assert model_json["preprocessing"]["input_shape"] == [None, 784]
    assert model_json["preprocessing"]["range"] == [0.0, 1.0]

    import onnx

    onnx.checker.check_model(onnx.load(str(folder / "model.onnx")))
    checkpoint = torch.load(folder / "model.ckpt", map_location="cpu", weights_only=True)  # no pickled code
    assert checkpoint["hyper_parameters"]["hp"] == metrics["hyperparams"]
    recorded = record.history(best["best"])  # the search's own record, not a second run's
    assert recorded and checkpoint["history"] == recorded
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (recorded[-1]["epoch"], recorded[-1]["step"])  # not a fresh trainer's 0, 0
    assert not {"torch_rng_state", "cuda_rng_state", "trained_seconds"} & checkpoint.keys()  # the exporter's: loading it reset the user's random state; its clock is not the training's
    weights = load_model_file(folder / "model.safetensors")
    assert weights.hp.to_dict() == metrics["hyperparams"]

    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(FIGURES)
    if metrics["promoted_from"] is not None:  # the headline says the best model is a promotion, and of which trial
        assert f"the parameters of trial {metrics['promoted_from']}, trained longer" in page
    assert not re.search(r'src="(?!data:)', page), "the report must not load anything from outside"
    assert html.escape(metrics["reproduce_command"]) in page
    assert f"--reproduce {metrics['best_trial']}" in metrics["reproduce_command"]


def test_pngs_decode_at_their_sizes(folder: Path, exported: dict) -> None:
    units = exported["hyperparams"]["hidden_units"][:1] or [10]  # the linear model: ten class templates
    assert len(exported["snapshot_steps"]) == 3  # steps 2 and 5, and the end of training
    expected = {
        "confusion_matrix.png": figures.CONFUSION_PX,
        "weight_tiles.png": figures.tile_grid_pixels(units[0]),
        "weight_snapshots.png": figures.snapshot_grid_pixels(len(exported["snapshot_steps"])),
        "learning_curves.png": plots.curves_pixels(2),  # the best linear and the best DNN model
        "comparison.png": plots.COMPARISON_PX,
        "samples.png": plots.SAMPLES_PX,
        **{name: plots.STUDY_PLOT_PX for name in STUDY_PLOTS},
    }
    assert set(expected) == set(FIGURES)
    for name, size in expected.items():
        with Image.open(folder / name) as image:
            image.verify()
        with Image.open(folder / name) as image:
            assert (image.format, image.size) == ("PNG", size), name


def test_confusion_matrix_counts_match_the_test_accuracy(folder: Path, exported: dict, tiny_split: DataSplit) -> None:
    counts = read_confusion_csv(folder / "confusion_matrix.csv")
    assert counts.sum() == len(tiny_split.y_test) == exported["test_size"]
    assert counts.trace() / counts.sum() == exported["test_accuracy"]
    model = load_model_file(folder / "model.safetensors").model
    with torch.inference_mode():
        predicted = model(tiny_split.x_test).argmax(dim=1)
    assert (predicted == tiny_split.y_test).float().mean().item() == pytest.approx(exported["test_accuracy"], abs=1e-6)
    for true, guess in zip(tiny_split.y_test[:50].tolist(), predicted[:50].tolist(), strict=True):
        assert counts[true, guess] > 0


def test_onnx_and_lightning_checkpoint_agree(folder: Path, tiny_split: DataSplit) -> None:
    import onnxruntime as ort

    lightning_model = Classifier.load_from_checkpoint(folder / "model.ckpt", map_location="cpu", weights_only=True).eval()
    with torch.inference_mode():
        expected = torch.softmax(lightning_model(tiny_split.x_test), dim=1).numpy()
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(None, {"pixels": tiny_split.x_test.numpy()})
    assert logits.shape == probabilities.shape == (len(tiny_split.y_test), 10)
    assert (probabilities.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert np.abs(probabilities - expected).max() < 1e-4


def test_artifacts_are_listed_on_the_best_trial(tiny_study: TinyStudy, export_result: ExportResult, folder: Path, tmp_path: Path) -> None:
    study = tiny_study.load()
    best = study.trials[export_result.metrics.best_trial]
    metas = optuna.artifacts.get_all_artifact_meta(best, storage=study._storage)
    by_id = {meta.artifact_id: meta for meta in metas}
    assert export_result.linked_to == f"trial {best.number}"
    for name in (*FIGURES, "model.onnx", "model.safetensors"):
        meta = by_id[export_result.artifacts[name]]
        assert meta.filename == name
        assert meta.mimetype == ("image/png" if name.endswith(".png") else "application/octet-stream")
    downloaded = tmp_path / "downloaded.png"
    optuna.artifacts.download_artifact(
        artifact_store=tiny_study.store, file_path=str(downloaded), artifact_id=export_result.artifacts["confusion_matrix.png"]
    )
    assert downloaded.read_bytes() == (folder / "confusion_matrix.png").read_bytes()


def test_a_re_export_replaces_the_previous_one_and_links_each_file_once(
    tiny_study: TinyStudy, export_result: ExportResult, folder: Path, tiny_split: DataSplit
) -> None:
    study = tiny_study.load()
    best = study.trials[export_result.metrics.best_trial]
    before = optuna.artifacts.get_all_artifact_meta(best, storage=study._storage)
    for _ in range(2):
        again = export_study(tiny_study.load(), folder, artifact_store=tiny_study.store, split=tiny_split)
    assert again.test_accuracy == export_result.test_accuracy
    assert again.artifacts == export_result.artifacts  # each file name keeps its one artifact
    after = optuna.artifacts.get_all_artifact_meta(best, storage=tiny_study.load()._storage)
    assert len(after) == len(before)  # replaced, not added once per export
    assert sorted(m.filename for m in after) == sorted(set(m.filename for m in after))
    assert sorted(p.name for p in folder.iterdir()) == sorted([*FILES, MARKER])


@pytest.mark.parametrize("planted", ["mnist-search.db", "artifacts/abc", "notes.txt"])
def test_a_folder_holding_anything_but_an_export_is_refused_untouched(
    tiny_study: TinyStudy, export_result: ExportResult, tiny_split: DataSplit, tmp_path: Path, planted: str
) -> None:
    target = tmp_path / "home"
    (target / planted).parent.mkdir(parents=True, exist_ok=True)
    (target / planted).write_bytes(b"not an export")
    (target / "report.html").write_text("an export's name, but with company")
    before = sorted(str(p) for p in target.rglob("*"))
    with pytest.raises(ExportError, match="did not write"):
        export_study(tiny_study.load(), target, artifact_store=tiny_study.store, split=tiny_split)
    assert sorted(str(p) for p in target.rglob("*")) == before
    assert (target / planted).read_bytes() == b"not an export"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_a_failed_export_leaves_the_previous_one_untouched(
    tiny_study: TinyStudy, folder: Path, tiny_split: DataSplit, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fail(*args: object) -> None:
        raise RuntimeError("disk full, say")

    monkeypatch.setattr(exporter, "draw_model_figures", fail)  # after the model files are written
    with pytest.raises(RuntimeError, match="disk full"):
        export_study(tiny_study.load(), folder, artifact_store=tiny_study.store, split=tiny_split)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"


# ---------------------------------------------------------------- whose folder an export replaces


@pytest.fixture(scope="module")
def namesake(module_env: Path, tiny_split: DataSplit) -> TinyStudy:
    """Another study named like the tiny one, in its own storage and runtime folder (one trial, one
    epoch): the same name, so only its uid tells its export from the tiny study's."""
    home = module_env / "namesake"
    url = f"sqlite:///{home / 'study.db'}"
    home.mkdir()
    settings = load_settings(None, {
        "study": {"name": STUDY, "storage": url, "trials": 1, "target_accuracy": None},
        "data": {"val_size": 200, "train_size": 600},
        "training": {"max_epochs": 1, "snapshot_steps": [5]},
        "pruner": {"name": "none"},
    })
    study = open_study(settings, writer_storage(url)).study
    study.set_user_attr(record.SETTINGS, settings_as_dict(settings))
    other = TinyStudy(home, url)
    run_worker(study, make_objective(settings, tiny_split, other.store, home / "checkpoints"), settings)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 1
    return other


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_marker_names_the_study_and_its_uid(folder: Path, tiny_study: TinyStudy) -> None:
    marker = json.loads((folder / MARKER).read_text())
    assert marker["study"] == STUDY
    assert marker["uid"] == tiny_study.load().user_attrs[record.UID] and len(marker["uid"]) == 12


def test_a_folder_of_a_users_own_report_is_refused_untouched(
    tiny_study: TinyStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder holding only a report.html of the user's (an export's file name, but no marker) was
    once replaced, the report deleted, exit 0."""
    monkeypatch.setenv("MNIST_SEARCH_HOME", str(tiny_study.home))
    target = tmp_path / "mine"
    target.mkdir()
    (target / "report.html").write_text("<p>my own report</p>")
    code = export_main(["--study-name", STUDY, "--storage", tiny_study.url, "--out", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{target} holds report.html but no {MARKER} marker" in err and "choose another --out" in err, err
    assert snapshot(target) == {"report.html": b"<p>my own report</p>"}
    assert [p.name for p in tmp_path.iterdir()] == ["mine"], "staging folder left behind"


def test_another_studys_export_is_refused_untouched(
    tiny_study: TinyStudy, namesake: TinyStudy, folder: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Study B exported onto study A's export folder once replaced it silently. B here even has A's
    name (another storage): the default folder of both is exports/tiny, and only the uid differs."""
    ours, theirs = (study.load().user_attrs[record.UID] for study in (tiny_study, namesake))
    assert ours != theirs
    target = tmp_path / "tiny-export"
    shutil.copytree(folder, target)  # study A's export
    before = snapshot(target)
    monkeypatch.setenv("MNIST_SEARCH_HOME", str(namesake.home))
    code = export_main(["--study-name", STUDY, "--storage", namesake.url, "--out", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"holds the export of study {STUDY!r} (uid {ours}), not of study {STUDY!r} (uid {theirs})" in err, err
    assert "choose another --out" in err
    assert snapshot(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-export"], "staging folder left behind"


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('{"kind": "mnist-search export", "study": "other", "uid": null}\n', "holds the export of study 'other', not of study 'tiny'"),
        ("mnist-search export of study 'other'\n", "holds the export of study 'other', not of study 'tiny'"),  # the old marker
        ("", "is not a marker mnist-search wrote"),
        ("x" * 100_000, "is not an export marker"),
    ],
    ids=["another-name", "another-name-old-marker", "empty", "too-large"],
)
def test_a_marker_naming_another_study_or_none_is_refused_untouched(
    tiny_study: TinyStudy, folder: Path, tiny_split: DataSplit, tmp_path: Path, marker: str, message: str
) -> None:
    target = tmp_path / "export"
    shutil.copytree(folder, target)
    (target / MARKER).write_text(marker)
    before = snapshot(target)
    with pytest.raises(ExportError, match=re.escape(message)) as caught:
        export_study(tiny_study.load(), target, artifact_store=tiny_study.store, split=tiny_split)
    assert "\n" not in str(caught.value) and "choose another --out" in str(caught.value)
    assert snapshot(target) == before


def test_an_export_with_the_old_marker_of_the_same_study_is_replaced(
    tiny_study: TinyStudy, folder: Path, tiny_split: DataSplit, tmp_path: Path
) -> None:
    """Exports written before the marker named the uid (name only) are still replaced by their study."""
    target = tmp_path / "export"
    shutil.copytree(folder, target)
    (target / MARKER).write_text(f"mnist-search export of study {STUDY!r}\n")
    (target / "metrics.json").write_text("{}")  # to tell the old export from the new one
    export_study(tiny_study.load(), target, artifact_store=tiny_study.store, split=tiny_split)
    assert json.loads((target / "metrics.json").read_text())["study"] == STUDY
    assert json.loads((target / MARKER).read_text())["uid"] == tiny_study.load().user_attrs[record.UID]
    assert sorted(p.name for p in target.iterdir()) == sorted([*FILES, MARKER])


def test_a_missing_or_empty_folder_is_a_fine_target(tmp_path: Path) -> None:
    owner = ExportIdentity(STUDY, "0123456789ab")
    check_target(tmp_path / "missing", FILES, owner)
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty", FILES, owner)
    (tmp_path / "empty" / "model.json").write_text("{}")  # an export's name, but no marker
    with pytest.raises(ExportError, match="no .mnist-search-export marker"):
        check_target(tmp_path / "empty", FILES, owner)


def test_a_folder_taken_by_another_study_while_exporting_is_refused_untouched(
    tiny_study: TinyStudy, folder: Path, tiny_split: DataSplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target is checked again just before the swap: here another study's export lands in it
    while this one draws its plots."""
    target = tmp_path / "export"
    shutil.copytree(folder, target)
    draw = exporter.draw_study_plots

    def draw_then_taken(*args: object) -> dict[str, str]:
        notes = draw(*args)
        (target / MARKER).write_text('{"kind": "mnist-search export", "study": "other", "uid": "0123456789ab"}\n')
        return notes

    monkeypatch.setattr(exporter, "draw_study_plots", draw_then_taken)
    attached: list[object] = []  # a spy that calls through: the refusal must come before any link is made
    attach = exporter.attach_artifacts
    monkeypatch.setattr(exporter, "attach_artifacts", lambda *args: attached.append(args) or attach(*args))
    with pytest.raises(ExportError, match="holds the export of study 'other' \\(uid 0123456789ab\\)"):
        export_study(tiny_study.load(), target, artifact_store=tiny_study.store, split=tiny_split)
    assert attached == [], "the store and the trial were written for an export that was refused"
    assert json.loads((target / MARKER).read_text())["study"] == "other"
    assert {name: data for name, data in snapshot(target).items() if name != MARKER} == {
        name: data for name, data in snapshot(folder).items() if name != MARKER
    }
    assert [p.name for p in tmp_path.iterdir()] == ["export"], "staging or old folder left behind"


def test_a_failure_to_link_after_the_swap_says_the_export_is_in_place(
    tiny_study: TinyStudy, tiny_split: DataSplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linking comes after the swap (a refused target must leave the store alone); a store or
    database failure there is one line that says the new export is written, not a traceback."""

    def store_down(*_: object) -> None:
        raise RuntimeError("artifact store s3://bucket/p answered 503: SlowDown\nmore detail")

    attach = exporter.attach_artifacts
    monkeypatch.setattr(exporter, "attach_artifacts", store_down)
    target = tmp_path / "export"
    with pytest.raises(ExportError, match=r"^the export is in .*export, but linking its files to trial \d+ "
                                          r"in the artifact store failed \(artifact store s3://bucket/p answered 503: SlowDown\); export again"):
        export_study(tiny_study.load(), target, artifact_store=tiny_study.store, split=tiny_split)
    assert (target / "metrics.json").is_file()

    # the database locked by another program (a sqlite3 shell) as the links are written: the lock is
    # SQLite's own, taken as attach_artifacts starts, and what reaches the export is what Optuna raises for it.
    # On a copy of the study as it was before any export linked its files (a link made already is not
    # written again), with a copy of its store; WAL readers are not blocked, only the links' writes are
    from search import sqlite_file

    path = tmp_path / "never-linked.db"
    source, copy = sqlite3.connect(tiny_study.home / "study.db"), sqlite3.connect(path)
    source.backup(copy)
    for table in ("trial_system_attributes", "study_system_attributes"):
        copy.execute(f"DELETE FROM {table} WHERE key LIKE 'artifacts:%'")  # two table names of Optuna's, not input
    copy.commit()
    source.close()
    copy.close()
    store = build_artifact_store(shutil.copytree(tiny_study.home / "artifacts", tmp_path / "artifacts"))
    monkeypatch.setattr(sqlite_file, "SQLITE_BUSY_TIMEOUT_SECONDS", 1)  # the product waits 60 s on a lock
    study = optuna.load_study(study_name=STUDY, storage=reader_storage(f"sqlite:///{path}"))  # its connections wait 1 s
    holder = sqlite3.connect(path, isolation_level=None)

    def locked_then_attach(*args: object) -> object:
        holder.execute("BEGIN EXCLUSIVE")
        return attach(*args)

    monkeypatch.setattr(exporter, "attach_artifacts", locked_then_attach)
    try:
        with pytest.raises(ExportError, match=r"linking its files to trial \d+ in the artifact store failed \(database is locked\)") as raised:
            export_study(study, target, artifact_store=store, split=tiny_split)
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
    assert str(raised.value).endswith("; export again to link them") and (target / "metrics.json").is_file()
    assert isinstance(raised.value.__context__, optuna.exceptions.StorageInternalError), repr(raised.value.__context__)  # Optuna's, around SQLite's


def test_the_current_folder_is_refused_before_any_work(tiny_study: TinyStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`--out .` (or ""): swapping the folder the shell is in would strand it in a deleted one;
    it was refused only at the swap, after 15 artifacts had been linked to the trial."""
    from search.export.__main__ import main as export_main

    here = tmp_path / "here"
    here.mkdir()
    def store() -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in sorted((tiny_study.home / "artifacts").rglob("*")) if p.is_file()}

    before, beside = store(), sorted(tmp_path.iterdir())
    monkeypatch.chdir(here)
    for out in (".", "", str(tmp_path)):
        assert export_main(["--storage", tiny_study.url, "--study-name", STUDY, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is the current folder or holds it" in err, err
    for out in (f"{tmp_path}/a\nb", f"{tmp_path}/a\x01b"):  # accepted, and printed raw: a line of its own
        assert export_main(["--storage", tiny_study.url, "--study-name", STUDY, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds a control character" in err, err
    assert list(here.iterdir()) == [] and sorted(tmp_path.iterdir()) == beside
    assert store() == before


# ---------------------------------------------------------------- retraining and study plots


def test_missing_weights_are_retrained_checked_and_reported(tiny_study: TinyStudy, tiny_split: DataSplit, tmp_path: Path) -> None:
    best = best_trials(tiny_study.load())["best"]
    store_copy = tmp_path / "artifacts"
    shutil.copytree(tiny_study.home / "artifacts", store_copy)
    (store_copy / record.read(best, record.MODEL_ARTIFACT)).unlink()  # as if the best model's file were lost
    result = export_study(tiny_study.load(), tmp_path / "export", artifact_store=build_artifact_store(store_copy), split=tiny_split)
    metrics = result.metrics.model_dump()
    assert metrics["weights"] == "retrained" and metrics["reproduced"] is True
    assert metrics["retrained_val_accuracy"] == pytest.approx(best.value, abs=1e-6)
    assert metrics["note"].startswith(f"Trial {best.number} was retrained: its stored weights")
    assert "reproduces the recorded validation accuracy" in metrics["note"]
    assert html.escape(metrics["note"]) in (tmp_path / "export" / "report.html").read_text()


def test_weights_of_another_trial_are_not_exported_as_the_best_ones(tiny_study: TinyStudy, tiny_split: DataSplit, tmp_path: Path) -> None:
    """The best trial's weights file replaced by another trial's (a swapped or restored store):
    the export said "exported trial N (linear)" for a DNN trial and paired the DNN's parameters
    with the linear model's weights. Now the file is checked against the trial and retrained."""
    trained = best_trials(tiny_study.load())
    best = trained["best"]
    other = next(t for key, t in trained.items() if key != "best" and t.number != best.number)
    store_copy = tmp_path / "artifacts"
    shutil.copytree(tiny_study.home / "artifacts", store_copy)
    shutil.copyfile(store_copy / record.read(other, record.MODEL_ARTIFACT), store_copy / record.read(best, record.MODEL_ARTIFACT))
    result = export_study(tiny_study.load(), tmp_path / "export", artifact_store=build_artifact_store(store_copy), split=tiny_split)
    metrics = result.metrics.model_dump()
    assert metrics["weights"] == "retrained" and metrics["reproduced"] is True, metrics["note"]
    assert metrics["note"].startswith(f"Trial {best.number} was retrained: its stored weights") and " are " in metrics["note"]
    assert metrics["classifier"] == best.params["classifier"]
    # the same network under another trial's number: the number the file carries tells them apart
    from lightning_modules.model_file import load_model_file
    from search.export.trained import _not_the_trials

    own = load_model_file(tiny_study.home / "artifacts" / record.read(best, record.MODEL_ARTIFACT))
    assert own.metadata[record.MODEL_TRIAL] == str(best.number) and _not_the_trials(own, best) is None
    own.metadata[record.MODEL_TRIAL] = "999"
    assert _not_the_trials(own, best) == "trial 999's"


def test_unreadable_weights_are_named_by_their_artifact_not_a_deleted_copy(tiny_study: TinyStudy, tiny_split: DataSplit, tmp_path: Path) -> None:
    """The retrain note quoted the temporary copy's path (/tmp/tmpXXXX/model.safetensors), gone
    before anyone read the report."""
    best = best_trials(tiny_study.load())["best"]
    store_copy = tmp_path / "artifacts"
    shutil.copytree(tiny_study.home / "artifacts", store_copy)
    artifact = record.read(best, record.MODEL_ARTIFACT)
    (store_copy / artifact).write_bytes(b"not a model")
    note = export_study(tiny_study.load(), tmp_path / "export", artifact_store=build_artifact_store(store_copy), split=tiny_split).metrics.note
    assert f"its stored weights ({artifact}) could not be read: not a readable safetensors model file" in note, note
    assert "model.safetensors" not in note, note  # the temporary copy's name


def test_a_retrained_model_that_differs_in_any_recorded_metric_is_not_called_reproduced(
    tiny_study: TinyStudy, tiny_split: DataSplit, tmp_path: Path
) -> None:
    """A retrain compared its last validation accuracy only: "reproduced: true" in metrics.json
    where `--reproduce`, which compares every recorded metric, said DIFFERS. The trial's recorded
    validation loss is nudged here, as another CPU's arithmetic would move it."""
    best = best_trials(tiny_study.load())["best"]
    copy = tmp_path / "study.db"
    with sqlite3.connect(tiny_study.url.removeprefix("sqlite:///")) as source, sqlite3.connect(copy) as target:
        source.backup(target)  # the -wal's pages too
    storage = writer_storage(f"sqlite:///{copy}")
    history = record.history(best)
    history[0] = {**history[0], "val/loss": history[0]["val/loss"] + 1e-5}
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(STUDY), best.number)
    with finished_trial_writable(storage):
        storage.set_trial_system_attr(trial_id, record.HISTORY, history)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    store_copy = tmp_path / "artifacts"
    shutil.copytree(tiny_study.home / "artifacts", store_copy)
    (store_copy / record.read(best, record.MODEL_ARTIFACT)).unlink()
    metrics = export_study(study, tmp_path / "export", artifact_store=build_artifact_store(store_copy), split=tiny_split).metrics
    assert metrics.weights == "retrained" and metrics.reproduced is False, metrics.note
    assert "reproduces the recorded validation accuracy" in metrics.note and "but DIFFERS in val/loss at epoch 0" in metrics.note
    assert metrics.val_accuracy == metrics.retrained_val_accuracy
    assert 'class="note warn"' in (tmp_path / "export" / "report.html").read_text()


def test_retrain_note_says_when_the_result_differs() -> None:
    assert "DIFFERS from the recorded 0.9000" in retrain_note(3, "no weights", 0.9, 0.85)
    assert retrain_note(3, "no weights", 0.9, 0.9).startswith("Trial 3 was retrained: no weights.")
    assert "reproduces" in retrain_note(3, "no weights", 0.9, 0.9)


def test_study_plots_with_too_few_trials_become_notes(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    notes = study_plots.draw_study_plots(study, tmp_path)
    assert set(notes) == {"param_importances.png"} and "this study has 1, too few" in notes["param_importances.png"]
    assert "completed trials on" in notes["param_importances.png"]  # a study without DNNs: not "DNN trials"
    choice = optuna.distributions.CategoricalDistribution(["linear", "dnn"])
    study.add_trial(optuna.trial.create_trial(params={"classifier": "dnn"}, distributions={"classifier": choice}, value=0.5))
    assert "completed DNN trials on; this study has 1" in study_plots.draw_study_plots(study, tmp_path)["param_importances.png"]
    for name in STUDY_PLOTS:
        with Image.open(tmp_path / name) as image:
            assert image.size == plots.STUDY_PLOT_PX


def test_study_plots_with_constant_params_become_notes(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    for value in [0.1 * i for i in range(study_plots.MIN_IMPORTANCE_TRIALS)]:
        study.add_trial(optuna.trial.create_trial(params={"x": 1.0}, distributions={"x": optuna.distributions.FloatDistribution(0, 2)}, value=value))
    assert "vary" in study_plots.draw_study_plots(study, tmp_path)["param_importances.png"]


def test_importances_rank_only_varying_dnn_params_under_one_title() -> None:
    """The figure showed Optuna's left title under the project's centred one ("HypHyperparameter
    ...") and ranked `classifier`, "dnn" in every trial it rests on, above real parameters."""
    import matplotlib

    matplotlib.use("Agg")
    study = optuna.create_study(direction="maximize")
    dists = {
        "classifier": optuna.distributions.CategoricalDistribution(["linear", "dnn"]),
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
        "dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
    }
    for i in range(study_plots.MIN_IMPORTANCE_TRIALS + 2):
        params = {"classifier": "dnn", "lr": 1e-4 * 1.8**i, "dropout": 0.04 * (i % 5)}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.5 + 0.03 * i))
    ax = study_plots._importances(study)()
    assert ax.get_title() == "" and ax.get_title(loc="left").startswith("Hyperparameter importances (fANOVA over 12 completed DNN trials)")
    assert sorted(label.get_text() for label in ax.get_yticklabels()) == ["dropout", "lr"]


def test_a_study_without_completed_trials_is_refused(tmp_path: Path) -> None:
    storage = writer_storage(f"sqlite:///{tmp_path / 'empty.db'}")
    study = optuna.create_study(study_name="empty", storage=storage)
    with pytest.raises(ExportError, match="no completed trial"):
        export_study(study, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_default_folder_name_is_safe_and_unique() -> None:
    exports = default_export_dir("mnist").parent
    for name in ("a/../b c", "..", "/etc/x", "a b", "a_b", "名前"):
        path = default_export_dir(name)
        assert path.parent == exports and not path.name.startswith("."), name
    assert default_export_dir("a b") != default_export_dir("a_b")
    assert default_export_dir("mnist").name == "mnist"


# ---------------------------------------------------------------- command line


def run_cli(python: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "search.export", *args], capture_output=True, text=True, env=env, timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )


@pytest.mark.slow
def test_cli_exports_on_the_full_test_set(
    tiny_study: TinyStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (the entry point as a subprocess: test_cli_bad_input_is_one_line_and_exit_code_2).
    The dashboard note of a --no-export run said "export off" after this export: it names it now."""
    from optuna_dashboard import get_note

    from search.export.note import RunSummary, write_study_note

    monkeypatch.setenv("MNIST_SEARCH_HOME", str(tiny_study.home))
    write_study_note(tiny_study.load(), RunSummary(None, 3, "budget of 3 finished trials spent", 0, "linear", 0.5))  # a --no-export run's
    out = tmp_path / "cli-export"
    code = export_main(["--study-name", STUDY, "--storage", tiny_study.url, "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert f"-> {out}" in stdout and "Traceback" not in stderr
    metrics = json.loads((out / "metrics.json").read_text())
    counts = read_confusion_csv(out / "confusion_matrix.csv")
    assert counts.sum() == metrics["test_size"] == 10_000
    assert counts.trace() / 10_000 == metrics["test_accuracy"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, MARKER])
    note = get_note(tiny_study.load())
    assert f"- **Export folder**: `{out}`" in note and f"- **Test accuracy** of the best trial: {metrics['test_accuracy']:.4f}" in note, note
    assert f"- **Best**: trial {metrics['best_trial']} ({metrics['classifier']})" in note and "- **Budget**: 3 finished trials" in note, note
    assert "- **Stopped**: budget of 3 finished trials spent" in note and "export off" not in note, note


@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_exit_code_2(tiny_study: TinyStudy, python: str, run_env: dict[str, str]) -> None:
    result = run_cli(python, run_env, "--study-name", "nope", "--storage", tiny_study.url)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no study named 'nope'" in lines[0] and STUDY in lines[0], result.stderr


def test_main_refuses_the_run_folder_even_with_force(
    tiny_study: TinyStudy, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNIST_SEARCH_HOME", str(tiny_study.home))
    def listing() -> list[str]:
        # SQLite's -wal/-shm files come and go with open connections (this process holds some)
        return sorted(p.name for p in tiny_study.home.iterdir() if not p.name.endswith(("-wal", "-shm")))

    before = listing()
    code = export_main(["--study-name", STUDY, "--storage", tiny_study.url, "--out", str(tiny_study.home), "--force"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "did not write" in err, err
    assert listing() == before
    assert optuna.load_study(study_name=STUDY, storage=reader_storage(tiny_study.url)).trials


def test_main_refuses_a_study_with_no_completed_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(study_name="empty", storage=url)
    code = export_main(["--study-name", "empty", "--storage", url, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no completed trial" in err
    assert not os.path.exists(tmp_path / "out")


def test_export_right_after_a_run_needs_no_flag_and_no_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run found MNIST through MNIST_DATA_DIR; a new shell in another folder has neither the
    variable nor the relative path, and `python -m search.export` still exports the study's data."""
    from search.run import main as run_main

    config = tmp_path / "tiny.yaml"
    config.write_text("data: {val_size: 200, train_size: 600}\ntraining: {max_epochs: 1, snapshot_steps: [5]}\n")
    assert run_main(["--config", str(config), "--trials", "2", "--target-accuracy", "none", "--no-export"]) == 0
    monkeypatch.delenv("MNIST_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert export_main([]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "exported trial" in out
    assert export_main([]) == 0  # and again, over its own previous export


def test_export_help_names_the_recorded_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        export_main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "create or resume" not in text  # the export reads a study, it creates none
    assert "--val-fraction" in text and "(default: what the study recorded)" in text
    assert "default 0.2" not in text  # the study's own split is the default, not the run's built-in one


def test_a_bf16_trial_export_says_what_the_float32_model_scores(tmp_path: Path, tiny_split: DataSplit) -> None:
    """A trial trained in bf16-mixed had its validation accuracy measured under autocast; the
    export gave that number as the exported float32 model's (0.8448 where the weights score 0.8451)."""
    from lightning_modules.training import evaluate

    url = f"sqlite:///{tmp_path / 'bf16.db'}"
    settings = load_settings(None, {
        "study": {"name": "bf16", "storage": url, "trials": 1, "target_accuracy": None},
        "data": {"val_size": 200, "train_size": 600}, "training": {"max_epochs": 1, "precision": "bf16-mixed", "promote_factor": None},
        "baseline": {"enabled": False}, "first_dnn": {"enabled": False},
    })
    study = open_study(settings, writer_storage(url)).study
    study.set_user_attr(record.SETTINGS, settings_as_dict(settings))
    study.enqueue_trial(DNN_TRIAL)
    store = build_artifact_store(tmp_path / "artifacts")
    run_worker(study, make_objective(settings, tiny_split, store, tmp_path / "checkpoints"), settings)
    result = export_study(study, tmp_path / "export", artifact_store=store, split=tiny_split)
    exported = load_model_file(tmp_path / "export" / "model.safetensors").model.eval()
    float32 = evaluate(exported, tiny_split.x_val, tiny_split.y_val).accuracy
    assert (
        f"Trial 0 trained and was validated in bf16-mixed, which measured validation accuracy {study.trials[0].value:.4f}; "
        f"the exported float32 model scores {float32:.4f} on the same rows"
    ) in result.metrics.note, result.metrics.note
    assert result.metrics.note in (tmp_path / "export" / "report.html").read_text()
    # every accuracy given as the model's is the float32 weights' own; the search's is named as such
    model = json.loads((tmp_path / "export" / "model.json").read_text())
    assert model["val_accuracy"] == result.metrics.val_accuracy == float32, (model, float32)
    assert model["trial_value"] == result.metrics.trial_value == study.trials[0].value
    assert model["note"] == result.metrics.note


def test_an_export_clears_what_a_killed_export_left_and_nothing_else(tiny_study: TinyStudy, tiny_split: DataSplit, tmp_path: Path) -> None:
    """kill -9 during an export left its `.export.*.partial` staging folder for good (one more per
    kill), and a kill between its two renames left the previous export aside as `.export.old-*`.
    Only this machine's and pid namespace's leftovers of processes that are gone are cleared."""
    import socket

    from search.export.folder import _pid_space, staging_dir, sweep_leftovers

    dead = subprocess.Popen(["true"])  # exits and is reaped: a pid no process has
    dead.wait()
    here, out = f"{socket.gethostname()}.{_pid_space()}", tmp_path / "export"
    export_study(tiny_study.load(), out, artifact_store=tiny_study.store, split=tiny_split)
    previous = (out / "metrics.json").read_bytes()
    aside = tmp_path / f".export.old-{here}-{dead.pid}.0a1b2c3d"
    out.rename(aside)  # killed between moving the previous export aside and moving the new one in
    swept = [tmp_path / f".export.{here}-{dead.pid}.abcd1234.partial", tmp_path / f".export.{here}-{os.getpid()}.efgh5678.partial"]
    for folder in swept:  # the second: an earlier process with this one's pid (a container's pid 1)
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"half")
    kept = {
        tmp_path / f".export.{here}-{dead.pid}.mine0000.partial": "notes.txt",  # not only an export's files
        tmp_path / f".export.{here}-{dead.pid}.mine1111.partial": "report.html/thesis.txt",  # an export's name, but a folder
        tmp_path / f".export.{here}-{dead.pid}.other000.partial": MARKER,  # another study's export, named like one
        tmp_path / f".export.{here}-{os.getppid()}.live0000.partial": "model.onnx",  # its process still runs
        tmp_path / f".export.{socket.gethostname()}.0000beef-{dead.pid}.abcd1234.partial": "model.onnx",  # another pid namespace
        tmp_path / f".export.another-host.{_pid_space()}-{dead.pid}.abcd1234.partial": "model.onnx",  # another machine
    }
    for folder, name in kept.items():
        (folder / name).parent.mkdir(parents=True)
        (folder / name).write_text(ExportIdentity("another study").marker_text() if name == MARKER else "keep")
    identity = export_identity(tiny_study.load())
    sweep_leftovers(out, FILES, identity)
    assert (out / "metrics.json").read_bytes() == previous and not aside.exists()  # put back, not deleted
    assert not any(folder.exists() for folder in swept)
    mine = staging_dir(out, FILES, identity)  # what a kill of this export would leave: named to be swept
    assert re.fullmatch(rf"\.export\.{re.escape(here)}-{os.getpid()}\.\w+\.partial", mine.name), mine.name
    mine.rmdir()
    export_study(tiny_study.load(), out, artifact_store=tiny_study.store, split=tiny_split)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export.")) == sorted(p.name for p in kept)
    assert all((folder / name).read_text() in ("keep", ExportIdentity("another study").marker_text()) for folder, name in kept.items())


@pytest.mark.parametrize(("foreign", "shown"), [
    (["notes.txt"], "(notes.txt);"), (["a.txt", "b.txt"], "(a.txt, b.txt);"), ([f"n{i}.txt" for i in range(6)], " more);"),
])
def test_a_refused_folder_names_its_foreign_files_and_says_more_only_when_there_are(tmp_path: Path, foreign: list[str], shown: str) -> None:
    """A whole export plus the user's notes.txt was refused as holding "notes.txt and more", and
    plus two files as "a.txt, b.txt and more"."""
    out = tmp_path / "out"
    out.mkdir()
    for name in [*FILES, MARKER, *foreign]:
        (out / name).write_text("x")
    with pytest.raises(ExportError) as caught:
        check_target(out, FILES, None)
    assert "holds files an export did not write (" in str(caught.value) and shown in str(caught.value), caught.value


def test_export_input_errors_answer_before_torch_is_imported(tiny_study: TinyStudy, tmp_path: Path, python: str, run_env: dict[str, str]) -> None:
    """A bad data folder, study name or --reproduce trial reached the export after torch, Lightning and
    matplotlib were imported (10 s on this machine for a mistyped path); one interpreter runs each case."""
    cases = [
        ["--storage", tiny_study.url, "--study-name", STUDY, "--data-dir", str(tmp_path / "missing")],
        ["--storage", tiny_study.url, "--study-name", STUDY, "--data", str(tmp_path / "missing.csv")],
        ["--storage", tiny_study.url, "--study-name", "no-such-study"],
        ["--storage", tiny_study.url, "--study-name", STUDY, "--reproduce", "99"],  # imported Lightning first (6 s)
    ]
    code = (
        "import sys, json\n"
        "from search.export.__main__ import main\n"
        f"codes = [main(argv) for argv in json.loads({json.dumps(json.dumps(cases))})]\n"
        "print(json.dumps({'codes': codes, 'heavy': sorted({'torch', 'lightning', 'matplotlib'} & set(sys.modules))}))\n"
    )
    result = subprocess.run([python, "-c", code], env=run_env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"codes": [2, 2, 2, 2], "heavy": []}, result.stderr
    assert [line.split(":")[0] for line in result.stderr.strip().splitlines()] == ["error"] * 4, result.stderr


def test_exports_racing_on_one_study_link_each_file_once_and_none_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two machines exporting at once each read "no link yet", then each uploaded every file under
    a random id: the dashboard listed each file twice, and a later re-export refreshed one copy
    only (the other kept the earlier metrics.json). The barrier makes both read before either links."""
    import threading

    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta

    from search.export import artifacts
    from search.optuna_compat import link_artifact, study_storage

    url = f"sqlite:///{tmp_path / 'race.db'}"
    optuna.create_study(study_name="race", storage=url).optimize(lambda trial: 1.0, n_trials=1)
    (tmp_path / "store").mkdir()
    store = FileSystemArtifactStore(str(tmp_path / "store"))
    files = [tmp_path / "report.html", tmp_path / "metrics.json"]
    for path in files:
        path.write_text(f"first {path.name}")
    barrier, read = threading.Barrier(2, timeout=60), artifacts.get_all_artifact_meta
    monkeypatch.setattr(artifacts, "get_all_artifact_meta", lambda *a, **k: (read(*a, **k), barrier.wait())[0])
    results: list[dict[str, str]] = []

    def export() -> None:
        study = optuna.load_study(study_name="race", storage=url)
        results.append(artifacts.attach_artifacts(study, study.trials[0], files, store)[1])

    racers = [threading.Thread(target=export) for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(120)
    monkeypatch.undo()
    study = optuna.load_study(study_name="race", storage=url)
    backend = study_storage(study)
    assert len(results) == 2 and results[0] == results[1]
    assert sorted(m.filename for m in get_all_artifact_meta(study.trials[0], storage=backend)) == ["metrics.json", "report.html"]

    from search.optuna_compat import finished_trial_writable

    store.write("older-copy", io.BytesIO(b"stale"))  # a second link an older version's race left
    with finished_trial_writable(backend):
        link_artifact(backend, study.trials[0], "older-copy", "metrics.json", "application/json")
    files[1].write_text("second metrics.json")
    artifacts.attach_artifacts(study, study.trials[0], files, store)
    for meta in get_all_artifact_meta(study.trials[0], storage=backend):
        with store.open_reader(meta.artifact_id) as reader:
            assert reader.read() == (tmp_path / meta.filename).read_bytes(), meta
