"""search/optuna_compat.py: one test per use of Optuna's private API, numbered as there.

When an Optuna upgrade moves or changes one of these internals, the test of that use fails by
name, and optuna_compat.py is the one file to change. Each runs on a real SQLite file.
"""

from __future__ import annotations

import ast
import io
import re
import time
from pathlib import Path

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from search import optuna_compat
from search.optuna_compat import (
    ArtifactStore,
    SilentTrialAwareStorage,
    enqueued,
    finished_trial_writable,
    forget_broken_session,
    retry_attrs,
    retry_link,
    set_trial_system_attr,
    storage_url,
    study_storage,
    trial_state,
    trial_system_attrs,
)


@pytest.fixture()
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'compat.db'}"


def test_1_artifact_store_protocol_is_what_the_stores_implement(tmp_path: Path) -> None:
    from optuna.artifacts import FileSystemArtifactStore

    members = {name for name in vars(ArtifactStore) if not name.startswith("_")}
    assert {"open_reader", "write", "remove"} <= members
    store = FileSystemArtifactStore(str(tmp_path))
    for name in members:
        assert callable(getattr(store, name)), name


def test_2_study_storage_is_the_rdb_storage_behind_the_cache(url: str) -> None:
    study = optuna.create_study(storage=url)
    backend = study_storage(study)
    assert isinstance(backend, RDBStorage)
    assert study._storage is not backend  # Optuna still wraps RDB storages in its cache
    assert storage_url(study) == url
    assert storage_url(optuna.create_study()) is None  # in-memory: no URL


def test_3_a_finished_trial_takes_system_attrs_only_inside_the_block(url: str) -> None:
    study = optuna.create_study(storage=url)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    backend = study_storage(study)
    trial_id = study.trials[0]._trial_id
    with pytest.raises(UpdateFinishedTrialError):
        backend.set_trial_system_attr(trial_id, "link", "before")
    with finished_trial_writable(backend):
        backend.set_trial_system_attr(trial_id, "link", "inside")
    with pytest.raises(UpdateFinishedTrialError):  # the patch is undone on exit
        backend.set_trial_system_attr(trial_id, "link", "after")
    assert optuna.load_study(study_name=study.study_name, storage=url).trials[0].system_attrs["link"] == "inside"


