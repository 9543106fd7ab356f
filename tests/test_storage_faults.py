"""Storage faults on real file systems and a real database server: read-only, full, restarted.

The read-only and full disks are small tmpfs mounts (root can mount here and in CI); the
PostgreSQL test stops and restarts a server of its own, started from the installed binaries.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import queue
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from helpers import reader_storage, run_main
from preloaded import run_search
from search.storage import StorageError, open_study_storage

pytestmark = pytest.mark.slow

CONFIG = """
study: {heartbeat_seconds: 1, stale_after_seconds: 3, target_accuracy: null}
data: {val_size: 300, train_size: 600}
training: {max_epochs: 2, snapshot_steps: [5]}
pruner: {name: none}
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run(env: dict[str, str], config: Path, url: str, *extra: str, logs: Path) -> subprocess.CompletedProcess[str]:
    """The run that meets the fault: a process of its own (forked with torch and Lightning imported)."""
    return run_search(["--config", str(config), "--storage", url, "--no-export", *extra], env, logs)


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0]


def finished_trials(url: str) -> list[tuple[int, float | None]]:
    """Read the finished trials and close the connection (an open file keeps a mount busy)."""
    storage = reader_storage(url)
    try:
        study = optuna.load_study(study_name="mnist", storage=storage)
        return [(t.number, t.value) for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    finally:
        storage.engine.dispose()


def test_read_only_database_is_a_clear_error_and_keeps_the_trials(run_env: dict[str, str], tmp_path: Path, small_disk: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    url = f"sqlite:///{small_disk / 's.db'}"
    assert run(run_env, config, url, "--trials", "2", logs=tmp_path / "first").returncode == 0
    before = finished_trials(url)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = run(run_env, config, url, "--trials", "4", logs=tmp_path / "read-only")
    assert_one_line_exit_2(result, str(small_disk / "s.db"))
    assert "read-only" in result.stderr
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert finished_trials(url) == before


def test_full_disk_mid_run_is_a_clear_error_and_keeps_the_trials(
    run_env: dict[str, str], tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    env = dict(run_env, MNIST_SEARCH_HOME=str(small_disk / "home"))  # checkpoints and artifacts fill it too
    monkeypatch.setenv("MNIST_SEARCH_HOME", env["MNIST_SEARCH_HOME"])  # for the runs in this process (before and after the fault)
    url = f"sqlite:///{small_disk / 's.db'}"
    argv = ["--config", str(config), "--storage", url, "--no-export"]
    assert run_main([*argv, "--trials", "2"], capsys).returncode == 0
    before = finished_trials(url)
    filler = small_disk / "filler"
    with filler.open("wb") as out:  # leave a few kB: enough to open the study, not to run trials
        free = shutil.disk_usage(small_disk).free
        out.write(b"\0" * max(0, free - 48 * 1024))
    result = run(env, config, url, "--trials", "30", logs=tmp_path / "full")
    assert_one_line_exit_2(result, "resume with")
    assert "full" in result.stderr or "No space" in result.stderr
    filler.unlink()
    after = finished_trials(url)
    assert after[: len(before)] == before  # nothing finished was lost
    resumed = run_main([*argv, "--trials", str(len(after) + 1)], capsys)
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_checkpoint_disk_hands_the_trial_back_and_names_the_file(
    workers: int, run_env: dict[str, str], tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The run state on a full disk, the database on another. The error named Lightning's temporary
    file in /tmp, which had room; each worker printed a traceback; the trial was failed for good
    ("not retried"), so a resume never ran it; and most of a checkpoint stayed behind as a hidden
    .tmp file no later run looks for."""
    from search import record
    from search.progress import trial_line

    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    home = small_disk / "home"
    monkeypatch.setenv("MNIST_SEARCH_HOME", str(home))  # also for the resume in this process
    url = f"sqlite:///{tmp_path / 's.db'}"
    argv = ["--config", str(config), "--storage", url, "--no-export", "--promote-factor", "none"]
    with (small_disk / "filler").open("wb") as out:  # a few kB: no checkpoint fits
        out.write(b"\0" * max(0, shutil.disk_usage(small_disk).free - 16 * 1024))
    result = run_search([*argv, "--trials", "3", "--workers", str(workers)], dict(run_env, MNIST_SEARCH_HOME=str(home)), tmp_path / "full")
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert all(line.startswith(("error: ", "warning: ")) for line in lines), result.stderr
    assert f"cannot write {home}/" in result.stderr and "(No space left on device)" in result.stderr, result.stderr
    assert not [p for p in home.rglob("*") if p.name.endswith(".tmp")]
    (small_disk / "filler").unlink()
    handed_back = [t for t in optuna.load_study(study_name="mnist", storage=reader_storage(url)).trials if t.user_attrs.get(record.DIED)]
    assert handed_back and {t.user_attrs[record.DIED] for t in handed_back} == {record.DISK_ERROR}
    resumed = run_main([*argv, "--trials", "3"], capsys)
    assert resumed.returncode == 0, resumed.stderr
    trials = optuna.load_study(study_name="mnist", storage=reader_storage(url)).trials
    retried = {record.retried_from(t) for t in trials if t.state == TrialState.COMPLETE}
    assert {t.number for t in handed_back} <= retried  # each trial the disk stopped was run to the end
    assert " failed: stopped by a full or read-only disk; retried as trial " in trial_line(trials[handed_back[0].number], trials)


def test_a_store_write_on_a_full_disk_names_the_artifact_and_leaves_nothing(small_disk: Path) -> None:
    """A write that failed for space named no file, so the run said "cannot write run state"."""
    import errno
    import io

    from search.artifact_stores import AtomicFolderStore

    store = AtomicFolderStore(small_disk / "artifacts")
    with (small_disk / "filler").open("wb") as out:
        out.write(b"\0" * max(0, shutil.disk_usage(small_disk).free - 16 * 1024))
    with pytest.raises(OSError) as raised:
        store.write("checkpoints/s-1/trial-0.ckpt", io.BytesIO(b"\1" * (1 << 20)))
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(store.path_of("checkpoints/s-1/trial-0.ckpt"))
    assert [p.name for p in (small_disk / "artifacts").rglob("*") if p.is_file()] == []


def test_a_full_disk_after_training_hands_the_trial_back_too(tmp_path: Path, tiny_split) -> None:  # noqa: ANN001
    """Only fit() handed a trial back: a full disk when its best weights were stored (right after
    training) or when a retry fetched its checkpoint failed the trial for good, "not retried"."""
    import errno

    from helpers import writer_storage
    from search import record
    from search.artifact_stores import AtomicFolderStore
    from search.objective import make_objective
    from search.settings_file import load_settings
    from search.study import open_study, run_worker

    class WeightsOnAFullDisk(AtomicFolderStore):
        """A real folder store whose disk has room for checkpoints but not for weights."""

        def write(self, artifact_id: str, content_body) -> None:  # noqa: ANN001
            if not artifact_id.startswith("checkpoints/"):
                raise OSError(errno.ENOSPC, "No space left on device", str(self.path_of(artifact_id)))
            super().write(artifact_id, content_body)

    settings = load_settings(None, {"study": {"name": "w", "trials": 1, "target_accuracy": None}, "data": {"val_size": 200, "train_size": 600},
                                    "training": {"max_epochs": 1, "promote_factor": None}, "first_dnn": {"enabled": False}})
    study = open_study(settings, writer_storage(f"sqlite:///{tmp_path / 'w.db'}")).study
    objective = make_objective(settings, tiny_split, WeightsOnAFullDisk(tmp_path / "artifacts"), tmp_path / "checkpoints")
    with pytest.raises(OSError, match="No space left"):
        run_worker(study, objective, settings)
    first, retry = study.trials
    assert first.state == TrialState.FAIL and first.user_attrs[record.DIED] == record.DISK_ERROR
    assert retry.state == TrialState.WAITING and record.retried_from(retry) == 0
    assert list((tmp_path / "checkpoints").rglob("*.ckpt"))  # kept for the retry


def test_a_database_failure_under_a_trial_hands_it_back(tmp_path: Path, tiny_split, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A database locked past its busy timeout under a trial (another writer, a dropped connection)
    failed the trial for good once the database answered again: a fully trained trial was "not
    retried", and its checkpoint stayed in the store. Handed back like a full disk's, it is queued
    again. Here another connection takes the write lock as the first epoch's checkpoint is stored,
    and lets go just before the hand-back writes."""
    from search import objective as objective_module
    from search import record
    from search.artifact_stores import AtomicFolderStore
    from search.failures import storage_failure
    from search.objective import make_objective
    from search.settings_file import load_settings
    from search.study import open_study, run_worker

    path = tmp_path / "locked.db"
    locker = sqlite3.connect(path, isolation_level=None)

    class LockedAfterTheCheckpoint(AtomicFolderStore):
        """A real folder store; once the first checkpoint is stored, another writer holds the database."""

        def write(self, artifact_id: str, content_body) -> None:  # noqa: ANN001
            super().write(artifact_id, content_body)
            if artifact_id.startswith("checkpoints/") and not locker.in_transaction:
                locker.execute("BEGIN EXCLUSIVE")

    requeue = objective_module.requeue

    def after_the_lock(trial, died):  # noqa: ANN001, ANN202 - the other writer lets go before the hand-back writes
        if locker.in_transaction:
            locker.execute("COMMIT")
        requeue(trial, died=died)

    monkeypatch.setattr(objective_module, "requeue", after_the_lock)
    settings = load_settings(None, {"study": {"name": "l", "trials": 1, "target_accuracy": None}, "data": {"val_size": 200, "train_size": 600},
                                    "training": {"max_epochs": 2, "promote_factor": None}, "first_dnn": {"enabled": False}})
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 0.5}})  # a short busy timeout
    study = open_study(settings, storage).study
    objective = make_objective(settings, tiny_split, LockedAfterTheCheckpoint(tmp_path / "artifacts"), tmp_path / "checkpoints")
    with pytest.raises(optuna.exceptions.StorageInternalError) as raised:  # Optuna's, around SQLAlchemy's
        run_worker(study, objective, settings)
    locker.close()
    assert "database is locked" in str(storage_failure(raised.value))
    first, retry = study.get_trials()
    assert first.state == TrialState.FAIL and first.user_attrs[record.DIED] == record.STORAGE_ERROR
    assert retry.state == TrialState.WAITING and record.retried_from(retry) == 0
    assert list((tmp_path / "checkpoints").rglob("*.ckpt"))  # kept for the retry


class PrivateServer:
    """A PostgreSQL server of this test's own (initdb in a temporary folder, a free port on
    127.0.0.1): stopping it cannot break another test using the shared server at the same time
    (the suite runs in two processes)."""

    def __init__(self, data: Path, port: int) -> None:
        self.data, self.port = data, port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        as_postgres(PG_BIN / "pg_ctl", "-D", str(self.data), "-o", options, "-w", "-l", str(self.data / "log"), *args)


PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
PG_BIN = PG_BINS[-1] if PG_BINS else Path("/nonexistent")


def as_postgres(*command: object) -> None:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user when we are root."""
    argv = [str(c) for c in command]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


@pytest.fixture
def private_postgres() -> Iterator[PrivateServer]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("no PostgreSQL server binaries (initdb) under /usr/lib/postgresql")
    data = Path(tempfile.mkdtemp(prefix="mnist-search-pg-"))  # not under pytest's 0700 tmp_path: the postgres user must reach it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    server = PrivateServer(data, port)
    try:
        as_postgres(PG_BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres")
        server.ctl("start")
        yield server
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"]
                       if os.geteuid() == 0 else [str(PG_BIN / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


LOST = "note: lost the study's database connection ("


@pytest.mark.postgres
def test_postgres_restart_mid_run(
    python: str, run_env: dict[str, str], tmp_path: Path, private_postgres: PrivateServer, unique_name: str,
) -> None:
    """The server is stopped once two trials are done, and started again only once the run has
    met the outage twice (its note, then the note of its retry after the first pause): the run
    pauses, goes on, and finishes every trial."""
    postgres_url = private_postgres.url
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace("max_epochs: 2", "max_epochs: 3"))
    args = ["--config", str(config), "--storage", postgres_url, "--study-name", unique_name, "--no-export", "--trials", "6"]
    # `python -m`: an error end while the storage is down, through the interpreter's own exit
    # (heartbeat threads, atexit hooks), which a forked run skips (tests/preloaded.py)
    with (tmp_path / "stdout").open("w") as stdout:
        process = subprocess.Popen([python, "-m", "search.run", *args], env=run_env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    err_lines: queue.Queue[str | None] = queue.Queue()  # the run's stderr, line by line as it comes (None: closed)

    def read_stderr() -> None:
        for line in process.stderr:  # type: ignore[union-attr]
            err_lines.put(line)
        err_lines.put(None)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    err: list[str] = []
    try:
        deadline = time.monotonic() + 120  # hang guards only, here and below
        storage = None
        while time.monotonic() < deadline:  # wait until two trials are finished
            try:
                # on a fresh database the run creates Optuna's tables: until then there is nothing to read
                storage = storage or reader_storage(postgres_url)
                done = optuna.load_study(study_name=unique_name, storage=storage).get_trials(states=(TrialState.COMPLETE,))
                if len(done) >= 2:
                    break
            except (KeyError, StorageError):
                pass
            time.sleep(0.1)
        private_postgres.ctl("stop", "-m", "fast")
        deadline = time.monotonic() + 120
        while sum(line.startswith(LOST) for line in err) < 2:  # the run's writes meet the closed port, then its retry does
            try:
                line = err_lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break  # no such note in 120 s: the run never met the outage
            if line is None:
                break  # the run ended: the assertions below say how
            err.append(line)
        met_outage = sum(line.startswith(LOST) for line in err)
        private_postgres.ctl("start")  # -w: returns once it accepts connections
        process.wait(timeout=300)
        reader.join(timeout=60)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # started already, unless the test failed before
            private_postgres.ctl("start")
        process.kill()
    while not err_lines.empty() and (line := err_lines.get_nowait()) is not None:  # what it wrote after the notes
        err.append(line)
    text = "".join(err)
    assert met_outage >= 2, text  # the run met the outage, and met it again after its first pause
    # one restart stopped the run (and every worker of every machine) for good: it pauses and goes on
    assert process.returncode == 0, text
    notes = [line for line in err if line.strip()]
    assert notes and all(line.startswith(LOST) for line in notes), text
    study = optuna.load_study(study_name=unique_name, storage=reader_storage(postgres_url))
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


@pytest.mark.postgres
def test_a_worker_pauses_for_a_lost_server_connection_and_gives_up_when_it_stays_lost(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The error is the driver's own: a connection the server terminated mid-query."""
    import sqlalchemy

    from search.failures import RECONNECT_PAUSES, reconnect_pause

    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError) as dropped, engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_terminate_backend(pg_backend_pid())"))
    finally:
        engine.dispose()
    wrapped = RuntimeError("Optuna's wrapper")
    wrapped.__cause__ = dropped.value
    assert [reconnect_pause(wrapped, lost) for lost in range(len(RECONNECT_PAUSES))] == list(RECONNECT_PAUSES)
    with pytest.raises(RuntimeError):  # the server stayed away through every pause
        reconnect_pause(wrapped, len(RECONNECT_PAUSES))
    with pytest.raises(ValueError, match="not the database"):
        reconnect_pause(ValueError("not the database"), 0)
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == len(RECONNECT_PAUSES) and notes[0].startswith("note: lost the study's database connection (terminating connection"), notes


