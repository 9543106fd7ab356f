"""search.dashboard: one command to watch the study, checked as a person sees it.

The read-only default and the Host check are tested on the dashboard's own app over a real
SQLite file and artifact folder, in this process and through a real server on 127.0.0.1.
One real tiny search runs per module with the dashboard open on it from the start: the live
test checks that polling it during the run disturbed neither process, the browser test then
drives the system Chromium (Playwright, no browser download) over the finished study.
Every subprocess is stopped in a `finally`; every wait is bounded.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from helpers import writer_storage
from preloaded import SearchProcess
from search.dashboard import LOOPBACK, UNSPECIFIED, Dashboard, allowed_hosts, main, open_dashboard, parse_args
from search.export.files import FILES
from search.export.note import RunSummary, study_note, write_study_note
from search.studies import load_existing_study

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TRIALS = 5  # a few trials of both classifiers for the pages to show
MAX_EPOCHS = 2
TINY_CONFIG = """\
data:
  val_size: 1000
space:
  units: {low: 32, high: 256, log: true}
"""
START_SECONDS = 60  # generous: the machine is shared
RUN_SECONDS = 300
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- processes -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(command: list[str], env: dict[str, str], logs: Path, name: str) -> subprocess.Popen[bytes]:
    """Output goes to files, never to pipes, so a chatty process cannot block on a full pipe."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.out", "wb") as out, open(logs / f"{name}.err", "wb") as err:
        return subprocess.Popen(command, env=env, stdout=out, stderr=err, cwd=Path(__file__).parents[1])


