"""Exports of one study racing for its folder: real SQLite studies, real exports, the interleaving forced.

Each test runs the first export (A) up to the point where a second process would overtake it, runs
the second one (B) to its end right there, then lets A finish: A paused after building its folder
while a better trial finished and was exported; A paused after its swap, before it linked its files;
B going in between A's two renames. No sleeps: the order is the test's.

A and B share this process, so B's sweep of what killed exports left (search/export/folder.py) would
take A's folders, named by this process's pid, for a dead process's and clear them: B runs without it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest

import search.progress  # noqa: F401 - bound to pytest's session capture at collection (see tests/test_reexport.py)
from helpers import reader_storage, writer_storage
from search import record
from search.artifact_stores import open_store, recorded_location
from search.data import check_data, load_split
from search.export import exporter
from search.export import folder as export_folder
from search.export.__main__ import main as export_main
from search.export.errors import ExportSuperseded
from search.export.exporter import export_study
from search.export.files import FILES
from search.export.target import default_export_dir
from search.objective import make_objective
from search.paths import checkpoints_dir
from search.run import main as run_main
from search.study import open_study, run_worker

pytestmark = pytest.mark.slow  # trains and exports end to end: the full suite runs it, the fast subset does not

# Trial 0 (the baseline) is a linear model at a tenth of its usual rate for one epoch; trial 1, run
# "by another runner" while A exports, is the usual baseline: three epochs at 3e-3, clearly better.
CONFIG = """
data: {val_size: 200, train_size: 600}
training: {max_epochs: 3, snapshot_steps: [5], promote_factor: null}
pruner: {name: none}
baseline: {learning_rate: 0.0003, batch_size: 64, max_epochs: 1}
first_dnn: {enabled: false}
"""
BETTER = {"classifier": "linear", "learning_rate": 3e-3, "optimizer": "adam", "weight_decay": 1e-6, "batch_size": 64}


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture
def run_args(tmp_path: Path, url: str) -> list[str]:
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    return ["--config", str(config), "--storage", url, "--target-accuracy", "none"]


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="mnist", storage=reader_storage(url))


def run_better_trial(url: str) -> None:
    """Another runner of the study finishes trial 1, better than trial 0."""
    settings = record.study_settings(load(url))
    settings = settings.model_copy(update={"study": settings.study.model_copy(update={"trials": 2})})
    study = open_study(settings, writer_storage(url)).study
    study.enqueue_trial(BETTER, user_attrs={record.MAX_EPOCHS: 3})
    split = load_split(settings.data, check_data(settings.data))
    run_worker(study, make_objective(settings, split, open_store(recorded_location(study)), checkpoints_dir()), settings)
    trials = load(url).trials
    assert [t.number for t in trials] == [0, 1] and trials[1].value > trials[0].value, [t.value for t in trials]


@contextmanager
def second_export() -> Iterator[None]:
    """B, in this process: without the sweep that would take A's folders for a killed export's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_folder, "sweep_leftovers", lambda *_: None)
        yield


def export_cli(url: str) -> int:
    return export_main(["--storage", url, "--study-name", "mnist"])


def held_trial(folder: Path) -> int:
    return json.loads((folder / "metrics.json").read_text())["best_trial"]


def linked(url: str, number: int, name: str) -> dict:
    """The JSON file `name` as linked to trial `number` in the artifact store (what the dashboard shows)."""
    study = load(url)
    metas = [m for m in optuna.artifacts.get_all_artifact_meta(study.trials[number], storage=study._storage) if m.filename == name]
    assert len(metas) == 1, metas
    with open_store(recorded_location(study)).open_reader(metas[0].artifact_id) as reader:
        return json.loads(reader.read())