@pytest.mark.slow
@pytest.mark.parametrize("read_only", [False, True])
def test_a_postgres_server_that_never_answers_is_an_error_not_a_hang(monkeypatch: pytest.MonkeyPatch, read_only: bool) -> None:
    """A port that accepts the connection and never speaks (a wrong host behind a firewall that
    lets SYNs through, a hung server): libpq alone would wait for ever; the connect timeout ends it."""
    from search import storage
    from search.storage import open_existing_storage, open_study_storage

    monkeypatch.setattr(storage, "POSTGRES_CONNECT_TIMEOUT_SECONDS", 2)  # libpq's smallest; the product's is 10
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or writes
        url = f"postgresql://postgres:hunter2@127.0.0.1:{silent.getsockname()[1]}/test"
        with pytest.raises(StorageError) as error:
            if read_only:
                open_existing_storage(url, read_only=True)
            else:
                open_study_storage(url, heartbeat_seconds=5, grace_seconds=20)
    assert "cannot open storage" in str(error.value) and "hunter2" not in str(error.value)


def test_a_missing_driver_is_named_and_the_password_is_not() -> None:
    """Optuna wraps the driver's ImportError in one without a module name; the message quoted a
    placeholder ("module 'its driver' is missing")."""
    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("a MySQL driver is installed here")
    with pytest.raises(StorageError) as error:
        open_study_storage("mysql://root:hunter2@127.0.0.1/x", heartbeat_seconds=5, grace_seconds=20)
    assert "module 'MySQLdb' is missing" in str(error.value) and "its driver" not in str(error.value)
    assert "hunter2" not in str(error.value)


