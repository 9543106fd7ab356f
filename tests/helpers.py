"""Assertions shared by several test files (pytest puts tests/ on sys.path)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lightning_modules.errors import DataError


def data_error(call: Callable[[], object], *words: str) -> str:
    """Run call, expect a one-line DataError containing every word; return its message."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def writer_storage(url: str):  # noqa: ANN201 - RDBStorage
    """A storage as the runner opens it (heartbeats every 5 s, stale after 20 s)."""
    from search.resume import RetryDeadTrials
    from search.storage import open_study_storage

    return open_study_storage(url, heartbeat_seconds=5, grace_seconds=20, on_stale=RetryDeadTrials())


def reader_storage(url: str):  # noqa: ANN201 - RDBStorage
    """A storage as export and the dashboard open it: it must exist already."""
    from search.storage import open_existing_storage

    return open_existing_storage(url)


def load(url: str, name: str = "mnist"):  # noqa: ANN201 - optuna.Study
    import optuna

    return optuna.load_study(study_name=name, storage=reader_storage(url))


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]):  # noqa: ANN201 - subprocess.CompletedProcess
    """`python -m search.run ARGV` in this process, shaped like a finished subprocess.

    For the half of a test that needs no process of its own (a resume after a kill, the second
    of two runs): the same code path as the command line, without paying for another interpreter
    and another torch import. The part under test (a kill, a signal) stays a real process."""
    import subprocess

    from search.run import main

    capsys.readouterr()  # what earlier steps printed is not this run's
    code = main(argv)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["search.run", *argv], code, out, err)
