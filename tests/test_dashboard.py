"""search.dashboard: one command to watch the study, checked as a person sees it.

One real tiny search runs per module with the dashboard open on it from the start: the live
test checks that polling it during the run disturbed neither process, the browser test then
drives the system Chromium (Playwright, no browser download) over the finished study.
Every subprocess is stopped in a `finally`; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from helpers import writer_storage
from search.dashboard import main
from search.export.note import RunSummary, study_note, write_study_note
from search.storage import load_existing_study

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TRIALS = 5  # enough for the median pruner (3 start-up trials) to cut one short
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


def stop(process: subprocess.Popen[bytes]) -> None:
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


def wait_until(condition: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes]) -> None:
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


def poll_during(run: LiveRun, search: subprocess.Popen[bytes]) -> None:
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
    search: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: port_open(port), START_SECONDS, f"the dashboard on port {port}", board)
        search = start([
            sys.executable, "-m", "search.run", "--config", str(root / "tiny.yaml"), "--storage", storage,
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
    """Every trial has its classifier and validation accuracy per epoch; pruned ones stop early. Returns the best."""
    trials = detail["trials"]
    assert len(trials) == TRIALS
    for trial in trials:
        assert "classifier" in {p["name"] for p in trial["params"]}, trial["number"]
        steps = [point["step"] for point in trial["intermediate_values"]]
        assert steps, f"trial {trial['number']} has no intermediate values"
        assert len(steps) <= MAX_EPOCHS
        if trial["state"] == "Pruned":
            assert len(steps) < MAX_EPOCHS, f"pruned trial {trial['number']} ran every epoch"
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
    the best trial as it was before the export attached the pictures.
    """
    deadline = time.monotonic() + timeout
    while True:
        detail = get_json(f"{base}/api/studies/{sid}")
        best_number = detail["best_trials"][0]["number"]
        best = next(t for t in detail["trials"] if t["number"] == best_number)
        if any(a["mimetype"] == "image/png" for a in best["artifacts"]) or time.monotonic() > deadline:
            return detail
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


def test_write_study_note_replaces_the_previous_note(tmp_path: Path) -> None:
    import optuna
    from optuna_dashboard import get_note

    storage = writer_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="mnist", storage=storage, direction="maximize")
    write_study_note(study, replace(SUMMARY, export_dir="first"))
    write_study_note(study, SUMMARY)
    # write_study_note counts the completed DNN trials itself (none in this empty study)
    assert get_note(load_existing_study("mnist", storage)) == study_note("mnist", replace(SUMMARY, completed_dnn_trials=0))


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