def test_a_database_of_another_optuna_schema_is_a_clear_error_and_stays_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Optuna refuses tables of another schema version with a RuntimeError; the user gets its
    advice in one line (exit 2), for this run's storage and for a --warm-start source alike."""
    for version, missing in (("v3.0.0.a", None), ("v1.3.0.a", "trial_heartbeats")):  # as Optuna 3.0 and 1.3 left it
        _refused_untouched(tmp_path / f"old-{version}.db", version, missing, capsys)


def _refused_untouched(path: Path, version: str, missing: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    optuna.create_study(study_name="mnist", storage=f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        db.execute("update alembic_version set version_num = ?", (version,))
        if missing:
            db.execute(f"drop table {missing}")
    before = path.read_bytes()
    for argv in (["--storage", f"sqlite:///{path}"], ["--study-name", "new", "--storage", f"sqlite:///{path.parent / 'new.db'}",
                                                       "--warm-start", "mnist", "--warm-start-storage", f"sqlite:///{path}"]):
        done = run_main(argv, capsys)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "optuna storage upgrade" in done.stderr and "Traceback" not in done.stderr
    # Byte for byte as it was: no table added, and its journal not switched to WAL before Optuna's check.
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name)) == [path.name]


@contextmanager
def fresh_postgres_database(postgres_url: str) -> Iterator[str]:
    """The URL of a new, empty database on the test server, dropped when the block ends."""
    import sqlalchemy

    name = f"fresh_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sqlalchemy.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