def stop(process: subprocess.Popen[bytes] | SearchProcess) -> None:
    """Ctrl-C first (a clean stop), then kill if it does not end."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def read_log(logs: Path, name: str) -> str:
    return "".join((logs / f"{name}.{kind}").read_text(errors="replace") for kind in ("out", "err"))


def wait_until(condition: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes] | SearchProcess) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def study_listed(base: str, name: str = "mnist") -> bool:
    """The dashboard already running has seen the study the search just created."""
    try:
        return any(s["study_name"] == name for s in get_json(f"{base}/api/studies")["study_summaries"])
    except (OSError, ValueError):
        return False


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200, url
        return json.load(response)


def study_id(base: str, name: str = "mnist") -> int:
    studies = get_json(f"{base}/api/studies")["study_summaries"]
    return next(s["study_id"] for s in studies if s["study_name"] == name)


# ---- one live run per module -----------------------------------------------------------------

@dataclass
class LiveRun:
    """What happened while the dashboard watched a real search, and where to reach both."""

    base: str
    study_id: int
    home: Path
    logs: Path
    search_returncode: int | None = None
    polls: int = 0
    poll_errors: list[str] = field(default_factory=list)
    finished_counts: set[int] = field(default_factory=set)


def poll_during(run: LiveRun, search: SearchProcess) -> None:
    """Read the study the way the open browser tab does, as often as it can, until the search ends."""
    while search.poll() is None:
        try:
            detail = get_json(f"{run.base}/api/studies/{run.study_id}")
            run.finished_counts.add(sum(t["state"] in ("Complete", "Pruned") for t in detail["trials"]))
        except (OSError, AssertionError, ValueError) as error:  # urllib's HTTPError is an OSError
            run.poll_errors.append(repr(error))
        run.polls += 1
        time.sleep(0.25)


@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Iterator[LiveRun]:
    root = tmp_path_factory.mktemp("live")
    home, logs, db = root / "home", root / "logs", root / "s.db"
    (root / "tiny.yaml").write_text(TINY_CONFIG)
    env = {**os.environ, "MNIST_SEARCH_HOME": str(home), "MNIST_DATA_DIR": str(mnist_dir), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    storage = f"sqlite:///{db}"
    writer_storage(storage)  # an empty database, as a user has before the first run
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The dashboard is up before the search starts: tiny trials finish within the seconds the
    # dashboard takes to start, and the point is to watch trials finish.
    board = start([sys.executable, "-m", "search.dashboard", "--storage", storage, "--port", str(port)], env, logs, "dashboard")
    search: SearchProcess | None = None
    try:
        wait_until(lambda: port_open(port), START_SECONDS, f"the dashboard on port {port}", board)
        search = SearchProcess([
            "--config", str(root / "tiny.yaml"), "--storage", storage,
            "--trials", str(TRIALS), "--train-size", "1000", "--max-epochs", str(MAX_EPOCHS), "--target-accuracy", "none",
        ], env, logs, "search")
        wait_until(lambda: study_listed(base), RUN_SECONDS, "the dashboard to list the new study", search)
        run = LiveRun(base, study_id(base), home, logs)
        poll_during(run, search)
        run.search_returncode = search.wait(timeout=RUN_SECONDS)
        yield run  # search.run wrote the study note when it ended; the browser test reads it
    finally:
        if search is not None:
            stop(search)
        stop(board)


@pytest.mark.slow
def test_dashboard_reads_while_a_search_writes(live_run: LiveRun) -> None:
    """No "database is locked" in either process while the dashboard polls a live study."""
    run_log, board_log = read_log(live_run.logs, "search"), read_log(live_run.logs, "dashboard")
    assert live_run.search_returncode == 0, run_log
    assert live_run.polls >= 5 and not live_run.poll_errors, live_run.poll_errors
    assert len(live_run.finished_counts) >= 2, f"no trial finished while the dashboard watched ({live_run.finished_counts})"
    for log in (run_log, board_log):
        assert "database is locked" not in log, log
        assert "Traceback" not in log, log


# ---- as a person sees it in Chromium ---------------------------------------------------------

def check_trials(detail: dict[str, Any]) -> dict[str, Any]:
    """Every trial has its classifier and validation accuracy per epoch, within its epoch budget. Returns the best."""
    trials = detail["trials"]
    assert len(trials) == TRIALS
    for trial in trials:
        assert "classifier" in {p["name"] for p in trial["params"]}, trial["number"]
        steps = [point["step"] for point in trial["intermediate_values"]]
        assert steps, f"trial {trial['number']} has no intermediate values"
        promoted = any(attr["key"] == "promoted_from" for attr in trial["user_attrs"])  # shown: it trains 3 x longer
        assert len(steps) <= MAX_EPOCHS * (3 if promoted else 1)
    best_number = detail["best_trials"][0]["number"]
    return next(t for t in trials if t["number"] == best_number)


def check_artifacts(page: Any, base: str, sid: int, best: dict[str, Any]) -> list[str]:
    """Every artifact of the best trial is served with 200 and its own type; every PNG is an image."""
    artifacts = best["artifacts"]
    assert artifacts, "the best trial has no artifacts (its model file should be one)"
    for artifact in artifacts:
        response = page.request.get(f"{base}/artifacts/{sid}/{best['trial_id']}/{artifact['artifact_id']}")
        assert response.status == 200, artifact
        content_type = response.headers["content-type"]
        assert content_type == artifact["mimetype"], artifact
        if artifact["filename"].lower().endswith(".png") or content_type.startswith("image/"):
            assert content_type == "image/png", artifact
            assert response.body().startswith(PNG_MAGIC), artifact
    return [a["filename"] for a in artifacts]


def check_images_rendered(page: Any) -> int:
    """The artifact thumbnails the browser shows have loaded (natural width > 0); returns how many."""
    images = page.locator("img[src*='/artifacts/']")
    for index in range(images.count()):
        image = images.nth(index)
        image.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete", arg=image.element_handle())
        assert image.evaluate("img => img.naturalWidth") > 0, image.get_attribute("src")
    return images.count()


def detail_after_export(base: str, sid: int, timeout: float = 30) -> dict[str, Any]:
    """The study as the dashboard serves it once it has re-read the trials after the export.

    The dashboard caches a study's trials for 2 s; it watched the run, so its cache may still hold
    the best trial as it was before the export attached the pictures, or while it attached them
    one by one (a snapshot with all but the last: wait for every picture of the export).
    """
    deadline = time.monotonic() + timeout
    pictures = {name for name in FILES if name.endswith(".png")}
    while True:
        detail = get_json(f"{base}/api/studies/{sid}")
        best_number = detail["best_trials"][0]["number"]
        best = next(t for t in detail["trials"] if t["number"] == best_number)
        if pictures <= {a["filename"] for a in best["artifacts"]}:
            return detail
        # returning on no PNG made every PNG check below pass on an empty list
        assert time.monotonic() < deadline, f"not every picture linked to the best trial after {timeout:.0f} s: {best['artifacts']}"
        time.sleep(0.5)


def launch_chromium(playwright: Any) -> Any:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}; install it with: apt-get install -y chromium (.ci/run does)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.mark.slow
def test_browser_shows_trials_note_and_the_best_trials_artifacts(live_run: LiveRun, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert live_run.search_returncode == 0, read_log(live_run.logs, "search")
    base, sid = live_run.base, live_run.study_id
    best = check_trials(detail_after_export(base, sid))
    png_artifacts = [a for a in best["artifacts"] if a["mimetype"] == "image/png"]
    linked = {a["filename"] for a in best["artifacts"]}
    assert {name for name in FILES if name.endswith(".png")} <= linked, linked  # every picture of the export
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(30_000)
            served: list[Any] = []
            page.on("response", lambda r: served.append(r) if "/artifacts/" in r.url else None)

            page.goto(f"{base}/dashboard/studies/{sid}")  # then click through, as a person does
            page.get_by_text(f"Best Trial (number={best['number']})").first.wait_for()
            page.get_by_text("Intermediate values").first.wait_for()
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(tmp_path / "study.png"), full_page=True)

            page.get_by_role("link", name="Note", exact=True).click()
            page.get_by_text("Run summary: study").first.wait_for()
            page.get_by_text("Best validation accuracy").first.wait_for()
            page.screenshot(path=str(tmp_path / "note.png"))

            page.get_by_role("link", name="History", exact=True).click()
            page.get_by_role("link", name="Details").click()  # on the Best Trial card
            page.wait_for_url(f"**/trials?numbers={best['number']}")
            page.get_by_role("heading", name="Artifacts").first.wait_for()
            page.wait_for_function("[...document.images].every(img => img.complete)")
            page.screenshot(path=str(tmp_path / "best-trial.png"))
            for number in range(TRIALS):
                page.get_by_text(f"Trial {number}", exact=True).first.wait_for()
            page.get_by_text("Best Trial", exact=True).first.wait_for()
            for filename in check_artifacts(page, base, sid, best):
                page.get_by_text(filename, exact=True).first.wait_for()
            assert check_images_rendered(page) == len(png_artifacts)
        finally:
            browser.close()
    assert all(r.status == 200 for r in served), [(r.url, r.status) for r in served]
    assert all(r.headers["content-type"].startswith("image/") for r in served if r.request.resource_type == "image")
    for name in ("study.png", "note.png", "best-trial.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name


# ---- the study note --------------------------------------------------------------------------

SUMMARY = RunSummary(
    target_accuracy=0.95, budget=100, stopped="target reached by trial 17 (0.9712 >= 0.95)",
    best_trial=17, classifier="dnn", val_accuracy=0.97123, test_accuracy=0.96901,
    export_dir="storage/exports/mnist",
)


def test_study_note_states_target_budget_accuracies_and_export() -> None:
    note = study_note("mnist", SUMMARY)
    for text in ("`mnist`", "0.9500", "100 finished trials", "trial 17 (dnn)", "0.9712", "0.9690", "`storage/exports/mnist`"):
        assert text in note


def test_study_note_without_target_or_export_says_so() -> None:
    note = study_note("mnist", RunSummary(
        target_accuracy=None, budget=4, stopped=None, best_trial=None, classifier=None, val_accuracy=0.8,
    ))
    assert "none (spend the whole budget)" in note
    assert "none (export off)" in note
    assert "**Test accuracy** of the best trial: n/a" in note
    assert "exported pictures" not in note and "the export's" not in note  # a --no-export run's note promised them
    assert "exported pictures" in study_note("mnist", SUMMARY) and "the export's param_importances.png" in study_note("mnist", SUMMARY)


def test_a_note_written_by_hand_is_kept_and_a_name_cannot_add_markdown(tmp_path: Path) -> None:
    """Each run's end replaced the note, so a note a user wrote on a dashboard run with
    --allow-writes was gone for good; and a study name with a backtick closed its code span, so
    `x` **[Download](https://evil.example)** `y` rendered a link the project never wrote."""
    import optuna
    from optuna_dashboard import get_note, save_note

    storage = writer_storage(f"sqlite:///{tmp_path / 'n.db'}")
    study = optuna.create_study(study_name="mnist", storage=storage)
    save_note(study, "MY OWN NOTES: lr > 1e-2 diverges")
    assert write_study_note(study, SUMMARY) is False
    assert get_note(load_existing_study("mnist", storage)) == "MY OWN NOTES: lr > 1e-2 diverges"
    name = "x` **[Download](https://evil.example)** ``y"
    title = study_note(name, SUMMARY).splitlines()[0]
    assert title == f"## Run summary: study ``` {name} ```", title  # a fence longer than any run of backticks in it


def test_write_study_note_replaces_the_previous_note(tmp_path: Path) -> None:
    import optuna
    from optuna_dashboard import get_note

    storage = writer_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="mnist", storage=storage, direction="maximize")
    write_study_note(study, replace(SUMMARY, export_dir="first"))
    write_study_note(study, SUMMARY)
    # write_study_note counts the completed DNN trials itself (none in this empty study)
    assert get_note(load_existing_study("mnist", storage)) == study_note("mnist", replace(SUMMARY, completed_dnn_trials=0))


