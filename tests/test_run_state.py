"""Run state on disk: checkpoints never cross studies, names never leave their folder, read-only
commands change nothing, and the limits and extras the README promises hold."""

from __future__ import annotations

import hashlib
import sqlite3
import tomllib
from contextlib import closing
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import search.progress  # noqa: F401 - binds the reporter before any test redirects stdout
from helpers import writer_storage
from lightning_modules.errors import UserInputError
from search import record, run
from search.dashboard import main as dashboard_main
from search.export.__main__ import main as export_main
from search.paths import checkpoints_dir
from search.resume import checkpoint_path
from search.run import main as run_main
from search.settings_file import load_settings
from search.sqlite_file import foreign_tables
from search.study import open_study

ROOT = Path(__file__).resolve().parents[1]
TINY = "data: {val_size: 100, train_size: 300}\ntraining: {max_epochs: 2, snapshot_steps: [5]}\npruner: {name: none}\n"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_checkpoint_left_by_a_deleted_study_of_the_same_name_is_never_resumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    url = f"sqlite:///{tmp_path / 's.db'}"
    settings = load_settings(config, {"study": {"storage": url}})
    study = open_study(settings, writer_storage(url)).study
    # What a killed run of an earlier "mnist" study left: its own folder, and this study's path too.
    planted = [checkpoints_dir() / "mnist" / "trial-1.ckpt", checkpoint_path(checkpoints_dir(), study, 1)]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"a checkpoint of some other study's trial 1")
    assert run_main(["--config", str(config), "--storage", url, "--trials", "2", "--target-accuracy", "none", "--no-export"]) == 0
    trials = optuna.load_study(study_name="mnist", storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert record.RESUMED_FROM_EPOCH not in trials[1].user_attrs  # trained from epoch 0
    assert len(trials[1].intermediate_values) == 2
    assert planted[0].read_bytes().startswith(b"a checkpoint")  # another study's file: left alone
    assert not planted[1].parent.exists()  # this study's folder, empty once the study is done: every study left one


def test_working_checkpoints_no_attempt_will_resume_are_cleared(tmp_path: Path) -> None:
    """A trial that died here and was retried on another machine left its file here for good."""
    from optuna.trial import create_trial

    from search.optuna_compat import set_trial_system_attr
    from search.resume import clear_local_checkpoints

    study = optuna.create_study(study_name="mnist", storage=f"sqlite:///{tmp_path / 's.db'}")
    study.set_user_attr(record.UID, "abc123")
    running = study.ask()  # key 1, still training here or elsewhere
    set_trial_system_attr(running, record.CHECKPOINT_KEY, 1)
    study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={record.CHECKPOINT_KEY: 2}))  # a queued retry
    files = {key: checkpoint_path(tmp_path, study, key) for key in (0, 1, 2, 9)}  # 0 and 9: finished, here or elsewhere
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"checkpoint")
    assert clear_local_checkpoints(study, tmp_path) == 2
    assert sorted(key for key, path in files.items() if path.exists()) == [1, 2]
    study.tell(running, 0.5)
    study.tell(study.ask(), 0.5)  # the retry, popped and finished
    assert clear_local_checkpoints(study, tmp_path) == 2 and not files[0].parent.exists()


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "..", "a/b", "名前"])
def test_a_study_name_becomes_a_checkpoint_folder_inside_the_checkpoints(name: str, tmp_path: Path) -> None:
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path / 'n.db'}")
    study.set_user_attr(record.UID, "0123456789ab")
    path = checkpoint_path(checkpoints_dir(), study, 3).resolve()
    assert path.parent.parent == checkpoints_dir().resolve()
    if name == "名前":
        assert path.parent.name.startswith("名前")  # letters of any script are kept