def test_a_postgres_database_of_another_optuna_schema_gets_no_table(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """On a server as in a file: Optuna used to create the tables it missed (here Optuna 1.3's
    `trial_heartbeats`) before its schema check refused the database."""
    import sqlalchemy

    with fresh_postgres_database(postgres_url) as url:
        optuna.create_study(study_name="mnist", storage=url)
        old = sqlalchemy.create_engine(url)
        with old.begin() as connection:
            connection.execute(sqlalchemy.text("update alembic_version set version_num = 'v1.3.0.a'"))
            connection.execute(sqlalchemy.text("drop table trial_heartbeats"))
        before = set(sqlalchemy.inspect(old).get_table_names())
        done = run_main(["--storage", url], capsys)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "optuna storage upgrade" in done.stderr and "Traceback" not in done.stderr
        assert set(sqlalchemy.inspect(old).get_table_names()) == before  # trial_heartbeats not created
        with old.connect() as connection:
            assert connection.execute(sqlalchemy.text("select version_num from alembic_version")).scalar_one() == "v1.3.0.a"
        old.dispose()


@pytest.mark.postgres
def test_a_postgres_database_whose_trials_table_is_an_applications_gets_no_table(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Optuna took an application's `trials` for its own, created its other tables beside it and
    failed at the first trial ("no such column: trials.trial_id"), telling the user to resume."""
    import sqlalchemy

    with fresh_postgres_database(postgres_url) as url:
        engine = sqlalchemy.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("create table trials (id integer, patient text)"))
        done = run_main(["--storage", url, "--trials", "1", "--no-export"], capsys)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "named as Optuna's that are another application's (trials)" in done.stderr
        assert set(sqlalchemy.inspect(engine).get_table_names()) == {"trials"}
        engine.dispose()


def _drop_heartbeats(url: str) -> set[str]:
    """A study database of this Optuna's version without `trial_heartbeats`, as a creation cut
    short (a killed worker, MySQL's DDL outside any transaction) leaves one; its other tables."""
    import sqlalchemy

    optuna.create_study(study_name="mnist", storage=url)
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("drop table trial_heartbeats"))
    tables = set(sqlalchemy.inspect(engine).get_table_names())
    engine.dispose()
    return tables


def _tables(url: str) -> set[str]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_a_study_file_of_this_version_missing_a_table_gets_it_back(tmp_path: Path) -> None:
    """Only another version's database is opened without table creation; one of this version
    with a table missing had it recreated by Optuna before, and still does."""
    url = f"sqlite:///{tmp_path / 'cut-short.db'}"
    assert "trial_heartbeats" not in _drop_heartbeats(url)
    open_study_storage(url, heartbeat_seconds=5, grace_seconds=20).engine.dispose()
    assert "trial_heartbeats" in _tables(url)


@pytest.mark.postgres
def test_a_postgres_study_database_of_this_version_missing_a_table_gets_it_back(postgres_url: str) -> None:
    with fresh_postgres_database(postgres_url) as url:
        assert "trial_heartbeats" not in _drop_heartbeats(url)
        open_study_storage(url, heartbeat_seconds=5, grace_seconds=20).engine.dispose()
        assert "trial_heartbeats" in _tables(url)


def test_a_study_on_a_read_only_disk_is_watched_and_warm_started_from_and_refused_for_export(
    run_env: dict[str, str], tmp_path: Path, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished study (WAL mode, its -wal and -shm gone) on a read-only disk, or in a folder
    this user cannot write: every reader failed with a 60-line StorageInternalError traceback
    (SQLite could not create the -shm), and a warm start from it said "the study's storage
    failed mid-run". Readers now read the file as it is; the export, which writes, is one line."""
    from search.dashboard import open_dashboard, parse_args
    from search.export.__main__ import main as export_main
    from search.settings_file import load_settings
    from search.warm_start import read_warm_start

    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    url = f"sqlite:///{small_disk / 's.db'}"
    assert run(run_env, config, url, "--trials", "2", logs=tmp_path / "first").returncode == 0
    # the last connection closing removes the -wal and -shm, as when `python -m search.run` ends
    # (a forked run leaves through os._exit, its connections unclosed: tests/preloaded.py)
    last = sqlite3.connect(small_disk / "s.db")
    last.execute("select count(*) from sqlite_master").fetchall()  # a connection that read the file
    last.close()
    assert sorted(p.name for p in small_disk.iterdir() if p.name.startswith("s.db")) == ["s.db"]
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        board = open_dashboard(parse_args(["--storage", url, "--port", "0"]))
        try:
            assert list(board.storage.get_all_studies()[0].user_attrs) and board.storage.get_all_studies()[0].study_name == "mnist"
        finally:
            board.server.server_close()
        settings = load_settings(None, {"warm_start": {"study": "mnist", "storage": url}, "study": {"name": "next"}})
        warm = read_warm_start(settings, f"sqlite:///{tmp_path / 'next.db'}")
        assert warm is not None and warm.params  # the first DNN (the linear baseline lies outside the default space)
        capsys.readouterr()
        assert export_main(["--storage", url, "--out", str(tmp_path / "export")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "read-only file system or not writable" in err and "Traceback" not in err, err
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)


def test_a_full_disk_behind_a_nameless_error_names_where_to_look() -> None:
    """Lightning writes each checkpoint through a temporary file first: a full TMPDIR's error
    names no file, and the run said only "cannot write run state (No space left on device)"."""
    import errno

    from search.failures import describe_storage_failure, storage_failure

    line = describe_storage_failure(OSError(errno.ENOSPC, "No space left on device"))
    assert line == f"cannot write run state (No space left on device; the run-state folder or the temporary folder, {tempfile.gettempdir()})"
    too_large = OSError(errno.EFBIG, "File too large", "/runs/trial-3.ckpt")  # a file-size limit: a disk failure, not a bug
    assert storage_failure(RuntimeError("wrapped")) is None and storage_failure(too_large) is too_large


def test_a_study_file_locked_by_another_program_is_told_at_once_and_named_when_the_wait_ends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sqlite3 shell holding the study file's write lock made a run wait the whole busy
    timeout without a word, then say "the study's storage failed mid-run (database is locked)"."""
    from search import sqlite_file
    from search.failures import describe_storage_failure, storage_failure

    path = tmp_path / "study.db"
    open_study_storage(f"sqlite:///{path}", heartbeat_seconds=60, grace_seconds=120).engine.dispose()
    assert not sqlite_file.locked_by_another(path, wait=0.1)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert sqlite_file.locked_by_another(path, wait=0.1)
        monkeypatch.setattr(sqlite_file, "SQLITE_BUSY_TIMEOUT_SECONDS", 1)  # the wait itself, shortened
        storage = open_study_storage(f"sqlite:///{path}", heartbeat_seconds=60, grace_seconds=120)
        with pytest.raises(Exception) as raised:  # whichever layer wraps SQLite's error
            optuna.create_study(storage=storage, study_name="blocked")  # a run's first write
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    note = capsys.readouterr().err
    assert note.startswith(f"note: another program holds the write lock on {path}") and note.count("\n") == 1, note
    cause = storage_failure(raised.value)
    assert cause is not None, raised.value
    line = describe_storage_failure(cause)
    assert line.startswith("the study's SQLite database stayed locked by another process for 1 s (database is locked"), line
    assert "mid-run" not in line
    assert not sqlite_file.locked_by_another(path, wait=0.1)
