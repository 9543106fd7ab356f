"""Downloading MNIST into the cache, against real HTTP servers on 127.0.0.1.

Each test starts its own server in a thread, serving copies of the shared .gz files (or damaged
versions of them) from tmp_path. Every download gets a timeout, so a broken server fails a test
instead of hanging it.
"""

from __future__ import annotations

import base64
import http.server
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import torch

from helpers import data_error
from lightning_modules.data.arrays import MnistArrays, load_data
from lightning_modules.data.datasets import FASHION_MNIST, MIRRORS_ENV, MNIST
from lightning_modules.data.download import download_dataset, mirrors_for
from lightning_modules.data.sources import resolve_data_source
from lightning_modules.errors import DataError

TIMEOUT = 5.0
FILES = sorted(f"{name}.gz" for name in MNIST.files.values())
FIRST_FILE = "train-images-idx3-ubyte.gz"  # the downloader fetches it first
SMALL_FILE = "t10k-labels-idx1-ubyte.gz"


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; records each requested path instead of logging it."""

    timeout = TIMEOUT  # a stalled client cannot hold a server thread forever

    def do_GET(self) -> None:
        self.server.requested.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


class CutShortFiles(QuietFiles):
    """Announces the whole file in Content-Length, sends half of it, then closes the connection."""

    def do_GET(self) -> None:
        self.server.requested.append(self.path)  # type: ignore[attr-defined]
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True


class TrickleFiles(QuietFiles):
    """Announces the whole file, then sends 100 bytes every 0.1 s: each read gets something, so
    no read ever times out, yet the file would take hours. It hangs up after 30 s, so a client
    that fails to stop fails its test rather than hanging it."""

    def do_GET(self) -> None:
        self.server.requested.append(self.path)  # type: ignore[attr-defined]
        body = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        hang_up = time.monotonic() + 30
        for start in range(0, len(body), 100):
            if time.monotonic() > hang_up:
                return
            try:
                self.wfile.write(body[start : start + 100])
                self.wfile.flush()
            except OSError:
                return  # the client gave up
            time.sleep(0.1)


class PrivateFiles(QuietFiles):
    """Serves a folder only to a request with the user mirroruser and password p@ss w0rd (HTTP
    Basic auth); records each request's Authorization header, or None."""

    def do_GET(self) -> None:
        self.server.requested.append(self.headers.get("Authorization"))  # type: ignore[attr-defined]
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"mirroruser:p@ss w0rd").decode():
            self.send_error(401)
            return
        http.server.SimpleHTTPRequestHandler.do_GET(self)


@dataclass
class Mirror:
    url: str
    requested: list[str] = field(default_factory=list)


@contextmanager
def serve(folder: Path, handler: type[QuietFiles] = QuietFiles) -> Iterator[Mirror]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    mirror = Mirror(f"http://127.0.0.1:{server.server_port}/")
    server.requested = mirror.requested  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def flip_middle_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))


def cache_listing(directory: Path) -> list[str]:
    """Every name in the folder, hidden .part files included."""
    return sorted(path.name for path in directory.iterdir())


def cache_without(directory: Path, mnist_dir: Path, missing: str) -> Path:
    """A cache folder holding every shared file but one."""
    directory.mkdir()
    for name in FILES:
        if name != missing:
            shutil.copyfile(mnist_dir / name, directory / name)
    return directory


