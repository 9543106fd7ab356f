"""python -m search.run as a user runs it: a process of its own (tests/preloaded.py) or this one, a real SQLite file, tiny data."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from helpers import reader_storage, run_main
from lightning_modules.errors import UserInputError
from preloaded import run_search
from search.run import main

TINY = """
data: {val_size: 500, train_size: 1000}
training: {max_epochs: 2, snapshot_steps: [5]}
sampler: {n_startup_trials: 2}
pruner: {n_startup_trials: 2}
"""


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path




def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]


def in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess[str]:
    """`search.run.main(argv)` in this process, shaped like a finished subprocess: the same
    checks as the command line, without starting an interpreter per case."""
    code = main(argv)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["search.run", *argv], code, out, err)


def test_a_storage_failure_before_the_study_is_opened_says_nothing_was_created(
    python: str, run_env: dict[str, str], tmp_path: Path
) -> None:
    """A database in a folder the user cannot read said "finished trials are kept. Fix it, then
    resume with" when no study had been opened or created. Root reads any folder: the process
    drops that right (setpriv) to be the user it stands for."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        argv = ["-m", "search.run", "--storage", f"sqlite:///{locked / 's.db'}", "--no-export"]
        result = subprocess.run([*as_a_user(), python, *argv], env=run_env, capture_output=True, text=True, timeout=120, check=False)
    finally:
        locked.chmod(0o700)
    assert_one_line_error(result, "Permission denied", "nothing was created. Fix it, then run again with: python -m search.run --storage")
    assert "finished trials are kept" not in result.stderr and not (locked / "s.db").exists()


def test_a_run_state_folder_it_cannot_write_is_refused_before_the_study_is_created(
    python: str, run_env: dict[str, str], tmp_path: Path
) -> None:
    """A read-only MNIST_SEARCH_HOME was found at the first checkpoint: the study was created,
    its seed recorded, and a rerun with another --seed refused."""
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o500)
    try:
        argv = ["-m", "search.run", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--no-export"]
        result = subprocess.run([*as_a_user(), python, *argv], env={**run_env, "MNIST_SEARCH_HOME": str(home)},
                                capture_output=True, text=True, timeout=120, check=False)
    finally:
        home.chmod(0o700)
    assert_one_line_error(result, f"{home} cannot be written", "checkpoints under it; point MNIST_SEARCH_HOME at a folder you can write")
    assert not (tmp_path / "s.db").exists() and list(home.iterdir()) == []


def as_a_user() -> list[str]:
    """The command prefix that runs a process as a user stands for: root reads and writes any
    folder, so a root process drops that right (setpriv); anyone else needs nothing."""
    import os
    import shutil

    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux) to drop the right to read and write any folder")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def test_an_error_quoting_a_huge_value_stays_a_readable_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--config` with a 100,000-character path printed a 100 KB "one line" error."""
    from lightning_modules.errors import MAX_ERROR_CHARS

    result = in_process(["--config", str(tmp_path / ("a" * 100_000)), "--storage", f"sqlite:///{tmp_path / 's.db'}"], capsys)
    assert_one_line_error(result, "--config", "holds a name of 100000 bytes", "pass a shorter path")
    assert len(result.stderr) < MAX_ERROR_CHARS + 100, len(result.stderr)
    assert not (tmp_path / "s.db").exists()


