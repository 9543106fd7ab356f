"""A study is bound to its data: continuing or exporting it on other data is refused, untouched.

The study records its data's identity (source, split sizes, SHA-256 of every row) when it is
created (search/data.py, search/trial_loop.py:start_run). A study created before identities were
recorded has only its recorded settings; other data is refused for it as well, and the same data
is accepted and its identity recorded from then on.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest

import search.progress  # noqa: F401 - see the note below
from helpers import load
from lightning_modules.data.arrays import MnistArrays
from lightning_modules.data.readers import write_csv
from search import record
from search.export.__main__ import main as export_main
from search.run import main as run_main

pytestmark = pytest.mark.slow  # trains models end to end: the full suite runs it, the fast subset does not

# search.progress.TrialReporter's `out` defaults to the sys.stdout of the moment the module was
# first imported. Imported lazily by the first in-process run, that is one test's capsys stream,
# closed when the test ends, and the next in-process run fails writing its trial line to it.
# Importing it here, at collection, binds it to pytest's session-long capture instead.

# 300 training and 100 validation rows, one epoch of the linear baseline: one trial is ~1 s.
CONFIG = """
data: {val_size: 100, train_size: 300}
training: {max_epochs: 1, snapshot_steps: [5]}
pruner: {name: none}
baseline: {batch_size: 64}
"""


def study_args(tmp_path: Path) -> list[str]:
    config = tmp_path / "tiny.yaml"
    if not config.exists():
        config.write_text(CONFIG)
    return ["--config", str(config), "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--target-accuracy", "none", "--no-export"]


@pytest.fixture
def study_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """A one-trial study on MNIST (300 train / 100 val rows), run as a user runs it."""
    assert run_main([*study_args(tmp_path), "--trials", "1"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture
def other_csv(tmp_path: Path, mnist_arrays: MnistArrays) -> Path:
    """700 MNIST test-set rows as the tutorial's CSV: valid data, enough rows for the study's
    300/100 split (a seventh becomes its test set), but not the study's data."""
    path = tmp_path / "other.csv"
    write_csv(mnist_arrays.test_images[:700].numpy(), mnist_arrays.test_labels[:700].numpy(), path)
    return path


def snapshot(url: str) -> dict[str, Any]:
    """Everything stored about the study, as any reader sees it."""
    study = load(url)
    return {
        "user_attrs": study.user_attrs,
        "trials": [
            (t.number, t.state, t.params, t.value, t.user_attrs, t.system_attrs, t.intermediate_values)
            for t in study.get_trials(deepcopy=True)
        ],
    }


def forget_identity(url: str) -> None:
    """Turn the study into one created before identities were recorded: its settings (its data
    source, 300/100 rows) stay, its `data` attribute goes. Optuna has no call that removes a user
    attribute, so the row goes the way an older version never wrote it: not at all."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        removed = db.execute("DELETE FROM study_user_attributes WHERE key = ?", (record.DATA,)).rowcount
    assert removed == 1
    study = load(url)
    assert record.DATA not in study.user_attrs
    assert record.study_settings(study).data.train_size == 300


def assert_one_line_refusal(code: int, capsys: pytest.CaptureFixture[str], *words: str) -> str:
    out, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    return out


OTHER_DATA = {
    "csv": lambda csv: ["--data", str(csv)],
    "train_size": lambda csv: ["--train-size", "200"],
    "val_size": lambda csv: ["--val-size", "50"],
}


@pytest.mark.parametrize("other", sorted(OTHER_DATA))
def test_a_run_on_other_data_is_refused_and_changes_nothing(
    tmp_path: Path, study_url: str, other_csv: Path, other: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(study_url)
    assert before["user_attrs"][record.DATA]["train_rows"] == 300
    code = run_main([*study_args(tmp_path), "--trials", "2", *OTHER_DATA[other](other_csv)])
    out = assert_one_line_refusal(code, capsys, "was trained on", "this run loads", "--study-name")
    assert out == ""  # refused before the run's first line
    assert snapshot(study_url) == before  # no trial, no attribute: the settings are not overwritten either


def test_a_data_setting_without_a_flag_is_named_when_it_changes_the_data(
    tmp_path: Path, study_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config's `split_seed: 4` gave the same source and sizes, only another checksum, and the
    line told the user to pass data flags that could not fix it: the setting that differs is named."""
    before = snapshot(study_url)
    config = tmp_path / "other-split.yaml"
    config.write_text(CONFIG.replace("data: {val_size: 100, train_size: 300}", "data: {val_size: 100, train_size: 300, split_seed: 4}"))
    argv = ["--config", str(config), *study_args(tmp_path)[2:], "--trials", "2"]
    assert_one_line_refusal(run_main(argv), capsys, "pass the study's data settings (data.split_seed 0 (this run: 4))", "--study-name")
    assert snapshot(study_url) == before


