"""A re-export after the study changed: each file keeps its one artifact on the best trial, with
the new content.

A real study on 600 MNIST rows, run in-process twice as a user runs it: the first run exports
after one trial; the second adds a worse trial and exports again into the same folder, so the
best trial stays the same while the study plots and the report change.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import search.progress  # noqa: F401 - see the note below
from helpers import load, reader_storage, writer_storage
from search import record
from search.artifact_stores import build_artifact_store
from search.export import exporter
from search.export.__main__ import main as export_main
from search.export.artifacts import ARTIFACT_MIMETYPES, content_digest
from search.export.files import FILES
from search.export.target import default_export_dir
from search.run import main as run_main

pytestmark = pytest.mark.slow  # trains models end to end: the full suite runs it, the fast subset does not

# search.progress.TrialReporter's `out` defaults to the sys.stdout of the moment the module was
# first imported. Imported lazily by the first in-process run, that is one test's capsys stream,
# closed when the test ends, and the next in-process run fails writing its trial line to it.
# Importing it here, at collection, binds it to pytest's session-long capture instead.

CONFIG = """
data: {val_size: 200, train_size: 600}
training: {max_epochs: 3, snapshot_steps: [5]}
pruner: {name: none}
baseline: {batch_size: 64, max_epochs: 3}
first_dnn: {enabled: false}  # trial 1 is the enqueued WORSE below
"""
# A linear model at a tenth of the baseline's rate for one epoch: worse than the baseline's three
WORSE = {"classifier": "linear", "learning_rate": 3e-4, "optimizer": "adam", "weight_decay": 1e-6, "batch_size": 64}
LINKED = [name for name in FILES if Path(name).suffix in ARTIFACT_MIMETYPES]
CHANGED = ("optimization_history.png", "report.html", "metrics.json")


def links(url: str, trial: optuna.trial.FrozenTrial) -> list[optuna.artifacts.ArtifactMeta]:
    """The artifacts linked to the trial, read through Optuna's API as optuna-dashboard reads them."""
    return optuna.artifacts.get_all_artifact_meta(trial, storage=reader_storage(url))