@pytest.mark.parametrize(("journal", "table", "shown"), [
    ("delete", "orders", "orders"),
    ("wal", "orders", "orders"),
    # named as one of Optuna's tables: taken for a study database being created, given Optuna's
    # other tables and switched to WAL, then the first trial failed ("no such column")
    ("delete", "trials", "trials"),
    ("delete", "studies", "studies"),
])
def test_run_export_and_dashboard_leave_a_foreign_sqlite_file_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], journal: str, table: str, shown: str
) -> None:
    """An application's database named by mistake: the search adds none of its tables to it
    (it did, and switched the file to WAL, before the runner looked), export and dashboard read
    nothing from it, and none leaves a -wal or -shm beside it (a read-only open of a WAL file did)."""
    foreign = tmp_path / "app.db"
    with closing(sqlite3.connect(foreign)) as connection:  # closed: the last connection to a WAL file removes its -wal
        connection.execute(f"PRAGMA journal_mode={journal}")
        connection.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, total REAL)")
        connection.execute(f"INSERT INTO {table} (total) VALUES (9.5)")
        connection.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]
    before = digest(foreign)
    url = f"sqlite:///{foreign}"
    assert run_main(["--storage", url, "--trials", "1", "--no-export"]) == 2
    assert f"holds another application's tables ({shown}) and no Optuna study" in one_line_error(capsys)
    assert export_main(["--storage", url]) == 2
    assert "not an Optuna study database" in one_line_error(capsys)
    assert dashboard_main(["--storage", url]) == 2
    assert "not an Optuna study database" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]  # no -wal, -shm, journal or run folder left
    assert digest(foreign) == before
    with closing(sqlite3.connect(foreign)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == journal  # never switched to WAL


STUDY = ["studies", "trials", "version_info"]


@pytest.mark.parametrize(("statements", "foreign"), [
    (["orders"], ["orders"]),
    (["version_info", "patients"], ["patients", "version_info"]),  # one of Optuna's names is not a study
    (["trials", "patients"], ["patients", "trials"]),
    (["studies"], []),  # a study database another process is creating right now
    ([*STUDY, "my_notes"], []),  # a study database with a table of the user's
    ([*STUDY, "CREATE VIEW best AS SELECT 1"], []),  # ... or a view
    ([], []),
    # an application's, although every table is named as one of Optuna's
    (["CREATE TABLE trials (id INTEGER, patient TEXT)"], ["trials"]),
    (["CREATE TABLE studies (id INTEGER)", "version_info"], ["studies", "version_info"]),
    ([*STUDY[:2], "CREATE TABLE version_info (v TEXT)"], [*STUDY[:2], "version_info"]),
    (["CREATE VIEW v AS SELECT 1"], ["view v"]),
    (["studies", "CREATE TRIGGER t AFTER INSERT ON studies BEGIN SELECT 1; END"], ["studies", "trigger t"]),
    (["PRAGMA user_version = 7"], ["user_version 7"]),
])
def test_a_file_is_a_study_database_only_with_optunas_tables(tmp_path: Path, statements: list[str], foreign: list[str]) -> None:
    """A bare name is a table of that name with Optuna's key column for it (and `id` otherwise)."""
    from search.sqlite_file import OPTUNA_KEYS

    path = tmp_path / "f.db"
    with closing(sqlite3.connect(path)) as connection:
        for statement in statements:
            bare = " " not in statement
            connection.execute(f"CREATE TABLE {statement} ({OPTUNA_KEYS.get(statement, 'id')} INTEGER)" if bare else statement)
        connection.commit()
    assert foreign_tables(path) == foreign


def test_a_study_file_of_this_schema_is_switched_to_wal_once_optuna_accepts_it(tmp_path: Path) -> None:
    """A file plain Optuna made (rollback journal) is switched after the open; a new file before it."""
    from search.storage import open_study_storage

    made = tmp_path / "made.db"
    optuna.create_study(study_name="mnist", storage=f"sqlite:///{made}")
    for path in (made, tmp_path / "new.db"):
        open_study_storage(f"sqlite:///{path}", heartbeat_seconds=5, grace_seconds=20).engine.dispose()
        with sqlite3.connect(path) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert optuna.load_study(study_name="mnist", storage=f"sqlite:///{made}").trials == []


def test_a_foreign_file_left_mid_transaction_is_still_found(tmp_path: Path) -> None:
    """A crashed writer's hot journal makes the read-only open fail: the check reads on, it
    does not wave the file through."""
    import subprocess
    import sys

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE orders (id INTEGER)")
    crash = (  # a writer killed mid-transaction leaves app.db-journal behind
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA cache_size=1'); c.execute('BEGIN')\n"
        "c.execute('CREATE TABLE big (x)'); c.executemany('INSERT INTO big VALUES (?)', [('x' * 500,)] * 2000)\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", crash, str(path)], check=True, timeout=60)
    assert (tmp_path / "app.db-journal").exists()
    with pytest.raises(sqlite3.OperationalError):  # what the read-only open meets
        sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True).execute("SELECT name FROM sqlite_master").fetchall()
    # a read-only command does not roll the crashed writer's journal back: it says it cannot read it
    assert dashboard_main(["--storage", f"sqlite:///{path}"]) == 2
    assert (tmp_path / "app.db-journal").exists()
    assert foreign_tables(path) == ["orders"]  # the search's check does SQLite's own recovery, then refuses


def test_a_file_named_through_a_symbolic_link_is_read_with_its_wal(tmp_path: Path) -> None:
    """SQLite keeps the -wal beside the real file: looking for it beside the link made the
    immutable read miss tables that were still only in the WAL."""
    real, link = tmp_path / "real.db", tmp_path / "link.db"
    link.symlink_to(real)
    writer = sqlite3.connect(real)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("CREATE TABLE orders (id INTEGER)")
        writer.commit()  # in real.db-wal until a checkpoint; the writer stays open, as a live one would
        assert (tmp_path / "real.db-wal").stat().st_size > 0
        assert foreign_tables(link) == ["orders"]
    finally:
        writer.close()


