"""The artifact store a study shares between machines: locations and their one-line errors,
atomic folder writes, checkpoints through the store, and the location a study records.

The store contract tests run on a folder and on S3 (moto's server on 127.0.0.1, with made-up
credentials from the environment); the S3 cases skip, saying why, when moto or boto3 is missing.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import TrialState

from helpers import reader_storage, writer_storage
from lightning_modules.data.split import DataSplit
from lightning_modules.errors import TrainingInterrupted
from search import record
from search.artifact_stores import (
    ArtifactStoreError,
    AtomicFolderStore,
    StoreLocation,
    check_location,
    open_store,
    parse_location,
)
from search.objective import make_objective
from search.paths import artifact_dir
from search.resume import TrialCheckpoint, checkpoint_artifact_id
from search.run import main as run_main
from search.settings_file import load_settings
from search.study import open_study

SECRET = "s3cr3t-never-shown"  # the made-up AWS secret key: no output may contain it
TINY = "data: {val_size: 100, train_size: 300}\ntraining: {max_epochs: 2, snapshot_steps: [5]}\npruner: {name: none}\n"


# ---- S3 on moto's server -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("boto3", reason="boto3 is not installed: pip install -e '.[test]' (or '.[s3]')")
    server_module = pytest.importorskip("moto.server", reason="moto's server is not installed: pip install -e '.[test]'")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, reached the way a user's run reaches S3: only through the AWS environment."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
    return bucket


def s3_keys(bucket: str) -> list[str]:
    import boto3

    listing = boto3.session.Session().client("s3").list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.fixture(params=["folder", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A shared store's location: a folder (as an NFS mount looks) or a bucket and prefix."""
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/runs/mnist"
    folder = tmp_path / "shared-artifacts"
    folder.mkdir()
    return str(folder)


# ---- locations -----------------------------------------------------------------------------------

def test_a_location_is_an_absolute_folder_or_a_bucket_and_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_location("shared") == StoreLocation(folder=(tmp_path / "shared").resolve())
    s3 = parse_location("s3://my-bucket/runs/mnist/")
    assert (s3.bucket, s3.prefix, str(s3)) == ("my-bucket", "runs/mnist", "s3://my-bucket/runs/mnist")
    assert str(parse_location("s3://my-bucket")) == "s3://my-bucket"
    assert parse_location(None) == StoreLocation(folder=artifact_dir(), shared=False)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("s3://AKIAEXAMPLE:hunter2@my-bucket/p", ["credentials", "AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL"]),
        ("gs://my-bucket/p", ["gs://", "not supported", "s3://bucket/prefix"]),
        ("s3://My_Bucket/p", ["'My_Bucket'", "not an S3 bucket name"]),
        ("s3://my-bucket/a//b", ["prefix"]),
        ("s3://my-bucket/a/../b", ["prefix"]),
        ("s3://my-bucket/a?versionId=1", ["prefix"]),
        ("shared\nfolder", ["control characters"]),
    ],
)
def test_a_malformed_location_is_one_line_naming_the_problem(text: str, words: list[str]) -> None:
    with pytest.raises(ArtifactStoreError) as caught:
        parse_location(text)
    message = str(caught.value)
    assert "\n" not in message and "hunter2" not in message
    for word in words:
        assert word in message, message


def test_a_folder_location_must_be_there_and_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ArtifactStoreError, match="does not exist on this machine; mount the shared folder there .*mkdir -p"):
        check_location(str(tmp_path / "not-mounted"))
    assert not (tmp_path / "not-mounted").exists()  # never created: it would hide a missing mount
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactStoreError, match="is not a folder"):
        check_location(str(tmp_path / "file"))


def test_bad_locations_answer_before_torch_is_imported(python: str, run_env: dict[str, str], tmp_path: Path) -> None:
    """search.run, search.export and search.dashboard: one line, exit 2, no torch, no database."""
    cases = [
        ["search.run", "--artifact-store", str(tmp_path / "not-mounted")],
        ["search.run", "--artifact-store", "s3://AKIAEXAMPLE:hunter2@my-bucket/p"],
        ["search.run", "--artifact-store", "ftp://host/x"],
        ["search.export.__main__", "--artifact-store", str(tmp_path / "not-mounted")],
        ["search.dashboard", "--artifact-dir", str(tmp_path / "not-mounted")],
    ]
    code = (
        "import importlib, json, sys\n"
        f"cases = json.loads({json.dumps(json.dumps(cases))})\n"
        "codes = [importlib.import_module(module).main(argv) for module, *argv in cases]\n"
        "print(json.dumps({'codes': codes, 'heavy': sorted({'torch', 'lightning'} & set(sys.modules))}))\n"
    )
    result = subprocess.run([python, "-c", code], env=run_env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"codes": [2] * len(cases), "heavy": []}, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(cases) and all(line.startswith("error: ") for line in errors), result.stderr
    assert "hunter2" not in result.stderr
    assert not Path(run_env["MNIST_SEARCH_HOME"]).exists()  # no database, no folder