def test_a_re_export_after_a_new_trial_replaces_each_linked_file_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    argv = ["--config", str(config), "--storage", url, "--target-accuracy", "none"]
    folder = default_export_dir("mnist")
    store = build_artifact_store()

    assert run_main([*argv, "--trials", "1"]) == 0, capsys.readouterr().err  # runs the baseline, exports
    first = {name: (folder / name).read_bytes() for name in LINKED}
    best = load(url).trials[0]
    first_ids = {meta.filename: meta.artifact_id for meta in links(url, best)}
    assert set(LINKED) <= set(first_ids)

    optuna.load_study(study_name="mnist", storage=writer_storage(url)).enqueue_trial(WORSE, user_attrs={record.MAX_EPOCHS: 1})
    assert run_main([*argv, "--trials", "2"]) == 0, capsys.readouterr().err  # runs it, exports again
    study = load(url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert study.best_trial.number == 0 and study.trials[1].value < study.trials[0].value  # the same best trial

    for name in CHANGED:  # the study changed, and these files show it
        assert (folder / name).read_bytes() != first[name], name
    metas = links(url, study.trials[0])
    counts = Counter(meta.filename for meta in metas)
    assert [name for name, count in counts.items() if count != 1] == []  # each file name linked once
    assert {meta.filename: meta.artifact_id for meta in metas} == first_ids  # the same artifacts, replaced
    for meta in metas:
        if meta.filename not in LINKED:  # the trial's own weights, uploaded by the search
            continue
        with store.open_reader(meta.artifact_id) as reader:
            stored = reader.read()
        new = (folder / meta.filename).read_bytes()
        if meta.filename.endswith(".safetensors"):  # equal models, metadata written in any order
            assert content_digest(stored, ".safetensors") == content_digest(new, ".safetensors")
        else:
            assert stored == new, meta.filename
    for name in CHANGED:
        with store.open_reader(first_ids[name]) as reader:
            assert reader.read() == (folder / name).read_bytes() != first[name]
    assert not links(url, study.trials[1])  # nothing linked to the trial that is not the best


# ---------------------------------------------------------------- failures and bad input


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_storage_failure_mid_export_is_one_line_and_leaves_the_previous_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database failing a few seconds into an export (a dropped connection) was a 151-line
    traceback; it is the run's one line and exit status, and the previous export stays whole."""
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    database = tmp_path / "study.db"
    url = f"sqlite:///{database}"
    assert run_main(["--config", str(config), "--storage", url, "--target-accuracy", "none", "--trials", "1"]) == 0
    folder = default_export_dir("mnist")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    linked = sorted(meta.artifact_id for meta in links(url, load(url).trials[0]))
    draw = exporter.draw_study_plots

    def fail_then_draw(study: optuna.Study, staging: Path) -> object:
        with closing(sqlite3.connect(database)) as db:  # the model files are in the staging folder already
            db.execute("ALTER TABLE trials RENAME TO trials_gone")
        return draw(study, staging)

    monkeypatch.setattr(exporter, "draw_study_plots", fail_then_draw)
    capsys.readouterr()
    assert export_main(["--storage", url]) == 2
    line = one_error_line(capsys)
    assert "storage failed during the export" in line and "no such table" in line and "previous export is as it was" in line, line
    with closing(sqlite3.connect(database)) as db:
        db.execute("ALTER TABLE trials_gone RENAME TO trials")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"
    assert sorted(meta.artifact_id for meta in links(url, load(url).trials[0])) == linked


BAD_NAMES = ["x" * 10_000, "x" * 101, " mnist", "mnist ", "a\nb", "a\x00b", "a\x1bb"]


@pytest.mark.parametrize(("flag", "value"), [
    *(("--study-name", name) for name in BAD_NAMES),
    ("--storage", "postgresql://user:Secret99@host/" + "x" * 3000),
    ("--storage", "postgresql://user:" + "Secret99" * 300 + "@host/db"),
    ("--storage", "sqlite:///" + "x/" * 10_000),
], ids=lambda value: repr(value[:12]))
def test_the_export_refuses_the_names_and_urls_the_run_refuses(
    flag: str, value: str, isolated_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 100,000-character study name came back as a 100 KB error line: the export checks the
    name and URL as the run does (search/settings.py), before either is looked up."""
    assert run_main([flag, value, "--no-export"]) == 2
    refusal = one_error_line(capsys).removeprefix("error: ")
    assert export_main([flag, value]) == 2
    line = one_error_line(capsys)
    assert len(line) < 400 and flag in line and "Secret99" not in line, line
    assert refusal in line or "characters long" in line, (refusal, line)  # over the bound: refused without quoting it
    assert not isolated_home.exists()  # no database, no folder


def test_a_name_is_bounded_before_it_is_quoted_or_looked_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert export_main(["--study-name", "x" * 100]) == 2  # the longest name the run accepts
    assert "no study database" in one_error_line(capsys)
    assert export_main(["--study-name", "x" * 100_000]) == 2
    assert one_error_line(capsys) == (
        "error: --study-name is 100,000 characters long, over the 100 python -m search.run accepts; "
        "pass the --study-name the study was run with"
    )


def test_a_url_given_as_a_trial_number_is_masked_before_it_is_cut(capsys: pytest.CaptureFixture[str]) -> None:
    """Cut to 40 characters first, the URL lost the '@' that marks its password, which was shown."""
    password = "LongPassw0rdXyzAbcDef123LongerStillSecret99"
    with pytest.raises(SystemExit) as exit_:
        export_main(["--reproduce", f"postgresql://postgres:{password}@db.example/optuna"])
    assert exit_.value.code == 2
    line = one_error_line(capsys)
    assert "***" in line and not [password[i : i + 4] for i in range(len(password) - 3) if password[i : i + 4] in line], line


def test_an_out_under_a_file_is_refused_before_any_work(
    tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out a/file/sub worked for 12 s, then failed to create the folder, naming no fix."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="mnist", storage=url)  # no trial: any work would be refused for that
    (tmp_path / "afile").write_text("a file, not a folder")
    assert export_main(["--storage", url, "--out", str(tmp_path / "afile" / "sub" / "deeper")]) == 2
    line = one_error_line(capsys)
    assert f"{tmp_path / 'afile'} is not a folder" in line and "choose another --out" in line, line
    assert (tmp_path / "afile").read_text() == "a file, not a folder"
    assert not isolated_home.exists()  # the artifact store was not opened


def test_a_data_option_out_of_range_names_itself_and_its_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`search.export --train-size 0` answered "invalid data option:     For further information
    visit https://errors.pydantic.dev/...": the last line of pydantic's message, naming nothing."""
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert run_main(["--config", str(config), "--storage", url, "--target-accuracy", "none", "--trials", "1", "--no-export"]) == 0
    capsys.readouterr()
    for flags, words in [
        (["--train-size", "0"], ["--train-size: ", "greater than 0", "(got 0)"]),
        (["--val-fraction", "nan"], ["--val-fraction: ", "(got nan)"]),
        (["--val-size", "99999999"], ["--val-size: ", "(got 99999999)"]),
    ]:
        assert export_main(["--storage", url, *flags]) == 2
        line = one_error_line(capsys)
        assert "errors.pydantic.dev" not in line and all(w in line for w in words), line
    assert not default_export_dir("mnist").exists()


def test_an_artifact_store_without_the_studys_weights_is_refused_and_left_alone(
    tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`search.export --artifact-store <a user's folder>` retrained the best trial ("its stored
    weights could not be read") and wrote 15 files into that folder; the folder where the study's
    store is mounted elsewhere still exports from the stored weights."""
    import shutil

    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert run_main(["--config", str(config), "--storage", url, "--target-accuracy", "none", "--trials", "1", "--no-export"]) == 0
    users = tmp_path / "users-folder"
    users.mkdir()
    (users / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert export_main(["--storage", url, "--artifact-store", str(users)]) == 2
    line = one_error_line(capsys)
    assert f"--artifact-store {users} holds none of study 'mnist''s stored weights" in line and "leave --artifact-store out" in line, line
    assert [p.name for p in users.iterdir()] == ["keep.txt"] and not default_export_dir("mnist").exists()

    mounted = tmp_path / "mounted-here"
    shutil.copytree(isolated_home / "artifacts", mounted)
    assert export_main(["--storage", url, "--artifact-store", str(mounted)]) == 0
    assert "retrained" not in capsys.readouterr().out  # the stored weights were read

    for flag in (["--out", str(tmp_path / "out")], ["--artifact-store", str(mounted)]):
        assert export_main(["--storage", url, "--reproduce", "0", *flag]) == 2
        assert f"{flag[0]} is not used by --reproduce" in one_error_line(capsys)
