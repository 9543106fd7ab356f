"""A re-export after the study changed: each file keeps its one artifact on the best trial, with
the new content.

A real study on 600 MNIST rows, run in-process twice as a user runs it: the first run exports
after one trial; the second adds a worse trial and exports again into the same folder, so the
best trial stays the same while the study plots and the report change.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import search.progress  # noqa: F401 - see the note below
from helpers import load, reader_storage, writer_storage
from search import record
from search.export.artifacts import ARTIFACT_MIMETYPES, content_digest
from search.export.exporter import FILES, default_export_dir
from search.run import main as run_main
from search.artifact_stores import build_artifact_store

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