def hidden(folder: Path) -> list[str]:
    """What an export left beside its folder: staging (.partial) or a previous export moved aside (.old-)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("."))


def once(action: Callable[[], None]) -> Callable[[], bool]:
    """Run `action` the first time only; says whether it ran this time."""
    done: list[bool] = []

    def run() -> bool:
        if done:
            return False
        done.append(True)
        action()
        return True

    return run


def better_trial_exported(url: str) -> None:
    """Meanwhile: trial 1, better, finishes, and `python -m search.export` (B) exports it."""
    run_better_trial(url)
    with second_export():
        assert export_cli(url) == 0


def test_an_export_that_ends_late_leaves_a_better_one_written_meanwhile(
    run_args: list[str], url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runner's export (A) picks trial 0 and is paused with its folder built; meanwhile trial 1
    finishes and `python -m search.export` (B) exports it. A swapped its trial 0 over trial 1: the
    folder held trial 0 while the study's best, the run's line and the dashboard note said trial 1."""
    target = default_export_dir("mnist")

    b_runs, share = once(lambda: better_trial_exported(url)), exporter.share
    monkeypatch.setattr(exporter, "share", lambda staging, owner: (b_runs(), share(staging, owner)))
    code = run_main([*run_args, "--trials", "1"])
    out, err = capsys.readouterr()
    assert re.search(r"^exported trial 1 of study 'mnist' .* 15 files linked to trial 1 ", out, re.MULTILINE), out
    assert code == 0, (out, err)  # not the user's error: the folder holds the best, as an export promises
    assert re.fullmatch(
        rf"note: {re.escape(str(target))} already holds the export of trial 1 \(val_acc 0\.\d{{4}}\), the study's best now; "
        r"this export of trial 0 \(val_acc 0\.\d{4}\) was not swapped in, and nothing was changed",
        out.strip().splitlines()[-1],
    ), out
    assert held_trial(target) == 1 and hidden(target) == []
    study = load(url)
    names = {m.filename for m in optuna.artifacts.get_all_artifact_meta(study.trials[0], storage=study._storage)}
    assert not names & set(FILES), names  # A linked nothing: trial 0 holds only its weights, as the search stored them

    before = target.stat().st_ino
    assert export_cli(url) == 0  # a plain re-export of the same best still replaces the folder
    assert target.stat().st_ino != before and held_trial(target) == 1 and hidden(target) == []


