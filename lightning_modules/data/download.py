"""Fetch a dataset's missing IDX files from its mirrors into a folder, verified and atomic.

Download code is tested against a local HTTP server (MNIST_SEARCH_MIRRORS), never the internet.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from lightning_modules.data.datasets import DATA_DIR_ENV, MIRRORS_ENV, MNIST, DatasetSpec
from lightning_modules.data.format import MAX_IDX_BYTES
from lightning_modules.data.readers import gunzip_bounded, md5_mismatch
from lightning_modules.data.sources import idx_file
from lightning_modules.errors import DataError

READ_BYTES = 64 * 1024  # one read: a trickling server is checked against the deadline this often
# A file's whole transfer, not one read: a server that sends 100 bytes every 2 s never trips the
# per-read timeout and would take 54 hours over the 9.9 MB of MNIST's training images. 600 s is
# 17 KB/s for that file, far below any working connection.
FILE_DEADLINE_SECONDS = 600.0


def mirrors_for(spec: DatasetSpec, env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The base URLs to download `spec` from: MNIST_SEARCH_MIRRORS if set, else the public ones."""
    env = os.environ if env is None else env
    override = [url.strip() for url in env.get(MIRRORS_ENV, "").split(",") if url.strip()]
    for number, url in enumerate(override, 1):
        if not url.lower().startswith(("http://", "https://")):  # not shown: without a scheme, no part of it is known to be public
            raise DataError(
                f"{MIRRORS_ENV}: mirror {number} is not an http:// or https:// URL; give base URLs such as http://host/mnist/, "
                f"comma-separated (for files on this machine, point --data-dir or {DATA_DIR_ENV} at their folder)"
            )
    if override:
        return tuple(url if url.endswith("/") else url + "/" for url in override)
    return spec.mirrors


def _fetch_verified(
    url: str, target: Path, md5: str, timeout: float, limit: int = MAX_IDX_BYTES, deadline_seconds: float = FILE_DEADLINE_SECONDS,
) -> None:
    """Download url into target atomically: a temp file, checked, then renamed into place.

    Raises DataError with a short reason (no path) when the transfer is cut short, grows past
    `limit`, takes longer than `deadline_seconds` or the content is not the published one;
    nothing is left behind but a complete, verified file (a KeyboardInterrupt included).
    """
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    deadline = time.monotonic() + deadline_seconds
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(_request(url), timeout=timeout) as response:
            announced = response.headers.get("Content-Length")
            if announced and announced.isdigit() and int(announced) > limit:
                raise DataError(f"the server announces {int(announced):,} bytes, more than the {limit:,} a data file may have")
            received = 0
            while chunk := response.read1(READ_BYTES):
                out.write(chunk)
                received += len(chunk)
                if received > limit:
                    raise DataError(f"the server sent more than the {limit:,} bytes a data file may have")
                if time.monotonic() > deadline:
                    raise DataError(f"the transfer took more than {deadline_seconds:g} s ({received:,} bytes so far): the server is too slow")
        # http.client ends a body cut short as if it were complete: compare with the header.
        if announced and announced.isdigit() and received < int(announced):
            raise DataError(f"the connection closed after {received} of {announced} bytes")
        try:
            content = gunzip_bounded(tmp.read_bytes(), limit)
        except ValueError as error:
            raise DataError(str(error)) from None
        problem = md5_mismatch(content, md5)
        if problem:
            raise DataError(problem)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _request(url: str) -> urllib.request.Request:
    """The GET of `url`, a user and password in it (a private mirror's) sent as HTTP Basic auth,
    as curl sends them: urllib took `user:pw@host` for the host's name and failed on its DNS lookup.
    Unredirected: a redirect to another server never carries them there."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return urllib.request.Request(url)
    user, password = urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or "")
    host = parts.netloc.rpartition("@")[2]
    request = urllib.request.Request(urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)))
    request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii"))
    return request


def _download_problem(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


def download_dataset(
    spec: DatasetSpec, directory: Path, mirrors: tuple[str, ...], timeout: float = 30.0, deadline_seconds: float = FILE_DEADLINE_SECONDS,
) -> None:
    """Fetch the missing files of `spec` into `directory`, trying each mirror in turn.

    `timeout` bounds each connection attempt and each read, so a silent server cannot hang us;
    `deadline_seconds` each file's whole transfer, so a trickling one cannot either.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot create the data folder {directory} ({error.strerror}); point --data-dir or "
            f"{DATA_DIR_ENV} at a folder holding the four IDX files"
        ) from None
    for name in spec.files.values():
        if idx_file(directory, name):
            continue
        problems: list[str] = []
        for base in mirrors:
            url = f"{base}{name}.gz"
            try:
                _fetch_verified(url, directory / f"{name}.gz", spec.md5[name], timeout, deadline_seconds=deadline_seconds)
                break
            except (OSError, http.client.HTTPException, DataError, ValueError) as error:
                problems.append(f"{shown_url(url)}: {_without_secrets(_download_problem(error), url)}")
        else:
            raise DataError(
                f"{spec.name}: {name}.gz is not in {directory} and could not be downloaded "
                f"({'; '.join(problems) or 'no mirrors given'}); without network access, {_offline_fix(spec)}"
            )


def _without_secrets(text: str, url: str) -> str:
    """`text` (an error from urllib or http.client, which may quote the URL or a piece of it) with
    the URL's user-info and query masked: a mirror's password or token is never shown."""
    parts = urllib.parse.urlsplit(url)
    password = parts.password or ""  # a user name alone is no secret: masking `ro` hid it inside every word
    userinfo = parts.netloc.rpartition("@")[0] if password else ""
    pieces = {userinfo, password, parts.query, *(value for _, value in urllib.parse.parse_qsl(parts.query) if len(value) > 2)}
    pieces |= {piece for piece in re.split("[@:]", password) if len(piece) > 2}  # urllib splits a password at its '@'
    for piece in sorted((p for p in pieces if p), key=len, reverse=True):
        text = text.replace(piece, "***").replace(urllib.parse.unquote(piece), "***")
    return text


def shown_url(url: str) -> str:
    """A mirror's URL as an error shows it: no user name, password or query (a token may be there)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def _offline_fix(spec: DatasetSpec) -> str:
    """Where the files may come from instead: MNIST_DATA_DIR is read for MNIST only."""
    if spec is MNIST:
        return f"point --data-dir or {DATA_DIR_ENV} at a folder holding the four IDX files"
    installed = f", or install them in {spec.system_dirs[0]}" if spec.system_dirs else ""
    return f"point --data-dir at a folder holding its four IDX files{installed}"