@pytest.mark.slow  # seconds of training or waiting: the fast subset stays under 90 s on a loaded machine
def test_4_a_running_trial_that_never_beat_is_failed_as_stale(url: str) -> None:
    storage = SilentTrialAwareStorage(url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    silent = study.ask()  # RUNNING, and no heartbeat is ever written for it
    beating = study.ask()
    time.sleep(1.5)  # past the grace period: a wait, not a timing assertion
    storage.record_heartbeat(beating._trial_id)
    optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[silent.number] == TrialState.FAIL
    assert states[beating.number] == TrialState.RUNNING


def test_4_a_heartbeat_survives_a_database_error(url: str) -> None:
    """Optuna's heartbeat thread calls record_heartbeat with no handler: one failed beat ended it,
    and the live trial was then failed as stale and retried elsewhere while it still trained."""
    import sqlalchemy

    storage = SilentTrialAwareStorage(url, heartbeat_interval=1, grace_period=1)
    trial = optuna.create_study(storage=storage).ask()
    with storage.engine.begin() as connection:  # the database refuses the next beat
        connection.execute(sqlalchemy.text("ALTER TABLE trial_heartbeats RENAME TO heartbeats_away"))
    with pytest.raises(optuna.exceptions.StorageInternalError):
        RDBStorage.record_heartbeat(storage, trial._trial_id)  # what Optuna's own storage does
    storage.record_heartbeat(trial._trial_id)  # skipped, not raised
    with storage.engine.begin() as connection:
        connection.execute(sqlalchemy.text("ALTER TABLE heartbeats_away RENAME TO trial_heartbeats"))
    storage.record_heartbeat(trial._trial_id)  # the next beat is written
    with storage.engine.connect() as connection:
        assert connection.execute(sqlalchemy.text("SELECT COUNT(*) FROM trial_heartbeats")).scalar_one() == 1


@pytest.mark.slow  # seconds of training or waiting: the fast subset stays under 90 s on a loaded machine
def test_4_plain_rdb_storage_still_lacks_the_silent_check(url: str) -> None:
    """The reason the subclass exists: if Optuna starts catching silent trials itself, this fails
    and the subclass can go."""
    storage = RDBStorage(url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    silent = study.ask()
    time.sleep(1.5)
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials(deepcopy=False)[silent.number].state == TrialState.RUNNING


def test_5_and_6_a_running_trial_reads_and_writes_system_attrs(url: str) -> None:
    study = optuna.create_study(storage=url)
    trial = study.ask()
    set_trial_system_attr(trial, "history", [{"epoch": 1.0}])
    assert trial_system_attrs(trial)["history"] == [{"epoch": 1.0}]
    study.tell(trial, 0.5)
    frozen = optuna.load_study(study_name=study.study_name, storage=url).trials[0]
    assert trial_system_attrs(frozen)["history"] == [{"epoch": 1.0}]
    assert "history" not in frozen.user_attrs  # kept out of the dashboard's trial table


def test_7_an_enqueued_trial_is_told_from_a_sampled_one(url: str) -> None:
    study = optuna.create_study(storage=url)
    study.enqueue_trial({"x": 0.5})
    for trial in (study.ask(), study.ask()):  # the queued one, then one the sampler draws
        trial.suggest_float("x", 0, 1)
        assert enqueued(trial) == (trial.number == 0)
        study.tell(trial, 0.0)
    assert [enqueued(t) for t in optuna.load_study(study_name=study.study_name, storage=url).trials] == [True, False]


def test_8_a_running_trials_stored_state_shows_another_workers_verdict(url: str) -> None:
    study = optuna.create_study(storage=url)
    trial = study.ask()
    assert trial_state(trial) == TrialState.RUNNING
    optuna.load_study(study_name=study.study_name, storage=url).tell(trial.number, state=TrialState.FAIL)  # a heartbeat check elsewhere
    assert trial_state(trial) == TrialState.FAIL


def test_9_an_artifact_linked_under_a_chosen_id_is_one_optuna_reads_back(url: str, tmp_path: Path) -> None:
    from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta

    study = optuna.create_study(storage=url)
    study.optimize(lambda trial: 1.0, n_trials=1)
    store = FileSystemArtifactStore(str(tmp_path))
    store.write("chosen-id", io.BytesIO(b"content"))
    frozen, backend = study.trials[0], optuna_compat.study_storage(study)
    with optuna_compat.finished_trial_writable(backend):
        for _ in range(2):  # twice, as two machines would: still one link
            optuna_compat.link_artifact(backend, frozen, "chosen-id", "report.html", "text/html")
    optuna_compat.link_artifact(backend, study, "chosen-id", "report.html", "text/html")
    (meta,) = get_all_artifact_meta(study.trials[0], storage=backend)
    assert (meta.artifact_id, meta.filename, meta.mimetype) == ("chosen-id", "report.html", "text/html")
    assert [m.artifact_id for m in get_all_artifact_meta(study)] == ["chosen-id"]
    download_artifact(artifact_store=store, artifact_id=meta.artifact_id, file_path=str(tmp_path / "out.html"))
    assert (tmp_path / "out.html").read_bytes() == b"content"


def test_10_a_threads_broken_session_is_dropped_for_a_new_one(url: str) -> None:
    """After a connection lost mid-transaction and a failed rollback, the thread's session kept
    answering "Can't reconnect until invalid transaction is rolled back"."""
    storage = RDBStorage(url)
    broken = storage.scoped_session()
    assert storage.scoped_session() is broken  # one session per thread, kept between calls
    forget_broken_session(storage)
    assert storage.scoped_session() is not broken
    optuna.create_study(storage=storage).ask()  # and the storage works on


def test_11_a_retry_is_linked_as_optunas_retry_callback_links_it(url: str) -> None:
    """resume.requeue queues a stop request's retry with the link Optuna's callback writes for a
    dead worker's trial; if Optuna renames its keys, the two retries no longer read alike."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    study = optuna.create_study(storage=url)
    backend = study_storage(study)
    for number in range(3):  # a first attempt, its retry, and the retry's retry: each dies, Optuna's callback queues the next
        trial = study.ask()
        backend.set_trial_system_attr(trial._trial_id, "checkpoint_key", 0)  # one of ours, carried along
        study.tell(trial, state=TrialState.FAIL)
        attempt = study.get_trials()[number]
        ours = retry_attrs(attempt.system_attrs, number)  # before the callback: it appends to the attempt's own list
        RetryHeartbeatStaleTrialCallback()(study, attempt)
        (queued,) = optuna.load_study(study_name=study.study_name, storage=url).get_trials(states=(TrialState.WAITING,))
        assert queued.system_attrs == ours  # what Optuna wrote is what retry_attrs writes
    trials = study.get_trials()
    assert [retry_link(t) for t in trials] == [(None, []), (0, [0]), (0, [0, 1]), (0, [0, 1, 2])]
    running = study.ask()  # the last retry, running: its link is read from the storage
    assert running.number == 3 and retry_link(running) == (0, [0, 1, 2])
    made = optuna.create_study(storage=url)
    made.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=retry_attrs({}, 7)))
    (linked,) = made.get_trials()  # a link written here reads back through the callback's own readers
    assert (RetryHeartbeatStaleTrialCallback.retried_trial_number(linked), RetryHeartbeatStaleTrialCallback.retry_history(linked)) == (7, [7])


def _numbered(pattern: str, text: str) -> set[int]:
    return {int(number) for found in re.findall(pattern, text) for number in re.findall(r"\d+", found)}


def test_every_numbered_private_use_has_a_test_of_its_number_and_every_public_name_is_exported() -> None:
    """Derived, not listed: the uses numbered in search/optuna_compat.py (a docstring or comment
    opening "N. ") and this module's tests named test_N_ (or test_N_and_M_) are the same numbers,
    counted from 1 without a gap; and every public name the module defines or re-exports from a
    private Optuna module is in its __all__."""
    source = Path(optuna_compat.__file__).read_text()
    uses = _numbered(r'(?:"""|# )(\d+)\. ', source)
    tests = _numbered(r"(?m)^test_(\d+(?:_and_\d+)*)_", "\n".join(name for name in globals() if name.startswith("test_")))
    assert uses == tests, f"numbered in optuna_compat.py without a test: {sorted(uses - tests)}; tests without a use: {sorted(tests - uses)}"
    assert uses == set(range(1, max(uses) + 1)), sorted(uses)
    top_level = []  # the module's own statements, those under a module-level `if TYPE_CHECKING: ... else: ...` too
    for node in ast.parse(source).body:
        top_level += [*node.body, *node.orelse] if isinstance(node, ast.If) else [node]
    defined = {node.name for node in top_level if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    reexported = {  # names imported from a private Optuna module at module level: its users import them from here
        alias.asname or alias.name for node in top_level if isinstance(node, ast.ImportFrom) and node.module
        and node.module.startswith("optuna") and any(part.startswith("_") for part in node.module.split(".")) for alias in node.names
    }
    public = {name for name in defined | reexported if not name.startswith("_")}
    assert public == set(optuna_compat.__all__), f"public, not exported: {sorted(public - set(optuna_compat.__all__))}; exported, not defined: {sorted(set(optuna_compat.__all__) - public)}"
    assert all(hasattr(optuna_compat, name) for name in optuna_compat.__all__)


def test_the_tables_a_foreign_file_is_told_by_are_optunas_own(tmp_path: Path) -> None:
    """search/sqlite_file.py names Optuna's tables to tell a study database (or one being
    created) from an application's: they must be the tables this Optuna creates."""
    import sqlite3

    from search.sqlite_file import OPTUNA_KEYS, OPTUNA_SCHEMA, OPTUNA_TABLES, foreign_tables, read_schema

    path = tmp_path / "s.db"
    RDBStorage(f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        created = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert created == OPTUNA_SCHEMA
    assert OPTUNA_TABLES < created
    schema = read_schema(path)
    for table, key in OPTUNA_KEYS.items():  # each key column is its table's, as Optuna creates it
        assert key in schema.tables[table], table
    assert schema.user_version == 0 and not schema.others and foreign_tables(path) == []