def test_an_export_links_the_files_it_built_though_another_replaced_them_after_its_swap(
    run_args: list[str], url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A swaps trial 0's export in and is paused; B exports the new best, trial 1, over it; A goes on
    to link "its" files: it read them from the folder, so trial 0's artifacts held trial 1's files."""
    assert run_main([*run_args, "--trials", "1", "--no-export"]) == 0
    target = default_export_dir("mnist")

    b_runs, attach = once(lambda: better_trial_exported(url)), exporter.attach_artifacts
    monkeypatch.setattr(exporter, "attach_artifacts", lambda *args: (b_runs(), attach(*args))[1])
    a = export_study(load(url), target)
    assert a.metrics.best_trial == 0 and a.linked_to == "trial 0"
    assert held_trial(target) == 1 and hidden(target) == []  # B's export: of the better trial, and the later one
    assert linked(url, 0, "metrics.json")["best_trial"] == 0 and linked(url, 0, "model.json")["trial"] == 0
    assert linked(url, 1, "metrics.json")["best_trial"] == 1 and linked(url, 1, "model.json")["trial"] == 1


def racing_replace(patch: pytest.MonkeyPatch, when: Callable[[Path, Path], bool], between: Callable[[], None]) -> None:
    """os.replace, with `between` run once: after the first rename `when` picks (A moves its
    previous export aside), or before it (A moves its staging folder into place)."""
    replace, b_runs = os.replace, once(between)

    def racing(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        picked = when(Path(src), Path(dst))
        if picked and Path(src).name.endswith(".partial"):
            b_runs()
        replace(src, dst)
        if picked and not Path(src).name.endswith(".partial"):
            b_runs()

    patch.setattr(os, "replace", racing)


def test_an_export_that_loses_the_swap_to_another_of_the_same_trial_leaves_it_and_nothing_behind(run_args: list[str], url: str) -> None:
    """A moves the previous export aside; B, seeing no folder, puts its own in; A's rename fails.
    It was `error: cannot write the export to ... ([Errno 39] Directory not empty: '.../.mnist.old-...'
    -> '.../mnist')`, with the previous export left hidden beside the folder for good."""
    assert run_main([*run_args, "--trials", "1"]) == 0  # trial 0, exported
    target = default_export_dir("mnist")
    won: list[int] = []

    def meanwhile() -> None:
        with second_export():
            assert export_cli(url) == 0
        won.append(target.stat().st_ino)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(ExportSuperseded) as caught:
        racing_replace(patch, lambda src, dst: src == target and dst.name.startswith(".mnist.old-"), meanwhile)
        export_study(load(url), target)
    assert re.fullmatch(
        rf"another export of this study replaced {re.escape(str(target))} at the same moment, with trial 0 \(val_acc 0\.\d{{4}}\); "
        r"it was left as is, and this export of the same trial was not swapped in",
        str(caught.value),
    ), caught.value
    assert won == [target.stat().st_ino] and held_trial(target) == 0
    assert hidden(target) == []  # neither A's staging nor the previous export it had moved aside


def test_an_export_that_loses_the_swap_to_a_worse_trials_takes_the_folder_after_it(run_args: list[str], url: str) -> None:
    """A exports the best, trial 1; B, which read the study before trial 1 finished, exports trial 0
    and goes in just before A's rename. A replaces it: the folder ends with the better trial."""
    assert run_main([*run_args, "--trials", "1", "--no-export"]) == 0
    run_better_trial(url)
    target = default_export_dir("mnist")

    def meanwhile() -> None:
        stale = {"best": load(url).trials[0], "linear": load(url).trials[0]}
        with second_export(), pytest.MonkeyPatch.context() as patch:
            patch.setattr(exporter, "best_trials", lambda _: stale)
            assert export_cli(url) == 0
        assert held_trial(target) == 0

    with pytest.MonkeyPatch.context() as patch:
        racing_replace(patch, lambda src, dst: dst == target and src.name.endswith(".partial"), meanwhile)
        a = export_study(load(url), target)
    assert a.metrics.best_trial == 1 and held_trial(target) == 1
    assert hidden(target) == []
    assert linked(url, 1, "metrics.json")["best_trial"] == 1


def test_an_export_during_a_larger_run_names_no_stop_of_the_run_before(run_args: list[str], url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`--trials 1` ran to its end; `--trials 8` on the study is training when `python -m search.export`
    runs. The note paired that run's "Budget: 8" with "Stopped: budget of 1 finished trials spent"."""
    from optuna_dashboard import get_note

    from search.export.note import RunSummary, export_summary, write_study_note

    assert run_main([*run_args, "--trials", "1"]) == 0, capsys.readouterr().err
    assert "- **Stopped**: budget of 1 finished trials spent" in get_note(load(url))
    study = optuna.load_study(study_name="mnist", storage=writer_storage(url))  # the --trials 8 run, as it starts:
    stored = study.user_attrs[record.SETTINGS]
    study.set_user_attr(record.SETTINGS, {**stored, "study": {**stored["study"], "trials": 8}})  # its settings recorded,
    running = study.ask()  # and its first trial training
    assert export_cli(url) == 0, capsys.readouterr().err
    note = get_note(load(url))
    assert "- **Budget**: 8 finished trials" in note and "budget of 1" not in note, note
    assert "- **Stopped**: not yet: 1 trial(s) running, 1 of the budget of 8 trials finished" in note, note

    study.tell(running, state=optuna.trial.TrialState.FAIL)  # that run died: nothing runs, and no stop rule holds
    best = load(url).trials[0]
    summary = export_summary(load(url), None, 8, (0, "linear", best.value), (0.9, "folder"))
    assert summary.stopped == "not at its target or budget: 1 of the budget of 8 trials finished, none running"
    assert export_summary(load(url), None, 1, (0, "linear", best.value), (0.9, "folder")).stopped == "budget of 1 finished trials spent"
    write_study_note(study, RunSummary(None, 8, "timeout of 60 s reached", 0, "linear", best.value))  # a run that timed out
    assert export_summary(load(url), None, 8, (0, "linear", best.value), (0.9, "folder")).stopped == "timeout of 60 s reached"


def test_an_export_of_a_new_best_marks_the_earlier_best_trials_export_superseded(run_args: list[str], url: str) -> None:
    """Trial 0's export stayed linked to it, its report titled "Best model of study 'mnist'", with
    nothing saying trial 1 had been exported since. Its links and files stay; a user attribute says so."""
    from search.record import EXPORT_SUPERSEDED as SUPERSEDED

    assert run_main([*run_args, "--trials", "1"]) == 0  # trial 0, exported and linked
    run_better_trial(url)
    assert export_cli(url) == 0
    trials = load(url).trials
    assert held_trial(default_export_dir("mnist")) == 1 and SUPERSEDED not in trials[1].user_attrs
    assert re.fullmatch(r"by trial 1 \(val_acc 0\.\d{4}\), exported since: this trial's linked files are an export made when it was the best",
                        trials[0].user_attrs[SUPERSEDED]), trials[0].user_attrs
    assert linked(url, 0, "metrics.json")["best_trial"] == 0 and linked(url, 1, "metrics.json")["best_trial"] == 1
    assert export_cli(url) == 0 and load(url).trials[0].user_attrs == trials[0].user_attrs  # a re-export: as it was
