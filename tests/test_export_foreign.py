"""python -m search.export on studies and folders it cannot export to: refused in one line, exit 2,
before the data loads, with nothing written.

Studies made by hand in SQLite files (no training): one of two objectives, a plain Optuna study
another program made, one of ours with no completed trial, and --out inside an export folder. Each
was found only after torch was imported and the full data set loaded (a traceback for the first);
`no_data_loaded` fails any test whose export gets that far.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

import search.data
from search import record
from search.export import exporter
from search.export.__main__ import main as export_main
from search.export.errors import ExportError
from search.export.exporter import export_study
from search.export.folder import MARKER, ExportIdentity
from search.export.target import default_export_dir
from search.space import CLASSIFIER_PARAM

OURS = {CLASSIFIER_PARAM: CategoricalDistribution(("linear", "dnn"))}


@pytest.fixture(autouse=True)
def no_data_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refusal here comes before the data is read: loading it fails the test."""
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the export loaded the data before refusing")

    monkeypatch.setattr(search.data, "load_split", refuse)
    monkeypatch.setattr(exporter, "load_split", refuse)


def make_study(url: str, name: str, trials: list[optuna.trial.FrozenTrial], **kwargs: object) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=url, **kwargs)  # type: ignore[arg-type]
    study.add_trials(trials)
    return study


def ours(value: float | None = 0.9, state: TrialState = TrialState.COMPLETE) -> optuna.trial.FrozenTrial:
    """A trial as a search records it, as far as the checks here read it: its classifier parameter."""
    return create_trial(params={CLASSIFIER_PARAM: "linear"}, distributions=OURS, value=value, state=state)


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of an export that exits 2."""
    capsys.readouterr()
    assert export_main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_study_of_several_objectives_is_refused_before_any_value_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A RuntimeError traceback ("... multi-objective ...") from reading a trial's value, after the data had loaded."""
    db = tmp_path / "multi.db"
    url = f"sqlite:///{db}"
    make_study(url, "multi", [create_trial(params={CLASSIFIER_PARAM: "linear"}, distributions=OURS, values=[0.9, 0.1])],
               directions=["maximize", "minimize"])
    before = digest(db)
    for extra in ([], ["--out", str(tmp_path / "out")], ["--reproduce", "0"]):
        line = refused(["--storage", url, "--study-name", "multi", *extra], capsys)
        assert "study 'multi' has 2 objectives, so it is not a mnist-search study" in line and "nothing was written" in line, line
    assert not (tmp_path / "out").exists() and not default_export_dir("multi").exists() and digest(db) == before


def test_a_foreign_study_is_refused_as_such_before_the_data_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A plain Optuna study was exported as far as "trial 0 has no recorded hyperparameters; it
    never started training", after loading the full data set: not what is wrong with it."""
    db = tmp_path / "foreign.db"
    url = f"sqlite:///{db}"
    x = {"x": FloatDistribution(0, 1)}
    make_study(url, "theirs", [create_trial(params={"x": 0.1 * i}, distributions=x, value=0.5 + 0.1 * i) for i in range(3)],
               direction="maximize")
    before = digest(db)
    for extra in ([], ["--reproduce", "1"]):
        line = refused(["--storage", url, "--study-name", "theirs", *extra], capsys)
        assert "study 'theirs' was not made by mnist-search" in line and f"{CLASSIFIER_PARAM!r} parameter" in line, line
        assert "records no mnist-search settings" in line and "hyperparameters" not in line, line
    assert not default_export_dir("theirs").exists() and digest(db) == before


def test_a_search_study_passes_with_or_without_recorded_settings(tmp_path: Path) -> None:
    """Studies run before settings were recorded export with the defaults: the criterion is the
    trials' classifier parameter, not the settings attribute. A study with no finished trial yet
    is left to the "no completed trial" refusal."""
    from search.export.target import check_made_here

    url = f"sqlite:///{tmp_path / 's.db'}"
    check_made_here(make_study(url, "old", [ours()], direction="maximize"))
    check_made_here(make_study(url, "pruned", [ours(None, TrialState.PRUNED)], direction="maximize"))
    check_made_here(make_study(url, "empty", [], direction="maximize"))
    recorded = make_study(url, "foreign-with-settings", [create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, value=0.5)])
    recorded.set_user_attr(record.SETTINGS, {"study": {"trials": 3}})
    with pytest.raises(ExportError, match="not made by mnist-search") as caught:
        check_made_here(recorded)
    assert "records no" not in str(caught.value)


def test_a_study_with_no_completed_trial_is_refused_before_the_data_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The refusal came after torch was imported and the whole data set loaded (seconds)."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = make_study(url, "pruned", [ours(None, TrialState.PRUNED)], direction="maximize")
    line = refused(["--storage", url, "--study-name", "pruned", "--out", str(tmp_path / "out")], capsys)
    assert "study 'pruned' has no completed trial yet; run python -m search.run first" in line, line
    with pytest.raises(ExportError, match="no completed trial"):
        export_study(study, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_out_inside_an_export_folder_is_refused_and_both_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--out exports/lin/sub was exported into; the next export of lin then refused its own folder
    as holding "files an export did not write (sub)". Another study's export folder alike; a
    folder holding an export folder was refused already (an export folder holds only files)."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(url, "m", [ours()], direction="maximize")
    exports = tmp_path / "exports"
    for name in ("m", "lin"):
        (exports / name).mkdir(parents=True)
        (exports / name / MARKER).write_text(ExportIdentity(name, None).marker_text())
        (exports / name / "metrics.json").write_text("{}")
    listing = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    for inner in (exports / "lin" / "sub", exports / "m" / "sub" / "deeper"):
        line = refused(["--storage", url, "--study-name", "m", "--out", str(inner)], capsys)
        owner = "lin" if "lin" in inner.parts else "m"
        assert f"lies inside {exports / owner}, the export of study {owner!r}" in line and "pass --out a folder outside" in line, line
    line = refused(["--storage", url, "--study-name", "m", "--out", str(exports)], capsys)
    assert "holds files an export did not write (lin, m)" in line, line
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == listing


@pytest.mark.parametrize("out", ["http://u:hunter2@x/out", "s3://bucket/exports"])
def test_an_out_that_is_a_url_is_refused_unquoted_and_nothing_is_made(
    out: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """`--out http://u:hunter2@x/out` exported into ./http:/u:hunter2@x/out and wrote the password
    into the note, metrics.json and report.html; `s3://bucket/exports` into ./s3:/bucket."""
    url = f"sqlite:///{tmp_path / 'ours.db'}"
    make_study(url, "mnist", [ours()], direction="maximize")
    before = hashlib.sha256((tmp_path / "ours.db").read_bytes()).hexdigest()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:  # argparse's error, in one line (search.options.OneLineParser)
        export_main(["--storage", url, "--out", out])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1, err
    line = err.strip()
    assert "--out: is a URL, and the export writes a folder on this machine" in line and "hunter2" not in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.db"]
    assert hashlib.sha256((tmp_path / "ours.db").read_bytes()).hexdigest() == before


def test_an_out_under_the_home_folder_is_that_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out '~/w/x'` made a folder named ~ in the current folder; --data reads ~ as the home folder."""
    from search.export.__main__ import parse_args

    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_args(["--out", "~/w/x"]).out == tmp_path / "w" / "x"
    assert parse_args(["--out", "w/a://b"]).out == Path("w/a://b")  # '://' past a scheme's place: a path, not a URL
