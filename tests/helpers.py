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
