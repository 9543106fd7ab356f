"""Two "machines" on one PostgreSQL study and one shared artifact folder: each with its own
MNIST_SEARCH_HOME (so nothing but the database and the store is shared). The first is killed
with SIGKILL mid-trial; the second retries that trial from the checkpoint the first left in the
store, finishes the budget exactly, and exports a model it reads from the store.

The moment to kill is found by polling the storage, never by sleeping a guessed time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from helpers import reader_storage
from preloaded import SearchProcess
from search import record
from search.export.__main__ import main as export_main
from search.run import main as run_main
from search.storage import StorageError

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

# DNN trials only, tiny data, many short epochs (so a kill lands mid-trial), no pruning, and
# heartbeats fast enough that the killed trial is found stale within seconds.
CONFIG = """
study: {heartbeat_seconds: 1, stale_after_seconds: 3, target_accuracy: null}
data: {val_size: 200, train_size: 1000}
training: {max_epochs: 12, snapshot_steps: [5]}
pruner: {name: none}
space: {classifier: [dnn], hidden_layers: {low: 1, high: 1}, units: {low: 16, high: 32}, batch_size: [32]}
baseline: {enabled: false}
"""


def wait_for_epochs(url: str, name: str, epochs: int, process: SearchProcess, timeout: float = 300) -> None:
    """Poll until trial 0 has reported `epochs` epochs; fail if the run ends first.

    On a fresh database (a new CI machine) the run itself creates Optuna's tables: until then
    opening the storage is refused, which here means "not yet"."""
    storage = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            storage = storage or reader_storage(url)
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        except (KeyError, StorageError):
            trials = []  # the tables or the study are not created yet
        if trials and len(trials[0].intermediate_values) >= epochs:
            return
        assert process.poll() is None, f"the first machine ended before the moment came: {process.communicate()}"
        time.sleep(0.05)
    raise AssertionError("timed out waiting for trial 0's epochs")


def test_a_trial_killed_on_one_machine_resumes_on_another_from_the_shared_store(
    run_env: dict[str, str], tmp_path: Path, postgres_url: str, unique_name: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    config, shared = tmp_path / "two.yaml", tmp_path / "shared-artifacts"
    config.write_text(CONFIG)
    shared.mkdir()
    argv = ["--config", str(config), "--storage", postgres_url, "--study-name", unique_name, "--trials", "1", "--no-export"]

    first = SearchProcess([*argv, "--artifact-store", str(shared)], {**run_env, "MNIST_SEARCH_HOME": str(tmp_path / "machine-a")}, tmp_path / "machine-a-logs")
    try:
        wait_for_epochs(postgres_url, unique_name, 3, first)  # epochs 1 and 2 are in the store by now
        first.kill()  # SIGKILL
    finally:
        first.kill()
        first.communicate(timeout=60)
    killed = optuna.load_study(study_name=unique_name, storage=reader_storage(postgres_url)).trials[0]
    assert killed.state == TrialState.RUNNING

    # The second machine: its own home, no --artifact-store (the study recorded the shared one).
    monkeypatch.setenv("MNIST_SEARCH_HOME", str(tmp_path / "machine-b"))
    assert run_main(argv) == 0, capsys.readouterr().err
    study = optuna.load_study(study_name=unique_name, storage=reader_storage(postgres_url))
    trials = study.trials
    story = [(t.number, t.state.name, len(t.intermediate_values), t.user_attrs.get(record.RESUMED_FROM_EPOCH)) for t in trials]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and not record.is_surplus(t)]
    assert len(finished) == 1, story  # the budget: the retry of the killed trial
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], story
    retry = next(t for t in trials if record.retried_from(t) == 0)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs[record.RESUMED_FROM_EPOCH] >= 2, story
    assert retry.params == killed.params
    assert not list(shared.rglob("*.ckpt")), "finished trials' checkpoints are removed from the store"

    assert export_main(["--storage", postgres_url, "--study-name", unique_name]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    metrics = json.loads(next((tmp_path / "machine-b" / "exports").glob("*/metrics.json")).read_text())
    assert "retrained" not in metrics["note"], metrics["note"]  # the weights came from the shared store
    assert f"exported trial {metrics['best_trial']}" in out