@pytest.fixture
def mirror_folder(tmp_path: Path, mnist_dir: Path) -> Path:
    """A folder to serve, holding copies of the four shared .gz files."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name in FILES:
        shutil.copyfile(mnist_dir / name, folder / name)
    return folder


def test_mirrors_come_from_the_environment_when_set() -> None:
    env = {MIRRORS_ENV: " http://a.example/mnist , http://b.example/ ,"}
    assert mirrors_for(MNIST, env) == ("http://a.example/mnist/", "http://b.example/")
    assert mirrors_for(MNIST, {}) == mirrors_for(MNIST, {MIRRORS_ENV: " "}) == MNIST.mirrors


@pytest.mark.parametrize("mirror", ["user:S3CRETpw@mirror.example/mnist", "ftp://mirror.example/mnist/", "file:///etc/"])
def test_a_mirror_that_is_not_an_http_url_is_refused_unquoted(mirror: str) -> None:
    """Without a scheme the mirror was tried, and its error quoted it whole, password and all."""
    with pytest.raises(DataError) as caught:
        mirrors_for(MNIST, {MIRRORS_ENV: f"http://a.example/, {mirror}"})
    assert "mirror 2 is not an http:// or https:// URL" in str(caught.value)
    assert "S3CRET" not in str(caught.value) and "mirror.example" not in str(caught.value)


def test_a_mirror_password_or_token_is_not_quoted_by_a_download_error(tmp_path: Path) -> None:
    """urllib's errors repeat what they could not parse: `nonnumeric port: 'S3CRETpw@host'` (before
    the user-info was sent as Basic auth), and a URL with a space whole, query token included."""
    mirrors = (
        "https://user:S3CRETpw@mirror.example/mnist/",
        "http://127.0.0.1:1/mn ist/?token=S3CRETtok/",
        "http://u:S3CR@ETat@127.0.0.1:1/mnist/",
        "http://u:S3CRETport@127.0.0.1:1/mnist/",
    )
    with pytest.raises(DataError) as caught:
        download_dataset(MNIST, tmp_path / "cache", mirrors, timeout=TIMEOUT)
    message = str(caught.value)
    assert "control characters" in message and message.count("Connection refused") == 2, message  # each mirror's own reason is kept
    for secret in ("S3CRET", "ETat"):
        assert secret not in message, message


def test_download_into_an_empty_cache_then_load(
    tmp_path: Path, mirror_folder: Path, mnist_arrays: MnistArrays, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    with serve(mirror_folder) as mirror:
        monkeypatch.setenv(MIRRORS_ENV, mirror.url)
        source = resolve_data_source(env={}, cache_dir=cache)
        assert (source.path, source.download) == (cache / "mnist", True)
        arrays = load_data(source)
    assert sorted(mirror.requested) == [f"/{name}" for name in FILES]
    assert cache_listing(source.path) == FILES
    for role in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(arrays, role), getattr(mnist_arrays, role)), role
    assert resolve_data_source(env={}, cache_dir=cache).download is False


def test_only_missing_files_are_downloaded(tmp_path: Path, mirror_folder: Path, mnist_dir: Path) -> None:
    cache = cache_without(tmp_path / "cache", mnist_dir, SMALL_FILE)
    with serve(mirror_folder) as mirror:
        download_dataset(MNIST, cache, (mirror.url,), timeout=TIMEOUT)
    assert mirror.requested == [f"/{SMALL_FILE}"]
    assert cache_listing(cache) == FILES


@pytest.mark.parametrize(
    "damage, words",
    [
        (flip_middle_byte, ["corrupt or truncated gzip"]),
        (lambda path: shutil.copyfile(path.parent / "t10k-images-idx3-ubyte.gz", path), ["checksum mismatch"]),
    ],
    ids=["flipped byte", "another file"],
)
def test_a_corrupted_download_is_refused_and_not_kept(
    tmp_path: Path, mirror_folder: Path, damage: Callable[[Path], object], words: list[str]
) -> None:
    damage(mirror_folder / FIRST_FILE)
    cache = tmp_path / "cache"
    with serve(mirror_folder) as mirror:
        data_error(
            lambda: download_dataset(MNIST, cache, (mirror.url,), timeout=TIMEOUT),
            FIRST_FILE, str(cache), mirror.url, *words,
        )
    assert cache_listing(cache) == []


def test_a_connection_dropped_mid_file_is_reported_and_not_kept(
    tmp_path: Path, mirror_folder: Path
) -> None:
    size = (mirror_folder / FIRST_FILE).stat().st_size
    cache = tmp_path / "cache"
    with serve(mirror_folder, CutShortFiles) as mirror:
        data_error(
            lambda: download_dataset(MNIST, cache, (mirror.url,), timeout=TIMEOUT),
            f"{mirror.url}{FIRST_FILE}", f"closed after {size // 2} of {size} bytes",
        )
    assert cache_listing(cache) == []


@pytest.mark.parametrize("failing", ["not found", "cut short"])
def test_falls_back_to_the_second_mirror(
    tmp_path: Path, mirror_folder: Path, mnist_dir: Path, failing: str
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_server = serve(empty) if failing == "not found" else serve(mirror_folder, CutShortFiles)
    cache = cache_without(tmp_path / "cache", mnist_dir, SMALL_FILE)
    with bad_server as bad, serve(mirror_folder) as good:
        download_dataset(MNIST, cache, (bad.url, good.url), timeout=TIMEOUT)
    assert bad.requested == good.requested == [f"/{SMALL_FILE}"]
    assert cache_listing(cache) == FILES
    assert (cache / SMALL_FILE).read_bytes() == (mnist_dir / SMALL_FILE).read_bytes()


def test_no_network_says_where_it_looked_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = closed_port_url()
    monkeypatch.setenv(MIRRORS_ENV, url)
    source = resolve_data_source(env={}, cache_dir=tmp_path / "cache")
    data_error(
        lambda: load_data(source),
        str(source.path), url, "refused", "--data-dir", "MNIST_DATA_DIR",
    )
    assert cache_listing(source.path) == []


def test_a_silent_server_times_out(tmp_path: Path) -> None:
    """A server that accepts connections and never answers: the timeout ends the wait."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # the kernel completes the handshake; nobody ever reads or replies
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        data_error(lambda: download_dataset(MNIST, tmp_path / "cache", (url,), timeout=0.5), url, "timed out")
    assert cache_listing(tmp_path / "cache") == []