def test_an_artifact_store_inside_the_export_folder_is_refused_before_the_search(
    isolated_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The export replaces its folder whole, so it refused a folder holding the store's files:
    after the whole search, with the study saved, saying "nothing was changed"."""
    store = isolated_home / "exports" / "q"
    store.mkdir(parents=True)
    result = in_process(["--study-name", "q", "--artifact-store", str(store), "--storage", f"sqlite:///{tmp_path / 's.db'}"], capsys)
    assert_one_line_error(result, f"--artifact-store {store} lies in {store}, the folder this run exports to", "or --no-export")
    assert not (tmp_path / "s.db").exists() and list(store.iterdir()) == []


def test_help_offers_null_only_where_a_flag_takes_it(capsys: pytest.CaptureFixture[str]) -> None:
    """`--storage null` is a file named null, yet the help said "(null: ...)" for it, for
    --artifact-store, --warm-start and --warm-start-storage; --promote-factor does take none."""
    import re

    result = in_process(["--help"], capsys)
    help_text = " ".join(result.stdout.split())
    for flag in ("--storage STORAGE", "--artifact-store ARTIFACT_STORE", "--warm-start STUDY", "--warm-start-storage STORAGE"):
        entry = re.search(re.escape(flag) + r" (.*?) --", help_text)
        assert entry and "(default: " in entry.group(1) and "null" not in entry.group(1), (flag, entry)
    assert "(none: never) (default 3)" in help_text  # --promote-factor none: the word the flag takes


def test_help_names_every_flags_default(capsys: pytest.CaptureFixture[str]) -> None:
    """--timeout, --train-size, --data and --max-cost-ratio said nothing of what leaving them out
    does; --max-cost-ratio and --devices named the config file's null, which the flag spells none, all."""
    import re

    from search.options import RUN_FLAGS

    help_text = " ".join(in_process(["--help"], capsys).stdout.split())
    for flag in RUN_FLAGS:
        entry = re.search(re.escape(f"{flag.name} {flag.key[-1].upper()}") + r" (.*?)(?= --|$)", help_text)
        assert entry and "(default" in entry.group(1) and "null" not in entry.group(1), (flag.name, entry and entry.group(1))
    for shown in ("(default none: no limit)", "(default: every training row)", "(default: mnist)", "(default none: no bound)",
                  "(default all: every visible GPU)"):
        assert shown in help_text, shown


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    result = in_process(["--help"], capsys)
    assert result.returncode == 0
    for option in ("--config", "--trials", "--study-name", "--storage", "--target-accuracy", "--timeout",
                   "--workers", "--seed", "--data", "--data-dir", "--train-size", "--max-epochs", "--no-export"):
        assert option in result.stdout
    assert "total budget of finished trials" in result.stdout


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: {learning_rate: {low: -1, high: 0.1}}\n")
    assert_one_line_error(in_process(["--config", str(bad)], capsys), "space.learning_rate", "positive")
    assert_one_line_error(in_process(["--trials", "0"], capsys), "--trials")
    assert_one_line_error(in_process(["--trials", "many"], capsys), "--trials", "invalid int value")
    assert_one_line_error(in_process(["--target-accuracy", "high"], capsys), "--target-accuracy", "'none'")


def test_unreachable_storage_never_prints_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql+psycopg2://alice:s3cr3t-pw@127.0.0.1:1/test"
    result = in_process(["--storage", url], capsys)
    assert_one_line_error(result, "cannot open storage", "alice:***@127.0.0.1:1")
    assert "s3cr3t-pw" not in result.stdout + result.stderr


def test_bad_data_creates_no_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = in_process(["--storage", f"sqlite:///{tmp_path / 's.db'}", "--data-dir", str(tmp_path / "nowhere")], capsys)
    assert_one_line_error(result, "nowhere", "does not exist")
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("query", ["?mode=ro&uri=true", "?timeout=abc", "?cache=shared"])
def test_sqlite_options_in_the_url_are_refused_before_any_file(
    tmp_path: Path, query: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`?mode=ro&uri=true` put the trials in a new file named "a.db?mode=ro" while saying "a.db";
    `?timeout=abc` was a traceback after creating the file; `file:` URIs a folder tree in the cwd."""
    monkeypatch.chdir(tmp_path)
    for url in (f"sqlite:///{tmp_path / 'a.db'}{query}", f"sqlite:///file:{tmp_path / 'b.db'}{query}"):
        assert_one_line_error(in_process(["--storage", url], capsys), "SQLite options in the URL", "pass the plain path")
    assert list(tmp_path.iterdir()) == []


BAD_INPUTS = (
    ["--trials", "many"],
    ["--bogus-flag"],
    ["--config", "/nowhere/x.yaml"],
    ["--data-dir", "/nowhere"],
    ["--storage", "sqlite://relative-without-slashes"],
    ["--storage", "postgresql://u@host:notaport/db"],
    ["--workers", "100000"],
    ["--storage", "sqlite:///:memory:", "--workers", "2"],
    ["--storage", "sqlite:///a.db?mode=ro&uri=true"],
    ["--warm-start", "earlier", "--warm-start-storage", "sqlite:////nowhere/earlier.db"],
    ["--warm-start-storage", "sqlite:////nowhere/earlier.db"],
    ["--sampler", "bogus"],
    ["--pruner", "halving"],
    ["--max-cost-ratio", "0.5"],
    ["--max-cost-ratio", "cheap"],
)


def test_input_errors_answer_before_torch_is_imported(python: str, run_env: dict[str, str]) -> None:
    """One interpreter runs every case: each is a one-line error with exit 2, and neither torch
    nor Lightning has been imported when it is printed."""
    code = (
        "import sys, json\n"
        "from search.run import main\n"
        f"cases = json.loads({json.dumps(json.dumps(BAD_INPUTS))})\n"
        "codes = [main(argv) for argv in cases]\n"
        "print(json.dumps({'codes': codes, 'heavy': sorted({'torch', 'lightning'} & set(sys.modules))}))\n"
    )
    result = subprocess.run([python, "-c", code], env=run_env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"codes": [2] * len(BAD_INPUTS), "heavy": []}, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(BAD_INPUTS) and all(line.startswith("error: ") for line in errors), result.stderr


def test_a_bad_thread_count_is_one_line_before_openmp_warns(python: str, run_env: dict[str, str], tmp_path: Path) -> None:
    """OMP_NUM_THREADS=0 printed libgomp's "Invalid value" warning (torch imported for the GPU
    check) before the run's own error line."""
    argv = ["--storage", f"sqlite:///{tmp_path / 's.db'}", "--trials", "1", "--no-export"]
    result = subprocess.run([python, "-m", "search.run", *argv], env={**run_env, "OMP_NUM_THREADS": "0"},
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: OMP_NUM_THREADS='0' is not a thread count"), result.stderr
    assert result.stderr.count("\n") == 1 and not list(tmp_path.iterdir()), result.stderr


@pytest.mark.slow
def test_tiny_run_then_resume_to_a_larger_budget(
    python: str, run_env: dict[str, str], tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    # `python -m`, not a fork of a preloaded interpreter: the one single-worker run that ends
    # cleanly, export included, with the interpreter's own exit (tests/preloaded.py says why)
    first = subprocess.run(
        [python, "-m", "search.run", "--config", str(tiny_config), "--storage", url, "--trials", "3", "--target-accuracy", "none"],
        env=run_env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert first.returncode == 0, first.stderr
    assert "created study 'mnist'" in first.stdout and "0 finished trials" in first.stdout
    trial_lines = [line for line in first.stdout.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == 3 and "linear" in trial_lines[0]
    assert "val_acc=" in trial_lines[0] and "epochs=" in trial_lines[0]
    assert "best trial" in first.stdout and "test_acc=" in first.stdout
    assert "python -m search.dashboard --storage" in first.stdout
    assert "optuna-dashboard" not in first.stdout  # only the guarded wrapper: the plain one is writable, no Host check
    home = Path(run_env["MNIST_SEARCH_HOME"])
    metrics = json.loads((home / "exports" / "mnist" / "metrics.json").read_text())
    assert metrics["study"] == "mnist" and 0 < metrics["test_accuracy"] <= 1

    second = run_main(["--config", str(tiny_config), "--storage", url, "--trials", "5", "--target-accuracy", "none", "--no-export"], capsys)
    assert second.returncode == 0, second.stderr
    assert "resumed study 'mnist'" in second.stdout and "3 finished trials" in second.stdout
    assert len([line for line in second.stdout.splitlines() if line.startswith("trial ")]) == 2
    study = optuna.load_study(study_name="mnist", storage=reader_storage(url))
    assert [t.number for t in study.trials] == list(range(5))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    for trial in study.trials:  # what any trial needs to be re-run and plotted
        assert {"seed_training", "seed_sampler", "seed_split", "epochs_run"} <= set(trial.user_attrs)
        assert {"hyperparams", "history"} <= set(trial.system_attrs)  # machine-only: kept off the dashboard's table
        if trial.state == TrialState.COMPLETE:
            assert {"train_seconds", "param_count"} <= set(trial.user_attrs)
        assert len(trial.intermediate_values) == trial.user_attrs["epochs_run"]


@pytest.mark.slow
def test_target_stop_ends_the_run(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = run_main(["--config", str(tiny_config), "--storage", url, "--trials", "20",
                       "--target-accuracy", "0.5", "--no-export", "--study-name", "target"], capsys)
    assert result.returncode == 0, result.stderr
    assert "target reached by trial 0" in result.stdout
    study = optuna.load_study(study_name="target", storage=reader_storage(url))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.WAITING]  # the enqueued first DNN never started
    assert study.trials[0].value >= 0.5
    assert study.trials[0].user_attrs["epochs_run"] == 1  # training itself stopped at the target


@pytest.mark.slow
def test_a_stop_asked_for_once_the_study_is_done_says_so_and_how_to_export(
    tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C as a worker pool left a finished study said "any trial it interrupted resumes...
    Resume with", for a study with nothing to resume, and skipped the export without a word.
    Here the stop is asked for once the study is open, before the run starts its loop, on a study
    already done (a stop before the study is opened creates nothing: test_run_state.py)."""
    import search.trial_loop
    from search.run import StartUp, run
    from search.workers import StopRequest

    url = f"sqlite:///{tmp_path / 's.db'}"
    argv = ["--config", str(tiny_config), "--storage", url, "--trials", "20", "--target-accuracy", "0.5", "--no-export"]
    assert run_main(argv, capsys).returncode == 0
    stop = StopRequest()
    opened = search.trial_loop.start_run

    def then_stop(*args: object, **kwargs: object) -> object:
        started = opened(*args, **kwargs)  # type: ignore[arg-type]
        stop.event.set()
        stop.signum = signal.SIGINT
        return started

    monkeypatch.setattr(search.trial_loop, "start_run", then_stop)
    assert run(argv, stop, StartUp(stop)) == 130
    err = capsys.readouterr().err
    assert "stopped: target reached by trial 0" in err and "Stopped on request before the export" in err, err
    assert "python -m search.export --storage" in err and "Resume with" not in err


def test_a_study_done_with_an_interrupted_trial_still_queued_says_it_is_kept(
    tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ctrl-C queued trial 1 again; the resume met its target with trial 0 and ended without a
    word of the queued trial and its checkpoint, which a later run with another target resumes."""
    from optuna.trial import create_trial

    url = f"sqlite:///{tmp_path / 's.db'}"
    argv = ["--config", str(tiny_config), "--storage", url, "--trials", "20", "--target-accuracy", "0.5", "--no-export"]
    assert run_main(argv, capsys).returncode == 0
    study = optuna.load_study(study_name="mnist", storage=url)
    study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"failed_trial": 1, "retry_history": [1]}))  # as requeue leaves it
    done = run_main(argv, capsys)
    assert done.returncode == 0
    assert "note: 1 interrupted trial(s) stay queued with their checkpoints (trial 1); a run with a larger --trials" in done.stdout, done.stdout


def trial_record(url: str) -> list[tuple[object, ...]]:
    """What a run decided and measured, trial by trial: the part a seed must pin down."""
    study = optuna.load_study(study_name="mnist", storage=reader_storage(url))
    return [(t.number, t.state, t.params, t.value, t.intermediate_values) for t in study.trials]


@pytest.mark.slow
def test_same_seed_same_trials_and_metrics_other_seed_other_trials(
    run_env: dict[str, str], tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reproducibility promise end to end: sampler, pruner, data order and training (TPE,
    the median pruner and epoch-by-epoch values included). Run "a" is a process of its own that
    has trained nothing (forked from one that only imported torch and Lightning) and "b" runs in
    this one, which has trained and sampled before: nothing carried over in a process may change
    what a seed gives."""
    runs = {}
    for name, seed, trials in (("a", "7", 5), ("b", "7", 5), ("c", "8", 4)):  # c: its sampled trials differ already
        url = f"sqlite:///{tmp_path / name}.db"
        argv = ["--config", str(tiny_config), "--storage", url, "--trials", str(trials), "--target-accuracy", "none", "--no-export", "--seed", seed]
        result = run_search(argv, run_env, tmp_path) if name == "a" else run_main(argv, capsys)
        assert result.returncode == 0, result.stderr
        runs[name] = trial_record(url)
    # the baseline, the first DNN (the 2 start-up trials), the first DNN's promotion, 2 from TPE (pruned or not)
    assert len(runs["a"]) == 5
    assert runs["a"] == runs["b"]
    assert runs["a"][1][2] == runs["c"][1][2] == runs["a"][2][2]  # the enqueued first DNN, the same whatever the seed, promoted
    assert len(runs["a"][2][4]) == 6  # the promotion: 3 x max_epochs, every epoch reported
    assert runs["a"][3][2] != runs["c"][3][2]  # the first sampled trial


def test_help_offers_the_validation_fraction(capsys: pytest.CaptureFixture[str]) -> None:
    """The share held out for validation is a flag, with the help the settings give it."""
    result = in_process(["--help"], capsys)
    assert result.returncode == 0
    assert "--val-fraction" in result.stdout
    assert "share of the training rows held out for validation" in " ".join(result.stdout.split())  # help may wrap


def test_a_malformed_csv_is_one_line_exit_2_and_creates_no_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CSV is read before the storage is opened: a bad file leaves nothing behind to resume."""
    good = ",".join(["3", *["0"] * 784])
    bad = tmp_path / "digits.csv"
    bad.write_text(f"{good}\n{good}\n3,{','.join(['0'] * 700)}\n{good}\n")  # row 3 is 84 pixels short
    database = tmp_path / "s.db"
    result = in_process(["--data", str(bad), "--storage", f"sqlite:///{database}", "--no-export"], capsys)
    assert_one_line_error(result, str(bad), "row 3", "701 columns")
    assert result.stdout == ""  # the error is all it says
    assert not database.exists()
    assert not list(tmp_path.glob("s.db*"))  # no -wal or -journal file either


def test_export_help_imports_neither_torch_nor_lightning(python: str, run_env: dict[str, str]) -> None:
    """`python -m search.export --help` answers without loading the model stack (seconds saved)."""
    code = (
        "import sys, json\n"
        "from search.export.__main__ import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "    code = None\n"
        "except SystemExit as exit:\n"
        "    code = exit.code\n"
        "print(json.dumps({'code': code, 'heavy': sorted({'torch', 'lightning', 'lightning.pytorch'} & set(sys.modules))}))\n"
    )
    result = subprocess.run([python, "-c", code], env=run_env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "--reproduce" in result.stdout  # it did print the help
    assert json.loads(lines[-1]) == {"code": 0, "heavy": []}, result.stderr


def test_an_abbreviated_flag_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(in_process(["--max-epoch", "3"], capsys), "--max-epoch")


@pytest.mark.slow
def test_ctrl_c_during_the_export_stops_it_and_keeps_the_study(
    tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C while the run exports: the export used to run on to the end and the run exited 0
    (only the export's evaluation looked at the stop request). Here a real SIGINT reaches the
    runner's handler while the export draws its study plots."""
    import os
    import signal

    from search.export import exporter

    draw = exporter.draw_study_plots

    def draw_then_ctrl_c(*args: object) -> object:
        os.kill(os.getpid(), signal.SIGINT)
        return draw(*args)

    monkeypatch.setattr(exporter, "draw_study_plots", draw_then_ctrl_c)
    url = f"sqlite:///{tmp_path / 's.db'}"
    done = run_main(["--config", str(tiny_config), "--storage", url, "--trials", "2", "--target-accuracy", "none"], capsys)
    assert done.returncode == 128 + signal.SIGINT, done.stderr
    assert "stopped on request during the export" in done.stderr and "Traceback" not in done.stderr
    assert f"Export with: python -m search.export --storage {url} --study-name=mnist" in done.stderr
    assert "exported to" not in done.stdout
    exports = Path(os.environ["MNIST_SEARCH_HOME"]) / "exports"
    assert not exports.exists() or list(exports.iterdir()) == []  # no export, no staging folder left
    study = optuna.load_study(study_name="mnist", storage=reader_storage(url))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]


@pytest.mark.slow
def test_ctrl_c_during_a_standalone_export_leaves_the_previous_one(
    tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m search.export` under Ctrl-C printed a KeyboardInterrupt traceback (SIGTERM, a
    TrainingInterrupted one), and a signal could land inside the folder's swap. Now it stops at
    the export's next step: one line, exit 130, the previous export byte for byte as it was."""
    import os
    import signal

    from search.export import exporter
    from search.export.__main__ import main as export_main

    url = f"sqlite:///{tmp_path / 's.db'}"
    assert run_main(["--config", str(tiny_config), "--storage", url, "--trials", "2", "--target-accuracy", "none"], capsys).returncode == 0
    exports = Path(os.environ["MNIST_SEARCH_HOME"]) / "exports"
    before = {p.relative_to(exports): p.read_bytes() for p in exports.rglob("*") if p.is_file()}
    draw = exporter.draw_study_plots

    def draw_then_ctrl_c(*args: object) -> object:
        os.kill(os.getpid(), signal.SIGINT)
        return draw(*args)

    monkeypatch.setattr(exporter, "draw_study_plots", draw_then_ctrl_c)
    assert export_main(["--storage", url]) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert err.strip() == "stopped on request before the end of the export; the previous export is as it was: run the same command again"
    assert {p.relative_to(exports): p.read_bytes() for p in exports.rglob("*") if p.is_file()} == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


def study_attrs(url: str) -> tuple[int, dict[str, object]]:
    study = optuna.load_study(study_name="mnist", storage=reader_storage(url))
    return len(study.trials), study.user_attrs


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (["--seed", "5"], ("study.seed 0 (this run: 5)",)),
        # the others in the whole suite only: a trained trial each, and the fast subset stays under 90 s loaded
        pytest.param(["--max-epochs", "1"], ("training.max_epochs 2 (this run: 1)",), marks=pytest.mark.slow),
        pytest.param(["--pruner", "none"], ('pruner.name "median" (this run: "none")',), marks=pytest.mark.slow),
        (["--config", "{other_heartbeat}"], ("study.heartbeat_seconds 5 (this run: 15)", "study.stale_after_seconds 20 (this run: 60)")),
        pytest.param(["--config", "{changed_space}"], ('baseline.optimizer "adam" (this run: "sgd")', 'space.optimizer ["adam", ',
                     '(this run: ["sgd"])'), marks=pytest.mark.slow),
    ],
    ids=["seed", "epochs", "pruner", "heartbeat", "choice-list"],
)
def test_a_resume_with_other_trial_settings_is_refused_and_changes_nothing(
    change: list[str], words: tuple[str, ...], tmp_path: Path, tiny_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A changed choice list failed a trial with Optuna's "CategoricalDistribution does not support
    dynamic value space" traceback and recorded the refused run's settings; any other change (seed,
    epochs, pruner, space) was mixed into the study without a word."""
    changed_space = tmp_path / "changed.yaml"
    changed_space.write_text(TINY + "space: {optimizer: [sgd]}\nbaseline: {optimizer: sgd}\nfirst_dnn: {enabled: false}\n")
    other_heartbeat = tmp_path / "heartbeat.yaml"  # another machine's liveness rule: it failed this one's live trials as dead
    other_heartbeat.write_text(TINY + "study: {heartbeat_seconds: 15, stale_after_seconds: 60}\n")
    url = f"sqlite:///{tmp_path / 's.db'}"
    base = ["--config", str(tiny_config), "--storage", url, "--target-accuracy", "none", "--no-export", "--promote-factor", "none"]
    assert in_process([*base, "--trials", "1"], capsys).returncode == 0
    before = study_attrs(url)
    argv = [*base, "--trials", "3", *[a.format(changed_space=changed_space, other_heartbeat=other_heartbeat) for a in change]]
    result = in_process(argv, capsys)
    assert_one_line_error(result, "records other settings than this run's", *words, "pass a new --study-name")
    assert study_attrs(url) == before


@pytest.mark.slow  # a trial trains
def test_successive_halving_whose_first_rung_is_the_last_epoch_says_it_never_prunes(tmp_path: Path, tiny_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--max-epochs 2 with --pruner successive_halving ran without a word and never pruned (its
    first rung, epoch index 1, is the last, which is only reported): the first line's note says so."""
    argv = ["--config", str(tiny_config), "--storage", f"sqlite:///{tmp_path / 's.db'}", "--no-export", "--trials", "1",
            "--max-epochs", "2", "--pruner", "successive_halving", "--target-accuracy", "none"]
    result = in_process(argv, capsys)
    assert result.returncode == 0, result.stderr
    assert "note: successive_halving never prunes here: its first rung is the last epoch (index 1)" in result.stdout, result.stdout
    resumed = in_process([*argv[:5], "--trials", "2", *argv[7:]], capsys)  # a study made so resumes, saying it again
    assert resumed.returncode == 0 and "never prunes here" in resumed.stdout, resumed.stdout + resumed.stderr


@pytest.mark.slow  # two worker processes, each importing Lightning
def test_a_resume_may_change_the_budget_target_timeout_and_workers(tmp_path: Path, tiny_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    base = ["--config", str(tiny_config), "--storage", url, "--no-export", "--promote-factor", "none"]
    assert in_process([*base, "--trials", "1", "--target-accuracy", "none"], capsys).returncode == 0
    result = in_process([*base, "--trials", "2", "--workers", "2", "--target-accuracy", "0.999", "--timeout", "600"], capsys)
    assert result.returncode == 0, result.stderr
    assert study_attrs(url)[0] == 2
    # one trial left to start: the second worker, which only imported torch to find nothing to do, is not started
    assert "note: starting 1 of the 2 workers: the budget has 1 trial(s) left to finish" in result.stdout, result.stdout


def test_a_new_study_records_its_settings_and_data_before_its_uid(tmp_path: Path, tiny_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run that opens a study another run is creating waits for its uid, then checks itself
    against the study's data and settings: they were written after the uid, so a racing run with
    other settings or data could find none and join."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 's.db'}"
    assert in_process(["--config", str(tiny_config), "--storage", url, "--trials", "1", "--no-export"], capsys).returncode == 0
    with sqlite3.connect(tmp_path / "s.db") as db:
        order = [key for (key,) in db.execute("SELECT key FROM study_user_attributes ORDER BY study_user_attribute_id")]
    assert order.index("settings") < order.index("uid") and order.index("data") < order.index("uid"), order


@pytest.mark.slow  # waits out a 2-second stale limit
def test_a_budget_held_by_a_stopped_runs_trial_waits_for_it_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A resume right after a crash printed "nothing to run: budget ... spent; pass a larger --trials",
    then waited and retried the crashed run's trial: the trial still marked running holds the budget."""
    from helpers import writer_storage

    config = tmp_path / "c.yaml"
    config.write_text(TINY + "study: {heartbeat_seconds: 1, stale_after_seconds: 2}\n")
    url = f"sqlite:///{tmp_path / 's.db'}"
    argv = ["--config", str(config), "--storage", url, "--target-accuracy", "none", "--no-export", "--promote-factor", "none"]
    assert in_process([*argv, "--trials", "1"], capsys).returncode == 0
    optuna.load_study(study_name="mnist", storage=writer_storage(url)).ask()  # a run killed as its trial began
    result = in_process([*argv, "--trials", "2"], capsys)
    assert result.returncode == 0, result.stderr
    assert "nothing to run" not in result.stdout
    assert "taken by finished trials and 1 marked running" in result.stdout and "silent 2 s" in result.stdout, result.stdout
    states = [t.state for t in optuna.load_study(study_name="mnist", storage=reader_storage(url)).trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE], states


@pytest.mark.slow  # seconds of training or waiting: the fast subset stays under 90 s on a loaded machine
def test_the_choice_lists_trials_were_sampled_from_outrank_a_record_a_crashed_resume_left(
    tmp_path: Path, tiny_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An older version recorded a resume's settings before Optuna crashed on its reordered choice
    list: the command that created the study was then refused, and the recorded one accepted, to
    crash again with Optuna's traceback."""
    from helpers import writer_storage

    url = f"sqlite:///{tmp_path / 's.db'}"
    base = ["--config", str(tiny_config), "--storage", url, "--target-accuracy", "none", "--no-export", "--promote-factor", "none"]
    assert in_process([*base, "--trials", "1"], capsys).returncode == 0
    study = optuna.load_study(study_name="mnist", storage=writer_storage(url))
    recorded = study.user_attrs["settings"]
    reordered = list(reversed(recorded["space"]["optimizer"]))
    recorded["space"]["optimizer"] = reordered  # what the crashed resume recorded
    study.set_user_attr("settings", recorded)
    broken = tmp_path / "broken.yaml"
    broken.write_text(TINY + f"space: {{optimizer: {json.dumps(reordered)}}}\n")
    assert_one_line_error(in_process([*base, "--config", str(broken), "--trials", "2"], capsys), "space.optimizer", "(this run: [")
    assert in_process([*base, "--trials", "2"], capsys).returncode == 0  # the command that created it


def test_a_long_setting_that_differs_is_shown_where_it_differs() -> None:
    from search.study_identity import settings_differences

    sizes = list(range(16, 200, 8))
    (phrase,) = settings_differences({"space": {"batch_size": sizes}}, {"space": {"batch_size": [*sizes[:-1], 999]}})
    assert "192]" in phrase and "999]" in phrase, phrase  # cut at their start, both read "[16, 24, 32, ..."


@pytest.mark.slow  # waits out a 2-second stale limit
def test_a_run_whose_creator_stalled_takes_the_study_over_and_the_creator_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A creator paused between creating the study and recording its settings and uid let another
    run (with other settings) in after 5 s: both then wrote, the creator its baseline, seed scheme
    and settings over the other's trials, and each printed a first line that was untrue."""
    from helpers import writer_storage
    from search import record
    from search.settings_file import load_settings
    from search.study import open_study

    config = tmp_path / "c.yaml"
    config.write_text(TINY + "study: {heartbeat_seconds: 1, stale_after_seconds: 2}\n")
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="mnist", storage=writer_storage(url), direction="maximize")  # the creator stalls here
    result = in_process(["--config", str(config), "--storage", url, "--target-accuracy", "none", "--no-export", "--trials", "2", "--seed", "7"], capsys)
    assert result.returncode == 0, result.stderr
    taken = optuna.load_study(study_name="mnist", storage=reader_storage(url))
    assert taken.user_attrs[record.SEED_SCHEME] == "independent" and taken.user_attrs[record.SETTINGS]["study"]["seed"] == 7
    assert record.UID in taken.user_attrs
    assert record.MAX_EPOCHS in taken.trials[0].user_attrs and taken.trials[0].params["classifier"] == "linear"  # set up as its creator would have: the baseline queued first

    created = optuna.create_study

    def create_then_stall(*args: object, **kwargs: object) -> optuna.Study:
        study = created(*args, **kwargs)  # type: ignore[arg-type]
        study.set_user_attr(record.UID, "taken-over")  # another run, while this one was paused
        return study

    monkeypatch.setattr(optuna, "create_study", create_then_stall)
    settings = load_settings(None, {"study": {"name": "second", "storage": url, "stale_after_seconds": 2, "heartbeat_seconds": 1}})
    with pytest.raises(UserInputError, match="was taken over by another run while this one was creating it"):
        open_study(settings, writer_storage(url), created_with={record.SETTINGS: {"mine": True}})
    monkeypatch.undo()
    second = optuna.load_study(study_name="second", storage=reader_storage(url))
    assert second.trials == [] and record.SETTINGS not in second.user_attrs  # no baseline, no settings of the stalled run