def test_the_same_data_resumes(tmp_path: Path, study_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The check above refuses other data, not every resume."""
    identity = load(study_url).user_attrs[record.DATA]
    assert run_main([*study_args(tmp_path), "--trials", "2"]) == 0, capsys.readouterr().err
    study = load(study_url)
    assert len(study.trials) == 2 and study.user_attrs[record.DATA] == identity


def test_an_export_on_other_data_is_refused(tmp_path: Path, study_url: str, other_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(study_url)
    out_dir = tmp_path / "export"
    for extra in (["--out", str(out_dir)], ["--reproduce", "0"]):
        code = export_main(["--storage", study_url, "--data", str(other_csv), *extra])
        assert_one_line_refusal(code, capsys, "was trained on", f"this export loads csv at {other_csv}")
    assert not out_dir.exists()
    assert snapshot(study_url) == before


# ---------------------------------------------------------------- studies without a recorded identity


@pytest.mark.parametrize("other", sorted(OTHER_DATA))
def test_a_study_without_a_recorded_identity_refuses_other_data(
    tmp_path: Path, study_url: str, other_csv: Path, other: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix such a study silently adopted whatever data the next run loaded: the run
    trained trial 1 on it and recorded that data as the study's own."""
    forget_identity(study_url)
    before = snapshot(study_url)
    code = run_main([*study_args(tmp_path), "--trials", "2", *OTHER_DATA[other](other_csv)])
    assert_one_line_refusal(code, capsys, "was trained on", "recorded settings", "this run loads")
    assert snapshot(study_url) == before
    assert [t.state for t in load(study_url).trials] == [TrialState.COMPLETE, TrialState.WAITING]  # the first DNN never started


def test_a_study_without_a_recorded_identity_exports_only_its_own_data(
    tmp_path: Path, study_url: str, other_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forget_identity(study_url)
    code = export_main(["--storage", study_url, "--data", str(other_csv), "--reproduce", "0"])
    assert_one_line_refusal(code, capsys, "was trained on", "recorded settings", f"this export loads csv at {other_csv}")
    code = export_main(["--storage", study_url, "--reproduce", "0"])  # its own data: reproduced as recorded
    out, err = capsys.readouterr()
    assert code == 0 and "trial 0 reproduced: every epoch matches" in out, out + err


def test_a_study_without_a_recorded_identity_resumes_on_its_data_and_records_it(
    tmp_path: Path, study_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    identity = load(study_url).user_attrs[record.DATA]
    forget_identity(study_url)
    assert run_main([*study_args(tmp_path), "--trials", "2"]) == 0, capsys.readouterr().err
    study = load(study_url)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert study.user_attrs[record.DATA] == identity  # the same identity a new study records


def test_a_study_without_a_recorded_identity_whose_data_is_gone_is_refused(
    tmp_path: Path, other_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing then says which data its trials trained on: refused, not adopted."""
    assert run_main([*study_args(tmp_path), "--trials", "1", "--data", str(other_csv)]) == 0, capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 'study.db'}"
    forget_identity(url)
    other_csv.unlink()
    capsys.readouterr()
    before = snapshot(url)
    code = run_main([*study_args(tmp_path), "--trials", "2"])  # MNIST, which the study never saw
    assert_one_line_refusal(code, capsys, "recorded no data identity", str(other_csv), "file not found")
    assert snapshot(url) == before


@pytest.mark.parametrize(("download", "data_dir"), [(False, "/usr/share/datasets/fashion-mnist"), (True, None)])
def test_a_dataset_name_is_recorded_as_a_name_and_read_back_as_that_dataset(download: bool, data_dir: str | None, tmp_path: Path) -> None:
    """`--data fashion-mnist` was recorded as its folder, which the export and --reproduce (the
    report's own command) then read as MNIST's files and refused: a name is kept, its folder
    recorded as the data folder unless it is the download cache."""
    from lightning_modules.data.datasets import FASHION_MNIST
    from lightning_modules.data.sources import DataSource, resolve_data_source
    from search.settings import Settings
    from search.settings_file import load_settings
    from search.trial_loop import stored_settings

    folder = Path("/usr/share/datasets/fashion-mnist") if not download else tmp_path / "cache" / "fashion-mnist"
    settings = load_settings(None, {"data": {"source": "fashion-mnist"}})
    stored = stored_settings(settings, f"sqlite:///{tmp_path / 's.db'}", DataSource("idx", folder, FASHION_MNIST, download=download))
    assert (stored["data"]["source"], stored["data"]["data_dir"]) == ("fashion-mnist", data_dir)
    recorded = Settings.model_validate(stored).data
    assert resolve_data_source(recorded.source, recorded.data_dir, env={}, cache_dir=tmp_path / "cache").spec is FASHION_MNIST