# ---- the folder store writes whole files ---------------------------------------------------------

class HalfThenWait(io.RawIOBase):
    """Content that hands out its first half, then waits for `release` before the rest."""

    def __init__(self, content: bytes) -> None:
        self.parts = [content[: len(content) // 2], content[len(content) // 2 :]]
        self.midway, self.release = threading.Event(), threading.Event()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if len(self.parts) == 1:  # the first half is written by now
            self.midway.set()
            assert self.release.wait(timeout=120)
        return self.parts.pop(0) if self.parts else b""


def test_a_reader_never_sees_a_half_written_artifact(tmp_path: Path) -> None:
    store = AtomicFolderStore(tmp_path)
    store.write("checkpoints/s-1/trial-0.ckpt", io.BytesIO(b"old epoch"))
    body = HalfThenWait(b"new epoch " * 1000)
    writer = threading.Thread(target=store.write, args=("checkpoints/s-1/trial-0.ckpt", body))
    writer.start()
    try:
        assert body.midway.wait(timeout=120)
        with store.open_reader("checkpoints/s-1/trial-0.ckpt") as reader:
            assert reader.read() == b"old epoch"  # mid-write, readers see the previous artifact whole
    finally:
        body.release.set()
        writer.join(timeout=120)
    with store.open_reader("checkpoints/s-1/trial-0.ckpt") as reader:
        assert reader.read() == b"new epoch " * 1000
    assert [p.name for p in (tmp_path / "checkpoints" / "s-1").iterdir()] == ["trial-0.ckpt"]  # no temporary file left


class FailsMidway(io.RawIOBase):
    def __init__(self) -> None:
        self.calls = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 1:
            raise OSError("connection lost")
        return b"partial"


def test_a_write_that_fails_midway_leaves_the_old_artifact_and_no_temporary_file(tmp_path: Path) -> None:
    store = AtomicFolderStore(tmp_path)
    with pytest.raises(OSError, match="connection lost"):
        store.write("new/model", FailsMidway())
    assert not (tmp_path / "new" / "model").exists()
    store.write("model", io.BytesIO(b"complete"))
    with pytest.raises(OSError, match="connection lost"):
        store.write("model", FailsMidway())
    assert (tmp_path / "model").read_bytes() == b"complete"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["model"]


@pytest.mark.parametrize("artifact_id", ["../outside", "/etc/passwd", "a/../../outside", ""])
def test_the_folder_store_keeps_every_artifact_inside_its_folder(tmp_path: Path, artifact_id: str) -> None:
    store = AtomicFolderStore(tmp_path / "store")
    with pytest.raises(ValueError, match="Invalid artifact_id"):
        store.write(artifact_id, io.BytesIO(b"x"))
    assert not (tmp_path / "outside").exists()


# ---- the store contract: folder and S3 -----------------------------------------------------------

def test_artifacts_round_trip_through_the_store(location: str, tmp_path: Path) -> None:
    store = open_store(check_location(location))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'a.db'}")
    trial = study.ask()
    (tmp_path / "weights.bin").write_bytes(b"weights")
    artifact_id = upload_artifact(artifact_store=store, file_path=str(tmp_path / "weights.bin"), study_or_trial=trial)
    download_artifact(artifact_store=store, file_path=str(tmp_path / "back.bin"), artifact_id=artifact_id)
    assert (tmp_path / "back.bin").read_bytes() == b"weights"
    store.write("checkpoints/s-1/trial-3.ckpt", io.BytesIO(b"epoch 1"))
    store.write("checkpoints/s-1/trial-3.ckpt", io.BytesIO(b"epoch 2"))  # the same id: overwritten
    with store.open_reader("checkpoints/s-1/trial-3.ckpt") as reader:
        assert reader.read() == b"epoch 2"
    store.remove("checkpoints/s-1/trial-3.ckpt")
    with pytest.raises(ArtifactNotFound):
        store.open_reader("checkpoints/s-1/trial-3.ckpt")


def test_s3_keeps_artifacts_under_the_prefix(s3_bucket: str) -> None:
    store = open_store(check_location(f"s3://{s3_bucket}/team/run-1"))
    store.write("checkpoints/s-1/trial-0.ckpt", io.BytesIO(b"x"))
    assert s3_keys(s3_bucket) == ["team/run-1/checkpoints/s-1/trial-0.ckpt"]


def test_a_missing_bucket_or_credentials_is_one_line_without_the_secret(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ArtifactStoreError, match="'no-such-bucket-here' does not exist") as caught:
        open_store(check_location("s3://no-such-bucket-here/p"))
    assert "\n" not in str(caught.value) and SECRET not in str(caught.value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ArtifactStoreError, match="no AWS credentials .*AWS_ACCESS_KEY_ID"):
        open_store(check_location(f"s3://{s3_bucket}/p"))


def test_a_checkpoint_goes_up_comes_back_elsewhere_and_is_removed(location: str, tmp_path: Path) -> None:
    store = open_store(check_location(location))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'c.db'}")
    artifact_id = "checkpoints/s-1/trial-0.ckpt"
    here = TrialCheckpoint(tmp_path / "machine-a" / "trial-0.ckpt", store, artifact_id)
    here.path.parent.mkdir()
    here.path.write_bytes(b"epoch 2 of trial 0")
    here.upload(here.path)
    here.close(study.ask(), keep=True)  # interrupted: kept for the retry
    there = TrialCheckpoint(tmp_path / "machine-b" / "trial-0.ckpt", store, artifact_id)
    assert there.fetch() and there.path.read_bytes() == b"epoch 2 of trial 0"
    retry = study.ask()
    there.close(retry, keep=False)  # finished: gone from the store and from the disk
    assert not there.path.exists()
    with pytest.raises(ArtifactNotFound):
        store.open_reader(artifact_id)
    assert not TrialCheckpoint(tmp_path / "machine-c" / "trial-0.ckpt", store, artifact_id).fetch()
    assert record.read(study.trials[retry.number], record.CHECKPOINT_SECONDS) == 0.0  # it uploaded nothing itself