@pytest.mark.parametrize("name", ["exports", "a `tick` folder "])
def test_a_run_that_exports_nothing_keeps_the_export_the_note_named_while_it_holds_the_best_trial(tmp_path: Path, name: str) -> None:
    """A --no-export run (or one with nothing left to run) after an export wrote "Test accuracy: n/a",
    "Export folder: none (export off)" and "export it for the pictures" beside the export on disk,
    its files linked to the best trial. A folder gone, or holding another trial's export, is not kept."""
    import json

    import optuna
    from optuna_dashboard import get_note

    from search.export.files import export_identity
    from search.export.folder import MARKER

    storage = writer_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="mnist", storage=storage, direction="maximize")
    folder = tmp_path / name
    folder.mkdir()
    (folder / MARKER).write_text(export_identity(study).marker_text())
    (folder / "metrics.json").write_text(json.dumps({"best_trial": 17, "test_accuracy": 0.9611}))
    write_study_note(study, replace(SUMMARY, export_dir=str(folder)))
    unexported = replace(SUMMARY, test_accuracy=None, export_dir=None, stopped="budget of 100 finished trials spent")
    write_study_note(study, unexported)
    note = get_note(load_existing_study("mnist", storage))
    assert note == study_note("mnist", replace(unexported, test_accuracy=0.9611, export_dir=str(folder), completed_dnn_trials=0)), note
    (folder / "metrics.json").write_text(json.dumps({"best_trial": 12, "test_accuracy": 0.9}))  # another export replaced it
    write_study_note(study, unexported)
    assert "none (export off)" in get_note(load_existing_study("mnist", storage))