def test_a_trickling_server_meets_the_files_deadline(tmp_path: Path, mirror_folder: Path) -> None:
    """100 bytes every 2 s never tripped the per-read timeout: the run hung for good (54 hours
    for the training images) and, the stop request being a flag nobody read, ignored Ctrl-C."""
    cache = tmp_path / "cache"
    with serve(mirror_folder, TrickleFiles) as mirror:
        data_error(
            lambda: download_dataset(MNIST, cache, (mirror.url,), timeout=TIMEOUT, deadline_seconds=1),
            f"{mirror.url}{FIRST_FILE}", "took more than 1 s", "too slow", "--data-dir",
        )
    assert cache_listing(cache) == []


def test_a_cache_folder_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    cache = tmp_path / "a-file" / "mnist"
    data_error(
        lambda: download_dataset(MNIST, cache, (closed_port_url(),), timeout=TIMEOUT), str(cache), "cannot create"
    )


def test_a_mirror_with_credentials_is_shown_without_them(tmp_path: Path) -> None:
    """MNIST_SEARCH_MIRRORS may carry a user, password or token: the error names the server only."""
    url = closed_port_url().replace("http://", "http://mirroruser:MirPw55@") + "mnist/"
    with pytest.raises(DataError) as caught:
        download_dataset(MNIST, tmp_path / "cache", (url + "?access_token=Tok77&x=",), timeout=TIMEOUT)
    message = str(caught.value)
    assert "http://127.0.0.1:" in message  # the server it tried, and why it failed
    assert "MirPw55" not in message and "mirroruser" not in message and "Tok77" not in message


def test_a_mirror_with_a_user_and_password_sends_them_as_basic_auth(tmp_path: Path, mirror_folder: Path) -> None:
    """http://user:pw@host/ failed on a DNS lookup of "user:pw@host": urllib took the user-info
    for the host's name, so a private mirror could not be used at all."""
    cache = tmp_path / "cache"
    with serve(mirror_folder, PrivateFiles) as mirror:
        with pytest.raises(DataError, match="HTTP 401"):  # the server does refuse a request without them
            download_dataset(MNIST, cache, (mirror.url,), timeout=TIMEOUT)
        private = mirror.url.replace("http://", "http://mirroruser:p%40ss%20w0rd@")
        download_dataset(MNIST, cache, (private,), timeout=TIMEOUT)
    assert cache_listing(cache) == FILES
    assert mirror.requested[0] is None and len(set(mirror.requested[1:])) == 1 and len(mirror.requested) == 1 + len(FILES)


def test_fashion_mnist_that_cannot_be_fetched_points_at_what_it_reads(tmp_path: Path) -> None:
    """The error said to point MNIST_DATA_DIR at the files, which is read for MNIST only."""
    with pytest.raises(DataError) as caught:
        download_dataset(FASHION_MNIST, tmp_path / "cache", (closed_port_url(),), timeout=TIMEOUT)
    message = str(caught.value)
    assert "MNIST_DATA_DIR" not in message and "--data-dir" in message and "/usr/share/datasets/fashion-mnist" in message


def test_a_ctrl_c_during_a_download_ends_the_run_at_once_and_leaves_nothing(
    tmp_path: Path, mirror_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first Ctrl-C or SIGTERM during a download set a flag nobody read: a trickling mirror
    kept the run for ever, and only a second signal ended it, leaving a .part file behind."""
    import os
    import signal

    import search.run

    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    database = tmp_path / "study.db"
    with serve(mirror_folder, TrickleFiles) as mirror:
        monkeypatch.setenv(MIRRORS_ENV, mirror.url)

        def ctrl_c_once_the_transfer_runs() -> None:
            for _ in range(600):  # a hang guard, not a speed check
                if list(cache.rglob("*.part")):
                    break
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)

        signaller = threading.Thread(target=ctrl_c_once_the_transfer_runs, daemon=True)
        signaller.start()
        assert search.run.main(["--storage", f"sqlite:///{database}", "--train-size", "300", "--val-size", "100"]) == 130
        signaller.join(TIMEOUT)
    assert "interrupted before the search started; nothing was created" in capsys.readouterr().err
    assert not list(cache.rglob("*.part")) and not database.exists()


def test_a_mirror_user_name_without_a_password_is_not_masked_inside_other_words() -> None:
    """`http://ro@host/` masked `ro` in every word of the error: `<urlopen er***r ...>`."""
    from lightning_modules.data.download import _without_secrets

    assert _without_secrets("<urlopen error [Errno 111] Connection refused>", "http://ro@127.0.0.1:9/t.gz") == (
        "<urlopen error [Errno 111] Connection refused>"
    )
