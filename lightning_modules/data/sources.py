"""Where the data comes from: a dataset name, an IDX directory, a CSV file, or the user cache.

Torch-free: the runner resolves and checks the source before it imports torch, so a missing
data folder is one line in a fraction of a second.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lightning_modules.data.datasets import DATA_DIR_ENV, DATASETS, MNIST, DatasetSpec
from lightning_modules.errors import DataError, check_path_length, expand_home


@dataclass(frozen=True)
class DataSource:
    """Where the data comes from: an IDX directory (with its dataset's checksums) or a CSV file."""

    kind: str  # "idx" or "csv"
    path: Path
    spec: DatasetSpec | None  # checksums to verify; None for CSV
    download: bool = False  # fetch missing IDX files into `path` (the cache) first

    def describe(self) -> str:
        return f"{self.spec.name if self.spec else 'csv'} at {self.path}"


def default_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mnist-search"))


def idx_file(directory: Path, name: str) -> Path | None:
    """The gzip or raw copy of one IDX file in `directory`, if there is one. Anything there under
    the name counts: the reader refuses a pipe or device as what it is, not as missing."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.exists():
            return candidate
    return None


def has_all_files(directory: Path, spec: DatasetSpec) -> bool:
    return all(idx_file(directory, name) for name in spec.files.values())


def resolve_data_source(
    data: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
) -> DataSource:
    """Pick the data: --data (dir, CSV or name), then --data-dir, MNIST_DATA_DIR, the cache."""
    env = os.environ if env is None else env
    for given, what in ((data, "--data"), (data_dir, "--data-dir"), (env.get(DATA_DIR_ENV), DATA_DIR_ENV)):
        if given:
            refuse_a_url(os.fspath(given), what)
            check_path_length(given, what)
    spec = MNIST
    if data:
        if data.lower() in DATASETS:
            spec = DATASETS[data.lower()]
        else:
            path = expand_home(data, "--data")
            if path.is_file():
                return DataSource("csv", path, None)
            if path.is_dir():
                return DataSource("idx", path, MNIST)
            if path.suffix.lower() == ".csv":
                raise DataError(_not_a_csv_file(path))
            what = "not a regular file or a directory (a device, pipe or socket)" if path.exists() else "no such file or directory"
            raise DataError(f"--data {data!r}: {what}, and not a dataset name ({', '.join(DATASETS)}){_read_from(path)}")
    if data_dir:
        return DataSource("idx", expand_home(data_dir, "--data-dir"), spec)
    if env.get(DATA_DIR_ENV) and spec is MNIST:
        return DataSource("idx", expand_home(env[DATA_DIR_ENV], DATA_DIR_ENV), spec)
    for directory in spec.system_dirs:
        if has_all_files(directory, spec):
            return DataSource("idx", directory, spec)
    cache = (cache_dir or default_cache_dir()) / spec.name
    return DataSource("idx", cache, spec, download=not has_all_files(cache, spec))


def refuse_a_url(value: str, what: str) -> None:
    """DataError if `value` is a URL: as a path, `https://u:pw@h/x` became `https:/u:pw@h/x` (the
    `//` collapsed), whose error printed the password, since no URL was left to mask. Settings
    refuse a URL in --data and --data-dir; MNIST_DATA_DIR reaches only this check. The URL is shown
    without what may be secret: everything up to its last `@` (a password may hold `@` and `/`),
    and its query and fragment. Here, not in search/redaction.py: lightning_modules imports nothing of search/."""
    scheme, separator, rest = value.partition("://")
    if not separator:
        return
    scheme = scheme if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,20}", scheme) else "..."
    shown = f"{scheme}://{re.split('[?#]', rest.rpartition('@')[2])[0]}"
    raise DataError(
        f"{what} {shown[:120]!r} is a URL, and data is read from files: download it and give its path on disk "
        "(mnist and fashion-mnist download themselves)"
    )


def _read_from(path: Path) -> str:
    """Where a relative path was looked for: the current folder, not a config file's (`data.source:
    rows.csv` beside the config was "file not found" with no word of where it was looked for)."""
    return "" if path.is_absolute() else f" (a relative path is read from the current folder, {Path.cwd()})"


def _not_a_csv_file(path: Path) -> str:
    """Why `path`, named like a CSV file, is not one: missing, or there but a pipe, device or socket
    ("file not found" was said of a fifo and of a link to /dev/zero)."""
    if not path.exists():
        return f"{path}: file not found{_read_from(path)}"
    return f"{path}: not a regular file (a device, pipe or socket); pass a CSV file of rows: label, then 784 pixels 0-255"


def idx_files(directory: Path, spec: DatasetSpec) -> dict[str, Path]:
    """The four IDX files of `spec` in `directory` by role; a DataError names what is missing."""
    if not directory.is_dir():
        problem = ("is a file, not a directory" if directory.is_file() else "is not a directory") if directory.exists() else "does not exist"
        raise DataError(
            f"data directory {directory} {problem}; point --data-dir"
            + (f" or {DATA_DIR_ENV}" if spec.name == "mnist" else "")  # it is read for MNIST only
            + f" at a folder holding the four {'MNIST' if spec.name == 'mnist' else spec.name} IDX files"
        )
    files = {}
    for role, name in spec.files.items():
        path = idx_file(directory, name)
        if path is None:
            raise DataError(
                f"{directory}: missing {name}.gz (or {name}); a data directory needs the four "
                "files train-images, train-labels, t10k-images and t10k-labels"
            )
        files[role] = path
    return files


def check_source(source: DataSource) -> None:
    """Fail now, cheaply, if the source's files are not there (a download fetches them later)."""
    if source.kind == "idx" and not source.download:
        idx_files(source.path, source.spec or MNIST)