def test_a_run_that_exports_nothing_names_no_export_that_is_gone(tmp_path: Path) -> None:
    import optuna
    from optuna_dashboard import get_note

    storage = writer_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="mnist", storage=storage, direction="maximize")
    write_study_note(study, replace(SUMMARY, export_dir=str(tmp_path / "deleted")))
    write_study_note(study, replace(SUMMARY, test_accuracy=None, export_dir=None))
    note = get_note(load_existing_study("mnist", storage))
    assert "none (export off)" in note and "**Test accuracy** of the best trial: n/a" in note, note


# ---- the command line ------------------------------------------------------------------------

def test_dashboard_module_does_not_import_torch(python: str, run_env: dict[str, str]) -> None:
    code = "import sys, search.dashboard; assert not {'torch', 'lightning'} & set(sys.modules)"
    subprocess.run([python, "-c", code], env=run_env, check=True, timeout=60)


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("sqlite:///{tmp}/missing/s.db", "no study database at"),
        ("postgresql://user:s3cret-pw@127.0.0.1:1/mnist", "postgresql://user:***@127.0.0.1:1/mnist"),
        ("not a url", "not a valid SQLAlchemy URL"),
    ],
    ids=["missing-sqlite-file", "unreachable-postgres", "malformed"],
)
def test_bad_storage_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], storage: str, message: str) -> None:
    assert main(["--storage", storage.format(tmp=tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert "s3cret" not in err
    assert not (tmp_path / "missing").exists(), "a mistyped SQLite path must not create a database"


def damaged_study_file(path: Path) -> None:
    """A study database whose `studies` table page is overwritten (a disk error, a bad copy): its
    schema reads and Optuna opens it; listing its studies fails."""
    import sqlite3

    import optuna

    optuna.create_study(study_name="damaged", storage=f"sqlite:///{path}").optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode=DELETE")  # every page in the file itself
        page = connection.execute("PRAGMA page_size").fetchone()[0]
        (root,) = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'studies'").fetchone()
    data = bytearray(path.read_bytes())
    data[(root - 1) * page:root * page] = b"\xab" * page
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path.mkdir(), "is not a regular file, so not a study database; pass --storage the database file"),
        (lambda path: path.write_bytes(bytes(range(256)) * 16), "is not an SQLite database (a file of another kind, or one damaged)"),
        (damaged_study_file, "(database disk image is malformed); the file is damaged: restore it from a backup"),
    ],
    ids=["folder", "not-sqlite", "damaged"],
)
def test_a_storage_that_is_no_readable_database_is_one_line_before_the_banner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, message: str
) -> None:
    """A folder was "no study database at" (it exists), a file of another kind "no studies table",
    and a damaged database printed the banner, then a 95-line traceback."""
    path = tmp_path / "s.db"
    make(path)
    before = sorted(tmp_path.iterdir())
    assert main(["--storage", f"sqlite:///{path}", "--port", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1 and message in err, (out, err)
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("storage", ["", " "])
def test_an_empty_storage_is_refused_not_read_as_the_default(
    storage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--storage ""` served the default database, as if the flag were left out (search.run and
    search.export refuse it)."""
    import optuna

    monkeypatch.setenv("MNIST_SEARCH_HOME", str(tmp_path))
    optuna.create_study(study_name="mnist", storage=writer_storage(f"sqlite:///{tmp_path / 'mnist-search.db'}"))
    with pytest.raises(SystemExit) as exited:
        main(["--storage", storage, "--port", "0"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --storage is empty;") and err.count("\n") == 1, err


def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import optuna

    db = tmp_path / "s.db"
    optuna.create_study(study_name="mnist", storage=writer_storage(f"sqlite:///{db}"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--storage", f"sqlite:///{db}", "--port", str(port)]) == 2
    assert capsys.readouterr().err == f"error: cannot listen on 127.0.0.1:{port} (Address already in use); pass a free --port\n"


def test_an_address_this_machine_does_not_have_is_named_as_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--host 10.255.255.1 --allow-remote failed to bind (EADDRNOTAVAIL) and said "pass a free --port",
    which no port would fix. 192.0.2.1 is TEST-NET-1 (RFC 5737), assigned to no machine."""
    import optuna

    with socket.socket() as probe:
        try:
            probe.bind(("192.0.2.1", 0))
        except OSError:
            pass
        else:
            pytest.skip("this machine has 192.0.2.1")
    db = tmp_path / "s.db"
    optuna.create_study(study_name="mnist", storage=writer_storage(f"sqlite:///{db}"))
    assert main(["--storage", f"sqlite:///{db}", "--host", "192.0.2.1", "--allow-remote", "--port", "0"]) == 2
    assert capsys.readouterr().err == (
        "error: cannot listen on 192.0.2.1:0 (Cannot assign requested address); pass --host an address of this machine (or 0.0.0.0 for all of them)\n"
    )


@contextmanager
def serving_one_study(tmp_path: Path, host: str, *extra: str) -> Iterator[Dashboard]:
    """A dashboard on `host` (port 0) over a study 'mnist', serving in a thread until the block
    ends; skips where `host` is IPv6 and this machine has no IPv6."""
    import optuna

    if ":" in host:
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind((host, 0))
        except OSError:
            pytest.skip("this machine has no IPv6")
    db = tmp_path / "s.db"
    optuna.create_study(study_name="mnist", storage=writer_storage(f"sqlite:///{db}"))
    board = open_dashboard(parse_args(["--storage", f"sqlite:///{db}", "--host", host, *extra, "--port", "0"]))
    threading.Thread(target=board.server.serve_forever, daemon=True).start()
    try:
        yield board
    finally:
        board.server.shutdown()
        board.server.server_close()


def studies_listed(board: Dashboard) -> list[str]:
    with urllib.request.urlopen(f"{board.base}/api/studies", timeout=30) as response:  # a local test server
        return [s["study_name"] for s in json.load(response)["study_summaries"]]


@pytest.mark.parametrize("host", ["127.0.0.2", "0:0:0:0:0:0:0:1", "LOCALHOST", "127.1"])
def test_a_loopback_host_however_written_needs_no_allow_remote(host: str) -> None:
    """127.0.0.2, ::1 in full, LOCALHOST and 127.1 were refused as "reachable from other machines"."""
    assert parse_args(["--host", host]).host == host


def test_a_bracketed_ipv6_host_is_told_to_drop_the_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    """--host [::1] (a URL's form, which no socket binds) was called "reachable from other machines"."""
    with pytest.raises(SystemExit) as caught:
        parse_args(["--host", "[::1]"])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "write an IPv6 address without its brackets (--host ::1)" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("host", LOOPBACK)
def test_every_loopback_host_it_accepts_listens_and_answers(tmp_path: Path, host: str) -> None:
    """--host ::1 passed the loopback check and then failed to listen (WSGIServer's socket is IPv4
    only), with advice to pass an address of this machine, which ::1 is."""
    with serving_one_study(tmp_path, host) as board:
        assert board.base.startswith(f"http://{'[::1]' if host == '::1' else host}:")
        assert studies_listed(board) == ["mnist"]


@pytest.mark.parametrize("host", UNSPECIFIED)
def test_all_interfaces_prints_a_loopback_url_that_answers(tmp_path: Path, host: str) -> None:
    """--host :: printed http://127.0.0.1:PORT whether or not its socket took IPv4 (it does not
    where net.ipv6.bindv6only is 1); now it takes IPv4 too, and the URL printed is one it answers."""
    with serving_one_study(tmp_path, host, "--allow-remote") as board:
        assert board.base.startswith("http://127.0.0.1:"), board.base
        if ":" in host:  # dual stack whatever net.ipv6.bindv6only says (it is 0 here: the URL alone would pass)
            assert board.server.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert studies_listed(board) == ["mnist"]


# ---- read-only unless --allow-writes -----------------------------------------------------------

@dataclass
class BoardFiles:
    """A finished study with one trial artifact and one study artifact, as a run leaves them."""

    db: Path
    artifacts: Path
    study_id: int
    trial_id: int
    trial_artifact: str
    study_artifact: str

    def argv(self, *more: str) -> list[str]:
        return ["--storage", f"sqlite:///{self.db}", "--artifact-dir", str(self.artifacts), "--port", "0", *more]


@pytest.fixture
def board_files(tmp_path: Path) -> BoardFiles:
    import optuna
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    db, artifacts = tmp_path / "s.db", tmp_path / "artifacts"
    artifacts.mkdir()
    (tmp_path / "weights.bin").write_bytes(b"trial weights")
    (tmp_path / "summary.txt").write_text("study summary")
    storage = writer_storage(f"sqlite:///{db}")
    study = optuna.create_study(study_name="mnist", storage=storage, direction="maximize")
    store = FileSystemArtifactStore(str(artifacts))
    trial = study.ask()
    trial_artifact = upload_artifact(artifact_store=store, file_path=str(tmp_path / "weights.bin"), study_or_trial=trial)
    study.tell(trial, 0.9)
    study_artifact = upload_artifact(artifact_store=store, file_path=str(tmp_path / "summary.txt"), study_or_trial=study)
    sid = storage.get_study_id_from_name("mnist")
    files = BoardFiles(db, artifacts, sid, storage.get_trial_id_from_study_id_trial_number(sid, trial.number), trial_artifact, study_artifact)
    storage.engine.dispose()  # as after a run: no writer holds the file
    return files


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def database_dump(db: Path) -> str:
    """Every row of the database, read without writing."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return "\n".join(connection.iterdump())
    finally:
        connection.close()


@contextmanager
def opened(argv: list[str]) -> Iterator[Dashboard]:
    """The dashboard exactly as the command builds it, bound to a free port on 127.0.0.1."""
    board = open_dashboard(parse_args(argv))
    try:
        yield board
    finally:
        board.server.server_close()
        board.storage.engine.dispose()


@contextmanager
def serving(argv: list[str]) -> Iterator[Dashboard]:
    """The same, answering real HTTP in a thread until the block ends."""
    with opened(argv) as board:
        thread = threading.Thread(target=board.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield board
        finally:
            board.server.shutdown()
            thread.join(timeout=30)


def send(board: Dashboard, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One real request to 127.0.0.1; http.client sends any method, lower-case ones included."""
    connection = http.client.HTTPConnection("127.0.0.1", board.server.server_address[1], timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def upload_body(text: str) -> dict[str, str]:
    return {"file": "data:text/plain;base64," + base64.b64encode(text.encode()).decode(), "filename": "orphan.txt"}


LARGE_UPLOAD = 8 << 20  # bytes, past what the kernel buffers: unread, the connection is reset


WRITES: dict[str, tuple[str, str, Callable[[], dict[str, Any]] | None]] = {
    # what the page sends to change something; {s} study id, {t} trial id, {ta}/{sa} artifact ids
    "delete-trial-artifact": ("DELETE", "/api/artifacts/{s}/{t}/{ta}", None),
    "delete-study-artifact": ("DELETE", "/api/artifacts/{s}/{sa}", None),
    "lower-case-delete": ("delete", "/api/artifacts/{s}/{t}/{ta}", None),  # bottle routes it as DELETE
    "upload-study-artifact": ("POST", "/api/artifacts/{s}", lambda: upload_body("orphan")),
    "upload-trial-artifact": ("POST", "/api/artifacts/{s}/{t}", lambda: upload_body("orphan")),
    "large-upload": ("POST", "/api/artifacts/{s}", lambda: upload_body("x" * LARGE_UPLOAD)),  # refused, not cut off
    "save-study-note": ("PUT", "/api/studies/{s}/note", lambda: {"version": 1, "body": "edited"}),
    "delete-study": ("DELETE", "/api/studies/{s}", None),
    "options": ("OPTIONS", "/api/studies", None),
}


@pytest.mark.parametrize("write", WRITES, ids=list(WRITES))
def test_read_only_refuses_every_write_before_the_artifact_folder_sees_it(
    board_files: BoardFiles, capfd: pytest.CaptureFixture[str], write: str,
) -> None:
    method, template, make_body = WRITES[write]
    body = make_body() if make_body else None
    f = board_files
    path = template.format(s=f.study_id, t=f.trial_id, ta=f.trial_artifact, sa=f.study_artifact)
    files, rows = folder_contents(f.artifacts), database_dump(f.db)
    with serving(f.argv()) as board:
        status, headers, answer = send(board, method, path, body)
        assert (status, headers["Allow"]) == (405, "GET, HEAD"), answer
        assert headers["Content-Type"].startswith("text/plain") and b"--allow-writes" in answer and answer.count(b"\n") == 1
        # reading still works, the refused artifact included
        assert send(board, "GET", f"/artifacts/{f.study_id}/{f.trial_id}/{f.trial_artifact}")[::2] == (200, b"trial weights")
        assert send(board, "HEAD", "/api/meta")[0] == 200
    assert folder_contents(f.artifacts) == files
    assert database_dump(f.db) == rows
    out, err = capfd.readouterr()
    assert (out, err) == ("", ""), "the refusal must print nothing, least of all a traceback"


def test_allow_writes_lets_the_page_upload_and_delete_artifacts(board_files: BoardFiles) -> None:
    """The guard is the read-only default, not a lock: --allow-writes reaches optuna-dashboard."""
    f = board_files
    with serving(f.argv("--allow-writes")) as board:
        status, _, answer = send(board, "POST", f"/api/artifacts/{f.study_id}", upload_body("uploaded"))
        assert status == 201, answer
        new = json.loads(answer)["artifact_id"]
        assert (f.artifacts / new).read_bytes() == b"uploaded"
        assert send(board, "DELETE", f"/api/artifacts/{f.study_id}/{f.study_artifact}")[0] == 204
    assert set(folder_contents(f.artifacts)) == {f.trial_artifact, new}


# ---- only requests addressed to this dashboard (no DNS rebinding) ------------------------------

def wsgi_call(board: Dashboard, host: str | None, path: str = "/api/meta") -> tuple[str, bytes]:
    """One request straight into the server's WSGI app, with this Host header (None: none sent)."""
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": path}
    setup_testing_defaults(environ)
    if host is None:
        del environ["HTTP_HOST"]
    else:
        environ["HTTP_HOST"] = host
    statuses: list[str] = []
    body = b"".join(board.server.get_app()(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    return statuses[0], body


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:{port}", "200 OK"),
        ("localhost:{port}", "200 OK"),
        ("LocalHost:{port}", "200 OK"),  # host names are case-insensitive
        ("evil.example", "421 Misdirected Request"),
        ("evil.example:{port}", "421 Misdirected Request"),
        ("127.0.0.1:{other}", "421 Misdirected Request"),
        ("127.0.0.1", "421 Misdirected Request"),
        (None, "421 Misdirected Request"),
    ],
    ids=["loopback-ip", "localhost", "mixed-case", "other-host", "other-host-and-port", "other-port", "no-port", "no-host-header"],
)
def test_host_header_must_name_this_dashboard(board_files: BoardFiles, host: str | None, status: str) -> None:
    with opened(board_files.argv()) as board:
        port = board.server.server_address[1]
        answer = wsgi_call(board, host and host.format(port=port, other=port + 1))
    assert answer[0] == status, answer
    if status.startswith("421"):
        assert answer[1] == b"this dashboard answers only requests addressed to its own host and port\n"


def test_allowed_host_adds_names_and_addresses(board_files: BoardFiles) -> None:
    """127.0.0.2 stands in for a LAN address: a concrete, non-default --host (loopback, so the
    test reaches no network)."""
    extra = ["--allowed-host", "192.0.2.7", "--allowed-host", "Board.LAN", "--allowed-host", "[2001:DB8::1]"]
    with opened(board_files.argv("--host", "127.0.0.2", "--allow-remote", *extra)) as board:
        port = board.server.server_address[1]
        for host in ("127.0.0.2", "192.0.2.7", "board.lan", "BOARD.lan", "[2001:db8::1]"):
            assert wsgi_call(board, f"{host}:{port}")[0] == "200 OK", host
        for host in ("192.0.2.8", "evil.example", "board.lan.evil.example", "localhost"):
            assert wsgi_call(board, f"{host}:{port}")[0] == "421 Misdirected Request", host


def test_allowed_hosts_include_the_bound_address_and_the_default_port() -> None:
    """--host NAME binds to an IP: requests by that IP are answered too. Port 80: no port in Host."""
    assert {"board.lan:8080", "192.0.2.7:8080"} <= allowed_hosts("board.lan", 8080, bound="192.0.2.7")
    everywhere = allowed_hosts("0.0.0.0", 8080, bound="0.0.0.0", extra=["192.0.2.7"])
    assert {"192.0.2.7:8080", f"{socket.gethostname().lower()}:8080", "localhost:8080"} <= everywhere
    assert not {"evil.example:8080", ":8080"} & everywhere
    assert {"localhost", "127.0.0.1", "localhost:80"} <= allowed_hosts("127.0.0.1", 80)
    assert "localhost" not in allowed_hosts("127.0.0.1", 8080)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "0.0.0.0"], "add --allow-remote"),
        (["--host", "192.0.2.7"], "add --allow-remote"),
        (["--allowed-host", "localhost:8080"], "argument --allowed-host: expected a host name or IP address without a port"),
        (["--allowed-host", "*"], "argument --allowed-host: expected a host name or IP address without a port"),
        (["--allowed-host", "a b\nc"], "argument --allowed-host: expected a host name or IP address without a port"),
        (["--port", "70000"], "argument --port: expected a port number 0-65535, got '70000'"),
        (["--port", "-1"], "argument --port: expected a port number 0-65535, got '-1'"),
    ],
    ids=["any-address", "lan-address", "host-with-port", "wildcard", "space-and-newline", "port-too-high", "port-negative"],
)
def test_bad_host_options_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    """Refused before anything is opened or bound: the missing database is never reported."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--storage", f"sqlite:///{tmp_path / 'missing.db'}", *(["--port", "0"] if "--port" not in argv else []), *argv])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def raw_get(port: int, path: str) -> bytes:
    """A GET as curl or a health check sends it: no Accept-Encoding header."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_request_without_accept_encoding_is_answered(board_files: BoardFiles, capfd: pytest.CaptureFixture[str]) -> None:
    """optuna-dashboard reads Accept-Encoding without a default: every such request was a 500 and
    a page of traceback on the terminal."""
    with serving(board_files.argv()) as board:
        reply = raw_get(board.server.server_address[1], "/favicon.ico")
    assert reply.split(b"\r\n", 1)[0] in (b"HTTP/1.0 200 OK", b"HTTP/1.0 404 Not Found"), reply[:200]
    assert "Traceback" not in capfd.readouterr().err


def test_a_request_the_app_fails_on_is_one_line_on_the_terminal(board_files: BoardFiles, capfd: pytest.CaptureFixture[str]) -> None:
    """An artifact id past SQLite's integers, a query value that is not a number: optuna-dashboard
    fails (500); the terminal shows one line per request, not a traceback anyone could repeat."""
    with serving(board_files.argv()) as board:
        port = board.server.server_address[1]
        for path in ("/artifacts/99999999999999999999999/1/abc", f"/api/studies/{board_files.study_id}?after=abc"):
            assert raw_get(port, path).startswith(b"HTTP/1.0 500")
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 2, err
    assert lines[0].startswith("dashboard: GET /artifacts/99999999999999999999999/1/abc failed (OverflowError"), lines
    # optuna-dashboard logs the second with its traceback inside the message: printed whole before
    assert lines[1] == f"dashboard: GET /api/studies/{board_files.study_id} failed (invalid literal for int() with base 10: 'abc')", lines


def test_idle_connections_are_closed_and_bounded(
    board_files: BoardFiles, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """3,000 connections that sent half a request held 3,000 threads for ever. Now one idle for
    the handler's timeout is closed, and one past the cap is closed at once (here: a 1-second
    timeout and a cap of 2, so the test waits for neither); the close printed a 15-line
    traceback on the dashboard's terminal for each."""
    from search import web_server

    monkeypatch.setattr(web_server.QuietHandler, "timeout", 1)
    monkeypatch.setattr(web_server, "MAX_CONNECTIONS", 2)
    with serving(board_files.argv()) as board:
        port = board.server.server_address[1]
        held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        try:
            for conn in held:
                conn.sendall(b"GET / HTTP/1.1\r\n")  # half a request, then silence
            extra = socket.create_connection(("127.0.0.1", port), timeout=30)
            assert extra.recv(1) == b""  # closed without an answer: no slot
            extra.close()
            for conn in held:
                assert conn.recv(65536) == b""  # the timeout closed it
        finally:
            for conn in held:
                conn.close()
        assert raw_get(port, "/api/meta").startswith(b"HTTP/1.0 200")  # the slots came back
    err = capfd.readouterr().err
    assert "Traceback" not in err and "timed out" not in err, err