def test_export_of_a_mistyped_storage_path_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_main(["--storage", f"sqlite:///{tmp_path / 'typo' / 'dir' / 'x.db'}"]) == 2
    assert "no study database" in one_line_error(capsys)
    assert not (tmp_path / "typo").exists()


def test_workers_are_bounded_by_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "usable_cores", lambda: 2)
    run.check_workers(load_settings(None, {"study": {"workers": 2 * run.MAX_WORKERS_PER_CORE}}))
    with pytest.raises(UserInputError, match="at most 8 .4 per core"):
        run.check_workers(load_settings(None, {"study": {"workers": 2 * run.MAX_WORKERS_PER_CORE + 1}}))


def test_the_postgres_extra_installs_the_driver_of_the_readmes_url() -> None:
    """The README shows postgresql://; SQLAlchemy picks that scheme's driver, the extra must install it."""
    from sqlalchemy.engine import make_url

    driver = make_url("postgresql://user@host/db").get_dialect().driver
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["postgres"]
    names = {dep.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for dep in extra}
    assert driver in names or f"{driver}-binary" in names, (driver, extra)


class _Planted:
    """Unpickling this runs code: it creates the file named in its argument."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def test_a_pickle_planted_as_a_checkpoint_is_never_run(tmp_path: Path) -> None:
    import pickle

    from lightning_modules.training import read_checkpoint_summary

    marker = tmp_path / "code-ran"
    planted = tmp_path / "trial-1.ckpt"
    planted.write_bytes(pickle.dumps({"history": [], "payload": _Planted(marker)}))
    with pytest.raises(pickle.UnpicklingError):
        read_checkpoint_summary(planted)
    assert not marker.exists()


def test_a_pickle_planted_as_a_model_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pickle

    from search.predict import main as predict_main

    marker = tmp_path / "code-ran"
    planted = tmp_path / "model.safetensors"
    planted.write_bytes(pickle.dumps(_Planted(marker)))
    digit = tmp_path / "digit.csv"
    digit.write_text(",".join(["0"] * 784) + "\n")
    assert predict_main(["--model", str(planted), "--csv", str(digit)]) == 2
    one_line_error(capsys)
    assert not marker.exists()


def test_an_empty_home_variable_is_the_default_home_not_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`MNIST_SEARCH_HOME=` (set, empty) put the database, artifacts and checkpoints in the
    current folder, where the repository's .gitignore does not cover them."""
    from search.paths import runtime_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MNIST_SEARCH_HOME", "")
    assert runtime_dir() == tmp_path / "storage"


def test_checking_a_study_file_keeps_this_processs_locks_on_it(tmp_path: Path) -> None:
    """The check read the file's header with open(): closing that descriptor dropped every POSIX
    lock the process held on the file, its live SQLite connections' included, so a reader in
    another process took itself for the last connection and deleted the -wal and -shm under a
    running search, which then failed with "disk I/O error" (a second open of the storage in the
    same process checks the file again)."""
    import subprocess
    import sys

    from search.sqlite_file import check_location

    path = tmp_path / "s.db"
    live = sqlite3.connect(path)
    try:
        live.execute("PRAGMA journal_mode=WAL")
        live.execute("CREATE TABLE t (x)")
        live.execute("INSERT INTO t VALUES (1)")
        live.commit()
        assert (tmp_path / "s.db-wal").exists()
        check_location(path)
        reader = f"import sqlite3; c = sqlite3.connect({str(path)!r}); c.execute('SELECT * FROM t').fetchall(); c.close()"
        subprocess.run([sys.executable, "-c", reader], check=True, timeout=60)
        assert (tmp_path / "s.db-wal").exists()  # the reader knew it was not the last connection
    finally:
        live.close()


@pytest.mark.parametrize("moment", ["checks", "data"])
def test_a_stop_request_at_start_up_creates_nothing(
    moment: str, tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C 0.5-3 s after launch (the checks, torch's import, the data) went on to create the
    database and the study, with its baseline queued, then exited 130 as if it had been running."""
    import os
    import signal

    import search.run
    import search.trial_loop

    def ctrl_c(real):  # noqa: ANN001, ANN202 - the step, then a real SIGINT to this process (main's handler takes it)
        def step(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            result = real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGINT)
            return result
        return step

    if moment == "checks":
        monkeypatch.setattr(search.run, "check_export_target", ctrl_c(search.run.check_export_target))
    else:
        monkeypatch.setattr(search.trial_loop, "load_split", ctrl_c(search.trial_loop.load_split))
    database = tmp_path / "study.db"
    assert search.run.main(["--storage", f"sqlite:///{database}", "--train-size", "300", "--val-size", "100"]) == 130
    err = capsys.readouterr().err
    assert "interrupted before the search started; nothing was created. Run again with: python -m search.run" in err, err
    assert not database.exists()