class StopAfterEpochs(threading.Event):
    """A stop request that holds once the running trial has reported `epochs` epochs: the trial
    is interrupted and queued again exactly as Ctrl-C leaves it, at a known epoch."""

    def __init__(self, study: optuna.Study, epochs: int) -> None:
        super().__init__()
        self.study, self.epochs = study, epochs

    def is_set(self) -> bool:
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return bool(running) and len(running[0].intermediate_values) >= self.epochs


def test_a_retry_resumes_from_the_store_with_no_local_checkpoint(location: str, tmp_path: Path, tiny_split: DataSplit) -> None:
    settings = load_settings(None, {
        "study": {"trials": 3, "target_accuracy": None, "artifact_store": location}, "baseline": {"enabled": False},
        "space": {"classifier": ["dnn"], "hidden_layers": {"low": 1, "high": 1}, "units": {"low": 16, "high": 32}},
        "training": {"max_epochs": 4, "snapshot_steps": [5]}, "pruner": {"name": "none"},
    })
    study = open_study(settings, writer_storage(f"sqlite:///{tmp_path / 'r.db'}")).study
    store = open_store(check_location(location))
    with pytest.raises(TrainingInterrupted):
        study.optimize(make_objective(settings, tiny_split, store, tmp_path / "machine-a", StopAfterEpochs(study, 2)), n_trials=1)
    shutil.rmtree(tmp_path / "machine-a")  # that machine and its disk are gone; the store keeps epoch 2
    with store.open_reader(checkpoint_artifact_id(study, 0)) as reader:
        assert reader.read(1)

    study.optimize(make_objective(settings, tiny_split, store, tmp_path / "machine-b"), n_trials=1)
    interrupted, retry = study.trials
    assert (interrupted.state, retry.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert retry.user_attrs[record.RESUMED_FROM_EPOCH] == 2
    assert [retry.intermediate_values[e] for e in (0, 1)] == [interrupted.intermediate_values[e] for e in (0, 1)]
    assert len(retry.intermediate_values) == 4
    assert record.read(interrupted, record.CHECKPOINT_SECONDS) > 0 and record.read(retry, record.CHECKPOINT_SECONDS) > 0
    with pytest.raises(ArtifactNotFound):
        store.open_reader(checkpoint_artifact_id(study, 0))  # finished: removed from the store
    assert not list((tmp_path / "machine-b").rglob("*.ckpt"))


# ---- the location a study records ----------------------------------------------------------------

def run_tiny(tmp_path: Path, *args: str) -> int:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    url = f"sqlite:///{tmp_path / 's.db'}"
    return run_main(["--config", str(config), "--storage", url, "--target-accuracy", "none", "--no-export", *args])


def test_a_resume_without_a_location_uses_the_one_the_study_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    assert run_tiny(tmp_path, "--trials", "1", "--artifact-store", str(shared)) == 0
    assert f"artifacts in {shared}" in capsys.readouterr().out.splitlines()[0]
    assert run_tiny(tmp_path, "--trials", "2") == 0
    study = optuna.load_study(study_name="mnist", storage=reader_storage(f"sqlite:///{tmp_path / 's.db'}"))
    assert study.user_attrs[record.ARTIFACT_STORE] == str(shared)
    models = [record.read(t, record.MODEL_ARTIFACT) for t in study.trials if record.read(t, record.MODEL_ARTIFACT)]
    assert models and all((shared / m).is_file() for m in models)
    assert not artifact_dir().exists()  # nothing went to this machine's own folder


def test_another_location_on_resume_is_refused_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shared, other = tmp_path / "shared", tmp_path / "other"
    shared.mkdir()
    other.mkdir()
    assert run_tiny(tmp_path, "--trials", "1", "--artifact-store", str(shared)) == 0
    url = f"sqlite:///{tmp_path / 's.db'}"
    before = optuna.load_study(study_name="mnist", storage=reader_storage(url))
    attrs, trials = dict(before.user_attrs), [(t.state, t.user_attrs, t.system_attrs) for t in before.trials]  # read now, not on access
    capsys.readouterr()
    assert run_tiny(tmp_path, "--trials", "2", "--artifact-store", str(other)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: study 'mnist' keeps its artifacts in") and str(other) in err[0], err
    after = optuna.load_study(study_name="mnist", storage=reader_storage(url))
    assert after.user_attrs == attrs
    assert [(t.state, t.user_attrs, t.system_attrs) for t in after.trials] == trials
    assert not list(other.iterdir())


def test_a_resume_where_the_recorded_store_is_missing_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The recorded store was opened only where trials run: a resume on a machine without it
    (a folder not mounted there, an S3 bucket without credentials) rewrote the study's recorded
    settings first, and with --workers each worker died with a traceback."""
    shared = tmp_path / "shared"
    shared.mkdir()
    assert run_tiny(tmp_path, "--trials", "1", "--artifact-store", str(shared)) == 0
    url = f"sqlite:///{tmp_path / 's.db'}"
    before = optuna.load_study(study_name="mnist", storage=reader_storage(url))
    attrs, trials = dict(before.user_attrs), len(before.trials)  # read now: a Study's user_attrs are read from storage on access
    shared.rename(tmp_path / "unmounted")
    capsys.readouterr()
    assert run_tiny(tmp_path, "--trials", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(shared) in err[0] and "does not exist on this machine" in err[0], err
    after = optuna.load_study(study_name="mnist", storage=reader_storage(url))
    assert after.user_attrs == attrs and len(after.trials) == trials


def test_a_study_without_a_shared_store_cannot_move_to_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_tiny(tmp_path, "--trials", "1") == 0
    shared = tmp_path / "shared"
    shared.mkdir()
    capsys.readouterr()
    assert run_tiny(tmp_path, "--trials", "2", "--artifact-store", str(shared)) == 2
    assert "each machine's own artifacts/ folder" in capsys.readouterr().err


def test_naming_this_machines_own_artifact_folder_resumes_a_study_that_keeps_its_artifacts_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The study keeps its artifacts in this machine's own folder, and the run named that very folder
    (spelled another way here): it was refused with "keeps its artifacts in each machine's own
    artifacts/ folder ..., not in <that folder>", where only another store is refused."""
    assert run_tiny(tmp_path, "--trials", "1") == 0
    own = artifact_dir()
    assert own.is_dir()
    capsys.readouterr()
    assert run_tiny(tmp_path, "--trials", "2", "--artifact-store", f"{own.parent}/./{own.name}/") == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="mnist", storage=reader_storage(f"sqlite:///{tmp_path / 's.db'}"))
    assert record.ARTIFACT_STORE not in study.user_attrs  # still this machine's own folder, on every machine
    assert len([t for t in study.trials if t.state.is_finished()]) == 2
    models = [record.read(t, record.MODEL_ARTIFACT) for t in study.trials if record.read(t, record.MODEL_ARTIFACT)]
    assert len(models) == 2 and all((own / m).is_file() for m in models)


def test_this_machines_artifact_folder_that_cannot_be_made_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a MNIST_SEARCH_HOME in /proc (root may write there, says os.access) making the folder
    was a FileNotFoundError traceback after the study had been created."""
    from search.artifact_stores import local_location

    monkeypatch.setenv("MNIST_SEARCH_HOME", "/proc/mnist-search-home")
    with pytest.raises(ArtifactStoreError, match="cannot make the artifact folder /proc/mnist-search-home/artifacts") as error:
        open_store(local_location())
    assert "\n" not in str(error.value) and "MNIST_SEARCH_HOME" in str(error.value)


@pytest.mark.slow
def test_a_search_on_s3_keeps_its_models_there_and_any_machine_exports_them(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from search.export.__main__ import main as export_main

    location = f"s3://{s3_bucket}/team/mnist"
    assert run_tiny(tmp_path, "--trials", "2", "--artifact-store", location) == 0, capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.load_study(study_name="mnist", storage=reader_storage(url))
    assert study.user_attrs[record.ARTIFACT_STORE] == location
    models = sorted(str(record.read(t, record.MODEL_ARTIFACT)) for t in study.trials if record.read(t, record.MODEL_ARTIFACT))
    assert models and s3_keys(s3_bucket) == [f"team/mnist/{m}" for m in models]  # the weights; no checkpoint left
    assert all(record.read(t, record.CHECKPOINT_SECONDS) is not None for t in study.trials)

    monkeypatch.setenv("MNIST_SEARCH_HOME", str(tmp_path / "another-machine"))
    assert export_main(["--storage", url]) == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    metrics = json.loads((tmp_path / "another-machine" / "exports" / "mnist" / "metrics.json").read_text())
    assert "retrained" not in metrics["note"], metrics["note"]  # the weights came from the bucket
    assert len(s3_keys(s3_bucket)) > len(models)  # the export's files, linked to the best trial
    assert SECRET not in out + err + json.dumps(study.user_attrs) + json.dumps(metrics)


def test_the_dashboard_shows_the_store_the_studies_recorded(tmp_path: Path) -> None:
    """A study that recorded no store keeps its artifacts in this machine's folder: beside a study
    with a shared store, the dashboard served the shared one for both and every artifact of the
    other was a server error; the mix is refused like two shared stores."""
    from search.artifact_stores import LOCAL, storage_location
    from search.dashboard import open_dashboard, parse_args

    url = f"sqlite:///{tmp_path / 'd.db'}"
    shared = tmp_path / "shared"
    shared.mkdir()
    optuna.create_study(study_name="a", storage=url).set_user_attr(record.ARTIFACT_STORE, str(shared))
    board = open_dashboard(parse_args(["--storage", url, "--port", "0"]))
    try:
        assert board.artifacts == str(shared)
    finally:
        board.server.server_close()
        board.storage.engine.dispose()
    optuna.create_study(study_name="b", storage=url)  # recorded none: this machine's folder
    with pytest.raises(ArtifactStoreError, match=f"in 2 stores .*{re.escape(LOCAL)}.*pass --artifact-store"):
        storage_location(reader_storage(url))
    optuna.create_study(study_name="c", storage=url).set_user_attr(record.ARTIFACT_STORE, "s3://other-bucket/x")
    with pytest.raises(ArtifactStoreError, match="in 3 stores .*pass --artifact-store"):
        storage_location(reader_storage(url))


def test_a_recorded_store_that_is_not_a_location_is_one_line() -> None:
    """A number recorded as the study's artifact store (a hand-edited or foreign database) was a
    TypeError traceback from the export and the dashboard."""
    import optuna

    from search.artifact_stores import ArtifactStoreError, recorded_location
    from search.record import ARTIFACT_STORE

    study = optuna.create_study(study_name="odd")
    study.set_user_attr(ARTIFACT_STORE, 42)
    with pytest.raises(ArtifactStoreError, match="records an artifact store that is not a location") as error:
        recorded_location(study)
    assert "\n" not in str(error.value) and "--artifact-store" in str(error.value)


def test_an_artifact_that_is_not_a_regular_file_is_not_found_at_once(tmp_path: Path) -> None:
    """A FIFO in the place of the best trial's weights blocked the export for ever on open."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    from search.artifact_stores import build_artifact_store

    store = build_artifact_store(tmp_path / "store")
    os.mkfifo(tmp_path / "store" / "weights")
    with pytest.raises(ArtifactNotFound, match="artifact weights is not a regular file"):
        store.open_reader("weights")
